"""Post-processing of binary masks, the same in 2D and 3D (no TensorFlow).

Each step is optional and chosen per run on its validation split:

* ``largest``: keep the largest connected component (full connectivity);
* ``fill``: fill holes (in 3D for stacks);
* ``small``: remove components smaller than ``min_size`` voxels.

Labels use the most compact integer type the component count allows, and counting
runs in chunks, so masks of large stacks stay within bounded memory.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

POSTPROCESS_STEPS = ("largest", "fill", "small")
_LABEL_CHUNK = 1 << 24     # voxels per chunk when counting or selecting components

def _as_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components in the most compact label type that holds them."""
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    for dtype in (np.uint16, np.int32):
        labels = np.empty(mask.shape, dtype)
        try:
            count = ndi.label(mask, structure, output=labels)
        except RuntimeError:  # more components than uint16 holds
            continue
        return labels, int(count)
    raise AssertionError("unreachable: int32 labels always fit")


def _component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label (index 0 is background), counted in chunks to bound memory."""
    flat = labels.reshape(-1)
    sizes = np.zeros(count + 1, np.int64)
    for i in range(0, flat.size, _LABEL_CHUNK):
        sizes += np.bincount(flat[i:i + _LABEL_CHUNK], minlength=count + 1)
    return sizes


def _select(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Bool mask of the voxels whose label is marked in ``keep``, in chunks."""
    out = np.empty(labels.shape, bool)
    flat, flat_out = labels.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, _LABEL_CHUNK):
        np.take(keep, flat[i:i + _LABEL_CHUNK], out=flat_out[i:i + _LABEL_CHUNK])
    return out


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component (full connectivity, 8 in 2D / 26 in 3D).

    Examples
    --------
    >>> keep_largest_component(np.array([1, 0, 1, 1], bool))
    array([False, False,  True,  True])
    """
    mask = _as_mask(mask)
    labels, count = _label(mask, mask.ndim)
    if count <= 1:
        return mask.copy()
    sizes = _component_sizes(labels, count)
    sizes[0] = 0
    keep = np.zeros(count + 1, bool)
    keep[int(np.argmax(sizes))] = True
    return _select(labels, keep)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Remove connected components of fewer than ``min_size`` voxels (full connectivity)."""
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be a whole number of voxels >= 0, got {min_size!r}")
    mask = _as_mask(mask)
    if min_size <= 1:
        return mask.copy()
    labels, count = _label(mask, mask.ndim)
    keep = _component_sizes(labels, count) >= min_size
    keep[0] = False
    return _select(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not reach the image border.

    Background is connected through faces only (4 in 2D, 6 in 3D), the complement of
    the foreground's full connectivity. A stack is filled in 3D: only cavities
    closed on every side are holes.
    """
    mask = _as_mask(mask)
    labels, count = _label(~mask, 1)
    outside = np.zeros(count + 1, bool)
    for axis in range(mask.ndim):
        for end in (0, -1):
            outside[np.unique(labels.take(end, axis=axis))] = True
    holes = ~outside
    holes[0] = False
    return mask | _select(labels, holes)


def _check_steps(steps: Sequence[str]) -> list[str]:
    if isinstance(steps, str):
        steps = [steps]
    unknown = [s for s in steps if s not in POSTPROCESS_STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step {unknown[0]!r}; "
                         f"choose from {', '.join(POSTPROCESS_STEPS)}")
    return list(steps)


def _apply_steps(mask: np.ndarray, steps: Sequence[str], min_size: int) -> np.ndarray:
    for step in steps:
        if step == "largest":
            mask = keep_largest_component(mask)
        elif step == "fill":
            mask = fill_holes(mask)
        else:
            mask = remove_small_components(mask, min_size)
    return mask


def postprocess(mask: np.ndarray, steps: Sequence[str], min_size: int = 0) -> np.ndarray:
    """Apply post-processing steps in order to a 2D or 3D mask.

    Parameters
    ----------
    mask : ndarray
        Bool mask (any other type: nonzero is tumour).
    steps : sequence of {"largest", "fill", "small"}
        :func:`keep_largest_component`, :func:`fill_holes`,
        :func:`remove_small_components` (with ``min_size``).
    min_size : int
        Smallest component kept by ``"small"``, in voxels.

    Returns
    -------
    ndarray of bool

    Raises
    ------
    ValueError
        For an unknown step name.

    Examples
    --------
    >>> postprocess(mask, ["small", "fill"], min_size=50)  # doctest: +SKIP
    """
    return _apply_steps(_as_mask(mask), _check_steps(steps), min_size)
