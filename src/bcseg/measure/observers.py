"""Observers: consensus masks and inter-observer agreement.

Each case was delineated by two (or more) observers. Their agreement is the
human ceiling that model results are shown against, and a consensus of their
masks (one observer, union, intersection or STAPLE) can serve as the reference.
Pure NumPy + SimpleITK: this module never imports TensorFlow.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from bcseg.measure.metrics import as_mask, case_metrics

__all__ = ["union", "intersection", "staple", "consensus", "agreement", "METHODS"]

METHODS = ("union", "intersection", "staple")


def _stack(masks: Sequence) -> list[np.ndarray]:
    if isinstance(masks, Mapping):
        raise ValueError("pass a sequence of masks, e.g. list(masks.values())")
    ms = [as_mask(m) for m in masks]
    if not ms:
        raise ValueError("need at least one mask")
    shapes = {m.shape for m in ms}
    if len(shapes) > 1:
        raise ValueError(f"masks differ in shape: {sorted(shapes)}")
    if ms[0].ndim not in (2, 3):
        raise ValueError(f"masks must be 2D (H, W) or 3D (Z, H, W), not {ms[0].ndim}D")
    return ms


def union(masks: Sequence) -> np.ndarray:
    """Voxels that any observer marked.

    Parameters
    ----------
    masks : sequence of array_like
        Masks of one shape, (H, W) or (Z, H, W); values > 0 are foreground.

    Returns
    -------
    ndarray of bool
    """
    return np.logical_or.reduce(_stack(masks))


def intersection(masks: Sequence) -> np.ndarray:
    """Voxels that every observer marked (bool array, same shape as the masks)."""
    return np.logical_and.reduce(_stack(masks))


def staple(masks: Sequence, threshold: float = 0.5) -> np.ndarray:
    """STAPLE consensus (Warfield et al. 2004) of binary masks.

    Runs SimpleITK's ``STAPLEImageFilter`` with foreground value 1, which
    estimates each observer's sensitivity and specificity and returns, per
    voxel, the probability that it is foreground. Voxels strictly above
    ``threshold`` are kept.

    Parameters
    ----------
    masks : sequence of array_like
        Masks of one shape, (H, W) or (Z, H, W); values > 0 are foreground.
    threshold : float
        Probability above which a voxel is foreground, in [0, 1).

    Returns
    -------
    ndarray of bool

    Notes
    -----
    STAPLE is undefined (SimpleITK returns NaN) when all masks are identical,
    e.g. all empty; the common mask is then returned. With two observers that
    disagree, voxels marked by one observer only can land at exactly 0.5, so
    with the default threshold they are left out.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), not {threshold}")
    ms = _stack(masks)
    if all(np.array_equal(ms[0], m) for m in ms[1:]):
        return ms[0].copy()
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in ms]
    prob = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0))
    if np.isnan(prob).any():
        raise RuntimeError("STAPLE returned NaN probabilities; use union or intersection")
    return prob > threshold


def consensus(masks: Mapping[str, np.ndarray], method: str) -> np.ndarray:
    """The reference mask of one case from its observers' masks.

    Parameters
    ----------
    masks : dict of str to array_like
        Observer name to mask.
    method : str
        An observer's name (that observer's mask), or ``"union"``,
        ``"intersection"`` or ``"staple"``.

    Returns
    -------
    ndarray of bool

    Raises
    ------
    ValueError
        If ``masks`` is empty, ``method`` is not a valid choice (the message
        lists them), or an observer is named like a method (ambiguous).
    """
    if not masks:
        raise ValueError("no observer masks given")
    choices = [*masks, *METHODS]
    if method in METHODS and method in masks:
        raise ValueError(f"observer {method!r} has the name of a consensus method; rename it")
    if method in masks:
        return as_mask(masks[method]).copy()
    if method not in METHODS:
        raise ValueError(f"unknown consensus {method!r}; choose one of {', '.join(map(repr, choices))}")
    func = {"union": union, "intersection": intersection, "staple": staple}[method]
    return func(list(masks.values()))


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
