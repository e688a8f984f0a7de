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
    from bcseg.data.phantom import write_phantom
    from bcseg.after_fit import train_and_evaluate as train

    out = Path(args.out)
    data = out / "phantom"
    if not data.exists():
        write_phantom(data, n=args.specimens, seed=args.seed)
    # float32 for both starts: a run from --init computes as its starting model does
    # (float32), so mixed precision for the scratch run alone would be a confound.
    overrides = {"train": {"epochs": args.epochs, "k": args.specimens, "seed": args.seed,
                           "batch_size": 8, "mixed_precision": False}}
    results = {}
    for name, init in (("scratch", None), ("fine-tuned from busi", "busi")):
        started = time.perf_counter()
        run = out / ("scratch" if init is None else "finetune")
        # Every fold in turn: each specimen is a test specimen once.
        folds = train(data, run, config="busi", fold="all", init=init, force=True,
                      overrides=dict(overrides, data={"observer": "union", "tumour_fraction": 0.5}))
        dice = [json.loads((run / f"fold_{f['fold']}" / "summary.json").read_text())
                ["references"]["union"]["metrics"]["dice"]["mean"] for f in folds]
        results[name] = {"test_dice_per_fold": [round(d, 4) for d in dice],
                         "test_dice_mean": float(sum(dice) / len(dice)), "n_test": len(dice),
                         "best_val_dice": float(sum(f["best_val_dice"] for f in folds) / len(folds)),
                         "best_epoch": [f["best_epoch"] for f in folds],
                         "seconds": round(time.perf_counter() - started, 1)}
    lines = ["| start | test Dice per specimen (union), mean | per fold | mean validation Dice | seconds |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['test_dice_mean']:.3f} (n={r['n_test']}) | "
                     f"{', '.join(f'{d:.3f}' for d in r['test_dice_per_fold'])} | "
                     f"{r['best_val_dice']:.3f} | {r['seconds']} |")
    table = "\n".join(lines) + (f"\n\n{args.specimens} phantom specimens, every one the test "
                                f"specimen once ({args.specimens}-fold), {args.epochs} epochs per "
                                "fold, the same splits and seed for both starts.\n")
    from bcseg.atomic import write_text

    write_text(out / "results.md", table)
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
