"""Observers: consensus masks and inter-observer agreement.

Each case was delineated by two (or more) observers. Their agreement is the
human ceiling that model results are shown against, and a consensus of their
masks (one observer, union, intersection or STAPLE) can serve as the reference.
Pure NumPy + SimpleITK: this module never imports TensorFlow.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping

import numpy as np

from bcseg.data.consensus import METHODS, consensus, intersection, staple, union  # noqa: F401
from bcseg.measure.metrics import CI_TOO_FEW, MIN_CI_CASES, case_metrics

__all__ = ["union", "intersection", "staple", "consensus", "agreement", "mean_over_pairs",
           "paired_comparison", "METHODS", "MARGINS", "INTER_OBSERVER"]

INTER_OBSERVER = "inter-observer"
"""The name of the observers' agreement with each other among the references of an evaluation."""


def agreement(masks: Mapping[str, np.ndarray], spacing_mm=None) -> list[dict]:
    """Inter-observer agreement: :func:`bcseg.measure.metrics.case_metrics` for every pair.

    Pairs follow the order of ``masks``; in each row ``observer_a`` plays the
    prediction and ``observer_b`` the reference, which matters only for
    precision, recall, specificity and the signed relative volume difference.

    Parameters
    ----------
    masks : dict of str to array_like
        Observer name to mask, all of one shape.
    spacing_mm : tuple of float, optional
        One voxel size per axis; None gives voxel units.

    Returns
    -------
    list of dict
        One row per pair: ``observer_a``, ``observer_b`` and the metrics.
        Empty when there are fewer than two observers.
    """
    return [
        {"observer_a": a, "observer_b": b, **case_metrics(masks[a], masks[b], spacing_mm)}
        for a, b in itertools.combinations(masks, 2)
    ]


def mean_over_pairs(values) -> float:
    """One case's agreement from its observer pairs' values: their mean, leaving out pairs
    where both masks are empty (NaN, undefined), so that a case where one observer saw a
    tumour and the others none stays inf (NaN + inf is NaN, which would count that
    disagreement as undefined). NaN when no pair is defined."""
    defined = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


# ------------------------------------------------------------------ human-level test

MARGINS = {"dice": 0.05, "hd95": 1.0}
"""Non-inferiority margins of :func:`paired_comparison`: Dice 0.05, HD95 1 mm."""
HIGHER_IS_BETTER = {"dice": True, "hd95": False}
Z95 = 1.959964
# Paired differences carry rounding: 0.80 - 0.85 is -0.04999999999999993, 1.4 - 0.4 is
# 0.9999999999999999. A bound this close to the margin lies on it, and clears nothing.
MARGIN_ROUNDING = 1e-9


def _needed_cases(mean: float, sd: float, margin: float, higher: bool) -> int | None:
    """Specimens needed for a 95% CI of the mean difference to clear ``margin``.

    Normal approximation with the observed SD: ``n = (z·sd / distance)²``, where
    ``distance`` is how far the mean difference lies on the good side of the margin.
    None when the mean is not on the good side, or the SD is unknown.
    """
    distance = (mean + margin) if higher else (margin - mean)
    if not (math.isfinite(sd) and math.isfinite(distance)) or distance <= MARGIN_ROUNDING:
        return None
    return max(MIN_CI_CASES, math.ceil((Z95 * sd / distance) ** 2))


def _signed(value: float) -> str:
    """``+0.012``; a mean of exactly 0 that rounding left at -0.0 reads ``+0.000``."""
    return f"{round(value, 3) + 0.0:+.3f}"


def _verdict_text(delta: dict, verdict: str, names: tuple[str, str], metric: str, unit: str,
                  margin: float, needed: int | None, left_out: int) -> str:
    reference, other = names
    label = "Dice" if metric == "dice" else "HD95"
    ci = (f", no CI: {CI_TOO_FEW}" if not math.isfinite(delta["ci_low"])
          else f" [{_signed(delta['ci_low'])}, {_signed(delta['ci_high'])}]")
    if math.isfinite(delta["mean"]):
        stat = f"Δ {label} = {_signed(delta['mean'])}{' ' + unit if unit else ''}{ci}, n = {delta['n_finite']}"
    else:  # no specimen with a finite pair: there is no difference to show (it read "+nan")
        stat = f"no Δ {label}, n = 0"
    if left_out:  # a model that found no tumour anywhere must not read as "n = 0" alone
        stat += f", {left_out} left out where a mask is empty"
    if verdict == "as_well":
        return f"agrees with {reference} as well as {other} does ({stat})"
    if verdict == "below":
        return f"below: agrees with {reference} less well than {other} does ({stat})"
    wanted = (f"about {needed} specimens would be needed for the CI to exclude a margin of "
              f"{margin:g}{' ' + unit if unit else ''}" if needed
              else f"no number of specimens would let the CI exclude a margin of {margin:g}"
              f"{' ' + unit if unit else ''} at this mean difference" if math.isfinite(delta["sd"])
              else "too few to estimate how many would be needed")
    return (f"too few specimens to tell whether it agrees with {reference} as well as {other} "
            f"does ({stat}); {wanted}")


