"""BUSI benchmark: bcseg's 2D recipe on real breast ultrasound, leakage-free folds.

Protocol (see ../shared/datasets/busi/README.md): benign + malignant images (647),
5-fold cross-validation over ``folds.csv``, whose groups keep near-duplicates in one
fold. Train on four folds (with a validation split of whole groups taken from them,
used for the best epoch, threshold and post-processing), test on the fifth. Metrics
are computed per test image at its original resolution (the prediction is mapped
back from the training grid). Normal images of the test fold are segmented too, to
report how often the model correctly leaves them empty.

Examples
--------
CPU budget track (20 minutes of training, fold 0 as test)::

    .venv/bin/python benchmarks/busi.py --budget-min 20 --folds 0 --out bench-out/busi-cpu

Full run, until convergence (meant for a GPU)::

    .venv/bin/python benchmarks/busi.py --folds all --epochs 150 --out bench-out/busi-full

With ``--normals`` the training folds' normal images are trained on too (the BUSI
protocol tests lesions only, so the test fold's normal images are still scored
apart, as "left empty" or not)::

    .venv/bin/python benchmarks/busi.py --normals --epochs 30 --folds 0 --out bench-out/busi-normals

With ``--teacher`` each fold's student distils a teacher (``bcseg train --teacher``); a
``{fold}`` in the path names each fold's own, so that no teacher saw the fold it is
tested on (here the 5-fold run of the same recipe, one teacher per fold)::

    .venv/bin/python benchmarks/busi.py --normals --epochs 100 --folds 0 \
        --teacher 'bench-out/r7/fold_{fold}' --out bench-out/distil

A finished fold is read back, not trained again. A fold cut off while it trained (the
machine went back, Ctrl-C) continues from its last epoch with ``--resume`` (``bcseg train
--resume``: the same schedule, as if never stopped); give the command as it was, plus
``--resume``::

    .venv/bin/python benchmarks/busi.py --config benchmarks/configs/r13.toml --epochs 100 \
        --folds all --out bench-out/r13 --resume
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, hardware  # noqa: E402  (benchmarks/machine.py)


def _rows(metrics_csv: Path) -> list[dict]:
    with open(metrics_csv, newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if r["level"] == "image"]


def _normal_empty_share(run: Path, normal_cases) -> float | None:
    """Share of the test fold's normal images that the model leaves empty."""
    from bcseg.infer.segment import segment_case
    from bcseg.infer.segment import load_models

    if not normal_cases:
        return None
    models, settings = load_models(run)  # the run's own settings, as bcseg predict uses them
    empty = sum(not segment_case(models, case, settings, keep_prob=False)[2].any()
                for case in normal_cases)
    return empty / len(normal_cases)


def fold_result(run: Path, classes: dict[str, str], normal_cases) -> dict:
    rows = _rows(run / "metrics.csv")
    dice = np.array([float(r["dice"]) for r in rows])
    iou = np.array([float(r["iou"]) for r in rows])
    hd95 = np.array([float(r["hd95"]) for r in rows])
    finite = np.isfinite(hd95)
    by_class = {}
    for name in sorted({classes[r["case"]] for r in rows}):
        chosen = np.array([float(r["dice"]) for r in rows if classes[r["case"]] == name])
        by_class[name] = {"n": len(chosen), "dice": float(chosen.mean())}
    history = list(csv.DictReader(open(run / "history.csv", newline="", encoding="utf-8")))
    return {
        "n_test": len(rows), "dice": float(dice.mean()), "dice_sd": float(dice.std(ddof=1)),
        "iou": float(iou.mean()), "hd95_px": float(hd95[finite].mean()) if finite.any() else math.nan,
        "hd95_n_inf": int((~finite).sum()), "missed_share": float((dice < 0.5).mean()),
        "by_class": by_class, "normal_left_empty": _normal_empty_share(run, normal_cases),
        "epochs": len(history), "inference": json.loads((run / "inference.json").read_text()),
    }


