"""Do two members of a seed ensemble agree less on normal images than on lesions?

If the members of an ensemble marked different places in a normal image and the same
lesion in a lesion image, their agreement would tell the ensemble when to leave an
image empty, with no training on normal images. For every image this segments with
each member (its own threshold, no post-processing) and scores their agreement (the
Dice between the two members' masks; 1 when both are empty), beside the ensemble's
mean probability inside its mask. A cut-off is chosen where it drops at most 0, 1, 2
or 5% of the validation lesions, on the training folds' normal images (which a
lesion-only run never trained on), and reported on the test fold: the lesion Dice
(an emptied lesion scores 0) and the share of its normal images left empty.

Example (the members of ``benchmarks/seed_ensemble.py``, and the ensemble it wrote)::

    .venv/bin/python benchmarks/member_agreement.py bench-out/r7/fold_0 bench-out/r7s1/fold_0 \\
        --ensemble bench-out/seed-ens-r7/ensemble --out bench-out/agreement
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_flags, read_fold_run, write_results  # noqa: E402

DROPPED = (0.0, 0.01, 0.02, 0.05)  # share of the validation lesions a cut-off may drop
FEATURES = ("members' agreement", "mean probability in the mask")


def image_scores(members, ensemble, case) -> dict:
    """The two features, the ensemble's Dice (None for a normal image) and whether its
    mask is empty, for one image."""
    from bcseg.data.cases import read_case_masks
    from bcseg.infer.segment import segment_case
    from bcseg.measure.metrics import dice

    masks = [np.asarray(segment_case(m, case, s.replace(postprocess=()), keep_prob=False)[2]) > 0
             for m, s in members]
    _, _, mask, prob = segment_case(ensemble[0], case, ensemble[1])
    mask, prob = np.asarray(mask) > 0, np.asarray(prob)
    truth = None
    if case.label_class != "normal":
        truth = np.logical_or.reduce(list(read_case_masks(case, mask.shape).values()))
    both_empty = not masks[0].any() and not masks[1].any()
    return {FEATURES[0]: 1.0 if both_empty else float(dice(masks[0], masks[1])),
            FEATURES[1]: float(prob[mask].mean()) if mask.any() else 0.0,
            "dice": None if truth is None else float(dice(mask, truth)), "empty": not mask.any()}


def auc(high: list[float], low: list[float]) -> float:
    """The chance that a lesion image's value exceeds a normal image's (ties count half)."""
    a, b = np.asarray(high)[:, None], np.asarray(low)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("members", type=Path, nargs=2, help="two fold runs of one split")
    parser.add_argument("--ensemble", type=Path, required=True, help="their ensemble folder")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "busi")
    parser.add_argument("--out", type=Path, default=Path("bench-out/agreement"))
    args = parser.parse_args(argv)
    by_id, folds, split = read_fold_run(args.members[0], args.data)
    from bcseg.infer.segment import load_models

    fold = split["fold"]
    normal = [c for c in by_id.values() if c.label_class == "normal"]
    groups = {"validation lesions": [by_id[i] for i in split["validation"]],
              "test lesions": [by_id[i] for i in split["test"]],
              "training-fold normals": [c for c in normal if folds[c.id] != fold and c.id not in split["train"]],
              "test normals": [c for c in normal if folds[c.id] == fold]}
    members = [load_models(run) for run in args.members]
    ensemble = load_models(args.ensemble)
    scores = {name: [image_scores(members, ensemble, c) for c in group] for name, group in groups.items()}
    base = float(np.mean([s["dice"] for s in scores["test lesions"]]))
    results = {"members": [str(r) for r in args.members], "ensemble": str(args.ensemble), "fold": fold,
               "n": {k: len(v) for k, v in scores.items()}, "test_lesion_dice": base,
               "test_normals_empty": float(np.mean([s["empty"] for s in scores["test normals"]])),
               "cpu": cpu_flags(), "features": {}}
    lines = ["| feature | AUC, validation lesions against training-fold normals | validation lesions dropped "
             "| cut-off | training-fold normals left empty | test lesion Dice (change) | test normals left empty |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for feature in FEATURES:
        lesions = [s[feature] for s in scores["validation lesions"]]
        found = {"auc": auc(lesions, [s[feature] for s in scores["training-fold normals"]]), "cuts": []}
        for share in DROPPED:  # an image whose value falls below the cut-off is left empty
            cut = float(np.quantile(lesions, share)) if share else min(lesions)
            kept = [s["dice"] if s[feature] >= cut else 0.0 for s in scores["test lesions"]]
            row = {"dropped": share, "cut": cut,
                   "tuning_normals_empty": float(np.mean([s["empty"] or s[feature] < cut
                                                          for s in scores["training-fold normals"]])),
                   "test_lesion_dice": float(np.mean(kept)),
                   "test_normals_empty": float(np.mean([s["empty"] or s[feature] < cut
                                                        for s in scores["test normals"]]))}
            found["cuts"].append(row)
            lines.append(f"| {feature} | {found['auc']:.3f} | {100 * share:.0f}% | {cut:.3f} | "
                         f"{100 * row['tuning_normals_empty']:.0f}% | {row['test_lesion_dice']:.3f} "
                         f"({row['test_lesion_dice'] - base:+.3f}) | {100 * row['test_normals_empty']:.0f}% |")
        results["features"][feature] = found
    lines += ["", f"Members {', '.join(map(str, args.members))}; ensemble {args.ensemble} (fold {fold}): "
              f"test lesion Dice {base:.3f}, test normals left empty "
              f"{100 * results['test_normals_empty']:.0f}% without a cut-off. Images: "
              + ", ".join(f"{k} {v}" for k, v in results["n"].items()) + f". CPU: {cpu_flags()}."]
    write_results(args.out, f"member_agreement_fold{fold}", results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