def _verdict(delta: dict, margin: float, higher: bool) -> str:
    """"as_well", "below" or "too_few": where the CI of Δ lies against the margin."""
    low, high = delta["ci_low"], delta["ci_high"]
    enough = delta["n_finite"] >= MIN_CI_CASES and math.isfinite(low)
    tol = MARGIN_ROUNDING
    good = (low > -margin + tol) if higher else (high < margin - tol)
    bad = (high < -margin - tol) if higher else (low > margin + tol)
    return "as_well" if enough and good else "below" if enough and bad else "too_few"


def paired_comparison(model_scores, human_scores, metric: str = "dice", names=("A", "B"),
                      unit: str = "", margin: float | None = None, n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """Does the model agree with observer A as well as observer B does?

    For every specimen, ``model_scores[i]`` is the metric of the model against A and
    ``human_scores[i]`` that of B against A. The paired differences
    ``Δ = model − human`` are summarised over specimens (mean, bootstrap CI of the
    mean) and read as a non-inferiority test with ``margin``:

    - "as_well": the CI lies on the good side of ``−margin`` (Dice) or ``+margin``
      (HD95, lower is better);
    - "below": the CI lies wholly beyond the margin on the bad side;
    - "too_few": anything else, including fewer than 5 specimens with a finite
      difference, with the number of specimens the CI would need to clear the margin.

    Parameters
    ----------
    model_scores, human_scores : sequence of float
        One value per specimen, paired. Pairs where either is NaN or inf (an empty
        mask) are left out and counted (``n_left_out``).
    metric : {"dice", "hd95"}
    names : (str, str)
        The reference observer A and the other observer B, for the text.
    unit : str
        Unit of the metric ("mm" for HD95 with spacing).
    margin : float, optional
        Defaults to :data:`MARGINS` (0.05 Dice, 1 mm HD95).
    n_boot, seed : int
        Bootstrap settings of :func:`bcseg.measure.metrics.summarise`.

    Returns
    -------
    dict
        ``metric, reference, other, unit, margin, n, n_left_out, model_mean,
        human_mean, delta`` (the :func:`~bcseg.measure.metrics.summarise` dict of Δ),
        ``verdict``, ``needed_n`` and ``text``.
    """
    from bcseg.measure.metrics import summarise

    if metric not in MARGINS:
        raise ValueError(f"metric must be one of {tuple(MARGINS)}, not {metric!r}")
    model = np.asarray(model_scores, dtype=float)
    human = np.asarray(human_scores, dtype=float)
    if model.shape != human.shape or model.ndim != 1:
        raise ValueError(f"model_scores and human_scores must be paired 1D sequences, "
                         f"not shapes {model.shape} and {human.shape}")
    margin = MARGINS[metric] if margin is None else float(margin)
    keep = np.isfinite(model) & np.isfinite(human)
    delta = summarise(model[keep] - human[keep], n_boot=n_boot, seed=seed)
    higher = HIGHER_IS_BETTER[metric]
    verdict = _verdict(delta, margin, higher)
    needed = None if verdict != "too_few" else _needed_cases(delta["mean"], delta["sd"], margin, higher)
    return {"metric": metric, "reference": names[0], "other": names[1], "unit": unit,
            "margin": margin, "n": int(model.size), "n_left_out": int((~keep).sum()),
            "model_mean": float(model[keep].mean()) if keep.any() else math.nan,
            "human_mean": float(human[keep].mean()) if keep.any() else math.nan,
            "delta": delta, "verdict": verdict, "needed_n": needed,
            "text": _verdict_text(delta, verdict, tuple(names), metric, unit, margin, needed,
                                  int((~keep).sum()))}
