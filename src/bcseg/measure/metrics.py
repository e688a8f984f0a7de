"""Segmentation metrics on binary masks, the same functions in 2D and 3D.

Every function takes masks of shape ``(H, W)`` or ``(Z, H, W)``; anything is
accepted and values ``> 0`` are foreground. ``spacing_mm`` is a tuple with one
positive float per axis (``(z, y, x)`` or ``(y, x)``), or None for voxel units.
Pure NumPy/SciPy: this module never imports TensorFlow.

Conventions for empty masks (``P`` = prediction, ``T`` = truth):

==========================  =============  ================  =========
metric                      both empty     exactly one empty  otherwise
==========================  =============  ================  =========
dice, iou                   1.0            0.0                formula
precision, recall           1.0            0.0                formula
hd95, assd, hausdorff       NaN            ``math.inf``      formula
rel. volume difference      0.0            inf (T empty)      formula
==========================  =============  ================  =========

NaN means "undefined": :func:`summarise` leaves it out of means and CIs but
counts it. ``inf`` means "one observer saw a tumour and the other did not": it
is reported as such and counted, never hidden as NaN.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from bcseg.data.geometry import as_mask, surface  # noqa: F401 (as_mask is part of this API)

__all__ = [
    "dice", "iou", "precision", "recall", "specificity",
    "surface_distances", "hd95", "assd", "hausdorff",
    "volume", "volume_difference", "case_metrics", "slice_metrics",
    "pixel_soft_score", "soft_scores", "batch_mean", "REFERENCE_EPS", "summarise",
    "MIN_CI_CASES", "CI_TOO_FEW",
]


# --------------------------------------------------------------------------- input
def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_mask(pred), as_mask(truth)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth differ in shape: {p.shape} vs {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D (H, W) or 3D (Z, H, W), not {p.ndim}D")
    return p, t


def _spacing(spacing_mm, ndim: int) -> tuple[float, ...] | None:
    if spacing_mm is None:
        return None
    try:
        sp = tuple(float(s) for s in spacing_mm)
    except TypeError:
        raise ValueError(f"spacing_mm must be a tuple of {ndim} floats, not {spacing_mm!r}") from None
    if len(sp) != ndim:
        raise ValueError(f"spacing_mm has {len(sp)} values but the masks have {ndim} axes")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing_mm values must be finite and > 0, not {sp}")
    return sp


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    tn = p.size - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: int, den: int, agree: bool) -> float:
    """``num / den``; when ``den == 0``, 1.0 if the masks agree there, else 0.0."""
    if den == 0:
        return 1.0 if agree else 0.0
    return num / den


def _overlap(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Every overlap metric from the confusion counts (conventions in the docstrings)."""
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, agree=True),
        "iou": _ratio(tp, tp + fp + fn, agree=True),
        "precision": _ratio(tp, tp + fp, agree=fn == 0),
        "recall": _ratio(tp, tp + fn, agree=fp == 0),
        "specificity": _ratio(tn, tn + fp, agree=fn == 0),
    }


def _metric(name: str, pred, truth) -> float:
    return _overlap(*_counts(*_pair(pred, truth)))[name]


# ------------------------------------------------------------------------ overlap
def dice(pred, truth) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)``.

    Parameters
    ----------
    pred, truth : array_like, shape (H, W) or (Z, H, W)
        Masks; values > 0 are foreground.

    Returns
    -------
    float
        In [0, 1]. Both empty: 1.0; exactly one empty: 0.0.

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> dice(a, b)
    0.5
    """
    return _metric("dice", pred, truth)


def iou(pred, truth) -> float:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|``.

    Both empty: 1.0; exactly one empty: 0.0. Always ``dice = 2 iou / (1 + iou)``.
    """
    return _metric("iou", pred, truth)


def precision(pred, truth) -> float:
    """Precision (positive predictive value) ``TP / (TP + FP)``.

    When ``pred`` is empty the ratio is 0/0: 1.0 if ``truth`` is empty too
    (nothing to find, nothing claimed), 0.0 if it is not (the tumour was missed).
    """
    return _metric("precision", pred, truth)


def recall(pred, truth) -> float:
    """Recall (sensitivity) ``TP / (TP + FN)``.

    When ``truth`` is empty the ratio is 0/0: 1.0 if ``pred`` is empty too,
    0.0 if it is not (everything predicted is a false positive).
    """
    return _metric("recall", pred, truth)


