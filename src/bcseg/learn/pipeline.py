"""Input pipelines: cached training arrays and one ``tf.data`` dataset per epoch.

Images are read, decoded, normalised and (for 2D) fitted to the training size once,
then kept in memory, so an epoch never re-reads a file. Each epoch draws its samples
with a generator seeded by ``(seed, epoch)``: with probability ``tumour_fraction``
a sample is forced to contain tumour (nnU-Net's foreground oversampling), otherwise
it is drawn uniformly. Augmentation runs inside the ``tf.data`` graph with stateless
seeds, so an epoch can be replayed exactly (this is what makes ``--resume`` give the
same weights as an uninterrupted run).

Multi-channel cases: with ``channels`` (e.g. ``["us", "pa"]``) the samples keep a
trailing channel axis, each channel normalised by its own method
(:func:`bcseg.data.intensity.normalise_channels`); without it every case is read
as one grey image, exactly as before.

Distillation: with a ``teacher`` (probability maps of a trained model or ensemble,
one per case) every cached target gains one plane, the teacher's probability as a
byte. Each epoch's draw expands it into :data:`TEACHER_LEVELS` binary planes, the
probability cut at 1/16, 3/16, ... 15/16. Each plane is augmented like an observer's
mask (rotated, zoomed and cut at 0.5 again), and their mean after augmentation is the
teacher's probability to the nearest 1/8: a soft target through the same geometric
augmentation as the masks, with no second code path for continuous maps.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from skimage.transform import resize

# TensorFlow and bcseg.learn.augment are imported by the functions that train with them:
# the geometry helpers (to_square, from_square) also serve the ONNX runtime, without TensorFlow.
from bcseg.data.cases import Case, read_case_channel_arrays, read_case_image, read_case_masks
from bcseg.errors import ConfigError, DataError
from bcseg.data.intensity import normalise, normalise_channels
from bcseg.data.resize import resize_axis
from bcseg.data.consensus import consensus

if TYPE_CHECKING:  # names in annotations only
    import tensorflow as tf

    from bcseg.learn.augment import AugmentConfig

# Planes that encode a teacher's probability (1/8 steps): finer steps add memory (one
# byte per pixel and plane) and augmentation work for differences no loss can see.
TEACHER_LEVELS = 8

RANDOM_OBSERVER = "random"
SOFT_OBSERVER = "soft"
KEEP_ALL = (RANDOM_OBSERVER, SOFT_OBSERVER)  # targets that keep every observer's mask


def evaluation_target(observer: str) -> str:
    """The reference that validation and tuning score a training target against.

    ``random`` and ``soft`` are no single mask: they are scored against the union.
    """
    return "union" if observer in KEEP_ALL else observer


# --------------------------------------------------------------------------- geometry

def to_square(image: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Pad a 2D array at the bottom and right to a square, then resize to ``size``.

    Padding keeps the aspect ratio, so lesions are not squashed. Masks use
    ``order=0``. :func:`from_square` undoes it.

    The result is that of resizing the padded square, but the square is never made:
    an image of 2 x 40000 pixels would need a 40000² array (6.4 GB) for it. The
    resize (a Gaussian, then linear or nearest interpolation) works axis by axis, so
    the long axis is resized first, while the array is thin, and the short one is
    padded only then; the two differ from the square's resize by rounding only.
    """
    h, w = image.shape
    side = max(h, w)
    if (h, w) == (size, size):
        return image
    if side == size:
        square = np.zeros((side, side), dtype=np.float32)
        square[:h, :w] = image
        return square
    long_axis = 0 if h >= w else 1
    thin = _resize_axis(np.asarray(image, dtype=np.float32), long_axis, size, order, order > 0)
    padded = np.zeros((side, size) if long_axis == 1 else (size, side), dtype=np.float32)
    padded[:thin.shape[0], :thin.shape[1]] = thin
    return _resize_axis(padded, 1 - long_axis, size, order, order > 0).astype(np.float32)


