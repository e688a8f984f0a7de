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
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from bcseg.errors import DataError, ModelError
from bcseg.intensity import intensity_stats, normalise
from bcseg.postprocess import apply_steps_inplace, check_steps, release_slices

VOXELS_PER_CALL = 1 << 20  # caps the batch so activations of large slices stay bounded
DEFAULT_PATCH = 128        # default 3D window edge (before rounding to the divisor)
GAUSSIAN_FLOOR = 1e-3      # per-axis floor of the blending weights


# --------------------------------------------------------------------------- model

def load_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` model safely (``safe_mode=True``, not compiled).

    Raises
    ------
    ModelError
        Missing file, not a zip archive, or not a Keras model.
    """
    import keras  # here, not at the top: the ONNX runtime predicts without Keras

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
    return _in_float32(model)


def _in_float32(model: keras.Model) -> keras.Model:
    """The model rebuilt to compute in float32 if it was trained under mixed precision.

    A saved layer keeps its training dtype policy; float16 or bfloat16 compute is slow
    or missing on many CPUs, and float32 is the reference for inference. The weights
    are float32 under mixed precision, so they carry over unchanged.
    """
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
                return dict(node, config=dict(node.get("config", {}), name="float32"))
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    rebuilt = keras.Model.from_config(to_float32(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation model's input contract, read from its graph."""

    ndim: int                        # spatial dimensions, 2 or 3
    channels: int
    fixed: tuple[int | None, ...]    # static spatial input sizes, None where free
    divisor: int


def model_spec(model: keras.Model) -> ModelSpec:
    """What inference needs to know of a model: dimensions, channels, fixed sizes."""
    if isinstance(getattr(model, "spec", None), ModelSpec):  # bcseg.onnx_runtime.OnnxModel
        return model.spec
    from bcseg.models import model_divisor  # imports Keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(None, "bcseg models take one input image and give one output map")
    shape = tuple(model.inputs[0].shape)
    if len(shape) not in (4, 5):
        raise ModelError(None, f"model input shape {shape} is neither 2D (N, H, W, C) "
                         "nor 3D (N, Z, H, W, C)")
    return ModelSpec(len(shape) - 2, shape[-1] or 1, shape[1:-1], model_divisor(model))


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

    def __init__(self, model: keras.Model, spec: ModelSpec, tta: bool):
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
            release_slices(volume, start, stop)
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
            release_slices(volume, z, z + done)
            slab[: lz - done] = slab[done:].copy()
            slab[lz - done:] = 0


# --------------------------------------------------------------------------- predict

def _check_input(spec: ModelSpec, array: np.ndarray, spacing) -> None:
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
    spec = model_spec(model)
    array = array if isinstance(array, np.ndarray) else np.asarray(array)
    _check_input(spec, array, spacing)
    steps = check_steps(postprocess)
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
        apply_steps_inplace(mask, steps, min_size)
    return mask, prob
