"""Does a fold ensemble beat its members? BUSI fold 0 held out, inner folds 1-4.

Protocol (issue 18): fold 0's lesion images are the test set and nobody trains on
them. The lesion images of folds 1-4 form a k-fold run of their own, whose four
folds are BUSI's folds 1-4 (so near-duplicate groups stay whole): ``bcseg train
--folds all`` trains one model per inner fold, each on the other three with a
validation split of whole groups, and then chooses the ensemble's one threshold and
post-processing on the members' pooled out-of-fold validation predictions.

Each member, with its own tuned settings, and the ensemble then segment fold 0.
Dice per image at the image's original resolution, per class, the share of missed
lesions (Dice < 0.5) and the share of fold 0's normal images left empty. The target
is an ensemble at least 0.01 above the mean of its members.

Example (four trainings of ``--epochs`` each, then inference; on a 2-core CPU at 100
epochs this is about four hours, on a GPU minutes)::

    .venv/bin/python benchmarks/ensemble.py --epochs 100 --out bench-out/ensemble

An interrupted run resumes: finished inner folds are kept (``bcseg train --resume``).

``--members 0,1`` scores a smaller ensemble of finished inner folds (tuned on their own
pooled validation cases) and trains nothing, so it can run beside the training;
``--baseline RUN`` pairs the ensemble against one more model, such as one trained on
all of folds 1-4 (the cross-validation's fold-0 model)::

    .venv/bin/python benchmarks/ensemble.py --epochs 100 --out bench-out/ensemble \\
        --members 0,1 --baseline bench-out/r7/fold_0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, hardware  # noqa: E402  (benchmarks/machine.py)
TEST_FOLD = 0


def inner_folds_file(path: Path, folds: dict[str, int]) -> Path:
    """Write the inner k-fold plan: outer folds 1-4 become inner folds 0-3."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fold"])
        for case_id, fold in sorted(folds.items()):
            writer.writerow([case_id, fold - 1])
    return path


def score(models, settings, lesions, normals, classes) -> dict:
    """Dice per lesion image of the test fold, and the normal images left empty."""
    from bcseg.infer.segment import segment_case
    from bcseg.data.cases import read_case_masks
    from bcseg.measure.metrics import dice

    per_image = {}
    for case in lesions:
        _, _, mask, _ = segment_case(models, case, settings, keep_prob=False)
        truth = read_case_masks(case, mask.shape)["reference"]
        per_image[case.id] = float(dice(mask, truth))
    values = np.array(list(per_image.values()))
    by_class = {name: float(np.mean([d for i, d in per_image.items() if classes[i] == name]))
                for name in sorted({classes[i] for i in per_image})}
    empty = [not segment_case(models, c, settings, keep_prob=False)[2].any() for c in normals]
    return {"n": len(values), "dice": float(values.mean()), "dice_sd": float(values.std(ddof=1)),
            "missed_share": float((values < 0.5).mean()), "by_class": by_class,
            "normal_left_empty": float(np.mean(empty)) if empty else None,
            "threshold": settings.threshold, "postprocess": list(settings.postprocess),
            "tta": settings.tta, "per_image": per_image}


def _cls(r: dict, name: str) -> str:
    return f"{r['by_class'][name]:.3f}" if name in r["by_class"] else "n/a"