def from_square(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a ``size``×``size`` map back to the padded square and crop to ``shape``.

    Axis by axis as in :func:`to_square`: the short axis is resized and cropped first,
    so the padded square (side² float64 values) is never made."""
    h, w = shape
    side = max(h, w)
    if prob.shape == (side, side):
        return np.asarray(prob[:h, :w], dtype=np.float32)
    short_axis = 1 if h >= w else 0
    aliasing = side < prob.shape[0]  # as resize decides: only when it shrinks
    cropped = _resize_axis(prob, short_axis, side, 1, aliasing)
    cropped = cropped[:, :w] if short_axis == 1 else cropped[:h]
    out = _resize_axis(cropped, 1 - short_axis, side, 1, aliasing)
    return np.asarray(out[:h, :w], dtype=np.float32)


def _resize_axis(array: np.ndarray, axis: int, length: int, order: int, anti_aliasing: bool) -> np.ndarray:
    """``array`` resized to ``length`` along ``axis`` only (the other axis unchanged)."""
    shape = list(array.shape)
    if shape[axis] == length:
        return array
    if order == 1:  # images and probabilities: the same result as resize's, as one sparse product
        return resize_axis(array, axis, length, anti_aliasing)
    shape[axis] = length
    return resize(array, tuple(shape), order=order, anti_aliasing=anti_aliasing, preserve_range=True)


# --------------------------------------------------------------------------- cached arrays

def training_target(masks: dict[str, np.ndarray], observer: str, where: str) -> np.ndarray:
    """The training target of one case: an observer, or a consensus of them.

    For ``random`` and ``soft`` every observer is kept, stacked on a new first
    axis: a sampler then draws one per sample and epoch (``random``) or averages
    them (``soft``: 0.5 where two observers disagree).
    """
    if not masks:
        raise DataError(where, "has no observer mask to train on")
    if observer in KEEP_ALL:
        return np.stack([masks[name] for name in sorted(masks)])
    try:
        return consensus(masks, observer)
    except ValueError as exc:
        raise DataError(where, str(exc)) from None


@dataclass
class Samples:
    """Training samples held in memory.

    ``images`` is ``(N, ...)`` float32 in [0, 1]; ``targets`` is ``(N, O, ...)``
    uint8 with one entry per observer kept (O = 1 unless the target is ``random``
    or ``soft``); ``soft`` says to train on the mean of the O masks rather than
    one drawn at random; ``has_tumour`` marks samples whose target holds tumour.
    With ``channels`` the images carry a trailing channel axis, one plane per
    named channel.

    With a teacher, the first ``truth_planes`` of the O planes are the observers'
    masks and the last is the teacher's probability (uint8, 255 = 1), which
    :func:`epoch_arrays` expands into :data:`TEACHER_LEVELS` planes; ``weights``
    (one per plane after that, summing to 1) replaces the plain mean of a ``soft``
    target.
    """

    images: list[np.ndarray] | np.ndarray
    targets: list[np.ndarray] | np.ndarray
    case_ids: list[str]
    soft: bool = False
    channels: list[str] | None = None
    truth_planes: int | None = None  # None: every plane is an observer's mask
    weights: tuple[float, ...] | None = None

    @property
    def has_tumour(self) -> np.ndarray:
        """Samples whose observers' masks hold tumour (a teacher's guess does not count)."""
        return np.array([t[:self.truth_planes].any() for t in self.targets], dtype=bool)


def teacher_planes(prob: np.ndarray) -> np.ndarray:
    """:data:`TEACHER_LEVELS` binary planes ``(L, ...)`` whose mean is ``prob`` (uint8,
    255 = 1) to the nearest 1/L: plane k is ``prob >= (k + 1/2) / L``."""
    cuts = (np.arange(TEACHER_LEVELS) + 0.5) / TEACHER_LEVELS * 255
    return prob[None] >= cuts.reshape((-1,) + (1,) * prob.ndim)


def with_teacher(target: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The ``(O + 1, ...)`` uint8 target: the observers' masks, then the teacher's
    probability (uint8).

    Where the observers marked nothing (a tumour-free image, or slice of a stack) the
    teacher's plane is cleared: an empty mask is a certain answer, and a teacher
    trained on lesion images marks something in nearly every normal image (BUSI).
    """
    marked = target.any(axis=0)
    if marked.ndim == 2:  # one image
        kept = prob * bool(marked.any())
    else:  # a stack: slice by slice
        kept = prob * marked.any(axis=(1, 2))[:, None, None]
    return np.concatenate([target.astype(np.uint8), kept[None].astype(np.uint8)])


