"""Teach the BUSI model to leave tumour-free images empty, and ensemble it with r5.

The bundled r5 model was trained on lesion images only, so it draws a "tumour" on
every BUSI normal image (0 of 27 left empty on fold 0), and would on every
tumour-free slice of a specimen stack. This benchmark fine-tunes an r5 model with
BUSI's normal images added (their folds are in ``folds.csv``) and the scanner-shift
augmentation of ``benchmarks/configs/r8.toml``, then scores three candidates on
BUSI fold 0, which none of them saw:

- ``r5``: the held-out twin (``tests/data/busi_heldout``), lesion images only (an r5
  model when the recorded figures were measured; the twin is now the r10 pair, and this
  reads its first member, so a rerun measures that instead);
- ``r8``: that model fine-tuned with normals and shift augmentation;
- ``r5+r8``: the two as an ensemble (mean of their probabilities).

Every candidate's threshold, post-processing and TTA are chosen on one fixed
validation set (the r5 twin's own validation groups plus a tenth of the normal
images' groups), which no candidate trained on; the test fold chooses nothing.
Lesion Dice is per image (benign + malignant), normal images count as left empty
when the mask has no pixel.

``--stage bundled`` fine-tunes the bundled model (all 647 lesion images) the same
way on all 780 images, as the candidate second member of the bundled ensemble.

Examples
--------
    .venv/bin/python benchmarks/busi_normals.py --stage twin --out bench-out/normals
    .venv/bin/python benchmarks/busi_normals.py --stage bundled --out bench-out/normals
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, cpu_flags, write_results  # noqa: E402  (benchmarks/machine.py)

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
TWIN = ROOT / "tests" / "data" / "busi_heldout" / "busi_unet2d.keras"
BUNDLED = ROOT / "src" / "bcseg" / "pretrained" / "busi_unet2d.keras"
RECIPE = ROOT / "benchmarks" / "configs" / "r8.toml"


def fixed_validation(lesions, normals, seed: int = 0, fraction: float = 0.1) -> list[str]:
    """The r5 recipe's validation groups of the lesion images (what the r5 model
    was validated on) plus whole groups of the normal images, drawn the same way."""
    from bcseg.data.splits import validation_ids

    return validation_ids(lesions, fraction, seed) + validation_ids(normals, fraction, seed)


def fine_tune(cases, folds_file: Path, validation, init: Path, out: Path, epochs: int | None) -> Path:
    """Fit ``r8`` from ``init`` on every fold but 0 and tune it on ``validation``.

    Fold 0 of ``cases`` holds no normal image, so the test fold scores lesions only,
    as the BUSI protocol asks; normal images of fold 0 are scored by :func:`score`.
    """
    from bcseg.after_fit import train_and_evaluate

    overrides = {"train": {"epochs": epochs}} if epochs else None
    train_and_evaluate(cases, out, config=RECIPE, overrides=overrides, fold=0, folds_file=folds_file,
                       init=str(init), validation=validation, report=False, force=True)
    return out / "model_best.keras"


def fine_tune_all(cases, validation, init: Path, out: Path, epochs: int | None) -> Path:
    """Fit ``r8`` from ``init`` on every case (no test fold), as the bundled model is."""
    from bcseg.after_fit import finish_fold
    from bcseg.config import load_config, save_config
    from bcseg.learn.train import run_fold, training_precision

    cfg = load_config(RECIPE, {"train": {"epochs": epochs}} if epochs else None)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.toml")
    with training_precision(cfg):
        finish_fold(run_fold(cases, {c.id: 1 for c in cases}, 0, cfg, out, init_model=init,
                             validation=validation))
    return out / "model_best.keras"


def score(models_paths, validation, test_lesions, test_normals, classes) -> dict:
    """Tune one candidate on ``validation``; score it on fold 0."""
    from bcseg.after_fit import _probabilities, choose_settings
    from bcseg.infer.segment import segment_case
    from bcseg.infer.segment import load_models
    from bcseg.measure.metrics import dice
    from bcseg.data.cases import read_case_masks
    from bcseg.learn.pipeline import training_target

    models, settings = load_models(models_paths if len(models_paths) > 1 else models_paths[0])
    probs, truths = _probabilities(models, validation, settings, "reference")
    settings = choose_settings(probs, truths, settings, len(validation))
    lesion = []
    for case in test_lesions:
        image, _, mask, _ = segment_case(models, case, settings, keep_prob=False)
        truth = training_target(read_case_masks(case, image.shape), "reference", str(case.image))
        lesion.append((classes[case.id], dice(mask, truth)))
    empty = [not segment_case(models, c, settings, keep_prob=False)[2].any() for c in test_normals]
    d = np.array([x for _, x in lesion])
    return {
        "models": [str(p) for p in models_paths], "n_lesion": len(d), "dice": float(d.mean()),
        "dice_sd": float(d.std(ddof=1)), "missed_share": float((d < 0.5).mean()),
        "by_class": {k: float(np.mean([x for c, x in lesion if c == k])) for k in ("benign", "malignant")},
        "n_normal": len(empty), "normal_left_empty": float(np.mean(empty)) if empty else None,
        "threshold": settings.threshold, "postprocess": list(settings.postprocess), "tta": settings.tta,
        "validation_dice": settings.info.get("validation_dice"),
    }


def markdown(results: dict) -> str:
    lines = ["| model | lesion Dice (fold 0) | benign | malignant | Dice < 0.5 | normal left empty | "
             "validation Dice | threshold, post-processing, TTA |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["candidates"].items():
        lines.append(
            f"| {name} | {r['dice']:.3f} ± {r['dice_sd']:.3f} | {r['by_class']['benign']:.3f} | "
            f"{r['by_class']['malignant']:.3f} | {100 * r['missed_share']:.1f}% | "
            f"{r['normal_left_empty'] * 100:.0f}% of {r['n_normal']} | {r['validation_dice']:.3f} | "
            f"{r['threshold']}, {'+'.join(r['postprocess']) or 'none'}, {'on' if r['tta'] else 'off'} |")
    lines.append("")
    lines.append(f"Fine-tuning: {results['epochs']} epochs of `{results['recipe']}`. CPU: {results['cpu']}, "
                 f"{os.cpu_count()} cores. Wall time {results['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default="bench-out/normals")
    parser.add_argument("--stage", choices=("twin", "bundled", "score"), default="twin",
                        help="twin: fine-tune the held-out twin and score on fold 0; score: only "
                             "score an existing twin fine-tune; bundled: fine-tune the bundled model")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg.config import load_config
    from bcseg.data.dataset import discover
    from bcseg.data.splits import folds_from_file

    data, out = Path(args.data), Path(args.out)
    if busi_missing(data, "busi_normals.py"):
        return 3
    started = time.perf_counter()
    cases = discover(data)
    folds = folds_from_file(data / "folds.csv", cases)
    lesions = [c for c in cases if c.label_class in ("benign", "malignant")]
    normals = [c for c in cases if c.label_class == "normal"]
    epochs = args.epochs or load_config(RECIPE)["train"]["epochs"]
    out.mkdir(parents=True, exist_ok=True)

    if args.stage == "bundled":
        validation = fixed_validation(lesions, normals)
        fine_tune_all(lesions + normals, validation, BUNDLED, out / "bundled", args.epochs)
        print(f"fine-tuned bundled candidate: {out / 'bundled'} ({time.perf_counter() - started:.0f} s)")
        return 0

    pool_lesions = [c for c in lesions if folds[c.id] != 0]
    pool_normals = [c for c in normals if folds[c.id] != 0]
    validation = fixed_validation(pool_lesions, pool_normals)
    run = out / "twin"
    if args.stage == "twin":
        fine_tune(lesions + pool_normals, data / "folds.csv", validation, TWIN, run, args.epochs)
    if not (run / "inference.json").is_file():
        # A fit whose step after fitting did not run: record the settings it was trained
        # with (its 160 px input above all), or it would be run on whole images.
        from bcseg import rundir
        from bcseg.rundir import recipe_settings

        rundir.write_settings(run, recipe_settings(load_config(run / "config.toml"), None))
    by_id = {c.id: c for c in cases}
    val_cases = [by_id[i] for i in validation]
    test_lesions = [c for c in lesions if folds[c.id] == 0]
    test_normals = [c for c in normals if folds[c.id] == 0]
    classes = {c.id: c.label_class for c in cases}
    candidates = {"r5 (held-out twin)": [TWIN], "r8 (fine-tuned with normals)": [run / "model_best.keras"],
                  "r5 + r8 ensemble": [TWIN, run / "model_best.keras"]}
    results = {"recipe": str(RECIPE.relative_to(ROOT)), "epochs": epochs, "cpu": cpu_flags(),
               "validation_cases": len(val_cases), "candidates": {}}
    for name, paths in candidates.items():
        results["candidates"][name] = score(paths, val_cases, test_lesions, test_normals, classes)
        print(name, results["candidates"][name], flush=True)
    results["seconds"] = time.perf_counter() - started
    write_results(out, "normals_fold0", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
