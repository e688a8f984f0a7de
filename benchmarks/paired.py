"""Is model B better than model A on the same images? A paired comparison of two evaluations.

Two runs scored on the same test images (each folder's ``metrics.csv``, written by
``bcseg evaluate`` or by ``bcseg train`` on its held-out cases) are paired by case id.
The per-image differences ``B - A`` are summarised with the same bootstrap as every
other bcseg figure (:func:`bcseg.measure.metrics.summarise`: mean, percentile CI of
the mean, resampling images), next to a Wilcoxon signed-rank test and the count of
images each model wins. Pairing removes the images' own difficulty from the
comparison, so it resolves differences that two separate CIs hide.

An ensemble scored by ``seed_ensemble.py`` or ``ensemble.py`` is read from their
``results.json`` (its Dice per image), so that a model can be paired with an ensemble
(a distilled student with its teacher).

Images present in only one file are left out and counted; so are images where either
score is not finite (HD95 of an empty mask). Case-level rows only (2D images, or whole
3D stacks); the per-slice rows are not independent and are ignored.

Example (the r7 fold-0 model against the r7 + gate model on the same 130 lesions)::

    .venv/bin/python benchmarks/paired.py bench-out/r7/fold_0 bench-out/r7g/fold_0

    A bench-out/r7/fold_0      Dice 0.774 over 130 paired images
    B bench-out/r7g/fold_0     Dice 0.739
    B - A: -0.035 (95% CI -0.070 to -0.003; 10000 resamples, seed 0)
    ...
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.csv"
RESULTS_FILE = "results.json"  # seed_ensemble.py and ensemble.py: the ensemble per image

# Which way each metrics.csv score is better. "B better on N images" counted a larger
# value as better whatever the column, so with --metric hd95 every image where B's
# boundary was further off was a win for B. A column that is no score (a volume, the
# signed volume difference, the unit, the empty flags) has no better side to count.
HIGHER_IS_BETTER = {"dice": True, "iou": True, "precision": True, "recall": True,
                    "specificity": True, "hd95": False, "assd": False, "abs_volume_diff": False}
# Scores with a unit: an evaluation in mm paired with one in voxels (images without
# spacing) gave differences of no unit at all, printed as if they were one.
DISTANCES = ("hd95", "assd", "abs_volume_diff")


def read_scores(path: Path, metric: str, reference: str | None) -> dict[str, float]:
    """One score per case from a ``metrics.csv`` (or a folder holding one).

    ``reference`` picks the observer column value when a file scores several (two
    observers and their consensus); by default the file must hold exactly one.
    """
    if metric not in HIGHER_IS_BETTER:
        raise SystemExit(f"paired.py: --metric {metric}: is no score with a better side; "
                         f"choose one of {', '.join(HIGHER_IS_BETTER)}")
    path = scores_file(path)
    if path.name == RESULTS_FILE:
        return _ensemble_scores(path, metric)
    return {r["case"]: float(r[metric]) for r in _case_rows(path, metric, reference)}


def read_unit(path: Path, metric: str, reference: str | None) -> str | None:
    """The one unit (``mm``, ``voxel``) of a distance or volume metric's rows; None for a
    metric of no unit (Dice, ...) or an ensemble's results.json (Dice only)."""
    path = scores_file(path)
    if metric not in DISTANCES or path.name == RESULTS_FILE:
        return None
    units = sorted({r.get("unit", "") for r in _case_rows(path, metric, reference)})
    if len(units) != 1:
        raise SystemExit(f"paired.py: {path}: its {metric} is in {' and '.join(units)} by case; "
                         "differences of two units mean nothing")
    return units[0]


def _case_rows(path: Path, metric: str, reference: str | None) -> list[dict]:
    """The case rows of a ``metrics.csv`` against one reference."""
    if not path.is_file():
        raise SystemExit(f"paired.py: {path}: no such metrics file")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if not r.get("slice")]
    if not rows or metric not in rows[0]:
        raise SystemExit(f"paired.py: {path}: no case rows with a {metric!r} column")
    references = sorted({r["reference"] for r in rows})
    if reference is None:
        if len(references) > 1:
            raise SystemExit(f"paired.py: {path}: scores against {', '.join(references)}; "
                             f"choose one with --reference")
        reference = references[0]
    chosen = [r for r in rows if r["reference"] == reference]
    if not chosen:
        raise SystemExit(f"paired.py: {path}: no rows against reference {reference!r}")
    return chosen


def scores_file(path: Path) -> Path:
    """The file :func:`read_scores` reads for ``path``: a metrics.csv, or a results.json."""
    path = Path(path)
    if path.is_dir() and not (path / METRICS_FILE).is_file() and (path / RESULTS_FILE).is_file():
        return path / RESULTS_FILE
    return path / METRICS_FILE if path.is_dir() else path


def _ensemble_scores(path: Path, metric: str) -> dict[str, float]:
    """The ensemble's Dice per image from a ``results.json`` of ``seed_ensemble.py`` or
    ``ensemble.py``, which score the ensemble without writing a ``metrics.csv``."""
    if metric != "dice":
        raise SystemExit(f"paired.py: {path}: an ensemble's results hold Dice per image only")
    models = json.loads(path.read_text(encoding="utf-8")).get("models", {})
    if "per_image" not in models.get("ensemble", {}):
        raise SystemExit(f"paired.py: {path}: no ensemble scored per image here")
    return {case: float(d) for case, d in models["ensemble"]["per_image"].items()}


