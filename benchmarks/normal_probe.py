"""How well do a BUSI model's own features tell normal images from lesion images?

A linear probe: the mean and maximum of the bottleneck's features (what a presence
gate or an image-level head on the network would see) for every BUSI image, at the
run's training size; a class-balanced, L2-regularised logistic regression fitted on
the training folds' lesion and normal images and scored on the run's test fold. The
cut-off is chosen out of fold on the training folds (the share of their lesions it
may drop); reported on the test fold: its AUC, lesions dropped and normals left empty.

The issue's target for normals (>= 90% empty, lesion Dice within 0.01) needs far
better separation than a lesion-only model's features give; this measures by how much.

Example (a fold model of the 5-fold run; about a minute on a CPU)::

    .venv/bin/python benchmarks/normal_probe.py bench-out/r7/fold_0 --out bench-out/normal-probe
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_flags, fold_run_parser, read_fold_run, write_results  # noqa: E402

DROPPED = (0.01, 0.02, 0.05)  # share of the training folds' lesions the cut-off may drop
STRENGTHS = (1.0, 10.0, 100.0)  # L2 penalty of the probe


def pooled_features(run: Path, cases: list, size: int) -> np.ndarray:
    """(images, 2 x bottleneck width): mean and maximum of the bottleneck per image."""
    import keras

    from bcseg.learn.pipeline import slice_samples
    from bcseg.learn.saved import load_model

    samples = slice_samples(cases, "reference", size=size)  # one sample per 2D image
    model = load_model(run / "model_best.keras")
    names = {layer.name for layer in model.layers}
    bottleneck = model.get_layer("bottleneck_dropout" if "bottleneck_dropout" in names
                                 else "bottleneck_relu2").output
    probe = keras.Model(model.inputs[0], keras.layers.Concatenate()([
        keras.layers.GlobalAveragePooling2D()(bottleneck), keras.layers.GlobalMaxPooling2D()(bottleneck)]))
    return np.concatenate([np.asarray(probe(samples.images[i:i + 32][..., None]))
                           for i in range(0, len(samples.images), 32)])


def fit_probe(x: np.ndarray, y: np.ndarray, strength: float, steps: int = 3000, rate: float = 0.1):
    """Class-balanced logistic regression by gradient descent on standardised features."""
    mean, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / sd
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        error = weight * (1 / (1 + np.exp(-(z @ w + b))) - y)
        w -= rate * (z.T @ error + strength * w) / len(y)
        b -= rate * error.mean()
    return lambda new: 1 / (1 + np.exp(-(((new - mean) / sd) @ w + b)))


def auc(positives, negatives) -> float:
    p, n = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def main(argv=None) -> int:
    args = fold_run_parser(__doc__, "bench-out/normal-probe").parse_args(argv)
    by_id, folds, split = read_fold_run(args.run, args.data)
    from bcseg.config import load_config

    cases, fold = list(by_id.values()), split["fold"]
    size = load_config(args.run / "config.toml")["data"]["size"]
    x = pooled_features(args.run, cases, size)
    y = np.array([c.label_class != "normal" for c in cases], float)
    fold_of = np.array([folds[c.id] for c in cases])
    test, training = fold_of == fold, fold_of != fold
    rows = []
    for strength in STRENGTHS:
        out_of_fold = np.zeros(len(y))
        for other in sorted(set(fold_of[training])):
            inner = training & (fold_of != other)
            out_of_fold[fold_of == other] = fit_probe(x[inner], y[inner], strength)(x[fold_of == other])
        scores = fit_probe(x[training], y[training], strength)(x[test])
        lesions, normals = scores[y[test] == 1], scores[y[test] == 0]
        row = {"strength": strength, "test_auc": auc(lesions, normals),
               "out_of_fold_auc": auc(out_of_fold[training & (y == 1)], out_of_fold[training & (y == 0)]),
               "cuts": []}
        for share in DROPPED:
            cut = float(np.quantile(out_of_fold[training & (y == 1)], share))
            row["cuts"].append({"training_lesions_dropped": share, "cut": cut,
                                "test_lesions_dropped": float(np.mean(lesions < cut)),
                                "test_normals_empty": float(np.mean(normals < cut))})
        rows.append(row)
    lines = ["| L2 strength | test AUC | cut-off dropping 1% / 2% / 5% of training lesions: "
             "test lesions dropped | test normals left empty |", "|---:|---:|---|---|"]
    for row in rows:
        dropped = " / ".join(f"{100 * c['test_lesions_dropped']:.1f}%" for c in row["cuts"])
        empty = " / ".join(f"{100 * c['test_normals_empty']:.0f}%" for c in row["cuts"])
        lines.append(f"| {row['strength']:g} | {row['test_auc']:.3f} | {dropped} | {empty} |")
    lines += ["", f"Run `{args.run}` (test fold {fold}: {int(y[test].sum())} lesion and "
              f"{int((1 - y[test]).sum())} normal images); features at {size} px. CPU: {cpu_flags()}."]
    write_results(args.out, f"normal_probe_fold{fold}", {"run": str(args.run), "fold": fold,
                                                         "cpu": cpu_flags(), "rows": rows},
                  "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
