"""Segment 2D images and 3D stacks with a trained U-Net.

The function that does the work is :func:`predict_volume`; it dispatches on the
model's input rank:

* a **2D model** (input ``(N, H, W, C)``) runs on an ``(H, W)`` image, or on a
  ``(Z, H, W)`` stack slice by slice, in batches of slices streamed from the (possibly
  memory-mapped) stack;
* a **3D model** (input ``(N, Z, H, W, C)``) runs a sliding window over a
  ``(Z, H, W)`` stack and blends overlapping windows with Gaussian weights
  (nnU-Net / MONAI style).

Every slice or window is normalised with volume-wide :mod:`bcseg.data.intensity`
statistics, reflect-padded to a multiple of the model's size divisor and cropped
back, so the mask has the input's exact shape. Mirror test-time augmentation (TTA)
averages the predictions of every combination of the flips the model was trained
with (its ``flips`` setting: for bcseg's recipes left-right, and slice order in 3D;
never up-down, since ultrasound depth has a direction). An ensemble averages its
members' probabilities, one member at a time per batch or slab, before one
threshold and post-processing.

Memory stays bounded for large stacks: slices are read, normalised and predicted a
batch at a time; results go straight into the caller's output arrays (for example
``tifffile.memmap`` files); the pages of memory-mapped inputs and outputs are released
from the process as soon as a batch is done; a 3D window pass keeps one slab of
accumulated probabilities, not the whole volume. The model sees at most about
``VOXELS_PER_CALL`` voxels per call, or one whole 2D slice of up to
``WHOLE_SLICE_PIXELS`` (larger slices go in tiles).

:func:`segment_volume` is the one inference function (settings object:
:class:`bcseg.rundir.InferenceSettings`); :func:`predict_volume` is its keyword
form for one model in memory.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from bcseg.config import is_whole
from bcseg.errors import ConfigError, DataError, ModelError, naming
from bcseg.data.image_rules import spacing_problem
from bcseg.data.intensity import channel_stats, check_methods, intensity_stats, normalise
from bcseg.infer.postprocess import apply_steps_inplace, check_steps, release_slices
from bcseg.learn.saved import ModelSpec, load_model, model_spec, probabilities  # noqa: F401 (re-exported)
from bcseg.rundir import DEFAULT_FLIPS, DEFAULTS, InferenceSettings

if TYPE_CHECKING:  # annotations only: Keras is imported where a model runs
    import keras

VOXELS_PER_CALL = 1 << 20  # caps the batch so activations of large slices stay bounded
DEFAULT_PATCH = 128        # default 3D window edge (before rounding to the divisor)
# A 2D model of free input size segments whole slices up to this many pixels (padded),
# and larger ones in Gaussian-blended tiles of SLICE_TILE pixels a side: a whole slice is
# one call whatever VOXELS_PER_CALL says, and the feature maps of a 30000-pixel-wide
# slice (within the readers' 4 GiB per file) would need tens of GB. 8 Mpx is more than any
# ultrasound or photoacoustic frame, so their masks stay those of whole slices.
WHOLE_SLICE_PIXELS = 1 << 23
SLICE_TILE = 2048
GAUSSIAN_FLOOR = 1e-3      # per-axis floor of the blending weights


def _round_up(n: int, d: int) -> int:
    return -(-n // d) * d


def _pad(x: np.ndarray, target: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Reflect-pad the spatial axes of a batch ``(N, *spatial, C)`` to ``target``, centred.

    The crop returned takes the spatial axes back to their size (the channel axis is
    left alone)."""
    widths = [(0, 0)] + [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(x.shape[1:], target)]
    crop = (slice(None),) + tuple(slice(b, b + n) for (b, _), n in zip(widths[1:], x.shape[1:]))
    widths += [(0, 0)] * (x.ndim - len(widths))
    if not any(b or a for b, a in widths):
        return x, crop
    return np.pad(x, widths, mode="reflect"), crop