def specificity(pred, truth) -> float:
    """Specificity ``TN / (TN + FP)``, which is the recall of the background.

    When ``truth`` has no background the ratio is 0/0: 1.0 if ``pred`` has none
    either, else 0.0 (the rule of :func:`recall` applied to ``~pred, ~truth``).
    Specificity is near 1 for almost any mask when the tumour is small; report
    it next to dice, not instead of it.
    """
    return _metric("specificity", pred, truth)


# ----------------------------------------------------------------------- surfaces
def _crop_pad(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union, pad one False voxel."""
    both = p | t
    box = []
    for ax in range(both.ndim):
        hit = np.flatnonzero(both.any(axis=tuple(a for a in range(both.ndim) if a != ax)))
        box.append(slice(hit[0], hit[-1] + 1))
    box = tuple(box)
    return np.pad(p[box], 1), np.pad(t[box], 1)


def surface_distances(pred, truth, spacing_mm=None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface-to-surface distances between two masks.

    The *surface* of a mask is the mask minus its binary erosion by the
    full-connectivity structuring element (3x3 in 2D, 3x3x3 in 3D): every
    foreground voxel with at least one background voxel among its 8 (2D) or 26
    (3D) neighbours. Outside the array counts as background, so a mask that
    touches the edge of the image has surface there (and padding both masks
    with background changes nothing). Distances run between voxel centres,
    from :func:`scipy.ndimage.distance_transform_edt` with ``sampling=spacing_mm``.

    Parameters
    ----------
    pred, truth : array_like, shape (H, W) or (Z, H, W)
        Masks; values > 0 are foreground.
    spacing_mm : tuple of float, optional
        One voxel size per axis. None gives distances in voxels.

    Returns
    -------
    pred_to_truth : ndarray of float
        For every surface voxel of ``pred``, the distance to the nearest
        surface voxel of ``truth``.
    truth_to_pred : ndarray of float
        The same from ``truth`` to ``pred``.

    Notes
    -----
    A mask that is empty has no surface: its own array is empty and the
    distances *to* it are ``inf``. Both empty gives two empty arrays.
    """
    p, t = _pair(pred, truth)
    sp = _spacing(spacing_mm, p.ndim)
    p_any, t_any = bool(p.any()), bool(t.any())
    if not (p_any or t_any):
        return np.zeros(0), np.zeros(0)
    p, t = _crop_pad(p, t)
    ps, ts = surface(p), surface(t)
    if not (p_any and t_any):
        ones = ps if p_any else ts
        far = np.full(int(np.count_nonzero(ones)), math.inf)
        return (far, np.zeros(0)) if p_any else (np.zeros(0), far)
    to_t = ndimage.distance_transform_edt(~ts, sampling=sp)
    to_p = ndimage.distance_transform_edt(~ps, sampling=sp)
    return to_t[ps].astype(float), to_p[ts].astype(float)


def _distance_stats(pred, truth, spacing_mm) -> tuple[float, float, float]:
    """(hd95, assd, hausdorff) from one pass over the surfaces."""
    d_pt, d_tp = surface_distances(pred, truth, spacing_mm)
    if d_pt.size == 0 and d_tp.size == 0:
        return math.nan, math.nan, math.nan
    if d_pt.size == 0 or d_tp.size == 0:
        return math.inf, math.inf, math.inf
    h95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    mean = float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))
    return h95, mean, max(float(d_pt.max()), float(d_tp.max()))


def hd95(pred, truth, spacing_mm=None) -> float:
    """95th-percentile Hausdorff distance (mm, or voxels if ``spacing_mm`` is None).

    Defined as in MONAI (``directed=False``) and DeepMind's ``surface-distance``:
    the larger of the two directed 95th percentiles (linear interpolation, as
    :func:`numpy.percentile`) of :func:`surface_distances`. Taking the max of the
    directed percentiles keeps the metric symmetric, makes it the Hausdorff
    distance at the 100th percentile, and stops the larger of two surfaces from
    diluting the outliers of the smaller one, which the pooled percentile
    (MedPy's ``hd95``) allows.

    Returns NaN when both masks are empty, ``math.inf`` when exactly one is.
    """
    return _distance_stats(pred, truth, spacing_mm)[0]


