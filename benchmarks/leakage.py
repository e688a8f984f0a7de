"""Leakage measured: the same recipe tested with a slice-level and a specimen-level split.

The GUIDE and the README say that splitting the slices of a stack, rather than the
specimens, leaks neighbouring slices of a test specimen into training and inflates
Dice. This benchmark measures by how much, on the synthetic phantom:

1. ``bcseg.data.phantom.write_phantom`` writes ``--specimens`` stacks; every slice whose
   union of the observers holds tumour is written as a 2D image with its masks
   (``slices/specimen_NNN_zZZZ.tif``), so both splits see exactly the same images;
2. **slice split**: every slice is its own group (``group = slice id``), the
   image-level split a careless manifest gives; **specimen split**: the slices of
   one specimen share a group, as bcseg requires;
3. for each split, ``bcseg.data.splits.kfold_by_group`` with the same ``k`` and seed, and
   the same recipe (``bcseg.learn.train.train`` with the overrides below) trained and
   tested on the same folds; the test Dice is the mean over test slices against the
   union of the observers (``metrics.csv`` of each fold's evaluation);
4. inflation = slice-split Dice − specimen-split Dice, with the share of test
   slices whose specimen also had slices in training.

With ``--busi DIR`` the same comparison runs on BUSI: image-level folds (every image
its own group) against the near-duplicate groups of BUSI's ``folds.csv``, with the
``busi`` preset; that takes hours on a CPU.

Examples
--------
Quick run (about a minute on 2 idle cores; the numbers are noisy)::

    .venv/bin/python benchmarks/leakage.py --quick --out bench-out/leakage

Fuller run (every fold, more epochs; tens of minutes on 2 cores)::

    .venv/bin/python benchmarks/leakage.py --out bench-out/leakage
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SETTINGS = {  # steps: optimiser steps per epoch (batch 8), so both splits train alike
    "quick": {"specimens": 6, "shape": (12, 64, 64), "k": 3, "folds": [0], "epochs": 6, "steps": 8},
    "full": {"specimens": 10, "shape": (16, 96, 96), "k": 5, "folds": [0, 1, 2, 3, 4],
             "epochs": 20, "steps": 16},
}
RECIPE = {  # the same for both splits: a small 2D U-Net, no tuning (it would use validation)
    "model": {"ndim": 2, "base_filters": 8, "depth": 3},
    "data": {"size": 64, "observer": "union"},
    "train": {"batch_size": 8, "split": "kfold"},
    "inference": {"tune": False, "tta": False},
}


def cpu_flags() -> str:
    """The SIMD flags that matter for TensorFlow's CPU kernels, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}; {' '.join(wanted) or 'no AVX2'}"


def slice_dataset(root: Path, specimens: int, shape, seed: int = 0):
    """Phantom stacks cut into 2D tumour slices: (slice-split cases, specimen-split cases)."""
    from bcseg.data import io
    from bcseg.data.cases import Case, read_case_image, read_case_masks
    from bcseg.data.dataset import discover
    from bcseg.measure.observers import union
    from bcseg.data.phantom import write_phantom

    write_phantom(root / "phantom", n=specimens, shape=shape, seed=seed)
    cases = []
    for stack in discover(root / "phantom"):
        image, spacing = read_case_image(stack)
        masks = read_case_masks(stack, image.shape)
        plane = None if spacing is None else spacing[1:]
        for z in range(image.shape[0]):
            if not union([m[z] for m in masks.values()]).any():
                continue
            name = f"{stack.id}_z{z:03d}"
            files = {obs: (io.write_mask(root / "slices" / obs / f"{name}.tif", m[z], plane),)
                     for obs, m in masks.items()}
            path = io.write_image(root / "slices" / "images" / f"{name}.tif", image[z], plane)
            cases.append(Case(id=name, image=path, masks=files, group=stack.id))
    return [replace(c, group=c.id) for c in cases], cases


def test_dice(run: Path) -> list[float]:
    """Per-slice Dice against the union, from the fold's metrics.csv."""
    import csv

    with open(run / "metrics.csv", newline="", encoding="utf-8") as handle:
        return [float(r["dice"]) for r in csv.DictReader(handle) if r["reference"] == "union"]


