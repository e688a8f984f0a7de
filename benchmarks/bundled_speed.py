"""Speed and size of the bundled BUSI model against a candidate, side by side.

Issue 18 bounds a new bundled default at 2x the time of today's single bundled model,
measured on the same machine in one run (a ratio: absolute times differ between
machines). Both segment the same BUSI images through ``bcseg predict``'s path
(:func:`bcseg.infer.segment.segment_case` with each model's own settings), alternating
round by round so that load from other processes falls on both alike.

"Bundled" is what ``bcseg predict`` runs without ``--model`` (an ensemble folder where
the bundle records one). To time a bundled ensemble against one model, run it before
the ensemble is bundled with ``--candidate`` naming the ensemble folder, or after with
``--candidate src/bcseg/pretrained/busi_unet2d.keras`` (its first member alone).

Example (the bundled model against an ensemble of two fold models)::

    .venv/bin/python benchmarks/bundled_speed.py --candidate bench-out/busi-cv/fold_3 \\
        bench-out/busi-cv/fold_4 --images 40
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, hardware  # noqa: E402  (benchmarks/machine.py)


def model_megabytes(files) -> float:
    return sum(Path(f).stat().st_size for f in files) / 1e6


def seconds_per_image(models, settings, cases) -> float:
    from bcseg.infer.segment import segment_case

    started = time.perf_counter()
    for case in cases:
        segment_case(models, case, settings, keep_prob=False)
    return (time.perf_counter() - started) / len(cases)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", nargs="+", required=True,
                        help="run folder(s) or model file(s); several make an ensemble")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--images", type=int, default=40, help="fold-0 lesion images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench-out/bundled_speed.json")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if busi_missing(Path(args.data), "bundled_speed.py"):
        return 3
    from bcseg.data.dataset import discover
    from bcseg.data.splits import folds_from_file
    from bcseg.infer.segment import load_models
    from bcseg.pretrained import pretrained_model
    from bcseg.rundir import load_run

    cases = discover(args.data)
    folds = folds_from_file(Path(args.data) / "folds.csv", cases)
    images = [c for c in cases if c.label_class != "normal" and folds[c.id] == 0][:args.images]
    entries = {"bundled": [pretrained_model()], "candidate": args.candidate}
    loaded = {name: load_models(paths if len(paths) > 1 else paths[0]) for name, paths in entries.items()}
    sizes = {name: model_megabytes(load_run(paths if len(paths) > 1 else paths[0])[0])
             for name, paths in entries.items()}
    for models, settings in loaded.values():  # warm-up: graph tracing is not segmenting
        seconds_per_image(models, settings, images[:2])
    times = {name: [] for name in entries}
    for _ in range(args.rounds):
        for name, (models, settings) in loaded.items():
            times[name].append(seconds_per_image(models, settings, images))
    best = {name: min(t) for name, t in times.items()}
    # Each round times both back to back, so load from elsewhere falls on both alike:
    # the median of the rounds' own ratios is steadier than a ratio of two best rounds.
    round_ratios = [c / b for c, b in zip(times["candidate"], times["bundled"])]
    result = {"images": len(images), "rounds": args.rounds, "hardware": hardware(),
              "seconds_per_image": times, "best_seconds_per_image": best,
              "ratio": best["candidate"] / best["bundled"],
              "median_round_ratio": float(np.median(round_ratios)), "megabytes": sizes,
              "candidate": args.candidate}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name in entries:
        print(f"{name}: {best[name] * 1000:.0f} ms per image (best of {args.rounds} rounds of "
              f"{len(images)}; rounds {', '.join(f'{t * 1000:.0f}' for t in times[name])}), "
              f"{sizes[name]:.1f} MB")
    print(f"candidate / bundled time: {result['ratio']:.2f} (best rounds), "
          f"{result['median_round_ratio']:.2f} (median of the rounds' ratios). CPU: {result['hardware']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
