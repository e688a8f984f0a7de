"""How hard each phantom difficulty is for intensity alone, beside the observers' agreement.

For each specimen, the best global threshold of the smoothed ultrasound inside the
tissue (an oracle: percentiles 5-95 tried, the one with the best Dice against the
truth kept, largest component only) against the inter-observer Dice. A phantom on
which this oracle reaches the observers' agreement proves little about a model.

Example (about 2 minutes on 2 loaded cores)::

    .venv/bin/python benchmarks/phantom_difficulty.py --n 6 --seed 100
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from bcseg.data.phantom import DIFFICULTIES, make_specimen


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def oracle_threshold_dice(image: np.ndarray, tissue: np.ndarray, tumour: np.ndarray) -> float:
    """Best Dice of ``image < threshold`` (largest component) inside the tissue."""
    smooth = ndimage.gaussian_filter(image.astype(float), (0, 2, 2))
    inner = ndimage.binary_erosion(tissue, iterations=3)
    best = 0.0
    for percentile in np.linspace(5, 95, 19):
        found = (smooth < np.percentile(smooth[tissue], percentile)) & inner
        labels, count = ndimage.label(found)
        if count:
            found = labels == 1 + np.argmax(ndimage.sum_labels(found, labels, range(1, count + 1)))
        best = max(best, dice(found, tumour))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 128, 128])
    args = parser.parse_args()
    print("| difficulty | oracle threshold Dice, mean (range) | inter-observer Dice |")
    print("|---|---|---|")
    for difficulty in DIFFICULTIES:
        oracle, observers = [], []
        for k in range(args.n):
            specimen = make_specimen(tuple(args.shape), seed=args.seed + k, difficulty=difficulty)
            oracle.append(oracle_threshold_dice(specimen["image"], specimen["tissue"], specimen["tumour"]))
            observers.append(dice(specimen["observer1"], specimen["observer2"]))
        print(f"| {difficulty} | {np.mean(oracle):.2f} ({min(oracle):.2f}-{max(oracle):.2f}) "
              f"| {np.mean(observers):.2f} |")


if __name__ == "__main__":
    main()
