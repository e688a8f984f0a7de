"""Multi-scale test-time augmentation on BUSI: does averaging a model's probabilities at
several input sizes beat its one trained size?

r13 is trained with the scale drawn from 0.67-1.5, so the same network seen at 128 or
192 px instead of 160 might add information, as mirror TTA does. This script segments a
fold run's validation images and test fold at each input size (bcseg's one inference
path, :func:`bcseg.infer.predict.segment_volume`, with the run's settings but for
``input_size``), keeps the probabilities at the image's own resolution, and scores
averages of sizes. Each combination's threshold and post-processing are chosen on the
validation images as ``bcseg train`` chooses them (:func:`bcseg.after_fit.choose_settings`,
without TTA); the test fold chose nothing. The combination with the best validation
Dice is paired with the trained size on the test fold (bootstrap CI, Wilcoxon).

Example (the held-out twin's run, about 5 minutes on 2 cores)::

    .venv/bin/python benchmarks/multiscale.py bench-out/r13f0/fold_0 \\
        --out benchmarks/results --name multiscale_r13_fold0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, cpu_flags, write_results  # noqa: E402
from paired import compare  # noqa: E402
from shift import load_fold  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
# Input sizes as factors of the trained one (160 px: 128, 144, 160, 176, 192), rounded to
# a multiple of 16. The trained size alone first, then averages: symmetric and one-sided,
# the cheap pairs (0.8 + 1 costs 1.64x one pass, within issue 18's 2x) and the dear triples.
FACTORS = (0.8, 0.9, 1.0, 1.1, 1.2)
COMBINATIONS = ((1.0,), (0.8,), (1.2,), (0.8, 1.0), (1.0, 1.2), (0.9, 1.0), (0.9, 1.1),
                (0.9, 1.0, 1.1), (0.8, 1.0, 1.2))


def input_size(trained: int, factor: float) -> int:
    return int(16 * round(trained * factor / 16))


def probabilities(model, settings, images, sizes) -> list[dict[int, np.ndarray]]:
    """Each image's probability map (its own resolution, float16) at each input size."""
    from bcseg.infer.predict import segment_volume

    return [{s: segment_volume(model, image, settings.replace(input_size=s, tta=False),
                               keep_prob=True)[1].astype(np.float16) for s in sizes}
            for _, _, image, _ in images]


def mean_map(maps: dict[int, np.ndarray], sizes) -> np.ndarray:
    return np.mean([maps[s].astype(np.float32) for s in sizes], axis=0)


def per_image_dice(images, probs, sizes, threshold, steps) -> dict[str, float]:
    from bcseg.infer.postprocess import postprocess
    from bcseg.measure.metrics import dice

    return {case_id: float(dice(postprocess(mean_map(p, sizes) > threshold, list(steps)), truth))
            for (case_id, _, _, truth), p in zip(images, probs)}


def choose(images, probs, sizes, settings):
    """Threshold and post-processing for ``sizes`` on the validation images, as training
    chooses them (:func:`bcseg.after_fit.best_cut`: ties keep fewer steps and the lower
    threshold)."""
    from bcseg.after_fit import best_cut

    score, threshold, steps = best_cut([mean_map(p, sizes) for p in probs],
                                       [t for *_, t in images], settings.threshold)
    return threshold, tuple(steps), round(score, 4)


def table(result: dict) -> str:
    lines = [f"Run: {result['run']}; {result['n_validation']} validation and {result['n_test']} "
             f"fold-{result['fold']} test lesion images. Threshold and post-processing chosen on "
             "validation for each row; no mirror TTA.", "",
             "| input sizes averaged | pixels, x one pass at the trained size | validation Dice | "
             "threshold, post-processing | test Dice |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        cost = sum(s * s for s in row["sizes"]) / result["trained"][0] ** 2
        sizes, steps = " + ".join(map(str, row["sizes"])), " + ".join(row["postprocess"]) or "none"
        lines.append(f"| {sizes} | {cost:.2f} | {row['validation']:.3f} | "
                     f"{row['threshold']}, {steps} | {row['test']:.3f} |")
    p = result["paired"]
    d = p["delta"]
    lines += ["", f"Best on validation: {' + '.join(map(str, result['best']))}; paired on the test "
              f"fold against {' + '.join(map(str, result['trained']))} alone: {d['mean']:+.3f} "
              f"(bootstrap 95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}; Wilcoxon p = "
              f"{p['wilcoxon_p']:.2f}).", "",
              f"CPU: {result['cpu']}. Wall time {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a fold run of benchmarks/busi.py (its fold.json)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench-out/multiscale"))
    parser.add_argument("--name", default="multiscale")
    parser.add_argument("--limit", type=int,
                        help="at most this many images of each split (a quick check)")
    args = parser.parse_args(argv)
    if busi_missing(args.data, "multiscale.py"):
        return 2
    from bcseg.infer.segment import load_models

    start = time.perf_counter()
    split = json.loads((args.run / "fold.json").read_text(encoding="utf-8"))
    model, settings = load_models(args.run)
    validation = load_fold(args.data, split["fold"], args.limit, list(split["validation"]))
    test = load_fold(args.data, split["fold"], args.limit)
    every = [input_size(settings.input_size, f) for f in FACTORS]
    p_val = probabilities(model, settings, validation, every)
    p_test = probabilities(model, settings, test, every)
    rows = []
    for factors in COMBINATIONS:
        sizes = [input_size(settings.input_size, f) for f in factors]
        threshold, steps, val_dice = choose(validation, p_val, sizes, settings)
        scores = per_image_dice(test, p_test, sizes, threshold, steps)
        rows.append({"sizes": list(sizes), "threshold": threshold, "postprocess": list(steps),
                     "validation": val_dice, "test": float(np.mean(list(scores.values()))),
                     "per_image": scores})
    trained = rows[0]  # COMBINATIONS starts with the trained size alone
    best = max(rows, key=lambda r: r["validation"])  # first of equals: the trained size wins ties
    result = {"run": str(args.run), "fold": split["fold"], "n_validation": len(validation),
              "n_test": len(test), "rows": rows, "trained": trained["sizes"], "best": best["sizes"],
              "paired": compare(trained["per_image"], best["per_image"]), "cpu": cpu_flags(),
              "seconds": time.perf_counter() - start}
    write_results(args.out, args.name, result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
