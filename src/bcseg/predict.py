"""Segment 2D images and 3D stacks with a trained U-Net.

The function that does the work is :func:`predict_volume`; it dispatches on the
model's input rank:

* a **2D model** (input ``(N, H, W, C)``) runs on an ``(H, W)`` image, or on a
  ``(Z, H, W)`` stack slice by slice, in batches of slices streamed from the (possibly
  memory-mapped) stack;
* a **3D model** (input ``(N, Z, H, W, C)``) runs a sliding window over a
  ``(Z, H, W)`` stack and blends overlapping windows with Gaussian weights
  (nnU-Net / MONAI style).

Every slice or window is normalised with volume-wide :mod:`bcseg.intensity`
statistics, reflect-padded to a multiple of the model's size divisor and cropped
back, so the mask has the input's exact shape. Mirror test-time augmentation (TTA)
averages the predictions of all flips of the spatial axes (4 in 2D, 8 in 3D).

Memory stays bounded for large stacks: slices are read, normalised and predicted a
batch at a time; results go straight into the caller's output arrays (for example
``tifffile.memmap`` files); the pages of memory-mapped inputs and outputs are released
from the process as soon as a batch is done; a 3D window pass keeps one slab of
accumulated probabilities, not the whole volume. The model sees at most about
``VOXELS_PER_CALL`` voxels per call.

:func:`predict_files` is the file-level entry point used by ``bcseg predict``.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tifffile
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from bcseg import io
from bcseg.atomic import atomic_path
from bcseg.errors import BcsegError, ConfigError, DataError, ModelError, UsageError
from bcseg.intensity import intensity_stats, normalise
from bcseg.models import model_divisor

POSTPROCESS_STEPS = ("largest", "fill", "small")
MODEL_FILE = "model_best.keras"
SETTINGS_FILE = "inference.json"
DEFAULT_SETTINGS = {"threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False,
                    "ndim": None, "patch_size": None, "input_size": None}
VOXELS_PER_CALL = 1 << 20  # caps the batch so activations of large slices stay bounded
DEFAULT_PATCH = 128        # default 3D window edge (before rounding to the divisor)
GAUSSIAN_FLOOR = 1e-3      # per-axis floor of the blending weights
_LABEL_CHUNK = 1 << 24     # voxels per chunk when counting or selecting components


# --------------------------------------------------------------------------- model

def load_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` model safely (``safe_mode=True``, not compiled).

    Raises
    ------
    ModelError
        Missing file, not a zip archive, or not a Keras model.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(path, "model file not found")
    if not path.is_file():
        raise ModelError(path, "is a folder; pass a .keras file or a training run folder")
    if not zipfile.is_zipfile(path):  # Keras would report such a file as "not found"
        raise ModelError(path, "is not a Keras model file (a .keras file is a zip archive; "
                         "legacy .h5 files are not read); pass a .keras file saved by bcseg train")
    try:
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, zipfile/OSError, TypeError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(path, f"cannot load the Keras model ({reason}); "
                         "is it a .keras file saved by bcseg train?") from None
    if not isinstance(model, keras.Model):
        raise ModelError(path, "does not hold a Keras model")
    return model


@dataclass(frozen=True)
class _ModelSpec:
    ndim: int                        # spatial dimensions, 2 or 3
    channels: int
    fixed: tuple[int | None, ...]    # static spatial input sizes, None where free
    divisor: int


def _model_spec(model: keras.Model) -> _ModelSpec:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(None, "bcseg models take one input image and give one output map")
    shape = tuple(model.inputs[0].shape)
    if len(shape) not in (4, 5):
        raise ModelError(None, f"model input shape {shape} is neither 2D (N, H, W, C) "
                         "nor 3D (N, Z, H, W, C)")
    return _ModelSpec(len(shape) - 2, shape[-1] or 1, shape[1:-1], model_divisor(model))


def _round_up(n: int, d: int) -> int:
    return -(-n // d) * d


def _pad(x: np.ndarray, target: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Reflect-pad the spatial axes of a batch ``(N, *spatial)`` to ``target``, centred."""
    widths = [(0, 0)] + [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(x.shape[1:], target)]
    crop = (slice(None),) + tuple(slice(b, b + n) for (b, _), n in zip(widths[1:], x.shape[1:]))
    if not any(b or a for b, a in widths):
        return x, crop
    return np.pad(x, widths, mode="reflect"), crop