def assd(pred, truth, spacing_mm=None) -> float:
    """Average symmetric surface distance.

    The mean of both directed distance sets pooled together,
    ``(sum(d_pt) + sum(d_tp)) / (n_pt + n_tp)``, as MONAI's
    ``compute_average_surface_distance(symmetric=True)``, so every surface
    voxel weighs the same. ITK's ``GetAverageHausdorffDistance`` and MedPy's
    ``assd`` average the two directed means instead, which differs when the
    surfaces differ in size. NaN when both masks are empty, ``math.inf`` when
    exactly one is.
    """
    return _distance_stats(pred, truth, spacing_mm)[1]


def hausdorff(pred, truth, spacing_mm=None) -> float:
    """Hausdorff distance: the largest surface distance in either direction.

    NaN when both masks are empty, ``math.inf`` when exactly one is.
    """
    return _distance_stats(pred, truth, spacing_mm)[2]


# ------------------------------------------------------------------------- volume
def volume(mask, spacing_mm=None) -> float:
    """Foreground volume: mm^3 in 3D, mm^2 in 2D, voxel count if ``spacing_mm`` is None."""
    m = as_mask(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"a mask must be 2D (H, W) or 3D (Z, H, W), not {m.ndim}D")
    sp = _spacing(spacing_mm, m.ndim)
    return float(np.count_nonzero(m)) * (math.prod(sp) if sp else 1.0)


def volume_difference(pred, truth, spacing_mm=None) -> tuple[float, float]:
    """Absolute and relative volume difference.

    Returns
    -------
    abs_diff : float
        ``|V_pred - V_truth|`` in the units of :func:`volume`.
    rel_diff : float
        Signed ``(V_pred - V_truth) / V_truth``: > 0 means over-segmentation.
        ``inf`` when only ``truth`` is empty, 0.0 when both are.
    """
    p, t = _pair(pred, truth)
    vp, vt = volume(p, spacing_mm), volume(t, spacing_mm)
    rel = (vp - vt) / vt if vt > 0 else (math.inf if vp > 0 else 0.0)
    return abs(vp - vt), rel


# ------------------------------------------------------------------------- tables
def case_metrics(pred, truth, spacing_mm=None) -> dict:
    """All metrics of one case, as one row of ``metrics.csv``.

    Returns
    -------
    dict
        ``dice, iou, precision, recall, specificity, hd95, assd, volume_pred,
        volume_truth, abs_volume_diff, rel_volume_diff, unit, pred_empty,
        truth_empty``. ``unit`` is ``"mm"`` when ``spacing_mm`` is given
        (distances in mm, volumes in mm^2 or mm^3) and ``"voxel"`` otherwise.
    """
    p, t = _pair(pred, truth)
    sp = _spacing(spacing_mm, p.ndim)
    h95, mean_sd, _ = _distance_stats(p, t, sp)
    abs_vd, rel_vd = volume_difference(p, t, sp)
    return {
        **_overlap(*_counts(p, t)),
        "hd95": h95, "assd": mean_sd,
        "volume_pred": volume(p, sp), "volume_truth": volume(t, sp),
        "abs_volume_diff": abs_vd, "rel_volume_diff": rel_vd,
        "unit": "mm" if sp else "voxel",
        "pred_empty": not p.any(), "truth_empty": not t.any(),
    }


def slice_metrics(pred, truth, spacing_mm=None) -> list[dict]:
    """:func:`case_metrics` for every axis-0 slice of a 3D pair.

    ``spacing_mm`` is the 3D ``(z, y, x)`` spacing; each slice uses ``(y, x)``.
    Each row starts with ``slice``, the index along axis 0; its volumes are
    areas (mm^2, or pixels without spacing).
    """
    p, t = _pair(pred, truth)
    if p.ndim != 3:
        raise ValueError(f"slice_metrics needs 3D (Z, H, W) masks, not {p.ndim}D")
    sp = _spacing(spacing_mm, 3)
    plane = sp[1:] if sp else None
    return [{"slice": z, **case_metrics(p[z], t[z], plane)} for z in range(p.shape[0])]


# ---------------------------------------------------------------- reference score
REFERENCE_EPS = 1e-7
"""The smoothing term of the reference study's ``dice_coef`` (``smooth=1e-7``)."""

SOFT_REDUCTIONS = ("row", "pixel")


