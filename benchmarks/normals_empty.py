"""How many of BUSI's held-out normal images a model leaves empty, as it is bundled.

Issue 18 asks every bundled candidate to leave >= 90% of held-out normal images empty.
``seed_ensemble.py`` reports the share for the settings it tunes; this scores any model
as ``bcseg predict`` runs it (its own recorded threshold, post-processing and TTA): a
``.keras`` file, a run folder, an ensemble folder such as ``tests/data/busi_heldout``.
An image counts as left empty when its mask has no pixel.

Example::

    .venv/bin/python benchmarks/normals_empty.py tests/data/busi_heldout bench-out/r12/fold_0
    .venv/bin/python benchmarks/normals_empty.py src/bcseg/pretrained --fold all   # all 133
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


def normal_images(data: Path, fold: int | None) -> list[Path]:
    """The normal images of ``fold``, or all 133 (None): a model trained on lesion images
    only, as the bundled one is, saw none of them."""
    with open(data / "folds.csv", newline="", encoding="utf-8") as handle:
        return [data / row["image"] for row in csv.DictReader(handle)
                if row["class"] == "normal" and (fold is None or int(row["fold"]) == fold)]


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
    parser.add_argument("--fold", default="0", choices=["0", "1", "2", "3", "4", "all"],
                        help="the held-out fold (default 0), or all: every normal image, for "
                        "models trained on lesion images only")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if busi_missing(data, "normals_empty.py"):
        return 2
    fold = None if args.fold == "all" else int(args.fold)
    images = normal_images(data, fold)
    for model in args.models:
        empty = left_empty(model, images)
        which = "BUSI" if fold is None else f"fold-{fold}"
        print(f"{model}: {empty} of {len(images)} {which} normal images left empty "
              f"({empty / len(images):.0%})")
    print(f"CPU: {hardware()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
