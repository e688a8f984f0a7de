"""What the presence gate learnt: its value on a fold's test lesions and normal images.

A run trained with ``model.presence_gate = true`` (e.g. ``busi.py --config
benchmarks/configs/r7g.toml --normals``) multiplies its mask by one number per image.
This script reads that number for every lesion and normal image of the run's test fold,
through the run's own inference path (its input size and intensity handling; no TTA),
and reports its spread per class, how well it separates normals from lesions (the AUC:
the chance that a random lesion image gets a higher value than a random normal one),
and the share of each class below a few cut-offs.

Example::

    .venv/bin/python benchmarks/presence_gate.py bench-out/r7g/fold_0 --out bench-out/presence-gate
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_flags, fold_run_parser, read_fold_run, write_results  # noqa: E402

CUTS = (0.1, 0.3, 0.5, 0.7, 0.9)


def gate_model(model):
    """``model`` with its output replaced by the presence, spread over the mask's shape,
    so that the ordinary inference path (resizing, padding, intensity) computes it."""
    import keras

    mask, presence = model.get_layer("mask").output, model.get_layer("presence_broadcast").output
    spread = keras.layers.Lambda(lambda t: keras.ops.ones_like(t[0]) * t[1])([mask, presence])
    return keras.Model(model.inputs[0], spread)


def auc(positives, negatives) -> float:
    """Mann-Whitney AUC: P(a positive scores above a negative), ties counting half."""
    p, n = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def main(argv=None) -> int:
    args = fold_run_parser(__doc__, "bench-out/presence-gate").parse_args(argv)
    by_id, folds, split = read_fold_run(args.run, args.data)
    from bcseg.infer.segment import load_models, segment_case

    cases, fold = list(by_id.values()), split["fold"]
    models, settings = load_models(args.run)
    probe = [gate_model(m) for m in models]
    plain = settings.replace(tta=False, postprocess=())
    groups = {"lesions": [by_id[i] for i in split["test"] if by_id[i].label_class != "normal"],
              "normals": [c for c in cases if c.label_class == "normal" and folds[c.id] == fold]}
    values = {name: [float(np.max(segment_case(probe, case, plain)[3])) for case in group]
              for name, group in groups.items()}
    result = {"run": str(args.run), "fold": fold, "cpu": cpu_flags(),
              "auc": auc(values["lesions"], values["normals"]), "values": values,
              "below": {name: {str(c): float(np.mean(np.asarray(v) < c)) for c in CUTS}
                        for name, v in values.items()}}
    lines = ["| images | n | median | 10th-90th percentile | " + " | ".join(f"< {c:g}" for c in CUTS) + " |",
             "|---|---:|---:|---|" + "---:|" * len(CUTS)]
    for name, v in values.items():
        q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
        lines.append(f"| {name} (test fold {fold}) | {len(v)} | {q50:.3f} | {q10:.3f}-{q90:.3f} | "
                     + " | ".join(f"{100 * result['below'][name][str(c)]:.0f}%" for c in CUTS) + " |")
    lines += ["", f"AUC (lesion images above normal ones): {result['auc']:.3f}. Run `{args.run}`, "
              f"gate read at the run's input size, no TTA. CPU: {cpu_flags()}."]
    write_results(args.out, f"presence_gate_fold{fold}", result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
