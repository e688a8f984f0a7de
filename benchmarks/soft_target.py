"""The ``soft`` training target against ``union``, read with the paired human-level test.

On the synthetic phantom, the same recipe is trained twice, once on the union of the
observers and once on their mean (``observer = "soft"``), with the last
``--test`` specimens held out (``split = "last"``). Each run's evaluation gives the
paired human-level test (``summary.json`` → ``human_level``: the model against
observer A set against observer B against A, per specimen), and the two models are
compared with each other per specimen (``soft − union``, Dice against each observer)
by :func:`bcseg.observers.paired_comparison`.

Example (a few minutes on 2 idle cores)::

    .venv/bin/python benchmarks/soft_target.py --out bench-out/soft --epochs 4
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

RECIPE = {
    "model": {"ndim": 2, "base_filters": 8, "depth": 3},
    "data": {"size": 64},
    "train": {"batch_size": 8, "split": "last"},
    "inference": {"tune": False, "tta": False},
}


def per_specimen(run: Path, reference: str, metric: str = "dice") -> dict[str, float]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as handle:
        return {r["case"]: float(r[metric]) for r in csv.DictReader(handle)
                if r["reference"] == reference and r["level"] == "specimen"}


def main(argv=None) -> int:
    from bcseg import train
    from bcseg.observers import paired_comparison
    from bcseg.phantom import write_phantom

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out/soft")
    parser.add_argument("--specimens", type=int, default=10)
    parser.add_argument("--test", type=int, default=5, help="held-out specimens (the last ones)")
    parser.add_argument("--shape", type=int, nargs=3, default=(12, 64, 64))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(args.out)
    write_phantom(out / "phantom", n=args.specimens, shape=tuple(args.shape), seed=1, force=True)
    runs = {}
    for observer in ("union", "soft"):
        overrides = json.loads(json.dumps(RECIPE))
        overrides["data"]["observer"] = observer
        overrides["train"].update({"epochs": args.epochs, "test_last": args.test})
        runs[observer] = out / observer
        train.train(out / "phantom", runs[observer], overrides=overrides, force=True)
    lines = [f"Phantom: {args.specimens} specimens of {tuple(args.shape)}, last {args.test} held out; "
             f"{args.epochs} epochs; recipe {json.dumps(RECIPE)}.", ""]
    for observer, run in runs.items():
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        lines += [f"- trained on {observer}: model {c['text']}"
                  for c in summary["human_level"]["comparisons"]]
    for reference in ("observer1", "observer2", "union"):
        soft, union = per_specimen(runs["soft"], reference), per_specimen(runs["union"], reference)
        ids = sorted(soft)
        result = paired_comparison([soft[i] for i in ids], [union[i] for i in ids],
                                   names=(reference, "the union-trained model"))
        lines.append(f"- soft-trained model vs {reference}: {result['text']}")
    text = "\n".join(lines) + "\n"
    (out / "soft_target.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
