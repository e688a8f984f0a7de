"""Intensity normalisation shared by training and inference.

Training and prediction call the same two functions, so a model always sees images
scaled the way it was trained:

* ``uint8`` images are divided by 255, the convention of the reference study;
* every other integer or float type is scaled between its 0.5th and 99.5th
  percentiles and clipped to ``[0, 1]``;
* ``bool`` images map to 0 and 1.

The percentiles of a large stack are estimated from a regular strided subsample of
about a million voxels, so a memory-mapped 400 x 1024 x 1024 stack is never read
whole. :func:`intensity_stats` computes them once per image; :func:`normalise_slices`
then normalises any range of slices with those volume-wide statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bcseg.errors import DataError

PERCENTILES = (0.5, 99.5)
MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class IntensityStats:
    """The intensity range mapped onto ``[0, 1]``.

    Attributes
    ----------
    low, high : float
        Values that map to 0 and 1; values outside are clipped.
    method : str
        ``"uint8"`` (divide by 255), ``"bool"`` or ``"percentile"``.
    """

    low: float
    high: float
    method: str


def _subsample(array: np.ndarray, max_samples: int) -> np.ndarray:
    """A strided view with at most about ``max_samples`` elements, read into memory."""
    if array.size <= max_samples:
        return np.asarray(array)
    step = math.ceil((array.size / max_samples) ** (1.0 / array.ndim))
    # Start half a step in, so the sample is not biased towards the first row/column.
    index = tuple(slice(min(step // 2, n - 1), None, step) for n in array.shape)
    return np.asarray(array[index])


def _check_finite(array: np.ndarray) -> None:
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise DataError(None, "image contains NaN or infinite values; fix or mask them before segmenting")


def _check_dtype(array: np.ndarray) -> None:
    if array.dtype.kind not in "biuf":
        raise DataError(None, f"cannot normalise an image of type {array.dtype}; expected integers or floats")


def intensity_stats(array: np.ndarray, max_samples: int = MAX_SAMPLES) -> IntensityStats:
    """Compute the intensity range of a whole image or stack once.

    Parameters
    ----------
    array : ndarray or numpy.memmap
        Image ``(H, W)`` or stack ``(Z, H, W)``, any integer, bool or float type.
    max_samples : int
        Upper bound on the number of voxels read to estimate the percentiles.

    Returns
    -------
    IntensityStats

    Raises
    ------
    DataError
        For NaN/Inf in the sampled voxels, or a non-numeric type.

    Examples
    --------
    >>> intensity_stats(np.zeros((4, 4), np.uint8))
    IntensityStats(low=0.0, high=255.0, method='uint8')
    """
    _check_dtype(array)
    if array.dtype == np.uint8:
        return IntensityStats(0.0, 255.0, "uint8")
    if array.dtype == np.bool_:
        return IntensityStats(0.0, 1.0, "bool")
    sample = _subsample(array, max_samples)
    if sample.size == 0:
        raise DataError(None, "image is empty")
    _check_finite(sample)
    low, high = np.percentile(sample, PERCENTILES)
    return IntensityStats(float(low), float(high), "percentile")


def normalise(array: np.ndarray, stats: IntensityStats | None = None) -> np.ndarray:
    """Scale an image to float32 in ``[0, 1]``.

    Parameters
    ----------
    array : ndarray
        Image, stack or part of a stack.
    stats : IntensityStats, optional
        Range from :func:`intensity_stats` of the whole image; computed from
        ``array`` itself when omitted.

    Returns
    -------
    ndarray of float32, same shape as ``array``
        A constant image (``high == low``) maps to zeros.

    Raises
    ------
    DataError
        For NaN/Inf values or a non-numeric type.

    Examples
    --------
    >>> normalise(np.array([0, 51, 255], np.uint8))
    array([0. , 0.2, 1. ], dtype=float32)
    """
    _check_dtype(array)
    if stats is None:
        stats = intensity_stats(array)
    _check_finite(array)
    if stats.method == "percentile" and array.dtype.itemsize > 4 and array.dtype.kind == "f":
        return _normalise_wide(array, stats)
    out = np.asarray(array).astype(np.float32)  # always a fresh array: safe to edit in place
    if stats.method == "uint8":
        out /= np.float32(255.0)
        return out
    if stats.method == "bool":
        return out
    span = stats.high - stats.low
    if span <= 0:
        out[...] = 0.0
        return out
    # In-place float32 arithmetic: no float64 temporaries the size of the image.
    out -= np.float32(stats.low)
    out /= np.float32(span)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _normalise_wide(array: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """Normalise a float64 image in float64, then narrow the result to float32.

    float32 ends at 3.4e38: casting first would turn larger values (and a range
    that lies beyond it) into infinities, and the scaling into NaN.
    """
    span = stats.high - stats.low
    if not math.isfinite(span):
        raise DataError(None, f"intensity range {stats.low:g} to {stats.high:g} is too wide to "
                        "scale; rescale the image")
    out = np.asarray(array, dtype=np.float64) - stats.low
    if span > 0:
        out /= span
    else:
        out[...] = 0.0
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32)


def normalise_slices(volume: np.ndarray, start: int, stop: int, stats: IntensityStats) -> np.ndarray:
    """Normalise slices ``volume[start:stop]`` of a stack with volume-wide statistics.

    Only those slices are read, so a memory-mapped stack can be streamed batch by
    batch with the same result as normalising it whole.

    Parameters
    ----------
    volume : ndarray or numpy.memmap
        Stack ``(Z, H, W)``.
    start, stop : int
        Slice range.
    stats : IntensityStats
        From ``intensity_stats(volume)``.

    Returns
    -------
    ndarray of float32, shape ``(stop - start, H, W)``
    """
    return normalise(volume[start:stop], stats)
