"""Intensity normalisation shared by training and inference.

Training and prediction call the same two functions, so a model always sees images
scaled the way it was trained:

* ``uint8`` images are divided by 255, the convention of the reference study;
* every other integer or float type is scaled between its 0.5th and 99.5th
  percentiles and clipped to ``[0, 1]``;
* ``bool`` images map to 0 and 1.

Multi-channel cases are normalised channel by channel (:func:`normalise_channels`),
each with its own method: ``auto`` (the rule above, the default), ``uint8``,
``percentile``, or ``log`` (log compression of a wide-range channel such as
photoacoustics: the 99.5th percentile maps to 1 and values 40 dB below it to 0).
By default a channel named ``pa`` is log-compressed and every other channel is
``auto``; ``data.normalisation`` in the configuration overrides either.

The percentiles of a large stack are estimated from a regular strided subsample of
about a million voxels, so a memory-mapped 400 x 1024 x 1024 stack is never read
whole. :func:`intensity_stats` computes them once per image; :func:`normalise_slices`
then normalises any range of slices with those volume-wide statistics.
:func:`blank_problem` says when a channel would hold no image once normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bcseg.config import NORMALISATIONS
from bcseg.data.channels import PHOTOACOUSTICS, constant_problem, is_modality
from bcseg.errors import DataError

PERCENTILES = (0.5, 99.5)
MAX_SAMPLES = 1_000_000
METHODS = NORMALISATIONS  # what config.toml may name
DEFAULT_METHODS = {PHOTOACOUSTICS: "log"}  # channels not listed: "auto"; any case of the name
LOG_RANGE_DB = 40.0


@dataclass(frozen=True)
class IntensityStats:
    """The intensity range mapped onto ``[0, 1]``.

    Attributes
    ----------
    low, high : float
        Values that map to 0 and 1; values outside are clipped.
    method : str
        ``"uint8"`` (divide by 255), ``"bool"``, ``"percentile"`` (linear between
        ``low`` and ``high``) or ``"log"`` (linear in log10 between them).
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


def _percentiles(sample: np.ndarray, q) -> np.ndarray:
    """``np.percentile`` in float64 for float samples: float32 interpolation between
    -3e38 and 3e38 overflows to infinity."""
    if sample.dtype.kind == "f":
        sample = sample.astype(np.float64, copy=False)
    return np.percentile(sample, q)


def _fits_float32(stats: IntensityStats) -> bool:
    """True when the range and its span can be computed in float32 without overflow."""
    limit = float(np.finfo(np.float32).max)
    return max(abs(stats.low), abs(stats.high), stats.high - stats.low) <= limit


def _check_finite(array: np.ndarray) -> None:
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise DataError(None, "image contains NaN or infinite values; fix or mask them before segmenting")


def _check_dtype(array: np.ndarray) -> None:
    if array.dtype.kind not in "biuf":
        raise DataError(None, f"cannot normalise an image of type {array.dtype}; expected integers or floats")