def tta_axes(ndim: int, flips: Sequence[str]) -> tuple[int, ...]:
    """Batch axes of the named mirror flips (``"z"``, ``"ud"``, ``"lr"``) for a model.

    A batch is ``(N, H, W)`` in 2D and ``(N, Z, H, W)`` in 3D; ``"z"`` has no axis
    in 2D.
    """
    names = ("ud", "lr") if ndim == 2 else ("z", "ud", "lr")
    return tuple(i + 1 for i, name in enumerate(names) if name in flips)


def tta_flips(ndim: int, flips: Sequence[str], tta: bool) -> list[tuple[int, ...]]:
    """The flips a TTA pass runs: every combination of the model's trained mirror axes
    (the identity first), or the identity alone without TTA."""
    axes = tta_axes(ndim, flips) if tta else ()
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class _Intensity:
    """Volume-wide intensity statistics, and the normalisation of slices or windows
    with them, channels last: a grey image gains a channel axis; named channels are
    each normalised by their own method (:mod:`bcseg.data.intensity`)."""

    def __init__(self, array: np.ndarray, names: Sequence[str], methods: dict[str, str],
                 dtypes: Sequence | None = None):
        self.grey = not names
        if self.grey:
            self.stats = [intensity_stats(array)]
        else:
            methods = check_methods(methods, list(names))
            dtypes = list(dtypes) if dtypes is not None else [None] * len(names)
            self.stats = [channel_stats(array[..., c], methods[n], dtype=dtypes[c])
                          for c, n in enumerate(names)]

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.grey:
            return normalise(block, self.stats[0])[..., None]
        return np.stack([normalise(block[..., c], s) for c, s in enumerate(self.stats)], axis=-1)


class _Runner:
    """Calls the model on padded batches, with mirror TTA, and checks its output."""

    def __init__(self, model: keras.Model, flips: list[tuple[int, ...]]):
        self.model = model
        self.flips = flips

    def __call__(self, x: np.ndarray, target: Sequence[int]) -> np.ndarray:
        """Probabilities ``(N, *spatial)`` for a batch ``(N, *spatial, C)``, padded to
        ``target`` and cropped back; TTA mirrors the spatial axes only."""
        padded, crop = _pad(x, target)
        total = None
        for axes in self.flips:  # each output is a fresh array: sum into the first in place
            out = np.flip(probabilities(self.model, np.flip(padded, axes)), axes)
            total = out if total is None else np.add(total, out, out=total)
        if len(self.flips) > 1:
            total /= np.float32(len(self.flips))
        return total[crop]


# --------------------------------------------------------------------------- memory

def _store(mask_out, prob_out, threshold: float) -> Callable[[int, int, np.ndarray], None]:
    """A function that writes probabilities for slices ``start:stop`` into the outputs."""
    def store(start: int, stop: int, prob: np.ndarray) -> None:
        if prob_out is not None:
            prob_out[start:stop] = prob
            release_slices(prob_out, start, stop)
        above = prob > threshold
        if mask_out.dtype == np.uint8:
            np.multiply(above, np.uint8(255), out=mask_out[start:stop], casting="unsafe")
        else:
            mask_out[start:stop] = above
        release_slices(mask_out, start, stop)
    return store


# --------------------------------------------------------------------------- windows

def _window_starts(size: int, length: int, overlap: float) -> list[int]:
    """Evenly spaced starts of windows of ``length`` covering ``size`` with ``overlap``."""
    if size <= length:
        return [0]
    step = max(1, int(length * (1 - overlap)))
    count = math.ceil((size - length) / step) + 1
    return [round(i * (size - length) / (count - 1)) for i in range(count)]


def _gaussian(length: int) -> np.ndarray:
    """1D blending weight: Gaussian with sigma = length / 8, peak 1, floored above zero."""
    t = np.arange(length) - (length - 1) / 2
    weight = np.exp(-(t**2) / (2 * (length / 8) ** 2))
    return np.maximum(weight / weight.max(), GAUSSIAN_FLOOR).astype(np.float32)


