"""Linear resizing along one axis as a sparse matrix: scikit-image's result, faster.

Every 2D model input is fitted to a square of the training size and every probability
map is fitted back (:func:`bcseg.learn.pipeline.to_square`, ``from_square``), once per
slice and ensemble member. ``skimage.transform.resize`` does that with a Gaussian
(when shrinking) and ``scipy.ndimage.zoom``, which on a 2D array also walks the axis
that does not change; on a BUSI-sized image the two took about 12 ms per member, as
long as the network itself.

Both steps are linear maps along the resized axis, so together they are one
``length x n`` matrix with a few non-zeros per row (the Gaussian's taps times the two
neighbours of linear interpolation). Built here from the same definitions:

- anti-aliasing: ``scipy.ndimage.gaussian_filter1d`` with sigma ``(n / length - 1) / 2``,
  truncated at 4 sigma, mirror boundary (scikit-image's ``mode="reflect"``);
- interpolation: output pixel ``o`` samples input coordinate
  ``(o + 0.5) * n / length - 0.5`` (pixel centres aligned, ``grid_mode=True``) between
  its two neighbours, mirrored at the ends;
- the result clipped to the input's range, as scikit-image's ``clip=True`` does.

It equals ``resize(array, shape, order=1, anti_aliasing=..., preserve_range=True)``
to float rounding (``tests/test_resize.py`` checks that over many shapes).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, which scikit-image uses


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``0..n-1`` about the end pixels' centres (d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _gaussian_taps(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of a 1D Gaussian as ``gaussian_filter1d`` builds it."""
    radius = int(TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return offsets, weights / weights.sum()


def resize_matrix(n: int, length: int, anti_aliasing: bool) -> sparse.csr_matrix:
    """The sparse ``length x n`` matrix that resizes an axis of ``n`` pixels to ``length``.

    Each output pixel interpolates between two (mirrored) input pixels; with
    anti-aliasing each of those is first the Gaussian-weighted sum of its mirrored
    neighbours. Only the Gaussian rows that interpolation reads are built, so a
    40000-pixel axis shrunk to 64 costs 64 x 2 x 2501 entries, not a 40000² filter.
    """
    coordinate = (np.arange(length) + 0.5) * (n / length) - 0.5
    below = np.floor(coordinate)
    weight = coordinate - below
    below = below.astype(np.int64)
    sources = _mirror(np.stack([below, below + 1], axis=1), n)       # (length, 2)
    values = np.stack([1.0 - weight, weight], axis=1)                  # (length, 2)
    sigma = max(0.0, (n / length - 1) / 2)
    if anti_aliasing and sigma > 0:
        offsets, taps = _gaussian_taps(sigma)
        sources = _mirror(sources[..., None] + offsets, n)              # (length, 2, taps)
        values = values[..., None] * taps
    rows = np.broadcast_to(np.arange(length).reshape((length,) + (1,) * (sources.ndim - 1)), sources.shape)
    return sparse.csr_matrix((values.ravel(), (rows.ravel(), sources.ravel())), shape=(length, n))  # duplicates add up


def resize_axis(array: np.ndarray, axis: int, length: int, anti_aliasing: bool) -> np.ndarray:
    """A 2D ``array`` linearly resized to ``length`` along ``axis`` (0 or 1) only.

    float32 stays float32 (as in scikit-image); anything else comes back as float64.
    """
    array = np.asarray(array)
    dtype = np.float32 if array.dtype in (np.float16, np.float32) else np.float64
    values = array.astype(dtype, copy=False)
    matrix = resize_matrix(array.shape[axis], length, anti_aliasing).astype(dtype)
    out = matrix @ values if axis == 0 else (matrix @ values.T).T
    out = np.ascontiguousarray(out, dtype=dtype)
    if values.size:
        np.clip(out, values.min(), values.max(), out=out)
    return out