class _Runner:
    """Calls the model on padded batches, with mirror TTA, and checks its output."""

    def __init__(self, model: keras.Model, spec: _ModelSpec, tta: bool):
        self.model = model
        axes = range(1, spec.ndim + 1)  # spatial axes of a batch
        self.flips = [c for r in range(spec.ndim + 1) for c in itertools.combinations(axes, r)]
        if not tta:
            self.flips = [()]

    def _call(self, x: np.ndarray) -> np.ndarray:
        out = self.model.predict_on_batch(np.ascontiguousarray(x)[..., None])
        out = np.asarray(out, dtype=np.float32)
        if out.shape != x.shape + (1,):
            raise ModelError(None, f"model maps input {x.shape + (1,)} to {out.shape}; bcseg "
                             "expects one probability channel of the input's spatial size")
        return out[..., 0]

    def __call__(self, x: np.ndarray, target: Sequence[int]) -> np.ndarray:
        """Probabilities for a batch ``(N, *spatial)``, padded to ``target`` and cropped back."""
        padded, crop = _pad(x, target)
        total = None
        for axes in self.flips:  # each output is a fresh array: sum into the first in place
            out = np.flip(self._call(np.flip(padded, axes)), axes)
            total = out if total is None else np.add(total, out, out=total)
        if len(self.flips) > 1:
            total /= np.float32(len(self.flips))
        return total[crop]


# --------------------------------------------------------------------------- memory

def _release(array: np.ndarray, start: int, stop: int) -> None:
    """Drop slices ``start:stop`` of a memory-mapped array from this process's memory.

    The pages stay in the OS page cache (written ones still reach the file); they
    are only unmapped from this process, so its resident memory stays bounded while
    a stack streams through. Does nothing for ordinary arrays or private mappings.
    """
    mm = getattr(array, "_mmap", None)
    stop = min(stop, array.shape[0]) if array.ndim else stop
    if (mm is None or not hasattr(mm, "madvise") or getattr(array, "mode", "c") == "c"
            or not array.flags.c_contiguous or array.ndim == 0 or stop <= start):
        return
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not isinstance(root.base, mmap.mmap) or not isinstance(root, np.memmap):
        return
    base = root.ctypes.data - root.offset % mmap.ALLOCATIONGRANULARITY
    begin = array.ctypes.data - base + start * array.strides[0]
    end = begin + (stop - start) * array.strides[0]
    begin = _round_up(begin, mmap.PAGESIZE)
    end -= end % mmap.PAGESIZE
    if end > begin:
        try:
            mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        except (OSError, ValueError):
            pass


def _store(mask_out, prob_out, threshold: float) -> Callable[[int, int, np.ndarray], None]:
    """A function that writes probabilities for slices ``start:stop`` into the outputs."""
    def store(start: int, stop: int, prob: np.ndarray) -> None:
        if prob_out is not None:
            prob_out[start:stop] = prob
            _release(prob_out, start, stop)
        above = prob > threshold
        if mask_out.dtype == np.uint8:
            np.multiply(above, np.uint8(255), out=mask_out[start:stop], casting="unsafe")
        else:
            mask_out[start:stop] = above
        _release(mask_out, start, stop)
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