def compare(a: dict[str, float], b: dict[str, float], n_boot: int = 10_000, seed: int = 0,
            higher_is_better: bool = True) -> dict:
    """Summary of the paired differences ``b - a`` over the cases both score finitely.

    ``higher_is_better`` says which sign of ``b - a`` is a win for B (False for HD95)."""
    from scipy.stats import wilcoxon

    from bcseg.measure.metrics import summarise

    common = sorted(set(a) & set(b))
    x = np.array([a[c] for c in common], dtype=float)
    y = np.array([b[c] for c in common], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    delta = y - x
    gain = delta if higher_is_better else -delta  # > 0 where B is better
    out = {"n_paired": int(keep.sum()), "n_only_a": len(set(a) - set(b)),
           "n_only_b": len(set(b) - set(a)), "n_not_finite": int((~keep).sum()),
           "mean_a": float(x.mean()) if x.size else float("nan"),
           "mean_b": float(y.mean()) if y.size else float("nan"),
           "delta": summarise(delta, n_boot=n_boot, seed=seed),
           "b_better": int((gain > 0).sum()), "a_better": int((gain < 0).sum()),
           "ties": int((delta == 0).sum()), "n_boot": n_boot, "seed": seed,
           "wilcoxon_p": float("nan")}
    if np.count_nonzero(delta) >= 1:
        out["wilcoxon_p"] = float(wilcoxon(delta, zero_method="wilcox").pvalue)
    return out


def text(result: dict, name_a: str, name_b: str, metric: str) -> str:
    d = result["delta"]
    width = max(len(name_a), len(name_b))
    # summarise gives no CI of fewer than 5 pairs (NaN, with its ci_note), and a signed-rank
    # test of differences that are all 0 has no ranks: say so, rather than print "nan".
    ci = (f"no CI: {d['ci_note']}" if d.get("ci_note")
          else f"95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}; "
          f"{result['n_boot']} resamples, seed {result['seed']}")
    test = ("no Wilcoxon signed-rank test: every pair is tied" if result["b_better"] + result["a_better"] == 0
            else f"Wilcoxon signed-rank p = {result['wilcoxon_p']:.3g}")
    lines = [f"A {name_a:<{width}}  {metric} {result['mean_a']:.3f} over {result['n_paired']} paired images",
             f"B {name_b:<{width}}  {metric} {result['mean_b']:.3f}",
             f"B - A: {d['mean']:+.3f} ({ci}); {test}",
             f"B better on {result['b_better']} images, A on {result['a_better']}, "
             f"{result['ties']} ties"]
    left = {"only in A": result["n_only_a"], "only in B": result["n_only_b"],
            "not finite in either": result["n_not_finite"]}
    if any(left.values()):
        lines.append("left out: " + ", ".join(f"{n} {why}" for why, n in left.items() if n))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="run folder or metrics.csv of model A (the baseline), or an "
                        "ensemble's results.json (or its folder) from seed_ensemble.py/ensemble.py")
    parser.add_argument("b", help="the same for model B")
    parser.add_argument("--metric", default="dice", help="metrics.csv score: "
                        + ", ".join(HIGHER_IS_BETTER) + " (default: dice)")
    parser.add_argument("--reference", help="observer to pair against, where a file scores several")
    parser.add_argument("--boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args(argv)

    if args.json:
        # --json a/metrics.csv wrote the result over the evaluation it had just read, and a
        # folder failed with IsADirectoryError after the comparison was printed.
        target = Path(args.json)
        if target.is_dir():
            raise SystemExit(f"paired.py: {target}: is a folder; give --json a file name")
        for given in (args.a, args.b):
            source = scores_file(Path(given))
            if target.exists() and source.exists() and target.samefile(source):
                raise SystemExit(f"paired.py: {target}: is an input of this comparison; "
                                 f"give --json another file")
    a = read_scores(Path(args.a), args.metric, args.reference)
    b = read_scores(Path(args.b), args.metric, args.reference)
    units = [read_unit(Path(given), args.metric, args.reference) for given in (args.a, args.b)]
    if units[0] != units[1]:
        raise SystemExit(f"paired.py: {args.metric} of {args.a} is in {units[0]}, of {args.b} in "
                         f"{units[1]}: differences of two units mean nothing")
    result = compare(a, b, n_boot=args.boot, seed=args.seed,
                     higher_is_better=HIGHER_IS_BETTER[args.metric])
    if result["n_paired"] == 0:
        print(f"paired.py: {args.a} and {args.b} share no case with finite scores", file=sys.stderr)
        return 2
    print(text(result, args.a, args.b, args.metric))
    if args.json:
        result.update(a=args.a, b=args.b, metric=args.metric)
        # NaN (no CI, no test) as null: a bare NaN is not JSON, and strict readers refuse it
        safe = json.loads(json.dumps(result), parse_constant=lambda name: None)
        from bcseg.atomic import write_text  # never a truncated file on a full disk or Ctrl-C

        write_text(args.json, json.dumps(safe, indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
