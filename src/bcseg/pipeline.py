"""Input pipelines: cached training arrays and one ``tf.data`` dataset per epoch.

Images are read, decoded, normalised and (for 2D) fitted to the training size once,
then kept in memory, so an epoch never re-reads a file. Each epoch draws its samples
with a generator seeded by ``(seed, epoch)``: with probability ``tumour_fraction``
a sample is forced to contain tumour (nnU-Net's foreground oversampling), otherwise
it is drawn uniformly. Augmentation runs inside the ``tf.data`` graph with stateless
seeds, so an epoch can be replayed exactly (this is what makes ``--resume`` give the
same weights as an uninterrupted run).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

# TensorFlow and bcseg.augment are imported by the functions that train with them: the
# geometry helpers (to_square, from_square) also serve the ONNX runtime, without TensorFlow.
from bcseg.dataset import Case, read_case_image, read_case_masks
from bcseg.errors import DataError
from bcseg.intensity import normalise
from bcseg.observers import consensus

RANDOM_OBSERVER = "random"


# --------------------------------------------------------------------------- geometry

def to_square(image: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Pad a 2D array at the bottom and right to a square, then resize to ``size``.

    Padding keeps the aspect ratio, so lesions are not squashed. Masks use
    ``order=0``. :func:`from_square` undoes it.
    """
    h, w = image.shape
    side = max(h, w)
    if (h, w) == (size, size):
        return image
    square = np.zeros((side, side), dtype=np.float32)
    square[:h, :w] = image
    if side == size:
        return square
    return resize(square, (size, size), order=order, anti_aliasing=order > 0,
                  preserve_range=True).astype(np.float32)