def _resolve_patch(spec: _ModelSpec, shape: Sequence[int], patch_size) -> tuple[int, ...] | None:
    """Window shape over the model's spatial axes, or None for whole 2D slices."""
    d = spec.divisor
    fixed = spec.fixed
    if patch_size is None:
        if all(f is None for f in fixed):
            if spec.ndim == 2:
                return None
            patch_size = (_round_up(DEFAULT_PATCH, d),) * spec.ndim
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
    """How a 2D model maps a normalised batch ``(N, H, W)`` to probabilities.

    Returns the function and the spatial shape of one model input.
    """
    if input_size:  # as trained: pad to a square at bottom/right, resize, and back
        from bcseg.pipeline import from_square, to_square  # heavy imports, only when needed

        target = (_round_up(input_size, spec.divisor),) * 2
        if any(f is not None and f != t for f, t in zip(spec.fixed, target)):
            raise ModelError(None, f"the model takes inputs of size {spec.fixed}, not input_size {input_size}")

        def fitted(x):
            squares = np.stack([to_square(s, input_size) for s in x])
            return np.stack([from_square(p, plane) for p in run(squares, target)])
        return fitted, target
    if patch is None:
        target = tuple(_round_up(n, spec.divisor) for n in plane)
        return (lambda x: run(x, target)), target
    windows = _Windows.over(plane, patch, overlap)
    weight, total = windows.weight(), windows.total()
    (ly, lx), (ys, xs) = windows.lengths, windows.starts

    def tiled(x):  # fixed-size 2D model, or patch_size given: Gaussian-blended tiles
        prob = np.zeros(x.shape, np.float32)
        for y, xx in itertools.product(ys, xs):
            region = (slice(None), slice(y, y + ly), slice(xx, xx + lx))
            prob[region] += run(x[region], patch) * weight
        prob /= total
        return prob
    return tiled, patch


def _predict_slices(predict, item, volume, stats, batch_size, store, progress):
    """2D model over a ``(Z, H, W)`` stack, a batch of slices at a time."""
    depth = volume.shape[0]
    batch = _batch_of(batch_size, item)
    with _progress(math.ceil(depth / batch), progress, "slices") as bar:
        for start in range(0, depth, batch):
            stop = min(start + batch, depth)
            x = normalise(volume[start:stop], stats)
            _release(volume, start, stop)
            store(start, stop, predict(x))
            bar.update()


def _predict_windows(run, volume, stats, patch, overlap, batch_size, store, progress):
    """3D model over a ``(Z, H, W)`` stack with Gaussian-blended sliding windows.

    Windows are visited in order of their z start; one slab of ``patch[0]`` slices
    accumulates weighted probabilities, and slices no later window touches are
    finished, written out and dropped from the slab.
    """
    depth, height, width = volume.shape
    windows = _Windows.over(volume.shape, patch, overlap)
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
                x = np.stack([normalise(volume[z:z + lz, y:y + ly, xx:xx + lx], stats)
                              for y, xx in corners])
                prob = run(x, patch)
                for (y, xx), p in zip(corners, prob):
                    slab[:, y:y + ly, xx:xx + lx] += p * weight
                bar.update()
            done = (zs[i + 1] if i + 1 < len(zs) else depth) - z
            for k in range(done):
                slab[k] /= windows.sums[0][z + k] * plane_total
            store(z, z + done, slab[:done])
            _release(volume, z, z + done)
            slab[: lz - done] = slab[done:].copy()
            slab[lz - done:] = 0


# --------------------------------------------------------------------------- predict

def _check_input(spec: _ModelSpec, array: np.ndarray, spacing) -> None:
    if spec.channels != 1:
        raise DataError(None, f"the model expects {spec.channels} input channels, but the image "
                        "has 1 (bcseg images are grey); use a model trained on grey images")
    if spec.ndim == 2 and array.ndim not in (2, 3):
        raise DataError(None, f"a 2D model segments (H, W) images or (Z, H, W) stacks, "
                        f"not a {array.ndim}D array of shape {array.shape}")
    if spec.ndim == 3 and array.ndim != 3:
        hint = "; use a 2D model for 2D images" if array.ndim == 2 else ""
        raise DataError(None, f"a 3D model segments (Z, H, W) stacks, not a {array.ndim}D "
                        f"array of shape {array.shape}{hint}")
    if spacing is not None and len(spacing) != array.ndim:
        raise DataError(None, f"spacing {tuple(spacing)} does not match an image of shape {array.shape}")


