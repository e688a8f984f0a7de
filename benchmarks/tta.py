"""Mirror TTA on BUSI: Dice, missed lesions and time, without TTA, with the model's
trained flips, and with every flip (the old behaviour, for comparison).

The held-out twin model (``tests/data/busi_heldout``, trained on folds 1-4 of
``folds.csv``; by default its first member, one r10 model, since the twin became the
r10 pair; the recorded figures were measured on the single model it held before) segments the 130 lesion images of fold 0, which it never saw. Each
row uses the threshold and post-processing recorded for that TTA setting; with
``--tune`` they are first chosen (as ``bcseg train`` does, on the same validation
split of whole groups that training used, never the test fold) and written into the
model's settings as ``tuned.with_tta`` / ``tuned.without_tta``.

Examples
--------
    PYTHONPATH=src .venv/bin/python benchmarks/tta.py
    PYTHONPATH=src .venv/bin/python benchmarks/tta.py --tune --write   # record tuned thresholds
    PYTHONPATH=src .venv/bin/python benchmarks/tta.py --phantom        # also a phantom row
    PYTHONPATH=src .venv/bin/python benchmarks/tta.py --tune --write --all-lesions \
        --model src/bcseg/pretrained                                  # the bundled model
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
HELDOUT = ROOT / "tests" / "data" / "busi_heldout"
BUNDLED = ROOT / "src" / "bcseg" / "pretrained"


def cpu_flags() -> str:
    """The SIMD flags that matter for TensorFlow's CPU kernels, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown CPU"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags {' '.join(wanted) or 'none of avx2/avx512'}"


def busi_cases(data: Path, fold: int, validation: bool, all_lesions: bool = False):
    """BUSI lesion cases: the test ``fold``, or the validation split training used."""
    from bcseg.config import load_config
    from bcseg.data.dataset import discover
    from bcseg.data.splits import folds_from_file, validation_ids

    lesions = [c for c in discover(data) if c.label_class in ("benign", "malignant")]
    folds = {c.id: 1 for c in lesions} if all_lesions else folds_from_file(data / "folds.csv", lesions)
    if not validation:
        return [c for c in lesions if folds[c.id] == fold]
    pool = [c for c in lesions if folds[c.id] != fold]
    cfg = load_config("busi")  # the recipe both BUSI models were trained with
    chosen = set(validation_ids(pool, cfg["train"]["val_fraction"], cfg["train"]["seed"]))
    return [c for c in pool if c.id in chosen]


def score(models, settings, cases) -> dict:
    """Mean Dice, share of missed lesions (Dice < 0.5) and seconds per image."""
    from bcseg.data.dataset import BUSI_OBSERVER

    return _scores(models, settings, cases, BUSI_OBSERVER)


def _scores(models, settings, cases, reference: str) -> dict:
    from bcseg.data.cases import read_case_image, read_case_masks
    from bcseg.measure.metrics import dice
    from bcseg.infer.predict import segment_volume

    segment_volume(models, read_case_image(cases[0])[0], settings)  # warm-up: graphs traced
    scores, seconds = [], 0.0
    for case in cases:
        image, spacing = read_case_image(case)
        started = time.perf_counter()
        mask, _ = segment_volume(models, image, settings, spacing, keep_prob=False)
        seconds += time.perf_counter() - started
        masks = read_case_masks(case, image.shape)
        # "union": every observer's mask OR-ed (the phantom's two observers)
        truth = np.logical_or.reduce(list(masks.values())) if reference == "union" else masks[reference]
        scores.append(dice(mask, truth))
    scores = np.array(scores)
    return {"n": len(scores), "dice": float(scores.mean()), "missed": float((scores < 0.5).mean()),
            "seconds_per_image": seconds / max(1, len(scores))}


def tune(models, settings, cases):
    """Threshold and post-processing per TTA setting, chosen on validation ``cases``."""
    from bcseg.after_fit import choose_settings
    from bcseg.infer.segment import segment_case
    from bcseg.data.cases import read_case_masks
    from bcseg.data.dataset import BUSI_OBSERVER

    probs = {tta: [segment_case(models, c, settings.replace(tta=tta))[3] for c in cases]
             for tta in (False, True)}
    truths = [read_case_masks(c)[BUSI_OBSERVER] for c in cases]
    tuned = choose_settings(probs, truths, settings, len(cases))
    # Keep the recorded choice (TTA off, its threshold); add what TTA needs.
    return settings.replace(tuned=tuned.tuned)


