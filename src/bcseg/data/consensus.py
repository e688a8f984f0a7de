"""Consensus of observers' masks: union, intersection, STAPLE, or one observer.

Training needs a target mask per case from its observers' delineations, and
evaluation needs a reference: both use :func:`consensus`. Agreement between the
observers is measured in :mod:`bcseg.measure.observers`. NumPy + SimpleITK only.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from bcseg.data.geometry import as_mask

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


TWO_OBSERVER_STAPLE = (
    "STAPLE with two observers is degenerate: every voxel they disagree on gets a probability "
    "of 0.5 (exactly, or 0.5 plus one rounding step, depending on the field size), so a 0.5 "
    "threshold would pick their union or their intersection by floating-point rounding. "
    "bcseg returns their intersection (voxels both observers marked; the union when the "
    "threshold is below 0.5). Ask for 'intersection' or 'union' to say which you mean.")
_warned_two_observers = False


def _warn_two_observers() -> None:
    """Say once per process what STAPLE of two observers equals."""
    global _warned_two_observers
    if not _warned_two_observers:
        _warned_two_observers = True
        warnings.warn(TWO_OBSERVER_STAPLE, UserWarning, stacklevel=4)


def staple(masks: Sequence, threshold: float = 0.5) -> np.ndarray:
    """STAPLE consensus (Warfield et al. 2004) of three or more binary masks.

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
    With **two** observers STAPLE cannot tell who is right where they disagree:
    SimpleITK gives those voxels 0.5, or 0.5 plus one ulp on larger fields, so
    ``prob > 0.5`` would be the intersection or the union by rounding. Two masks
    therefore give their intersection (their union if ``threshold < 0.5``)
    without running STAPLE, with a warning (once per process) saying so.
    STAPLE is undefined (SimpleITK returns NaN) when all masks are identical,
    e.g. all empty; the common mask is then returned. The result always holds the
    voxels every observer marked and none that no observer marked: on small or barely
    overlapping masks STAPLE's estimates can rate an observer worse than chance and
    invert its votes, which would put those voxels on the wrong side.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), not {threshold}")
    ms = _stack(masks)
    if all(np.array_equal(ms[0], m) for m in ms[1:]):
        return ms[0].copy()
    if len(ms) == 2:
        _warn_two_observers()
        return union(ms) if threshold < 0.5 else intersection(ms)
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in ms]
    prob = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0))
    if np.isnan(prob).any():
        raise RuntimeError("STAPLE returned NaN probabilities; use union or intersection")
    # On small or barely overlapping masks STAPLE can rate an observer worse than chance
    # (sensitivity + specificity < 1), which inverts that observer's votes: a voxel no
    # observer drew came out foreground, one every observer drew background. Whatever
    # the estimates, a consensus lies between the intersection and the union.
    return (prob > threshold) & union(ms) | intersection(ms)


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