def from_square(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a ``size``×``size`` map back to the padded square and crop to ``shape``."""
    h, w = shape
    side = max(h, w)
    if prob.shape != (side, side):
        prob = resize(prob, (side, side), order=1, preserve_range=True)
    return np.asarray(prob[:h, :w], dtype=np.float32)


# --------------------------------------------------------------------------- cached arrays

def training_target(masks: dict[str, np.ndarray], observer: str, where: str) -> np.ndarray:
    """The training target of one case: an observer, or a consensus of them.

    For ``random`` every observer is kept, stacked on a new first axis, so that a
    sampler can draw one per sample and epoch.
    """
    if not masks:
        raise DataError(where, "has no observer mask to train on")
    if observer == RANDOM_OBSERVER:
        return np.stack([masks[name] for name in sorted(masks)])
    try:
        return consensus(masks, observer)
    except ValueError as exc:
        raise DataError(where, str(exc)) from None


@dataclass
class Samples:
    """Training samples held in memory.

    ``images`` is ``(N, ...)`` float32 in [0, 1]; ``targets`` is ``(N, O, ...)``
    uint8 with one entry per observer kept (O = 1 unless the target is ``random``);
    ``has_tumour`` marks samples whose target holds tumour.
    """

    images: list[np.ndarray] | np.ndarray
    targets: list[np.ndarray] | np.ndarray
    case_ids: list[str]

    @property
    def has_tumour(self) -> np.ndarray:
        return np.array([t.any() for t in self.targets], dtype=bool)


def _case_arrays(case: Case, observer: str) -> tuple[np.ndarray, np.ndarray]:
    image, _ = read_case_image(case)
    masks = read_case_masks(case, image.shape)
    target = training_target(masks, observer, str(case.image))
    if target.ndim == image.ndim:
        target = target[None]
    return normalise(image), target.astype(np.uint8)


def slice_samples(cases: list[Case], observer: str, size: int,
                  offline_augment: str = "none", seed: int = 0) -> Samples:
    """2D samples: every image, and every slice of every stack, fitted to ``size``.

    With ``offline_augment="reference"`` each slice becomes the reference study's 24
    rotated and trimmed copies (one target only: not with the ``random`` observer).
    """
    if offline_augment == "reference" and observer == RANDOM_OBSERVER:
        raise DataError(None, "the reference offline augmentation needs one target; "
                        "choose an observer or a consensus instead of 'random'")
    images, targets, ids = [], [], []
    rng = np.random.default_rng(seed)
    for case in cases:
        image, target = _case_arrays(case, observer)
        stack = image[None] if image.ndim == 2 else image
        target_stack = target[:, None] if image.ndim == 2 else target  # (O, Z, H, W)
        for z in range(stack.shape[0]):
            square = to_square(stack[z], size)
            masks = np.stack([to_square(t, size, order=0) for t in target_stack[:, z]]) > 0.5
            if offline_augment == "reference":
                from bcseg.augment import reference_offline_augment
                aug_images, aug_masks = reference_offline_augment(square, masks[0], size=size, rng=rng)
                images.extend(aug_images)
                targets.extend(aug_masks[:, None])
                ids.extend([case.id] * len(aug_images))
            else:
                images.append(square)
                targets.append(masks)
                ids.append(case.id)
    return Samples(np.stack(images).astype(np.float32), np.stack(targets).astype(np.uint8), ids)


def volume_samples(cases: list[Case], observer: str) -> Samples:
    """3D samples: whole normalised volumes, cut into patches per epoch."""
    images, targets, ids = [], [], []
    for case in cases:
        image, target = _case_arrays(case, observer)
        if image.ndim != 3:
            raise DataError(case.image, "is 2D; a 3D model trains on 3D stacks only "
                            "(use --model unet2d for 2D images)")
        images.append(image)
        targets.append(target)
        ids.append(case.id)
    return Samples(images, targets, ids)


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


def _pick_observer(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One observer per sample from ``(N, O, ...)`` targets (O = 1: that one)."""
    choice = rng.integers(targets.shape[1], size=targets.shape[0])
    return targets[np.arange(targets.shape[0]), choice]


def _patch(volume: np.ndarray, target: np.ndarray, shape, rng, force_tumour: bool):
    """A patch of ``shape``; centred on a random tumour voxel when forced."""
    if volume.shape[0] < shape[0] or volume.shape[1] < shape[1] or volume.shape[2] < shape[2]:
        pad = [(0, max(0, s - v)) for s, v in zip(shape, volume.shape)]
        volume = np.pad(volume, pad)
        target = np.pad(target, [(0, 0)] + pad)
    if force_tumour and target.any():
        voxels = np.argwhere(target.any(axis=0))
        centre = voxels[rng.integers(len(voxels))]
        start = [int(np.clip(c - s // 2, 0, v - s)) for c, s, v in zip(centre, shape, volume.shape)]
    else:
        start = [int(rng.integers(v - s + 1)) for s, v in zip(shape, volume.shape)]
    window = tuple(slice(a, a + s) for a, s in zip(start, shape))
    return volume[window], target[(slice(None),) + window]


def epoch_arrays(samples: Samples, epoch: int, seed: int, n: int, tumour_fraction: float,
                 patch_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """The images and targets of one epoch, before augmentation; shape ``(n, ..., 1)``."""
    rng = np.random.default_rng([seed, epoch])
    if patch_shape is None:
        index = draw_indices(samples.has_tumour, n, tumour_fraction, rng)
        images = samples.images[index]
        targets = _pick_observer(samples.targets[index], rng)
    else:
        has = samples.has_tumour
        images, targets = [], []
        for _ in range(n):
            force = rng.random() < tumour_fraction and has.any()
            pool = np.flatnonzero(has) if force else np.arange(len(samples.images))
            k = pool[rng.integers(len(pool))]
            image, target = _patch(samples.images[k], samples.targets[k], patch_shape, rng, force)
            images.append(image)
            targets.append(target)
        images = np.stack(images)
        targets = _pick_observer(np.stack(targets), rng)
    return images[..., None].astype(np.float32), targets[..., None].astype(np.float32)


@functools.lru_cache(maxsize=16)
def _augment_function(augment: AugmentConfig, image_shape: tuple, target_shape: tuple):
    """The augmentation of one element as a ``tf.function`` traced once per shape.

    ``Dataset.map`` traces a plain Python function again for every new dataset, that
    is every epoch (a fraction of a second of single-threaded work before the first
    step); a ``tf.function`` with a fixed signature is traced the first time only.
    """
    import tensorflow as tf

    from bcseg.augment import augment_2d, augment_3d

    function = augment_3d if len(image_shape) == 4 else augment_2d
    signature = [tf.TensorSpec(image_shape, tf.float32), tf.TensorSpec(target_shape, tf.float32),
                 tf.TensorSpec([2], tf.int64)]
    return tf.function(lambda x, y, s: function(x, y, s, augment), input_signature=signature)


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
                  augment: AugmentConfig | None) -> tf.data.Dataset:
    """A batched, augmented, prefetched dataset over one epoch's arrays.

    Sample ``i`` of the epoch is augmented with the stateless seed
    ``(seed * 100003 + epoch, i)``, so the same ``(seed, epoch)`` gives the same batches.
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
        function = _augment_function(augment, images.shape[1:], targets.shape[1:])
        ds = tf.data.Dataset.from_tensor_slices((images, targets, seeds))
        ds = ds.map(function, num_parallel_calls=_cpu_count(), deterministic=True)
    return ds.batch(batch_size).prefetch(2).with_options(_epoch_options())


def validation_arrays(samples: Samples, patch_shape=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation inputs: every slice (2D), or tumour and random patches (3D)."""
    if patch_shape is None:
        return samples.images[..., None], samples.targets[:, 0, ..., None].astype(np.float32)
    rng = np.random.default_rng([seed, 10**6])
    images, targets = [], []
    for image, target in zip(samples.images, samples.targets):
        for force in (True, False):
            patch, mask = _patch(image, target[:1], patch_shape, rng, force)
            images.append(patch)
            targets.append(mask[0])
    return np.stack(images)[..., None], np.stack(targets)[..., None].astype(np.float32)
