"""The ``soft`` training target against ``union``, read with the paired human-level test.

On the synthetic phantom, the same recipe is trained twice, once on the union of the
observers and once on their mean (``observer = "soft"``), with the last
``--test`` specimens held out (``split = "last"``). Each run's evaluation gives the
paired human-level test (``summary.json`` → ``human_level``: the model against
observer A set against observer B against A, per specimen), and the two models are
compared with each other per specimen (``soft − union``, Dice against each observer)
by :func:`bcseg.measure.observers.paired_comparison`.

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


def human_rows(run: Path) -> dict:
    """Per-specimen model-vs-observer and observer-vs-observer Dice and HD95 of a run."""
    rows = {(ref, m): per_specimen(run, ref, m) for ref in ("observer1", "observer2")
            for m in ("dice", "hd95")}
    with open(run / "agreement.csv", newline="", encoding="utf-8") as handle:
        agree = list(csv.DictReader(handle))
    for metric in ("dice", "hd95"):
        rows[("human", metric)] = {r["case"]: float(r[metric]) for r in agree}
    return rows


def main(argv=None) -> int:
    from bcseg.learn import train
    from bcseg.measure.observers import paired_comparison
    from bcseg.data.phantom import write_phantom

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out/soft")
    parser.add_argument("--specimens", type=int, default=10)
    parser.add_argument("--test", type=int, default=5, help="held-out specimens (the last ones)")
    parser.add_argument("--shape", type=int, nargs=3, default=(12, 64, 64))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--reuse", action="store_true", help="read the runs already in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = {observer: out / observer for observer in ("union", "soft")}
    if not args.reuse:
        write_phantom(out / "phantom", n=args.specimens, shape=tuple(args.shape), seed=1, force=True)
        for observer, run in runs.items():
            overrides = json.loads(json.dumps(RECIPE))
            overrides["data"]["observer"] = observer
            overrides["train"].update({"epochs": args.epochs, "test_last": args.test})
            train.train(out / "phantom", run, overrides=overrides, force=True)
    from bcseg.config import load_config

    epochs = load_config(runs["union"] / "config.toml")["train"]["epochs"]
    lines = [f"Phantom: {args.specimens} specimens of {tuple(args.shape)}, last {args.test} held out; "
             f"{epochs} epochs; recipe {json.dumps(RECIPE)}.", ""]
    for observer, run in runs.items():
        rows = human_rows(run)
        for reference in ("observer1", "observer2"):
            for metric in ("dice", "hd95"):
                ids = sorted(rows[(reference, metric)])
                result = paired_comparison([rows[(reference, metric)][i] for i in ids],
                                           [rows[("human", metric)][i] for i in ids], metric,
                                           names=(reference, "the other observer"),
                                           unit="mm" if metric == "hd95" else "")
                lines.append(f"- trained on {observer}: model {result['text']}")
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