def expand_teacher(targets: np.ndarray, truth_planes: int) -> np.ndarray:
    """``(N, O + 1, ...)`` cached targets to ``(N, O + L, ...)``: the teacher's byte
    plane as :data:`TEACHER_LEVELS` binary planes (done per epoch's draw, so the cache
    holds one byte a pixel for the teacher rather than L)."""
    levels = np.moveaxis(teacher_planes(targets[:, truth_planes]), 0, 1)
    return np.concatenate([targets[:, :truth_planes], levels.astype(targets.dtype)], axis=1)


def plane_weights(truth_planes: int, teacher_weight: float) -> tuple[float, ...]:
    """Weights of the observers' planes (sharing ``1 - teacher_weight``) and of the
    teacher's (sharing ``teacher_weight``)."""
    return ((1 - teacher_weight) / truth_planes,) * truth_planes + \
        (teacher_weight / TEACHER_LEVELS,) * TEACHER_LEVELS


def _case_arrays(case: Case, observer: str, channels: list[str] | None = None,
                 methods: dict[str, str] | None = None,
                 teacher: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image (channels last when ``channels`` is given) and ``(O, ...)`` target,
    with the teacher's planes after the observers' masks when ``teacher`` is given."""
    try:
        if channels is None:
            image, _ = read_case_image(case)
            spatial, image = image.shape, normalise(image)
        else:
            arrays, _ = read_case_channel_arrays(case, channels)
            image = normalise_channels(arrays, methods)
            spatial = image.shape[:-1]
    except DataError as exc:  # array checks name no file: this case's image is at fault
        raise DataError(exc.path or case.image, exc.problem) from None
    masks = read_case_masks(case, spatial)
    target = training_target(masks, observer, str(case.image))
    if target.ndim == len(spatial):
        target = target[None]
    if teacher is not None:
        target = with_teacher(target, teacher[case.id])
    return image, target.astype(np.uint8)


def to_square_channels(image: np.ndarray, size: int) -> np.ndarray:
    """:func:`to_square` of each channel of an ``(H, W, C)`` slice."""
    return np.stack([to_square(image[..., c], size) for c in range(image.shape[-1])], axis=-1)


def check_offline_augment(data: dict, channels: list[str] | None, source=None) -> None:
    """Refuse, before a run folder is made, a recipe that :func:`slice_samples` cannot
    augment the reference study's way (``data``: the ``[data]`` section; ``channels``: the
    run's named channels or None; ``source``: the file that set data.offline_augment).
    Found only once the folds were cached, it left a run folder behind (exit 1 for a
    size the crops do not fit)."""
    if data["offline_augment"] != "reference":
        return
    from bcseg.learn.augment import REFERENCE_MAX_TRIM_LR, REFERENCE_MAX_TRIM_TB

    trim = max(REFERENCE_MAX_TRIM_TB, REFERENCE_MAX_TRIM_LR)
    if data["observer"] in KEEP_ALL:
        raise ConfigError(source, "data.offline_augment = 'reference' needs one target; choose an "
                          f"observer or a consensus instead of data.observer = {data['observer']!r}")
    if channels is not None:
        raise ConfigError(source, "data.offline_augment = 'reference' takes one grey channel; use "
                          "the on-the-fly augmentation (offline_augment = \"none\") with several channels")
    if data["size"] <= 2 * trim:
        raise ConfigError(source, f"'data.size' must be more than {2 * trim} with data.offline_augment "
                          f"= 'reference' (its crops trim up to {trim} pixels from each side), "
                          f"got {data['size']}")


def slice_samples(cases: list[Case], observer: str, size: int,
                  offline_augment: str = "none", seed: int = 0,
                  channels: list[str] | None = None, methods: dict[str, str] | None = None,
                  teacher: dict[str, np.ndarray] | None = None, teacher_weight: float = 0.5) -> Samples:
    """2D samples: every image, and every slice of every stack, fitted to ``size``.

    With ``offline_augment="reference"`` each slice becomes the reference study's 24
    rotated and trimmed copies (one target only: not with the ``random`` observer).
    ``channels`` and ``methods`` select and normalise named channels (see the module).
    ``teacher`` maps case ids to the teacher's probability (uint8, the case's shape),
    whose share of the target is ``teacher_weight`` (see the module).
    """
    if offline_augment == "reference" and observer in KEEP_ALL:
        raise DataError(None, "the reference offline augmentation needs one target; "
                        f"choose an observer or a consensus instead of {observer!r}")
    if teacher is not None and offline_augment == "reference":
        raise DataError(None, "a teacher's soft target needs the on-the-fly augmentation, "
                        "not offline_augment = 'reference'")
    _check_teacher_observer(teacher, observer)
    if offline_augment == "reference" and channels is not None:
        raise DataError(None, "the reference offline augmentation takes one grey channel; "
                        "use the on-the-fly augmentation with several channels")
    images, targets, ids = [], [], []
    rng = np.random.default_rng(seed)
    for case in cases:
        image, target = _case_arrays(case, observer, channels, methods, teacher)
        flat = image.ndim - (channels is not None) == 2
        stack = image[None] if flat else image
        target_stack = target[:, None] if flat else target  # (O, Z, H, W)
        n_masks = len(target_stack) - (teacher is not None)
        for z in range(stack.shape[0]):
            square = to_square(stack[z], size) if channels is None else to_square_channels(stack[z], size)
            masks = np.stack([to_square(t, size, order=0) for t in target_stack[:n_masks, z]]) > 0.5
            if teacher is not None:  # the probability resampled as such, not as a mask
                prob = to_square(target_stack[n_masks, z].astype(np.float32), size)
                masks = np.concatenate([masks, np.rint(np.clip(prob, 0, 255))[None]]).astype(np.uint8)
            if offline_augment == "reference":
                from bcseg.learn.augment import reference_offline_augment
                aug_images, aug_masks = reference_offline_augment(square, masks[0], size=size, rng=rng)
                images.extend(aug_images)
                targets.extend(aug_masks[:, None])
                ids.extend([case.id] * len(aug_images))
            else:
                images.append(square)
                targets.append(masks)
                ids.append(case.id)
    return _samples(np.stack(images).astype(np.float32), np.stack(targets).astype(np.uint8), ids,
                    observer, channels, teacher, teacher_weight)


def _check_teacher_observer(teacher, observer: str) -> None:
    if teacher is not None and observer == RANDOM_OBSERVER:  # it would draw a teacher's plane
        raise DataError(None, f"a teacher's soft target is blended with the observers' mask(s); "
                        f"the {RANDOM_OBSERVER!r} observer draws one plane; choose another target")


def _samples(images, targets, ids, observer: str, channels, teacher, teacher_weight: float) -> Samples:
    if teacher is None:
        return Samples(images, targets, ids, soft=observer == SOFT_OBSERVER, channels=channels)
    truth = targets[0].shape[0] - 1
    return Samples(images, targets, ids, soft=True, channels=channels, truth_planes=truth,
                   weights=plane_weights(truth, teacher_weight))


def volume_samples(cases: list[Case], observer: str, channels: list[str] | None = None,
                   methods: dict[str, str] | None = None, teacher: dict[str, np.ndarray] | None = None,
                   teacher_weight: float = 0.5) -> Samples:
    """3D samples: whole normalised volumes, cut into patches per epoch (``teacher``:
    see :func:`slice_samples`)."""
    _check_teacher_observer(teacher, observer)
    images, targets, ids = [], [], []
    for case in cases:
        image, target = _case_arrays(case, observer, channels, methods, teacher)
        if image.ndim - (channels is not None) != 3:
            raise DataError(case.image, "is 2D; a 3D model trains on 3D stacks only "
                            "(use --model unet2d for 2D images)")
        images.append(image)
        targets.append(target)
        ids.append(case.id)
    return _samples(images, targets, ids, observer, channels, teacher, teacher_weight)


# --------------------------------------------------------------------------- per-epoch draws

def draw_indices(has_tumour: np.ndarray, n: int, tumour_fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``n`` sample indices; a share ``tumour_fraction`` is forced to hold tumour."""
    tumour = np.flatnonzero(has_tumour)
    if tumour_fraction <= 0 or len(tumour) == 0:
        return rng.permutation(len(has_tumour))[:n] if n <= len(has_tumour) else \
            rng.integers(len(has_tumour), size=n)
    forced = rng.random(n) < tumour_fraction
    picks = rng.integers(len(has_tumour), size=n)
    picks[forced] = tumour[rng.integers(len(tumour), size=forced.sum())]
    return picks