def _weight_sum(size: int, starts: list[int], weight: np.ndarray) -> np.ndarray:
    """Sum over windows of the 1D weight along one axis (the weights are separable)."""
    total = np.zeros(size, np.float32)
    for s in starts:
        total[s:s + len(weight)] += weight
    return total


@dataclass(frozen=True)
class _Windows:
    """A regular grid of windows over some spatial axes, with separable Gaussian weights."""

    lengths: tuple[int, ...]
    starts: tuple[list[int], ...]
    weights: tuple[np.ndarray, ...]
    sums: tuple[np.ndarray, ...]

    @classmethod
    def over(cls, shape: Sequence[int], patch: Sequence[int], overlap: float) -> "_Windows":
        lengths = tuple(min(p, n) for p, n in zip(patch, shape))
        starts = tuple(_window_starts(n, ln, overlap) for n, ln in zip(shape, lengths))
        weights = tuple(_gaussian(ln) for ln in lengths)
        sums = tuple(_weight_sum(n, s, w) for n, s, w in zip(shape, starts, weights))
        return cls(lengths, starts, weights, sums)

    def weight(self, axes: slice = slice(None)) -> np.ndarray:
        """Outer product of the per-axis weights of ``axes``."""
        return _outer(self.weights[axes])

    def total(self, axes: slice = slice(None)) -> np.ndarray:
        return _outer(self.sums[axes])


def _outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    out = vectors[0]
    for v in vectors[1:]:
        out = np.multiply.outer(out, v)
    return out.astype(np.float32)


def _resolve_patch(spec: ModelSpec, shape: Sequence[int], patch_size) -> tuple[int, ...] | None:
    """Window shape over the model's spatial axes, or None for whole 2D slices (up to
    ``WHOLE_SLICE_PIXELS``; larger ones in tiles of ``SLICE_TILE``)."""
    d = spec.divisor
    fixed = spec.fixed
    if patch_size is None:
        if all(f is None for f in fixed):
            if spec.ndim == 2 and math.prod(_round_up(n, d) for n in shape) <= WHOLE_SLICE_PIXELS:
                return None
            edge = SLICE_TILE if spec.ndim == 2 else DEFAULT_PATCH
            patch_size = (_round_up(edge, d),) * spec.ndim
        else:
            patch_size = tuple(f or _round_up(DEFAULT_PATCH, d) for f in fixed)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != spec.ndim or any(p < 1 for p in patch):
        raise ValueError(f"patch_size {tuple(patch_size)} must have {spec.ndim} positive sizes")
    for p, f in zip(patch, fixed):
        if f is not None and p != f:
            raise ModelError(None, f"the model takes inputs of spatial size {fixed}, "
                             f"not patch_size {patch}")
        if f is None and p % d:
            raise ValueError(f"patch_size {patch} must be a multiple of the model's size divisor {d}")
    # No window larger than needed: a free axis shrinks to the padded image size.
    return tuple(p if f is not None else min(p, _round_up(n, d))
                 for p, f, n in zip(patch, fixed, shape))


