"""Mask geometry shared by metrics, margins and post-processing: one home.

Plain NumPy/SciPy on bool arrays, the same functions for 2D and 3D. No TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def as_mask(mask) -> np.ndarray:
    """Return ``mask > 0`` as a bool array (a bool array is returned as is)."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"a mask must be numeric or bool, not {arr.dtype}")
    return arr > 0


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a background voxel (or the array edge) among their
    full-connectivity neighbours (8 in 2D, 26 in 3D)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) that holds every voxel of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def fill_holes(mask: np.ndarray, plane_axis: int | None = None) -> np.ndarray:
    """Fill background regions that do not reach the array border (in 3D, or in the
    planes normal to ``plane_axis``)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    border_axes = list(range(mask.ndim))
    if plane_axis is not None:
        centre = [slice(None)] * mask.ndim
        centre[plane_axis] = slice(0, 1)
        structure[tuple(centre)] = False
        centre[plane_axis] = slice(2, 3)
        structure[tuple(centre)] = False
        border_axes.remove(plane_axis)
    labels, count = ndimage.label(~mask, structure=structure)
    outside = set()
    for axis in border_axes:
        for index in (0, -1):
            outside.update(np.unique(np.take(labels, index, axis=axis)).tolist())
    hole = np.ones(count + 1, bool)
    hole[list(outside | {0})] = False
    return mask | hole[labels]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (the mask itself if it has one)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