def _pick_observer(targets: np.ndarray, rng: np.random.Generator, soft: bool,
                   truth_planes: int | None = None) -> np.ndarray:
    """The targets of one epoch, ``(N, ..., C)`` float32, from ``(N, O, ...)`` masks.

    One observer per sample (C = 1; O = 1: that one), or for ``soft`` every
    observer as a channel (C = O), averaged after augmentation by
    :func:`epoch_dataset` so that each mask is resampled as a binary mask. A
    teacher's plane (after ``truth_planes`` masks) becomes its binary levels first.
    """
    if truth_planes is not None:
        targets = expand_teacher(targets, truth_planes)
    if soft:
        return np.moveaxis(targets, 1, -1).astype(np.float32)
    choice = rng.integers(targets.shape[1], size=targets.shape[0])
    return targets[np.arange(targets.shape[0]), choice][..., None].astype(np.float32)


def _patch(volume: np.ndarray, target: np.ndarray, shape, rng, force_tumour: bool,
           truth_planes: int | None = None):
    """A patch of ``shape``; centred on a random tumour voxel (of the observers' first
    ``truth_planes`` planes, not a teacher's) when forced."""
    if volume.shape[0] < shape[0] or volume.shape[1] < shape[1] or volume.shape[2] < shape[2]:
        pad = [(0, max(0, s - v)) for s, v in zip(shape, volume.shape)]
        volume = np.pad(volume, pad + [(0, 0)] * (volume.ndim - 3))  # a channel axis stays
        target = np.pad(target, [(0, 0)] + pad)
    if force_tumour and target[:truth_planes].any():
        voxels = np.argwhere(target[:truth_planes].any(axis=0))
        centre = voxels[rng.integers(len(voxels))]
        start = [int(np.clip(c - s // 2, 0, v - s)) for c, s, v in zip(centre, shape, volume.shape)]
    else:
        start = [int(rng.integers(v - s + 1)) for s, v in zip(shape, volume.shape)]
    window = tuple(slice(a, a + s) for a, s in zip(start, shape))
    return volume[window], target[(slice(None),) + window]


def epoch_arrays(samples: Samples, epoch: int, seed: int, n: int, tumour_fraction: float,
                 patch_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """The images and targets of one epoch, before augmentation.

    Images are ``(n, ..., C)`` (C = 1 for grey samples, else one per named channel);
    targets ``(n, ..., 1)``, or ``(n, ..., O)`` for a ``soft`` target (one channel
    per observer, averaged by :func:`epoch_dataset`); with a teacher ``(n, ..., O + L)``,
    the observers' masks and the teacher's :data:`TEACHER_LEVELS` levels.
    """
    rng = np.random.default_rng([seed, epoch])
    if patch_shape is None:
        index = draw_indices(samples.has_tumour, n, tumour_fraction, rng)
        images = samples.images[index]
        targets = _pick_observer(samples.targets[index], rng, samples.soft, samples.truth_planes)
    else:
        has = samples.has_tumour
        images, targets = [], []
        for _ in range(n):
            force = rng.random() < tumour_fraction and has.any()
            pool = np.flatnonzero(has) if force else np.arange(len(samples.images))
            k = pool[rng.integers(len(pool))]
            image, target = _patch(samples.images[k], samples.targets[k], patch_shape, rng, force,
                                   samples.truth_planes)
            images.append(image)
            targets.append(target)
        images = np.stack(images)
        targets = _pick_observer(np.stack(targets), rng, samples.soft, samples.truth_planes)
    return _channels_last(samples, images).astype(np.float32), targets


@functools.lru_cache(maxsize=16)
def _augment_function(augment: AugmentConfig, image_shape: tuple, target_shape: tuple,
                      channels: tuple[str, ...] | None = None):
    """The augmentation of one element as a ``tf.function`` traced once per shape.

    ``Dataset.map`` traces a plain Python function again for every new dataset, that
    is every epoch (a fraction of a second of single-threaded work before the first
    step); a ``tf.function`` with a fixed signature is traced the first time only.
    """
    import tensorflow as tf

    from bcseg.learn.augment import augment_2d, augment_3d

    function = augment_3d if len(image_shape) == 4 else augment_2d
    signature = [tf.TensorSpec(image_shape, tf.float32), tf.TensorSpec(target_shape, tf.float32),
                 tf.TensorSpec([2], tf.int64)]
    return tf.function(lambda x, y, s: function(x, y, s, augment, channels), input_signature=signature)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _epoch_options() -> tf.data.Options:
    """Fixed parallelism instead of tf.data's autotuning.

    An autotuned iterator has a background thread that its deletion waits for: at
    the end of every ``fit`` call (every epoch) that cost 0.1-0.6 s on 2 cores, 2-12%
    of an epoch of 256 images at 128². The augmentation is far cheaper than a
    training step (about 1 ms against 35 ms of CPU per 128² image), so the fixed
    settings of :func:`epoch_dataset` (one map call per core, two prefetched
    batches) keep the model fed.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def epoch_dataset(images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, epoch: int,
                  augment: AugmentConfig | None, channels: list[str] | None = None,
                  weights: tuple[float, ...] | None = None) -> tf.data.Dataset:
    """A batched, augmented, prefetched dataset over one epoch's arrays.

    Sample ``i`` of the epoch is augmented with the stateless seed
    ``(seed * 100003 + epoch, i)``, so the same ``(seed, epoch)`` gives the same batches.
    ``channels`` names the images' channels (see :func:`bcseg.learn.augment.augment_2d`).
    A target of several planes becomes their mean, or their sum weighted by ``weights``.
    """
    import tensorflow as tf

    if augment is None or not augment.enabled:
        ds = tf.data.Dataset.from_tensor_slices((images, targets))
    else:
        images = np.asarray(images, dtype=np.float32)
        targets = np.asarray(targets, dtype=np.float32)
        count = len(images)
        seeds = np.stack([np.full(count, seed * 100_003 + epoch, dtype=np.int64),
                          np.arange(count, dtype=np.int64)], axis=1)
        function = _augment_function(augment, images.shape[1:], targets.shape[1:],
                                     None if channels is None else tuple(channels))
        ds = tf.data.Dataset.from_tensor_slices((images, targets, seeds))
        ds = ds.map(function, num_parallel_calls=_cpu_count(), deterministic=True)
    if targets.shape[-1] > 1 and weights is None:  # soft: the observers' masks, augmented alike
        ds = ds.map(lambda x, y: (x, tf.reduce_mean(y, axis=-1, keepdims=True)))  # sequential: in order
    elif targets.shape[-1] > 1:  # with a teacher's planes: their weighted sum
        w = tf.constant(weights, tf.float32)
        ds = ds.map(lambda x, y: (x, tf.reduce_sum(y * w, axis=-1, keepdims=True)))
    return ds.batch(batch_size).prefetch(2).with_options(_epoch_options())


def validation_arrays(samples: Samples, patch_shape=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation inputs: every slice (2D), or tumour and random patches (3D)."""
    if patch_shape is None:
        return _channels_last(samples, samples.images), samples.targets[:, 0, ..., None].astype(np.float32)
    rng = np.random.default_rng([seed, 10**6])
    images, targets = [], []
    for image, target in zip(samples.images, samples.targets):
        for force in (True, False):
            patch, mask = _patch(image, target[:1], patch_shape, rng, force)
            images.append(patch)
            targets.append(mask[0])
    return _channels_last(samples, np.stack(images)), np.stack(targets)[..., None].astype(np.float32)


def _channels_last(samples: Samples, images: np.ndarray) -> np.ndarray:
    """Images with the channel axis the model takes: added for grey samples, kept otherwise."""
    return images if samples.channels else images[..., None]