def _batch_of(batch_size: int, item_shape: Sequence[int]) -> int:
    return max(1, min(batch_size, VOXELS_PER_CALL // max(1, math.prod(item_shape))))


def _progress(total: int, enabled: bool, desc: str):
    return tqdm(total=total, disable=not enabled, desc=desc, unit="batch", leave=False)


def _slice_predictor(run, spec, plane, patch, overlap, input_size):
    """How a 2D model maps a normalised batch ``(N, H, W, C)`` to probabilities ``(N, H, W)``.

    Returns the function and the spatial shape of one model input.
    """
    if input_size:  # as trained: pad to a square at bottom/right, resize, and back
        from bcseg.learn.pipeline import from_square, to_square_channels  # heavy imports, only when needed

        target = (_round_up(input_size, spec.divisor),) * 2
        if any(f is not None and f != t for f, t in zip(spec.fixed, target)):
            raise ModelError(None, f"the model takes inputs of size {spec.fixed}, not input_size {input_size}")

        def fitted(x):
            squares = np.stack([to_square_channels(s, input_size) for s in x])
            return np.stack([from_square(p, plane) for p in run(squares, target)])
        return fitted, target
    if patch is None:
        target = tuple(_round_up(n, spec.divisor) for n in plane)
        return (lambda x: run(x, target)), target
    windows = _Windows.over(plane, patch, overlap)
    weight, total = windows.weight(), windows.total()
    (ly, lx), (ys, xs) = windows.lengths, windows.starts

    def tiled(x):  # fixed-size 2D model, or patch_size given: Gaussian-blended tiles
        prob = np.zeros(x.shape[:-1], np.float32)
        for y, xx in itertools.product(ys, xs):
            region = (slice(None), slice(y, y + ly), slice(xx, xx + lx))
            prob[region] += run(x[region], patch) * weight
        prob /= total
        return prob
    return tiled, patch


def _predict_slices(predict, item, volume, intensity, batch_size, progress):
    """2D model over a ``(Z, H, W)`` stack (``(Z, H, W, C)`` with named channels), a
    batch of slices at a time.

    Yields ``(start, stop, probabilities)`` for consecutive runs of slices.
    """
    depth = volume.shape[0]
    batch = _batch_of(batch_size, item)
    with _progress(math.ceil(depth / batch), progress, "slices") as bar:
        for start in range(0, depth, batch):
            stop = min(start + batch, depth)
            x = intensity(volume[start:stop])
            release_slices(volume, start, stop)
            yield start, stop, predict(x)
            bar.update()


def _predict_windows(run, volume, intensity, patch, overlap, batch_size, progress):
    """3D model over a ``(Z, H, W)`` stack (``(Z, H, W, C)`` with named channels) with
    Gaussian-blended sliding windows.

    Windows are visited in order of their z start; one slab of ``patch[0]`` slices
    accumulates weighted probabilities, and slices no later window touches are
    finished, yielded as ``(start, stop, probabilities)`` (a view into the slab,
    valid until the next item is asked for) and dropped from the slab.
    """
    depth, height, width = volume.shape[:3]
    windows = _Windows.over(volume.shape[:3], patch, overlap)
    lz, ly, lx = windows.lengths
    zs, ys, xs = windows.starts
    weight = windows.weight()
    plane_total = windows.total(slice(1, None))
    slab = np.zeros((lz, height, width), np.float32)
    in_plane = list(itertools.product(ys, xs))
    batch = _batch_of(batch_size, patch)
    with _progress(len(zs) * math.ceil(len(in_plane) / batch), progress, "windows") as bar:
        for i, z in enumerate(zs):
            for first in range(0, len(in_plane), batch):
                corners = in_plane[first:first + batch]
                x = np.stack([intensity(volume[z:z + lz, y:y + ly, xx:xx + lx]) for y, xx in corners])
                prob = run(x, patch)
                for (y, xx), p in zip(corners, prob):
                    slab[:, y:y + ly, xx:xx + lx] += p * weight
                bar.update()
            done = (zs[i + 1] if i + 1 < len(zs) else depth) - z
            for k in range(done):
                slab[k] /= windows.sums[0][z + k] * plane_total
            yield z, z + done, slab[:done]
            release_slices(volume, z, z + done)
            slab[: lz - done] = slab[done:].copy()
            slab[lz - done:] = 0


# --------------------------------------------------------------------------- predict

def _spatial_shape(array: np.ndarray, names: Sequence[str]) -> tuple[int, ...]:
    """The image's shape without the channel axis that named channels come with."""
    return array.shape[:-1] if names else array.shape


def _check_channels(spec: ModelSpec, array: np.ndarray, names: Sequence[str]) -> None:
    if not names and spec.channels != 1:
        raise DataError(None, f"the model expects {spec.channels} input channels, but the image "
                        "has 1 and the model's settings name no channels; predict with the "
                        "run's folder, whose settings name them")
    if names and (spec.channels != len(names) or array.ndim < 3 or array.shape[-1] != len(names)):
        raise DataError(None, f"the model takes {spec.channels} channel(s) ({', '.join(names)}), "
                        f"channel axis last, not an array of shape {array.shape}")


def rank_problem(model_ndim: int, shape: Sequence[int], stored: Sequence[int] = ()) -> str | None:
    """Why a model of ``model_ndim`` spatial axes cannot segment an image of spatial
    ``shape``, or None when it can; ``stored`` is the file's own shape, where known.

    The one rule, used on arrays here and on file headers by :mod:`bcseg.infer.segment`
    before any output is written, so a 2D image among stacks for a 3D model is refused
    before the stacks' masks are made rather than after.
    """
    shape = tuple(shape)
    if model_ndim == 2 and len(shape) not in (2, 3):
        return f"a 2D model segments (H, W) images or (Z, H, W) stacks, not a {len(shape)}D " \
               f"array of shape {shape}"
    if model_ndim == 3 and len(shape) == 2 and len(stored) == 3:
        # reading drops a stack's singleton axis: say what the file holds, not the array
        if stored[0] == 1:
            return (f"is a stack of one slice (stored shape {tuple(stored)}), and a 3D model "
                    "segments stacks of several; segment it with a 2D model")
        # (Z, 1, X) or (Z, Y, 1): several slices, one pixel high or wide, no "one slice"
        return (f"is a stack with an axis of one pixel (stored shape {tuple(stored)}), read as "
                f"the 2D image {shape}, and a 3D model segments (Z, H, W) stacks of 2 or more "
                "pixels a side; segment it with a 2D model")
    if model_ndim == 3 and len(shape) != 3:
        hint = "; use a 2D model for 2D images" if len(shape) == 2 else ""
        return f"a 3D model segments (Z, H, W) stacks, not a {len(shape)}D array of shape {shape}{hint}"
    return None


def _check_input(spec: ModelSpec, array: np.ndarray, spacing, names: Sequence[str] = ()) -> None:
    _check_channels(spec, array, names)
    array = array[..., 0] if names else array  # the spatial axes
    problem = rank_problem(spec.ndim, array.shape)
    if problem:
        raise DataError(None, problem)
    if array.size == 0:  # failed inside NumPy's reductions or TensorFlow, naming nothing
        raise DataError(None, f"the image has no pixels (shape {array.shape})")
    if spacing is not None:
        # The readers' rule (spacing_problem); only the length was checked, so a spacing
        # of 0, NaN or text given here was taken without a word.
        if isinstance(spacing, str) or not isinstance(spacing, (Sequence, np.ndarray)):
            raise DataError(None, f"spacing must be one number per axis (mm), got {spacing!r}")
        if len(spacing) != array.ndim:
            raise DataError(None, f"spacing {tuple(spacing)} does not match an image of shape {array.shape}")
        problem = spacing_problem(spacing, array.ndim)
        if problem:
            raise DataError(None, f"spacing {tuple(spacing)}: {problem}")


def _check_out(out, shape, dtypes, name: str, image: np.ndarray | None = None) -> None:
    if out is None:
        return
    if not isinstance(out, np.ndarray):  # a list failed as "'list' object has no attribute 'shape'"
        raise ValueError(f"{name} must be a NumPy array (or memory map), got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype not in dtypes:
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype "
                         f"{' or '.join(str(np.dtype(d)) for d in dtypes)}, got {out.shape} {out.dtype}")
    # Both found only part-way, after the model ran: a read-only array failed as NumPy's
    # "assignment destination is read-only", and the image itself was overwritten by
    # the mask while its later slices were still to be read.
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only; give an array the results can be written into")
    if image is not None and np.shares_memory(out, image):
        raise ValueError(f"{name} shares its memory with the image being segmented; give a "
                         "separate array")


def predict_volume(
    model: keras.Model,
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    threshold: float = DEFAULTS["threshold"],
    tta: bool = DEFAULTS["tta"],
    flips: Sequence[str] = DEFAULT_FLIPS,
    postprocess: Sequence[str] = (),
    min_size: int = DEFAULTS["min_size"],
    batch_size: int = 8,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    input_size: int | None = None,
    mask_out: np.ndarray | None = None,
    prob_out: np.ndarray | None = None,
    keep_prob: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment an image or stack with one model; return the mask and the probability.

    The keyword form of :func:`segment_volume` for one model in memory: the keyword
    arguments are the fields of :class:`bcseg.rundir.InferenceSettings`.

    Parameters
    ----------
    model : keras.Model
        A 2D or 3D model with one input channel and one sigmoid output channel.
    array, spacing
        As :func:`segment_volume`.
    threshold : float
        Tumour where the probability is strictly above it.
    tta, flips : bool, sequence of {"z", "ud", "lr"}
        Average over every combination of mirror flips along ``flips``, the axes the
        model was trained to mirror (default: left-right and, in 3D, slice order;
        never up-down, which ultrasound depth does not allow).
    postprocess, min_size : sequence of {"largest", "fill", "small"}, int
        Steps of :func:`postprocess` on the whole mask; smallest kept component.
    patch_size, input_size : optional
        3D (or tiled 2D) window; the square a 2D model was trained on, to which each
        slice is fitted as training did (:func:`bcseg.learn.pipeline.to_square`).
    batch_size, overlap, mask_out, prob_out, keep_prob, progress
        As :func:`segment_volume`, which gives the Returns too.

    Examples
    --------
    >>> mask, prob = predict_volume(model, stack, tta=True, postprocess=["largest"])  # doctest: +SKIP
    """
    if input_size is not None and patch_size is not None:
        raise ValueError(f"input_size must be a positive size, without patch_size; got {input_size}")
    settings = _keyword_settings(threshold, tta, flips, check_steps(postprocess), min_size,
                                 input_size, patch_size)
    return segment_volume(model, array, settings, spacing, batch_size=batch_size, overlap=overlap,
                          mask_out=mask_out, prob_out=prob_out, keep_prob=keep_prob,
                          progress=progress)


def _plain(value):
    """A NumPy scalar as the Python number or bool it holds (np.float32(0.4) is no
    ``float``, which the settings' rule asks for); anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _keyword_settings(threshold, tta, flips, postprocess, min_size, input_size, patch_size
                      ) -> InferenceSettings:
    """predict_volume's keywords as settings, checked by the rule a settings file is
    (:meth:`InferenceSettings.from_dict`). Unchecked, input_size=10**9 asked for a
    square of 10**18 pixels and the process was killed, a threshold of 0 marked every
    pixel, and min_size without the 'small' step, or an unknown flip, went unread."""
    flips = [flips] if isinstance(flips, str) else [_plain(f) for f in flips]
    data = {"threshold": _plain(threshold), "tta": _plain(tta), "flips": flips,
            "postprocess": list(postprocess), "min_size": _plain(min_size),
            "input_size": _plain(input_size),
            "patch_size": None if patch_size is None else [_plain(p) for p in patch_size]}
    if data["min_size"] != DEFAULTS["min_size"] and "small" not in data["postprocess"]:
        raise ValueError(f"min_size={min_size} needs the 'small' step, which the post-processing "
                         f"({', '.join(data['postprocess']) or 'none'}) lacks; add small to postprocess")
    try:
        return InferenceSettings.from_dict(data)
    except ConfigError as error:  # a keyword, not a file: the Python caller's ValueError
        raise ValueError(error.problem) from None


def segment_volume(models: keras.Model | Sequence[keras.Model], array: np.ndarray,
                   settings: InferenceSettings, spacing: Sequence[float] | None = None, *,
                   batch_size: int = 8, overlap: float = 0.5, mask_out: np.ndarray | None = None,
                   prob_out: np.ndarray | None = None, keep_prob: bool = True,
                   progress: bool = False, channel_dtypes: Sequence | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment an image or stack with a model or an ensemble: bcseg's one inference path.

    Training's tuning and test fold, ``bcseg predict``, the demo and the benchmarks.

    Parameters
    ----------
    models : keras.Model or sequence of keras.Model
        One model, or the ensemble's members in the order of ``settings.members``.
    array, spacing : ndarray or numpy.memmap, tuple of float, optional
        ``(H, W)`` image or ``(Z, H, W)`` stack (a memory-mapped one is streamed);
        for a model of named channels (``settings.channel_names``) with the channels
        last, in that order. Its mm per spatial axis, checked against the shape.
    settings : InferenceSettings
        Threshold, post-processing, TTA, and per model (or member) its ``flips``,
        ``input_size`` and ``patch_size``; members' probabilities are averaged.
    batch_size, overlap : int, float
        At most this many slices or windows per model call (fewer for large ones);
        the fraction in [0, 1) by which neighbouring windows overlap.
    mask_out, prob_out : ndarray, optional
        Arrays of ``array``'s shape to write into (e.g. ``tifffile.memmap`` files): the
        mask as bool or uint8 0/255, the probability as float32.
    keep_prob, progress : bool
        Keep a probability map when no ``prob_out`` is given; show a progress bar.
    channel_dtypes : sequence of dtype, optional
        Each named channel's own dtype, where stacking widened it (8-bit ultrasound
        beside float32 photoacoustics): ``auto`` normalises a channel by its own dtype.

    Returns
    -------
    mask, prob : ndarray
        ``mask_out`` / ``prob_out`` when given, else new arrays (bool; float32, or None
        when ``keep_prob`` is False).

    Raises DataError for an image that does not fit a model (rank, channels, NaN), and
    ModelError for a model whose output does not fit, or models not matching the members.
    """
    models = list(models) if isinstance(models, (list, tuple)) else [models]  # one model, or several
    views = settings.member_views()
    names = settings.input_channels()
    array = array if isinstance(array, np.ndarray) else np.asarray(array)
    specs = _member_specs(models, views, array, spacing, names)
    shape = _spatial_shape(array, names)
    _check_call(settings, overlap, batch_size, mask_out, prob_out, shape, array)
    mask = np.empty(shape, bool) if mask_out is None else mask_out
    prob = np.empty(shape, np.float32) if prob_out is None and keep_prob else prob_out
    flat = len(shape) == 2  # one image: a stack of one slice
    store = _store(mask[None] if flat else mask, None if prob is None else (prob[None] if flat else prob),
                   settings.threshold)
    intensities: dict = {}  # one set of statistics per normalisation the members ask for
    _mean_of_members([_named(_member_chunks(m, spec, view, array[None] if flat else array,
                                            _member_intensity(intensities, array, names, view, channel_dtypes),
                                            batch_size, overlap, progress), view)
                      for m, spec, view in zip(models, specs, views)], store)
    if settings.postprocess:
        apply_steps_inplace(mask, list(settings.postprocess), settings.min_size)
    return mask, prob


def _member_specs(models, views, array, spacing, names) -> list[ModelSpec]:
    """Each model's input contract, checked against the settings and the image."""
    if len(models) != len(views):
        raise ModelError(None, f"{len(models)} model(s) given for {len(views)} member(s) in the settings")
    specs = [model_spec(m) for m in models]
    for spec in specs:
        _check_input(spec, array, spacing, names)
    return specs


def _member_intensity(known: dict, array, names, view: InferenceSettings, dtypes=None) -> _Intensity:
    """The intensity statistics a member normalises with, computed once per method set."""
    key = tuple(sorted(view.normalisation.items()))
    if key not in known:
        known[key] = _Intensity(array, names, view.normalisation, dtypes)
    return known[key]


def _check_call(settings, overlap, batch_size, mask_out, prob_out, shape, image=None) -> None:
    check_steps(settings.postprocess)
    if not 0 <= settings.threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {settings.threshold}")
    # numbers only: text failed as "'<=' not supported between 'int' and 'str'", and
    # batch_size 2.5 as "'float' object cannot be interpreted as an integer"
    if not (isinstance(overlap, numbers.Real) and not isinstance(overlap, bool) and 0 <= overlap < 1):
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be a whole number, at least 1, got {batch_size!r}")
    _check_out(mask_out, shape, (np.bool_, np.uint8), "mask_out", image)
    _check_out(prob_out, shape, (np.float32,), "prob_out", image)


def _member_chunks(model, spec: ModelSpec, view: InferenceSettings, volume, intensity: _Intensity,
                   batch_size: int, overlap: float, progress: bool):
    """One model's probabilities over a ``(Z, H, W)`` volume (``(Z, H, W, C)`` with
    named channels), as ``(start, stop, prob)`` runs of slices in order, with its own
    input size, window and TTA flips."""
    run = _Runner(model, tta_flips(spec.ndim, view.flips, view.tta))
    spatial = volume.shape[:3]
    if spec.ndim == 2:
        patch = None if view.input_size else _resolve_patch(spec, spatial[1:], view.patch_size)
        predict, item = _slice_predictor(run, spec, spatial[1:], patch, overlap, view.input_size)
        return _predict_slices(predict, item, volume, intensity, batch_size, progress)
    if view.input_size:
        raise ValueError("input_size applies to 2D models; a 3D model uses patch_size")
    patch = _resolve_patch(spec, spatial, view.patch_size)
    return _predict_windows(run, volume, intensity, patch, overlap, batch_size, progress)


def _named(chunks, view: InferenceSettings):
    """A member's runs of slices; an error from its output (NaN weights) names its
    file, which an ensemble's member settings record, not the ensemble's first model."""
    path = view.info.get("path")
    with naming(path) if path is not None else contextlib.nullcontext():
        yield from chunks


def _mean_of_members(sources: list, store: Callable[[int, int, np.ndarray], None]) -> None:
    """Store the mean of the members' probabilities, slices in order, as they complete.

    Each source yields runs of slices in order. The member furthest behind is
    advanced, one run at a time, so every member holds at most one run of slices
    that the others have not reached yet: memory is one slab or batch per member,
    never the volume. Slices every member has produced are summed (a running sum),
    divided by the member count and stored.
    """
    if len(sources) == 1:  # one model: straight through, nothing buffered
        for start, stop, prob in sources[0]:
            store(start, stop, prob)
        return
    pending = [[] for _ in sources]   # per member: [start, prob] runs not yet stored
    reached = [0] * len(sources)      # per member: slices produced so far
    done = 0
    while True:
        behind = min(range(len(sources)), key=reached.__getitem__)
        item = next(sources[behind], None)
        if item is None:
            break
        start, stop, prob = item
        pending[behind].append([start, np.array(prob, np.float32, copy=True)])
        reached[behind] = stop
        ready = min(reached)
        if ready > done:
            total = _take(pending[0], done, ready)
            for runs in pending[1:]:
                total += _take(runs, done, ready)
            total /= np.float32(len(sources))
            store(done, ready, total)
            done = ready


def _take(runs: list, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` from a member's pending runs, dropping what is used."""
    parts = []
    while runs and start < stop:
        first, prob = runs[0]
        count = min(stop, first + len(prob)) - start
        parts.append(prob[start - first:start - first + count])
        start += count
        if start - first >= len(prob):
            runs.pop(0)
    return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