def rows_for(models, settings, cases, label: str) -> list[dict]:
    variants = [("without TTA", settings.overridden(tta=False)),
                (f"TTA, trained flips {list(settings.flips)}", settings.overridden(tta=True))]
    if settings.tuned.get("with_tta"):  # TTA alone, at the threshold tuned without it
        variants.append((f"TTA, trained flips {list(settings.flips)}, threshold tuned without TTA",
                         settings.overridden(tta=False).replace(tta=True)))
    everything = settings.overridden(tta=True).replace(flips=("z", "ud", "lr"))
    variants.append(("TTA, every flip (old behaviour)", everything))
    from bcseg.infer.predict import tta_flips

    rows = []
    for name, chosen in variants:
        result = score(models, chosen, cases)
        result.update(model=label, setting=name, threshold=chosen.threshold,
                      postprocess=list(chosen.postprocess),
                      passes=len(tta_flips(2, chosen.flips, chosen.tta)))
        rows.append(result)
        print(json.dumps(result), flush=True)
    return rows


def markdown(rows: list[dict], cpu: str) -> str:
    lines = ["| model | data | setting | passes | threshold, post-processing | Dice | "
             "missed (Dice < 0.5) | s / image |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['data']} ({r['n']} images) | {r['setting']} | {r['passes']} | "
                     f"{r['threshold']}, {'+'.join(r['postprocess']) or 'none'} | {r['dice']:.3f} | "
                     f"{100 * r['missed']:.1f}% | {r['seconds_per_image']:.3f} |")
    return "\n".join(lines) + f"\n\nCPU: {cpu}. Time is inference only, per image, one process.\n"


def phantom_rows(out: Path, epochs: int) -> list[dict]:
    """A small 2D model trained on the synthetic phantom; its test fold with and without TTA."""
    from bcseg.after_fit import train_and_evaluate
    from bcseg.data.dataset import discover
    from bcseg.data.phantom import write_phantom
    from bcseg.infer.segment import load_models

    data = out / "phantom"
    if not data.exists():
        write_phantom(data, n=6, shape=(16, 96, 96), seed=0, truth=True)
    run = out / "phantom-run"
    if not (run / "inference.json").is_file():
        train_and_evaluate(data, run, config="demo", overrides={"train": {"epochs": epochs}},
                           fold=0, report=False, force=True)
    models, settings = load_models(run)
    test = json.loads((run / "fold.json").read_text(encoding="utf-8"))["test"]
    cases = [c for c in discover(data) if c.id in test]
    return _phantom_scores(models, settings, cases)


def _phantom_scores(models, settings, cases) -> list[dict]:
    from bcseg.infer.predict import tta_flips

    rows = []
    for name, tta in (("without TTA", False), (f"TTA, trained flips {list(settings.flips)}", True)):
        chosen = settings.overridden(tta=tta)
        result = _scores(models, chosen, cases, "union")
        result.update(model="phantom 2D (demo recipe)", data="phantom test specimens", setting=name,
                      passes=len(tta_flips(2, chosen.flips, tta)), threshold=chosen.threshold,
                      postprocess=list(chosen.postprocess))
        rows.append(result)
        print(json.dumps(result), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--model", default=str(HELDOUT / "busi_unet2d.keras"))
    parser.add_argument("--fold", type=int, default=0, help="test fold the model never saw")
    parser.add_argument("--limit", type=int, help="only the first N test images (a quick look)")
    parser.add_argument("--tune", action="store_true",
                        help="choose the threshold per TTA setting on the training validation split")
    parser.add_argument("--all-lesions", action="store_true",
                        help="the model was trained on every lesion image (the bundled one)")
    parser.add_argument("--write", action="store_true",
                        help="with --tune: record the tuned thresholds in the model's inference.json "
                        "and stop")
    parser.add_argument("--phantom", action="store_true", help="also a phantom row (trains a model)")
    parser.add_argument("--no-busi", action="store_true", help="skip the BUSI rows")
    parser.add_argument("--epochs", type=int, default=15, help="phantom model epochs")
    parser.add_argument("--out", default="bench-out/tta")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg import rundir
    from bcseg.infer.segment import load_models

    data, model = Path(args.data), Path(args.model)
    folder = model if model.is_dir() else model.parent
    recorded = rundir.read_settings(folder / rundir.SETTINGS_FILE)
    if args.write and model.is_file() and recorded is not None and recorded.members:
        raise SystemExit(f"tta.py: {folder / rundir.SETTINGS_FILE} records an ensemble; "
                         f"--write with one member ({model.name}) would replace it: pass --model {folder}")
    models, settings = load_models(model)
    if args.tune:
        settings = tune(models, settings, busi_cases(data, args.fold, True, args.all_lesions))
        if args.write:
            rundir.write_settings(folder, settings)
            print(f"recorded tuned thresholds in {folder / rundir.SETTINGS_FILE}")
            return 0
    rows = []
    if not (args.all_lesions or args.no_busi):  # the bundled model saw every BUSI lesion
        cases = busi_cases(data, args.fold, False)[:args.limit]
        rows = rows_for(models, settings, cases, f"held-out twin ({model.name})")
        for r in rows:
            r["data"] = f"BUSI fold {args.fold}"
    if args.phantom:
        rows += phantom_rows(Path(args.out), args.epochs)
    if rows:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(rows, cpu_flags())
        (out / "tta.md").write_text(text, encoding="utf-8")
        (out / "tta.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
