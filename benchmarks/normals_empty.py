"""How many of BUSI's held-out normal images a model leaves empty, as it is bundled.

Issue 18 asks every bundled candidate to leave >= 90% of held-out normal images empty.
``seed_ensemble.py`` reports the share for the settings it tunes; this scores any model
as ``bcseg predict`` runs it (its own recorded threshold, post-processing and TTA): a
``.keras`` file, a run folder, an ensemble folder such as ``tests/data/busi_heldout``.
An image counts as left empty when its mask has no pixel.

Example::

    .venv/bin/python benchmarks/normals_empty.py tests/data/busi_heldout bench-out/r12/fold_0
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, hardware  # noqa: E402  (benchmarks/machine.py)


def normal_images(data: Path, fold: int) -> list[Path]:
    with open(data / "folds.csv", newline="", encoding="utf-8") as handle:
        return [data / row["image"] for row in csv.DictReader(handle)
                if row["class"] == "normal" and int(row["fold"]) == fold]


def left_empty(model: str, images: list[Path]) -> int:
    import tifffile

    from bcseg.infer.segment import predict_files

    with tempfile.TemporaryDirectory() as out:
        records = predict_files(model, images, Path(out) / "masks", progress=False)
        return sum(not tifffile.imread(record["mask"]).any() for record in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="models, run folders or ensemble folders")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--fold", type=int, default=0, help="the held-out fold (default 0)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if busi_missing(data, "normals_empty.py"):
        return 2
    images = normal_images(data, args.fold)
    for model in args.models:
        empty = left_empty(model, images)
        print(f"{model}: {empty} of {len(images)} fold-{args.fold} normal images left empty "
              f"({empty / len(images):.0%})")
    print(f"CPU: {hardware()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