def markdown(results: dict) -> str:
    lines = ["| fold | test images | Dice | IoU | HD95 (px) | Dice < 0.5 | benign Dice | "
             "malignant Dice | normal left empty | epochs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fold, r in results["folds"].items():
        normal = r["normal_left_empty"]
        lines.append(
            f"| {fold} | {r['n_test']} | {r['dice']:.3f} ± {r['dice_sd']:.3f} | {r['iou']:.3f} | "
            f"{r['hd95_px']:.1f} ({r['hd95_n_inf']} inf) | {100 * r['missed_share']:.1f}% | "
            f"{r['by_class'].get('benign', {}).get('dice', math.nan):.3f} | "
            f"{r['by_class'].get('malignant', {}).get('dice', math.nan):.3f} | "
            f"{'n/a' if normal is None else f'{100 * normal:.0f}%'} | {r['epochs']} |")
    if len(results["folds"]) > 1:
        mean = results["mean"]
        lines.append(f"| mean | | {mean['dice']:.3f} | {mean['iou']:.3f} | {mean['hd95_px']:.1f} | "
                     f"{100 * mean['missed_share']:.1f}% | | | | |")
    lines.append("")
    lines.append(f"Protocol: {results['protocol']}. "
                 f"Hardware: {results['hardware']}. Training budget: {results['budget']}. "
                 f"Wall time: {results['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--out", default="bench-out/busi")
    parser.add_argument("--config", default="busi", help="preset or TOML file (default: busi)")
    parser.add_argument("--folds", default="0", help="'all' or a comma-separated list (default 0)")
    parser.add_argument("--budget-min", type=float, default=0.0,
                        help="wall-clock training budget per fold in minutes (0: train all epochs)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--normals", action="store_true",
                        help="train on the training folds' normal images too")
    parser.add_argument("--teacher", help="model or run to distil; '{fold}' is the test fold")
    parser.add_argument("--teacher-weight", type=float, help="override train.teacher_weight")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="train finished folds again")
    again.add_argument("--resume", action="store_true",
                       help="continue a fold cut off while it trained, from its last epoch")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg.data.dataset import discover

    data = Path(args.data)
    if busi_missing(data, "busi.py"):
        return 3
    cases = discover(data)
    lesions = [c for c in cases if c.label_class in ("benign", "malignant")]
    from bcseg.data.splits import folds_from_file
    all_folds = folds_from_file(data / "folds.csv", cases)
    classes = {c.id: c.label_class for c in cases}
    wanted = range(5) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    overrides = {"train": {"budget_minutes": args.budget_min}}
    if args.epochs:
        overrides["train"]["epochs"] = args.epochs
    if args.teacher_weight:
        overrides["train"]["teacher_weight"] = args.teacher_weight

    out = Path(args.out)
    started = time.perf_counter()
    protocol = "folds.csv, tested on benign+malignant, trained on " + (
        "benign+malignant+normal" if args.normals else "benign+malignant")
    if args.teacher:
        protocol += f", distilled from {args.teacher} (teacher weight {args.teacher_weight or 0.5:g})"
    results = {"folds": {}, "config": args.config, "protocol": protocol,
               "hardware": hardware(),
               "budget": f"{args.budget_min:g} min per fold" if args.budget_min else "all epochs"}
    for fold in wanted:
        results["folds"][fold] = _fold(fold, out, lesions, cases, all_folds, classes, args,
                                       overrides, data)
        _write(out, results, started)  # after every fold: an interruption loses no finished fold
    return 0


def _fold(fold, out, lesions, cases, all_folds, classes, args, overrides, data) -> dict:
    """Train and score one fold, or read its result if an earlier run finished it."""
    from bcseg.after_fit import train_and_evaluate as train

    run = out / f"fold_{fold}"
    done = run / "fold_result.json"
    if done.is_file() and not args.force:
        print(f"fold {fold}: finished earlier, read from {done}")
        return json.loads(done.read_text())
    started = time.perf_counter()
    normals = [c for c in cases if c.label_class == "normal"]
    # The test fold's normal images never enter training; the training folds' do with --normals.
    trained = lesions + ([c for c in normals if all_folds[c.id] != fold] if args.normals else [])
    if args.teacher:  # each fold its own teacher: one that never saw the fold it is tested on
        teacher = Path(args.teacher.replace("{fold}", str(fold))).absolute()
        overrides = {**overrides, "train": {**overrides["train"], "teacher": [str(teacher)]}}
    # --resume reads the run's own config.toml and refuses a changed recipe (bcseg train
    # --resume), so a fold is never finished with another recipe than it began with.
    train(trained, run, config=args.config, overrides=overrides, fold=fold,
          folds_file=data / "folds.csv", force=args.force, resume=args.resume and run.is_dir())
    normal = [c for c in normals if all_folds[c.id] == fold]
    result = fold_result(run, classes, normal)
    result["minutes"] = (time.perf_counter() - started) / 60
    done.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _write(out: Path, results: dict, started: float) -> None:
    from bcseg.atomic import write_text

    folds = results["folds"].values()
    results["mean"] = {k: float(np.mean([r[k] for r in folds]))
                       for k in ("dice", "iou", "hd95_px", "missed_share")}
    results["seconds"] = time.perf_counter() - started
    write_text(out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    table = markdown(results)
    write_text(out / "results.md", table)
    print(table, flush=True)


if __name__ == "__main__":
    sys.exit(main())
