"""Shapes shared by every difficulty of the phantom: tissue block, tumour, observers.

Kept apart from the image models (:mod:`bcseg.data.phantom` for ``easy``,
:mod:`bcseg.data.phantom_us` and :mod:`bcseg.data.phantom_pa` for ``realistic``),
so the easy phantom draws exactly the same random numbers as it always has.
No TensorFlow here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Unit-sd random field smoothed with a Gaussian of ``sigma`` voxels.

    Its mean is left in: the white noise's own mean, divided by the smoothed field's
    small sd, is a few tenths of an sd for the wider ``sigma`` here, so each specimen's
    texture level and border offset differ a little as well as their pattern (as gain
    differs between specimens). Subtracting it would change every easy phantom drawn
    so far; the realistic phantom's :func:`bcseg.data.phantom_us.smooth_field` is
    zero-mean.
    """
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def tissue_block(rng, shape, wobble: float = 0.15) -> np.ndarray:
    """A rounded box (superellipsoid) filling most of the field, open to the top rows."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    half = rng.uniform([0.95, 0.6, 0.7], [1.3, 0.8, 0.88])
    centre = np.array([0.0, rng.uniform(0.05, 0.15), rng.uniform(-0.08, 0.08)])
    power = 6.0
    inside = (np.abs((z - centre[0]) / half[0]) ** power
              + np.abs((y - centre[1]) / half[1]) ** power
              + np.abs((x - centre[2]) / half[2]) ** power)
    # ``wobble`` sets how far the border strays from the rounded box.
    block = inside + wobble * smooth_noise(rng, shape, (4, 8, 8)) < 1.0
    # A block of tissue is one solid piece: no holes, no islands.
    block = np.stack([ndimage.binary_fill_holes(s) for s in block])
    labels, count = ndimage.label(block)
    if count > 1:
        block = labels == 1 + np.argmax(ndimage.sum_labels(block, labels, range(1, count + 1)))
    return block


def tumour_blob(rng, shape, tissue, spacing_mm) -> np.ndarray:
    """A lobulated tumour well inside the tissue, missing the end slices."""
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    coords = np.stack([zz, yy, xx]) * np.asarray(spacing_mm)[:, None, None, None]
    inner = ndimage.binary_erosion(tissue, iterations=6)
    if not inner.any():  # thin stacks (Z <= 12) erode away: keep off the sides only
        inner = np.stack([ndimage.binary_erosion(s, iterations=6) for s in tissue])
    candidates = np.argwhere(inner if inner.any() else tissue)
    extent_mm = np.asarray(shape) * np.asarray(spacing_mm)
    # Radius in mm: a third to a half of the smaller in-plane extent, so every
    # specimen has tumour, but never all the way through the stack.
    radius = rng.uniform(0.17, 0.26) * min(extent_mm[1], extent_mm[2])
    radius = min(radius, 0.32 * extent_mm[0])
    centre_mm = None
    for _ in range(50 if len(candidates) else 0):
        pick = candidates[rng.integers(len(candidates))] * np.asarray(spacing_mm)
        margin = pick - radius * 1.2, extent_mm - pick - radius * 1.2
        if (margin[0][1:] > 0).all() and (margin[1][1:] > 0).all() and margin[0][0] > 0 and margin[1][0] > 0:
            centre_mm = pick
            break
    if centre_mm is None:
        centre_mm = extent_mm / 2
    axes = radius * rng.uniform(0.75, 1.2, size=3)
    d = np.sqrt(sum(((coords[i] - centre_mm[i]) / axes[i]) ** 2 for i in range(3)))
    lobes = 0.22 * smooth_noise(rng, shape, (2, 6, 6)) + 0.08 * smooth_noise(rng, shape, (1, 2, 2))
    return (d + lobes < 1.0) & tissue


def observer_outline(rng, tumour, bias_vox, amplitude_vox) -> np.ndarray:
    """An observer's outline: the true border moved by a smooth field, slice by slice.

    ``bias_vox`` and ``amplitude_vox`` are in-plane voxels, scalars or arrays of the
    tumour's shape (an array lets the disagreement grow where the image is ambiguous).
    """
    outside = ndimage.distance_transform_edt(~tumour, sampling=(1e6, 1, 1))
    inside = ndimage.distance_transform_edt(tumour, sampling=(1e6, 1, 1))
    signed = np.where(tumour, -inside + 0.5, outside - 0.5)  # in-plane voxels
    shift = bias_vox + amplitude_vox * smooth_noise(rng, tumour.shape, (3, 10, 10))
    drawn = signed < shift
    # Observers outline each slice as one closed contour: fill holes, drop specks.
    drawn = np.stack([ndimage.binary_fill_holes(s) for s in drawn])
    labels, count = ndimage.label(drawn)
    if count > 1:
        sizes = ndimage.sum_labels(drawn, labels, range(1, count + 1))
        drawn = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.2 * sizes.max()))
    return drawn
