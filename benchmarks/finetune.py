"""Does fine-tuning the bundled BUSI model beat training from scratch on a small study?

Transfer to a small specimen dataset is the use case of ``bcseg train --init busi``.
This trains the same 2D recipe twice on the same small phantom study and split, once
from random weights and once from the bundled model, for the same number of epochs,
and reports the held-out Dice per specimen of each. Either outcome is reported.

Example::

    .venv/bin/python benchmarks/finetune.py --specimens 5 --epochs 8 --out bench-out/finetune
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out/finetune")
    parser.add_argument("--specimens", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg.phantom import write_phantom
    from bcseg.train import train

    out = Path(args.out)
    data = out / "phantom"
    if not data.exists():
        write_phantom(data, n=args.specimens, seed=args.seed)
    overrides = {"train": {"epochs": args.epochs, "k": args.specimens, "seed": args.seed,
                           "batch_size": 8}}
    results = {}
    for name, init in (("scratch", None), ("fine-tuned from busi", "busi")):
        started = time.perf_counter()
        run = out / ("scratch" if init is None else "finetune")
        [fold] = train(data, run, config="busi", overrides=dict(overrides, data={"observer": "union",
                       "tumour_fraction": 0.5}), fold=0, init=init, force=True)
        summary = json.loads((run / "summary.json").read_text())
        dice = summary["references"]["union"]["metrics"]["dice"]
        results[name] = {"test_dice_mean": dice["mean"], "n_test": dice["n"],
                         "best_val_dice": fold["best_val_dice"], "best_epoch": fold["best_epoch"],
                         "seconds": round(time.perf_counter() - started, 1)}
    lines = ["| start | test Dice (union) | validation Dice | best epoch | seconds |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['test_dice_mean']:.3f} (n={r['n_test']}) | "
                     f"{r['best_val_dice']:.3f} | {r['best_epoch']} | {r['seconds']} |")
    table = "\n".join(lines) + (f"\n\n{args.specimens} phantom specimens, {args.epochs} epochs each, "
                                "same split and seed.\n")
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
