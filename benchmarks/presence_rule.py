"""Can a presence rule teach a lesion-only BUSI model to leave normal images empty?

A model trained on lesion images only marks something in almost every normal image.
The cheapest fix would need no training: keep a predicted component only if its
highest probability reaches ``p`` (a confident core), and choose ``p`` where the
lesion Dice on validation holds. This script measures whether that can work on one
BUSI fold model of ``benchmarks/busi.py``: for every image it thresholds the
probability as the run does, finds the components and their peak probabilities,
and for each ``p`` of a grid keeps the components whose peak reaches it, then
applies the run's post-processing. Reported per ``p``: lesion Dice per image on the
run's validation split and its test fold, and the share of normal images left
empty, among the normals of the training folds that the model did not train on
(where ``p`` would be tuned: all of them for a lesion-only run, the validation split's
for a run of ``busi.py --normals``) and of the test fold.

Example::

    .venv/bin/python benchmarks/presence_rule.py bench-out/busi-cv/fold_0 --out bench-out/presence
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_flags, fold_run_parser, read_fold_run, write_results  # noqa: E402

GRID = (0.0, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


def score_image(models, settings, case) -> tuple[list[float | None], list[bool]]:
    """Dice (None for a normal image) and emptiness of one image, per ``p`` of GRID."""
    from scipy import ndimage as ndi

    from bcseg.infer.segment import segment_case
    from bcseg.data.cases import read_case_masks
    from bcseg.infer.postprocess import postprocess
    from bcseg.measure.metrics import dice

    _, _, mask, prob = segment_case(models, case, settings.replace(postprocess=()))
    labels, count = ndi.label(np.asarray(mask) > 0)
    peaks = np.asarray(ndi.maximum(np.asarray(prob), labels, range(1, count + 1))) if count else np.zeros(0)
    truth = None
    if case.label_class != "normal":
        truth = np.logical_or.reduce(list(read_case_masks(case, labels.shape).values()))
    dices, empty = [], []
    for p in GRID:
        kept = np.concatenate([[False], peaks >= p])[labels]
        if kept.any():
            kept = postprocess(kept, settings.postprocess, settings.min_size)
        dices.append(None if truth is None else dice(kept, truth))
        empty.append(not kept.any())
    return dices, empty


def main(argv=None) -> int:
    args = fold_run_parser(__doc__, "bench-out/presence").parse_args(argv)
    by_id, folds, split = read_fold_run(args.run, args.data)
    from bcseg.infer.segment import load_models

    cases, fold = list(by_id.values()), split["fold"]
    normal = [c for c in cases if c.label_class == "normal"]
    trained = set(split["train"])
    # A run of busi.py --normals trained on most training-fold normals: only those it did
    # not see (its validation split's) may tune p, or the rule is graded on training data.
    groups = {"lesions, validation": [by_id[i] for i in split["validation"]
                                      if by_id[i].label_class != "normal"],
              "lesions, test fold": [by_id[i] for i in split["test"]],
              "normals, training folds, unseen": [c for c in normal
                                                  if folds[c.id] != fold and c.id not in trained],
              "normals, test fold": [c for c in normal if folds[c.id] == fold]}
    models, settings = load_models(args.run)
    results = {"run": str(args.run), "fold": fold, "grid": GRID, "threshold": settings.threshold,
               "postprocess": list(settings.postprocess), "cpu": cpu_flags(), "rows": {}}
    for name, group in groups.items():
        scored = [score_image(models, settings, case) for case in group]
        if name.startswith("lesions"):
            row = [float(np.mean([d[i] for d, _ in scored])) for i in range(len(GRID))]
        else:
            row = [float(np.mean([e[i] for _, e in scored])) for i in range(len(GRID))]
        results["rows"][name] = {"n": len(group), "values": row}
    lines = ["| p (minimum peak) | " + " | ".join(f"{n} (n={r['n']})" for n, r in results["rows"].items()) + " |",
             "|---:|" + "---:|" * len(groups)]
    for i, p in enumerate(GRID):
        cells = [f"{r['values'][i]:.3f}" if n.startswith("lesions") else f"{100 * r['values'][i]:.0f}%"
                 for n, r in results["rows"].items()]
        lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    lines += ["", f"Run `{args.run}` (fold {fold}), threshold {settings.threshold:g}, post-processing "
              f"{list(settings.postprocess) or 'none'}. Lesion columns: Dice per image; normal "
              f"columns: share left empty. CPU: {cpu_flags()}."]
    write_results(args.out, f"presence_rule_fold{fold}", results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