def _strip_channel(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop a trailing channel axis of size 1 the way tf.keras 2 did.

    Keras's loss and metric wrappers (``squeeze_or_expand_dimensions``) squeeze
    the last axis of whichever array has one axis more, if that axis has size 1;
    when both carry a channel axis of size 1 (rank >= 3) it is dropped from both.
    """
    if p.ndim == y.ndim + 1 and p.shape[-1] == 1:
        p = p[..., 0]
    elif y.ndim == p.ndim + 1 and y.shape[-1] == 1:
        y = y[..., 0]
    elif y.ndim == p.ndim and y.ndim >= 3 and y.shape[-1] == 1 == p.shape[-1]:
        y, p = y[..., 0], p[..., 0]
    return y, p


def soft_scores(truth, prob, reduction: str = "row", eps: float = REFERENCE_EPS) -> np.ndarray:
    """The reference study's smoothed soft-Dice scores, one per row or per pixel.

    ``s = (2 Σ y·p + eps) / (Σ y + Σ p + eps)``, the sums running along the image
    rows (``reduction="row"``: over the last axis, the columns) or over nothing
    (``"pixel"``: every pixel on its own). See :func:`pixel_soft_score`.

    Returns
    -------
    ndarray of float
        ``truth.shape[:-1]`` for ``"row"`` and ``truth.shape`` for ``"pixel"``,
        after a trailing channel axis of size 1 is dropped.
    """
    if reduction not in SOFT_REDUCTIONS:
        raise ValueError(f"reduction must be one of {SOFT_REDUCTIONS}, not {reduction!r}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number, not {eps!r}") from None
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0, not {eps}")
    y, p = _strip_channel(as_mask(truth).astype(float), np.asarray(prob, dtype=float))
    if y.shape != p.shape:
        raise ValueError(f"truth and prob differ in shape: {y.shape} vs {p.shape}")
    if y.size == 0 or y.ndim < 1:
        raise ValueError(f"truth and prob must be non-empty arrays, not of shape {y.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("prob must hold probabilities in [0, 1] (no NaN)")
    if reduction == "pixel":
        return (2 * y * p + eps) / (y + p + eps)
    # K.abs(y*p) in the study equals y*p for y in {0, 1} and p in [0, 1].
    return (2 * (y * p).sum(axis=-1) + eps) / (y.sum(axis=-1) + p.sum(axis=-1) + eps)


def pixel_soft_score(truth, prob, reduction: str = "row", eps: float = REFERENCE_EPS,
                     batch_size: int | None = None) -> float:
    """The reference study's "Dice", which is not a Dice coefficient.

    The study's Keras metric and loss were::

        def dice_coef(y_true, y_pred, smooth=1e-7):
            intersection = K.sum(K.abs(y_true * y_pred), axis=-1)
            union = K.sum(y_true, axis=-1) + K.sum(y_pred, axis=-1)
            return K.mean((2. * intersection + smooth) / (union + smooth))

    Its masks were arrays of shape ``(N, 128, 128)``, the model's output
    ``(N, 128, 128, 1)``. tf.keras 2 wraps such a function in
    ``LossFunctionWrapper`` / ``MeanMetricWrapper``, whose
    ``squeeze_or_expand_dimensions`` squeezes the output to ``(N, 128, 128)``, so
    ``axis=-1`` summed along each image *row* (over its columns): a soft Dice
    per row, averaged over the rows of the batch, and the batch values averaged
    over the batches of ``model.evaluate``. That is ``reduction="row"``, the score
    as executed. Had the masks carried the channel axis, each pixel would have
    been scored on its own: ``reduction="pixel"``.

    Neither is a Dice coefficient, which sums over the whole object before
    dividing. With ``"pixel"`` every background pixel predicted as background
    scores ``eps / eps = 1``; with ``"row"`` a row without tumour scores 1 only if
    its predicted probabilities sum to well below ``eps``, and close to 0
    otherwise. Use it only to compare with the study's numbers.

    Parameters
    ----------
    truth : array_like
        Masks of shape ``(..., H, W)``, optionally with a trailing channel axis
        of size 1 (on either array, as Keras allowed); values > 0 are foreground.
    prob : array_like
        Predicted probabilities in [0, 1], the same shape up to that axis.
    reduction : {"row", "pixel"}
        Sum along each row (the study as executed), or score each pixel.
    eps : float
        The smoothing term (``smooth=1e-7`` in the study). Must be > 0.
    batch_size : int, optional
        Average per batch of ``batch_size`` images (first axis) first, then over
        batches, as ``model.evaluate`` did (its default batch is 32). None
        averages all rows (or pixels) alike; the two differ only when the last
        batch is partial.

    Returns
    -------
    float

    Examples
    --------
    >>> pixel_soft_score([[1, 0], [0, 0]], np.zeros((2, 2)), reduction="pixel", eps=1.0)
    0.875
    """
    scores = soft_scores(truth, prob, reduction, eps)
    if batch_size is None:
        return float(scores.mean())
    # one sample per first-axis entry; a single row (1D truth) scores as one sample
    return batch_mean(scores.reshape(scores.shape[0] if scores.ndim else 1, -1), batch_size)


def batch_mean(scores, batch_size: int) -> float:
    """The mean that tf.keras 2's ``model.evaluate`` reports for a metric.

    Keras averages a metric within each batch of ``batch_size`` samples and then
    averages those batch values, so a partial last batch weighs as much as a full one.

    Parameters
    ----------
    scores : array_like, shape (N, ...)
        Per-sample scores (e.g. one per row of each image); first axis = samples.
    batch_size : int
        Samples per batch, >= 1.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    x = np.asarray(scores, dtype=float)
    x = x.reshape(len(x), -1)
    step = int(batch_size)
    return float(np.mean([x[i:i + step].mean() for i in range(0, len(x), step)]))


# ---------------------------------------------------------------------- summaries
MIN_CI_CASES = 5
"""Fewest finite values :func:`summarise` gives a bootstrap CI for."""
CI_TOO_FEW = "n too small"
def summarise(values: Iterable[float] | Sequence[float], n_boot: int = 2000,
              seed: int = 0, ci: float = 0.95) -> dict:
    """Mean, SD, median and a bootstrap CI of the mean of per-case values.

    With fewer than :data:`MIN_CI_CASES` (5) finite values there is no CI: a
    percentile bootstrap of 2-4 values is little more than their [min, max].
    ``ci_low`` and ``ci_high`` are then NaN and ``ci_note`` is ``"n too small"``.

    NaN (undefined, e.g. HD95 of two empty masks) and ``±inf`` (e.g. HD95 when
    one mask is empty) are left out of every statistic but counted: ``n`` is all
    values, ``n_finite`` the ones used, ``n_inf`` the infinite ones.

    Parameters
    ----------
    values : iterable of float
        One value per case (resample cases, not slices of one case).
    n_boot : int
        Bootstrap resamples of the finite values.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the result is deterministic.
    ci : float
        Coverage of the percentile interval, in (0, 1).

    Returns
    -------
    dict
        ``n, n_finite, n_inf, mean, sd, median, ci_low, ci_high, ci_note``.
        ``sd`` is the sample SD (ddof=1), NaN with fewer than two finite values;
        all statistics are NaN with none. ``ci_note`` is ``""`` when there is a
        CI. ``mean``, ``sd``, ``median`` and the CI leave out the ``n_inf``
        infinite values: say so wherever the mean is shown.
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, not shape {x.shape}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, not {n_boot}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), not {ci}")
    finite = x[np.isfinite(x)]
    out = {"n": int(x.size), "n_finite": int(finite.size), "n_inf": int(np.isinf(x).sum()),
           "mean": math.nan, "sd": math.nan, "median": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "ci_note": ""}
    m = finite.size
    if m == 0:
        return out
    out["mean"] = float(finite.mean())
    out["median"] = float(np.median(finite))
    out["sd"] = float(finite.std(ddof=1)) if m > 1 else math.nan
    if m < MIN_CI_CASES:
        out["ci_note"] = CI_TOO_FEW
        return out
    out["ci_low"], out["ci_high"] = _bootstrap_ci(finite, n_boot, seed, ci)
    return out


def _bootstrap_ci(finite: np.ndarray, n_boot: int, seed: int, ci: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``finite``, resampled in chunks."""
    m = finite.size
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    step = max(1, 1_000_000 // m)          # bound memory to ~8 MB per chunk
    for start in range(0, int(n_boot), step):
        stop = min(int(n_boot), start + step)
        means[start:stop] = finite[rng.integers(0, m, size=(stop - start, m))].mean(axis=1)
    alpha = (1 - ci) / 2
    low, high = (float(v) for v in np.percentile(means, [100 * alpha, 100 * (1 - alpha)]))
    return low, high