def markdown(result: dict) -> str:
    lines = ["| model | Dice (fold 0) | benign | malignant | Dice < 0.5 | normal left empty | "
             "threshold, post-processing, TTA |", "|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        normal = "n/a" if r["normal_left_empty"] is None else f"{100 * r['normal_left_empty']:.0f}%"
        lines.append(f"| {name} | {r['dice']:.3f} ± {r['dice_sd']:.3f} | "
                     f"{_cls(r, 'benign')} | {_cls(r, 'malignant')} | "
                     f"{100 * r['missed_share']:.1f}% | {normal} | {r['threshold']}, "
                     f"{'+'.join(r['postprocess']) or 'none'}, {'on' if r['tta'] else 'off'} |")
    gain = result["ensemble_minus_member_mean"]
    lines += ["", f"Ensemble minus the mean of its members: {gain:+.3f} "
              f"(paired over {result['models']['ensemble']['n']} images: bootstrap 95% CI "
              f"{result['gain_ci'][0]:+.3f} to {result['gain_ci'][1]:+.3f})."]
    if "baseline" in result:
        lines[-1] += (f" Ensemble minus the baseline ({result['baseline']}): "
                      f"{result['ensemble_minus_baseline']:+.3f} (95% CI {result['baseline_ci'][0]:+.3f} "
                      f"to {result['baseline_ci'][1]:+.3f}).")
    lines[-1] += (f" Epochs per member: {result['epochs']}. Hardware: {result['hardware']}. "
                  f"Wall time: {result['seconds'] / 60:.1f} min.")
    lines.append("")
    return "\n".join(lines)


def paired_gain(ensemble: dict, others: list[dict], seed: int = 0) -> tuple[float, list[float]]:
    """Ensemble minus the mean of ``others``, per image; its mean and bootstrap 95% CI."""
    ids = list(ensemble["per_image"])
    mean_other = np.mean([[r["per_image"][i] for i in ids] for r in others], axis=0)
    gain = np.array([ensemble["per_image"][i] for i in ids]) - mean_other
    rng = np.random.default_rng(seed)
    boots = [gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(2000)]
    return float(gain.mean()), [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def _finished_folds(run: Path, wanted: str) -> list[Path]:
    """The inner folds named in ``wanted`` ("0,1"), each of which must have finished."""
    from bcseg import rundir

    folds = []
    for k in sorted({int(k) for k in wanted.split(",")}):
        fold = run / rundir.FOLD_DIR.format(k)
        if not (fold / rundir.SETTINGS_FILE).is_file():
            raise SystemExit(f"ensemble.py: {fold}: not finished (no {rundir.SETTINGS_FILE}); "
                             "train it first (run without --members)")
        folds.append(fold)
    return folds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--out", default="bench-out/ensemble")
    parser.add_argument("--config", default="busi", help="preset or TOML file (default: busi)")
    parser.add_argument("--epochs", type=int, required=True, help="train.epochs of every member")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N lesion images of each fold (a smoke test)")
    parser.add_argument("--members", help="score the ensemble of these finished inner folds only "
                        "(e.g. 0,1), its threshold tuned on their pooled out-of-fold validation; "
                        "trains nothing")
    parser.add_argument("--baseline", help="also score this model (e.g. one trained on all of "
                        "folds 1-4) and pair the ensemble against it")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg.after_fit import train_and_evaluate, tune_ensemble
    from bcseg.config import load_config
    from bcseg.data.dataset import discover
    from bcseg.data.splits import folds_from_file
    from bcseg.infer.segment import load_models
    from bcseg import rundir

    data = Path(args.data)
    if busi_missing(data, "ensemble.py"):
        return 3
    cases = discover(data)
    folds = folds_from_file(data / "folds.csv", cases)
    classes = {c.id: c.label_class for c in cases}
    lesions = [c for c in cases if c.label_class in ("benign", "malignant")]
    if args.limit:
        lesions = [c for k in range(5) for c in [c for c in lesions if folds[c.id] == k][:args.limit]]
    inner = [c for c in lesions if folds[c.id] != TEST_FOLD]
    test = [c for c in lesions if folds[c.id] == TEST_FOLD]
    normals = [c for c in cases if c.label_class == "normal" and folds[c.id] == TEST_FOLD]
    if args.limit:
        normals = normals[:args.limit]

    out = Path(args.out)
    run = out / "inner_run"
    started = time.perf_counter()
    if args.members:
        chosen = _finished_folds(run, args.members)
    else:
        if not (run / rundir.SETTINGS_FILE).is_file():  # the ensemble step has not finished yet
            out.mkdir(parents=True, exist_ok=True)
            plan = inner_folds_file(out / "inner_folds.csv", {c.id: folds[c.id] for c in inner})
            train_and_evaluate(inner, run, config=args.config, fold="all", folds_file=plan,
                               overrides={"train": {"epochs": args.epochs, "budget_minutes": 0.0}},
                               resume=(run / rundir.CONFIG_FILE).is_file(), report=False)
        chosen = rundir.find_members(run)

    result = {"epochs": args.epochs, "config": args.config, "n_inner": len(inner),
              "hardware": hardware(), "members": [f.name for f in chosen], "models": {}}
    for member in chosen:
        models, settings = load_models(member)
        result["models"][f"member {member.name}"] = score(models, settings, test, normals, classes)
        print(f"{member.name}: Dice {result['models'][f'member {member.name}']['dice']:.3f}", flush=True)
    if args.members:  # tuned like the whole ensemble, on these members' validation cases only
        tuned = tune_ensemble(run, inner, load_config(run / rundir.CONFIG_FILE), fold_dirs=chosen,
                              write=False)
        models, settings = load_models(chosen, threshold=tuned.threshold, tta=tuned.tta,
                                       postprocess=list(tuned.postprocess))
    else:
        models, settings = load_models(run)
    result["models"]["ensemble"] = score(models, settings, test, normals, classes)
    members = [r for name, r in result["models"].items() if name.startswith("member")]
    result["ensemble_minus_member_mean"], result["gain_ci"] = paired_gain(result["models"]["ensemble"], members)
    if args.baseline:
        models, settings = load_models(args.baseline)
        result["models"]["baseline"] = score(models, settings, test, normals, classes)
        result["baseline"] = args.baseline
        result["ensemble_minus_baseline"], result["baseline_ci"] = paired_gain(
            result["models"]["ensemble"], [result["models"]["baseline"]])
    result["seconds"] = time.perf_counter() - started
    name = "results" if not args.members else "results_members_" + "-".join(
        f.name.split("_")[-1] for f in chosen)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table = markdown(result)
    (out / f"{name}.md").write_text(table, encoding="utf-8")
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