def run_split(name: str, cases, specimen_of: dict[str, str], k: int, folds: list[int], epochs: int,
              out: Path, recipe: dict | None = None, config: str | None = None, steps: int = 0) -> dict:
    """Train and test the recipe on the given folds of one split.

    ``leaked_share`` is the share of test images whose specimen (``specimen_of``:
    case id -> its true group) had images in training.
    """
    from bcseg.learn import train

    overrides = json.loads(json.dumps(RECIPE if recipe is None else recipe))
    overrides.setdefault("train", {}).update({"epochs": epochs, "k": k, "steps_per_epoch": steps})
    dice, leaked, started = [], 0, time.perf_counter()
    for fold in folds:
        run = out / name.replace(" ", "_") / f"fold{fold}"
        train.train(cases, run, config=config, overrides=overrides, fold=str(fold), force=True)
        dice += test_dice(run)
        split = json.loads((run / "fold.json").read_text(encoding="utf-8"))
        trained = {specimen_of[i] for i in split["train"]}
        leaked += sum(specimen_of[i] in trained for i in split["test"])
    return {"split": name, "n_test": len(dice), "dice_mean": float(np.mean(dice)),
            "dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else float("nan"),
            "leaked_share": leaked / max(1, len(dice)), "seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict], settings: dict, flags: str, command: str) -> str:
    slice_row, specimen_row = rows
    lines = [
        "| split | test slices | test slices whose specimen was in training | Dice (union), mean ± SD |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['split']} | {row['n_test']} | {row['leaked_share']:.0%} | "
                     f"{row['dice_mean']:.3f} ± {row['dice_sd']:.3f} |")
    inflation = slice_row["dice_mean"] - specimen_row["dice_mean"]
    lines += ["", f"Inflation of Dice by the slice-level split: {inflation:+.3f}.", "",
              f"Phantom: {settings['specimens']} specimens of {tuple(settings['shape'])}, tumour slices "
              f"only; {settings['k']} folds, tested on fold(s) {settings['folds']}; "
              f"{settings['epochs']} epochs of {settings['steps']} steps; recipe {json.dumps(RECIPE)}.",
              f"CPU: {flags}. Command: `{command}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out/leakage", help="working and output folder")
    parser.add_argument("--quick", action="store_true", help="small phantom, one fold, 6 short epochs")
    parser.add_argument("--epochs", type=int, help="override the epochs of the mode")
    parser.add_argument("--busi", help="also compare image-level and grouped folds on BUSI here")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    if args.epochs:
        settings["epochs"] = args.epochs
    out = Path(args.out)
    slice_cases, specimen_cases = slice_dataset(out / "data", settings["specimens"], settings["shape"])
    specimen_of = {c.id: c.group for c in specimen_cases}
    rows = [run_split(name, cases, specimen_of, settings["k"], settings["folds"], settings["epochs"],
                      out / "runs", steps=settings["steps"])
            for name, cases in (("slice split", slice_cases), ("specimen split", specimen_cases))]
    command = "python benchmarks/leakage.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(rows, settings, cpu_flags(), command)
    if args.busi:
        text += busi_table(Path(args.busi), settings, out / "busi")
    (out / "leakage.md").write_text(text, encoding="utf-8")
    (out / "leakage.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(text)
    return 0


def busi_table(root: Path, settings: dict, out: Path) -> str:
    """BUSI: every image its own group against folds.csv's near-duplicate groups."""
    from bcseg.data.dataset import discover

    grouped = discover(root)
    image_level = [replace(c, group=c.id) for c in grouped]
    specimen_of = {c.id: c.group for c in grouped}
    rows = [run_split(name, cases, specimen_of, 5, settings["folds"], settings["epochs"], out,
                      recipe={}, config="busi")
            for name, cases in (("image-level folds", image_level), ("grouped folds", grouped))]
    inflation = rows[0]["dice_mean"] - rows[1]["dice_mean"]
    return (f"\nBUSI ({len(grouped)} images): image-level folds {rows[0]['dice_mean']:.3f}, grouped "
            f"folds {rows[1]['dice_mean']:.3f}: inflation {inflation:+.3f}.\n")


if __name__ == "__main__":
    sys.exit(main())