def _check_out(out, shape, dtypes, name: str) -> None:
    if out is not None and (out.shape != tuple(shape) or out.dtype not in dtypes):
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype "
                         f"{' or '.join(str(np.dtype(d)) for d in dtypes)}, got {out.shape} {out.dtype}")


def predict_volume(
    model: keras.Model,
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    threshold: float = 0.5,
    tta: bool = False,
    postprocess: Sequence[str] = (),
    min_size: int = 0,
    batch_size: int = 8,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    input_size: int | None = None,
    mask_out: np.ndarray | None = None,
    prob_out: np.ndarray | None = None,
    keep_prob: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment an image or stack; return the mask and the tumour probability.

    Parameters
    ----------
    model : keras.Model
        A 2D or 3D model with one input channel and one sigmoid output channel.
    array : ndarray or numpy.memmap
        ``(H, W)`` image or ``(Z, H, W)`` stack, any integer or float type. A
        memory-mapped stack is streamed, never read whole.
    spacing : tuple of float, optional
        mm per axis; checked against the shape. Prediction runs at the image's own
        resolution, so the mask lines up voxel for voxel.
    threshold : float
        Tumour where the probability is strictly above it.
    tta : bool
        Average over all mirror flips of the spatial axes (4 in 2D, 8 in 3D).
    postprocess : sequence of {"largest", "fill", "small"}
        Steps of :func:`postprocess`, in order, applied to the whole mask (in 3D for
        stacks, also with a 2D model).
    min_size : int
        Smallest component kept by the ``"small"`` step, in voxels.
    batch_size : int
        At most this many slices or windows per model call; fewer when they are
        large, so that a call sees at most about ``VOXELS_PER_CALL`` voxels.
    patch_size : tuple of int, optional
        Sliding-window size over the model's spatial axes, a multiple of the model's
        divisor. Default: whole slices for a 2D model; for a 3D model the stack padded
        to the divisor, at most 128 per axis. A model with a fixed input size uses it.
    overlap : float
        Fraction in [0, 1) by which neighbouring windows overlap.
    input_size : int, optional
        For a 2D model trained on slices fitted to ``input_size`` squares (the
        ``size`` of ``bcseg train``; ``input_size`` in its ``inference.json``): each
        slice is fitted the same way (:func:`bcseg.pipeline.to_square`) and the
        probability mapped back to the slice (:func:`bcseg.pipeline.from_square`).
    mask_out : ndarray, optional
        Array of ``array``'s shape to write the mask into: bool, or uint8 which
        receives 0/255 (for example a ``tifffile.memmap`` mask file).
    prob_out : ndarray of float32, optional
        Array of ``array``'s shape to write the probability into.
    keep_prob : bool
        When False and no ``prob_out`` is given, no probability map is kept and
        ``None`` is returned for it (saves 4 bytes per voxel).
    progress : bool
        Show a progress bar over batches.

    Returns
    -------
    mask : ndarray
        ``mask_out`` when given, else a new bool array of ``array``'s shape.
    prob : ndarray of float32 or None
        ``prob_out`` when given, else a new array (None when ``keep_prob`` is False).

    Raises
    ------
    DataError
        Image rank or channels that do not fit the model, NaN or infinite values.
    ModelError
        A model whose output does not match its input.

    Examples
    --------
    >>> mask, prob = predict_volume(model, stack, tta=True, postprocess=["largest"])  # doctest: +SKIP
    """
    spec = _model_spec(model)
    array = array if isinstance(array, np.ndarray) else np.asarray(array)
    _check_input(spec, array, spacing)
    steps = _check_steps(postprocess)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if input_size is not None and (input_size < 1 or patch_size is not None):
        raise ValueError(f"input_size must be a positive size, without patch_size; got {input_size}")
    _check_out(mask_out, array.shape, (np.bool_, np.uint8), "mask_out")
    _check_out(prob_out, array.shape, (np.float32,), "prob_out")
    mask = np.empty(array.shape, bool) if mask_out is None else mask_out
    prob = prob_out
    if prob is None and keep_prob:
        prob = np.empty(array.shape, np.float32)

    stats = intensity_stats(array)
    volume = array[None] if array.ndim == 2 else array
    store = _store(mask[None] if array.ndim == 2 else mask,
                   None if prob is None else (prob[None] if array.ndim == 2 else prob), threshold)
    run = _Runner(model, spec, tta)
    if spec.ndim == 2:
        patch = None if input_size else _resolve_patch(spec, volume.shape[1:], patch_size)
        predict, item = _slice_predictor(run, spec, volume.shape[1:], patch, overlap, input_size)
        _predict_slices(predict, item, volume, stats, batch_size, store, progress)
    else:
        if input_size:
            raise ValueError("input_size applies to 2D models; a 3D model uses patch_size")
        patch = _resolve_patch(spec, volume.shape, patch_size)
        _predict_windows(run, volume, stats, patch, overlap, batch_size, store, progress)

    if steps:
        kept = _apply_steps(mask if mask.dtype == bool else mask != 0, steps, min_size)
        if mask.dtype == bool:
            mask[...] = kept
        else:
            np.multiply(kept, np.uint8(255), out=mask, casting="unsafe")
    return mask, prob


# --------------------------------------------------------------------------- post-processing

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


# --------------------------------------------------------------------------- settings

def _settings_error(path: Path, key: str, expected: str, value) -> ConfigError:
    return ConfigError(path, f"{key} must be {expected}, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def inference_settings(run_dir: str | Path) -> dict:
    """Read the inference settings a training run saved, filling in defaults.

    Parameters
    ----------
    run_dir : str or Path
        A training run folder. Its ``inference.json`` may hold ``threshold``,
        ``postprocess`` (list of step names), ``min_size``, ``tta``, ``ndim``,
        ``patch_size`` (3D windows) and ``input_size`` (2D square size); missing
        keys (or a missing file) take the defaults threshold 0.5, postprocess [],
        min_size 0, tta False, None for the rest.

    Returns
    -------
    dict
        Those keys, plus any other keys the file holds (run metadata, unchecked).

    Raises
    ------
    ConfigError
        Unreadable JSON, an unknown key or a wrongly typed value.
    """
    path = Path(run_dir) / SETTINGS_FILE
    settings = {**DEFAULT_SETTINGS, "postprocess": []}
    if not path.is_file():
        return settings
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(path, f"cannot read inference settings ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "must hold a JSON object of settings")
    settings.update(data)  # other keys (best_epoch, observer, ...) are kept as they are
    threshold, steps = settings["threshold"], settings["postprocess"]
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise _settings_error(path, "threshold", "a number in [0, 1]", threshold)
    if not isinstance(steps, list) or any(s not in POSTPROCESS_STEPS for s in steps):
        raise _settings_error(path, "postprocess", f"a list of {', '.join(POSTPROCESS_STEPS)}", steps)
    if not isinstance(settings["min_size"], int) or isinstance(settings["min_size"], bool) \
            or settings["min_size"] < 0:
        raise _settings_error(path, "min_size", "a whole number >= 0", settings["min_size"])
    if not isinstance(settings["tta"], bool):
        raise _settings_error(path, "tta", "true or false", settings["tta"])
    if settings["ndim"] not in (None, 2, 3) or isinstance(settings["ndim"], bool):
        raise _settings_error(path, "ndim", "2 or 3", settings["ndim"])
    patch = settings["patch_size"]
    if patch is not None and (not isinstance(patch, list) or not patch
                              or any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in patch)
                              or (settings["ndim"] and len(patch) != settings["ndim"])):
        raise _settings_error(path, "patch_size", "a list of positive sizes, one per spatial axis", patch)
    size = settings["input_size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise _settings_error(path, "input_size", "a positive whole number of pixels", size)
    return settings


def resolve_model(path: str | Path) -> tuple[Path, dict]:
    """Find the model file and its inference settings.

    Parameters
    ----------
    path : str or Path
        A training run folder (holding ``model_best.keras`` and optionally
        ``inference.json``) or a ``.keras`` file; a file uses the
        ``inference.json`` beside it, if there is one.

    Returns
    -------
    model_path : Path
    settings : dict
        As :func:`inference_settings`.
    """
    path = Path(path)
    if path.is_dir():
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(path, f"holds no {MODEL_FILE}; pass a training run folder or a .keras file")
        return model_path, inference_settings(path)
    if not path.exists():
        raise ModelError(path, "model not found; pass a training run folder or a .keras file")
    return path, inference_settings(path.parent)


# --------------------------------------------------------------------------- files

def _input_files(inputs) -> list[Path]:
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = io.image_files(item)
            if not found:
                raise DataError(item, "holds no supported images (" + ", ".join(io.IMAGE_SUFFIXES) + ")")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise DataError(item, "file not found")
    stems: dict[str, Path] = {}
    for f in files:
        other = stems.setdefault(io.file_stem(f), f)
        if other.resolve() != f.resolve():
            raise UsageError(f, f"has the same name as {other}, so their outputs would collide; "
                             "segment them into different output folders")
    return list(stems.values())  # each file once


def _tiff_memmap(path: Path, shape, dtype, spacing) -> np.memmap:
    """An output TIFF with ImageJ spacing, memory-mapped so it is filled batch by batch."""
    return tifffile.memmap(path, shape=tuple(shape), dtype=dtype, **io._imagej_kwargs(tuple(shape), spacing))


def _max_projection(volume: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Maximum over the first axis, read a few slices at a time."""
    out = np.array(volume[0])
    for start in range(1, volume.shape[0], chunk):
        np.maximum(out, np.max(volume[start:start + chunk], axis=0), out=out)
        _release(volume, start, start + chunk)
    return out


def _write_overlay(path: Path, image: np.ndarray, mask: np.ndarray, spacing) -> None:
    """PNG quicklook: the image with the mask outline (3D: mid slice and MIP)."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state

    if image.ndim == 2:
        panels = [("image", image, mask)]
    else:
        mid = image.shape[0] // 2
        panels = [(f"slice {mid} of {image.shape[0]}", image[mid], mask[mid]),
                  ("maximum-intensity projection", _max_projection(image), _max_projection(mask))]
    aspect = 1.0 if spacing is None else spacing[-2] / spacing[-1]
    figure = Figure(figsize=(5 * len(panels), 5), layout="constrained")
    for ax, (title, picture, outline) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(normalise(picture), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if np.any(outline) and not np.all(outline):
            ax.contour(np.asarray(outline) != 0, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title)
        ax.set_axis_off()
    figure.savefig(path, dpi=100)


def _segment_file(model, path: Path, out_dir: Path, options: dict, force: bool) -> dict:
    """Segment one file into ``out_dir``; every output is written atomically."""
    stem = io.file_stem(path)
    outputs = {"mask": out_dir / f"{stem}_mask.tif",
               "prob": out_dir / f"{stem}_prob.tif" if options.pop("save_prob") else None,
               "overlay": out_dir / f"{stem}_overlay.png" if options.pop("quicklook") else None}
    with ExitStack() as stack:  # refuses existing outputs before any work is done
        temp = {k: stack.enter_context(atomic_path(v, force=force)) if v else None
                for k, v in outputs.items()}
        _segment_into(model, *io.open_volume(path), temp, options)
    return {k: None if v is None else str(v) for k, v in outputs.items()}


def _segment_into(model, image, spacing, temp: dict, options: dict) -> None:
    options["progress"] = options["progress"] and image.ndim == 3  # no bar per 2D image
    mask = _tiff_memmap(temp["mask"], image.shape, np.uint8, spacing)
    prob = None if temp["prob"] is None else _tiff_memmap(temp["prob"], image.shape, np.float32, spacing)
    predict_volume(model, image, spacing, mask_out=mask, prob_out=prob, keep_prob=False, **options)
    if temp["overlay"] is not None:
        _write_overlay(temp["overlay"], image, mask, spacing)
    for out in (mask, prob):
        if out is not None:
            out.flush()


def predict_files(
    model_path: str | Path,
    inputs,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    tta: bool | None = None,
    postprocess: Sequence[str] | None = None,
    min_size: int | None = None,
    save_prob: bool = False,
    quicklook: bool = False,
    force: bool = False,
    keep_going: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Segment image files and folders, writing masks beside the input's geometry.

    Parameters
    ----------
    model_path : str or Path
        Training run folder or ``.keras`` file (see :func:`resolve_model`).
    inputs : path or sequence of paths
        Image files and folders of images; folders are read one file at a time.
    out_dir : str or Path
        Receives ``<stem>_mask.tif`` (uint8 0/255, the input's shape and spacing), with
        ``save_prob`` ``<stem>_prob.tif`` (float32) and with ``quicklook``
        ``<stem>_overlay.png``.
    threshold, tta, postprocess, min_size : optional
        Override the run's ``inference.json`` (see :func:`predict_volume`). Its
        ``patch_size`` sets the windows of a 3D model, its ``input_size`` the square a
        2D model was trained on; otherwise a 2D model segments whole slices.
    save_prob, quicklook : bool
        Also write the probability map / the overlay PNG.
    force : bool
        Overwrite existing outputs; otherwise an existing output raises UsageError.
    keep_going : bool
        Record a file that fails with a bcseg error and go on with the next.
    progress : bool
        Show a progress bar over files (and over windows of each stack).

    Returns
    -------
    list of dict
        One per input file: ``input``, ``mask``, ``prob``, ``overlay`` (paths or
        None), ``status`` ("ok" or "error") and ``error`` (message or None).
    """
    model_file, settings = resolve_model(model_path)
    model = load_model(model_file)
    spec = _model_spec(model)
    if settings["ndim"] is not None and settings["ndim"] != spec.ndim:
        raise ModelError(model_file, f"is a {spec.ndim}D model but its {SETTINGS_FILE} says ndim "
                         f"{settings['ndim']}")
    chosen = {"threshold": threshold, "tta": tta, "postprocess": postprocess, "min_size": min_size}
    options = {k: settings[k] if v is None else v for k, v in chosen.items()}
    options["postprocess"] = _check_steps(options["postprocess"])
    # A 2D model segments whole slices (fitted to input_size when it was trained so);
    # a saved patch size is for 3D windows.
    options["patch_size"] = settings["patch_size"] if spec.ndim == 3 else None
    options["input_size"] = settings["input_size"] if spec.ndim == 2 else None
    if options["patch_size"] is not None and len(options["patch_size"]) != 3:
        raise ConfigError(model_file.parent / SETTINGS_FILE,
                          f"patch_size {options['patch_size']} needs 3 sizes for a 3D model")
    files = _input_files(inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(out_dir, "is a file; --out must be a folder")
    records = []
    for path in tqdm(files, disable=not progress, desc="Segmenting", unit="image"):
        record = {"input": str(path), "mask": None, "prob": None, "overlay": None,
                  "status": "ok", "error": None}
        try:
            record.update(_segment_file(model, path, out_dir, {
                **options, "save_prob": save_prob, "quicklook": quicklook, "progress": progress}, force))
        except BcsegError as exc:
            if exc.path is None:  # errors from arrays name no file: this one is at fault
                exc = type(exc)(path, exc.problem)
            if not keep_going:
                raise exc from None
            record.update(status="error", error=str(exc))
        records.append(record)
    return records