def _fixed_range(dtype: np.dtype) -> IntensityStats | None:
    """The range a dtype fixes whatever its values (8-bit: 0-255; bool: 0-1), or None."""
    if dtype == np.uint8:
        return IntensityStats(0.0, 255.0, "uint8")
    if dtype == np.bool_:
        return IntensityStats(0.0, 1.0, "bool")
    return None


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
    fixed = _fixed_range(array.dtype)
    if fixed is not None:
        return fixed
    sample = _subsample(array, max_samples)
    if sample.size == 0:
        raise DataError(None, "image is empty")
    _check_finite(sample)
    low, high = _percentiles(sample, PERCENTILES)
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
    if stats.method == "percentile" and array.dtype.kind == "f" and (
            array.dtype.itemsize > 4 or not _fits_float32(stats)):
        return _normalise_wide(array, stats)
    if stats.method == "log" and array.dtype.kind == "f" and array.dtype.itemsize > 4:
        # in float64, as the percentile path: cast to float32 first, values beyond its
        # range (1e300, or 1e-300) and the range itself became infinities or zeros, and
        # the channel NaN, which predict then blamed on the model
        return _log_compress(np.asarray(array, dtype=np.float64), stats).astype(np.float32)
    out = np.asarray(array).astype(np.float32)  # always a fresh array: safe to edit in place
    if stats.method == "uint8":
        out /= np.float32(255.0)
        return out
    if stats.method == "bool":
        return out
    if stats.method == "log":
        return _log_compress(out, stats)
    span = stats.high - stats.low
    if span <= 0:
        out[...] = 0.0
        return out
    # In-place float32 arithmetic: no float64 temporaries the size of the image. A value
    # far outside [low, high] may overflow to +-inf, which the clip maps to 1 or 0 as it
    # would the exact value.
    with np.errstate(over="ignore"):
        out -= np.float32(stats.low)
        out /= np.float32(span)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _normalise_wide(array: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """Normalise a float image in float64, then narrow the result to float32.

    float32 ends at 3.4e38: casting first would turn larger values (and a range
    that lies beyond it, such as float32 values from -3e38 to 3e38) into
    infinities, and the scaling into NaN.
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


def _log_compress(out: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """Map ``[low, high]`` onto ``[0, 1]`` linearly in log10, in place; clip outside.
    The arithmetic is in ``out``'s own float type (float32, or float64 for wide values)."""
    if stats.high <= stats.low or stats.low <= 0:
        out[...] = 0.0
        return out
    kind = out.dtype.type
    np.clip(out, kind(stats.low), kind(stats.high), out=out)
    np.log10(out, out=out)
    out -= kind(np.log10(stats.low))
    out /= kind(np.log10(stats.high) - np.log10(stats.low))
    return out


def check_methods(methods: dict[str, str] | None, names: list[str]) -> dict[str, str]:
    """The normalisation method of each channel in ``names``, defaults filled in.

    Raises
    ------
    ValueError
        Naming ``normalisation[<channel>]`` for an unknown method.
    """
    given = methods or {}
    for name, method in given.items():
        if method not in METHODS:
            raise ValueError(f"normalisation[{name}] must be one of {', '.join(METHODS)}, got '{method}'")
    return {name: given.get(name, _default_method(name)) for name in names}


def _default_method(name: str) -> str:
    """A channel's normalisation unless the recipe names one: ``log`` for photoacoustics
    (``pa``, ``PA``), ``auto`` otherwise."""
    return next((method for kind, method in DEFAULT_METHODS.items() if is_modality(name, kind)), "auto")


def channel_stats(array: np.ndarray, method: str = "auto", max_samples: int = MAX_SAMPLES,
                  range_db: float = LOG_RANGE_DB, dtype=None) -> IntensityStats:
    """The intensity range of one channel of a whole image or stack, by ``method``.

    ``auto`` is :func:`intensity_stats` of the channel's own ``dtype`` (default
    ``array``'s): channels stacked into one array share the widest dtype, and 8-bit
    ultrasound stacked beside float32 photoacoustics must still be divided by 255, as
    training (which normalises each channel in its own dtype) did; ``uint8`` maps 0-255; ``percentile`` maps the
    0.5th-99.5th percentiles whatever the dtype; ``log`` maps the 99.5th percentile to
    1 and ``range_db`` below it to 0, in log10 (negative values, as bipolar PA
    reconstructions hold, go to 0; where that percentile is 0 or below, sparse absorbers
    in a background of zeros, the 99.5th percentile of the positive values maps to 1).

    Examples
    --------
    >>> channel_stats(np.array([0.0, 1.0, 10.0, 100.0]), "log", range_db=40).method
    'log'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    _check_dtype(array)
    if method == "auto":
        fixed = None if dtype is None else _fixed_range(np.dtype(dtype))
        return fixed or intensity_stats(array, max_samples)
    if method == "uint8":
        return IntensityStats(0.0, 255.0, "uint8")
    sample = _subsample(array, max_samples)
    _check_finite(sample)
    if method == "percentile":
        low, high = _percentiles(sample, PERCENTILES)
        return IntensityStats(float(low), float(high), "percentile")
    high = float(_percentiles(sample, PERCENTILES[1]))
    positive = sample[sample > 0] if high <= 0 else None
    if positive is not None and positive.size:
        # Absorbers (vessels) filling under 0.5% of a background of zeros or negatives:
        # the percentile of the whole is 0 or below, which maps every value to 0. The
        # top of the signal is the percentile of the positive values.
        high = float(_percentiles(positive, PERCENTILES[1]))
    return IntensityStats(high * 10 ** (-range_db / 20), high, "log")


def normalise_channels(arrays: dict[str, np.ndarray], methods: dict[str, str] | None = None,
                       stats: dict[str, IntensityStats] | None = None) -> np.ndarray:
    """Normalise each channel to float32 in ``[0, 1]`` and stack them channels last.

    Parameters
    ----------
    arrays : dict of str to ndarray
        Each channel in its own dtype (so 8-bit US is still recognised as such), all
        of one shape, as :func:`bcseg.data.cases.read_case_channel_arrays` returns.
    methods : dict of str to str, optional
        Method per channel name (see :func:`check_methods` for the defaults).
    stats : dict of str to IntensityStats, optional
        Volume-wide ranges per channel; computed from each array when omitted.

    Returns
    -------
    ndarray of float32, ``shape + (C,)`` in the order of ``arrays``
    """
    names = list(arrays)
    methods = check_methods(methods, names)
    shapes = {tuple(a.shape) for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"channels differ in shape: {sorted(shapes)}")
    out = np.empty(shapes.pop() + (len(names),), np.float32)
    for index, name in enumerate(names):
        own = stats[name] if stats else channel_stats(arrays[name], methods[name])
        out[..., index] = normalise(arrays[name], own)
    return out


def blank_problem(name: str, array: np.ndarray, method: str = "auto", chunk: int = 16) -> str | None:
    """Why a named channel holds no image once normalised by ``method``, or None.

    A constant channel (:func:`bcseg.data.channels.constant_problem`), and one
    normalised by ``log`` (the photoacoustic default) that has no value above 0: log compression maps every value
    at or below 0 to 0, so a PA stack saved negated (a bipolar reconstruction's sign
    flipped) or clipped to zero would be trained on, or segmented with, as a blank
    channel. As there, the first slice decides for almost every real image.
    """
    problem = constant_problem(name, array, chunk)
    if problem or method not in ("log", "auto", "percentile"):
        return problem
    if method != "log":
        return flat_problem(name, array, method)
    first = array if array.ndim == 2 else array[0]
    if (first > 0).any():  # not max(): NaN beside positive values is the finite check's to name
        return None
    rest = range(1, len(array) if array.ndim > 2 else 1, chunk)
    if any((array[start:start + chunk] > 0).any() for start in rest):
        return None
    return (f"channel '{name}' has no value above 0, so its log normalisation maps all of it to 0: "
            f"it holds no image; check the export from the scanner (a reconstruction saved with "
            f"its sign flipped?), or set normalisation.{name} = \"percentile\" in the config")


def flat_problem(name: str, array: np.ndarray, method: str = "auto") -> str | None:
    """Why a channel that is not constant still holds no image once normalised linearly
    between its 0.5th and 99.5th percentiles (``auto`` for any type but 8-bit, or
    ``percentile``), or None.

    Where one value fills over 99 % of the voxels (sparse vessels in a photoacoustic
    image of zeros, a PA channel under a name bcseg does not know, or set to
    ``percentile``), both percentiles are that value and the whole channel maps to 0:
    trained on or segmented with as blank, as a constant channel would be, without a
    word. ``log`` keeps such a channel (it takes the top of the positive values).
    """
    try:
        stats = channel_stats(array, method)  # the subsample training and predict read
    except DataError:
        return None  # NaN or infinity: the finite check names the file
    if stats.method != "percentile" or stats.high > stats.low:
        return None
    return (f"channel '{name}' holds one value ({stats.low:g}) in over 99% of its voxels, so its "
            f"{method} normalisation (0.5th to 99.5th percentile) maps all of it to 0: the model "
            f"would see no image; if it is sparse (vessels in a photoacoustic image), set "
            f"normalisation.{name} = \"log\" in the config")
