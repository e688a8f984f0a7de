"""Paired image/mask augmentation.

Two independent recipes:

* :func:`augment_2d` and :func:`augment_3d` run inside a ``tf.data`` graph. They are
  stateless: the output depends only on the inputs and a ``seed`` tensor of shape
  ``(2,)`` (``tf.random.stateless_*``), so an epoch can be replayed exactly. Image
  and mask get the same geometric transform (rotation and zoom in one affine
  resample, then flips), shared by every channel of the image; intensity changes
  touch the image only. With named channels (``channels=("us", "pa")``) each channel
  draws its own contrast, brightness and gamma, and speckle noise, an ultrasound
  artefact, goes on the ``us`` channel only.
* :func:`reference_offline_augment` reproduces, in NumPy, the reference study's
  offline recipe: 12 rotations × 2 random trims per image.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf
from skimage.transform import resize, rotate

from bcseg.data.channels import ULTRASOUND, is_modality
from bcseg.errors import ConfigError

MAX_BLUR = 4.0  # pixels; bounds the Gaussian kernel of the blur and speckle-grain steps


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the on-the-fly augmentation; a neutral value switches a step off.

    Parameters
    ----------
    enabled : bool
        False makes :func:`augment_2d` / :func:`augment_3d` return their inputs.
    rotation_deg : float
        In-plane rotation drawn uniformly from [-rotation_deg, rotation_deg] degrees
        (positive is counter-clockwise as displayed, like ``skimage.transform.rotate``).
    scale : (float, float)
        Zoom factor range; above 1 crops the centre and enlarges it, below 1
        shrinks the image inside a zero border. Drawn log-uniformly.
    p_geometric : float
        Probability of applying rotation and zoom to a sample.
    flip_lr : bool
        Mirror left-right with probability 1/2.
    flip_ud : bool
        Mirror top-bottom with probability 1/2. Off by default: ultrasound depth
        has a direction (acoustic shadowing lies below lesions).
    flip_z : bool
        Reverse the slice order of a 3D stack with probability 1/2 (3D only).
    brightness : float
        Additive shift drawn from [-brightness, brightness].
    contrast : float
        Factor drawn from [1 - contrast, 1 + contrast], applied around the image mean.
    gamma : (float, float)
        Exponent range, drawn log-uniformly: ``image ** gamma``.
    speckle : float
        Standard deviation of multiplicative noise: ``image * (1 + N(0, speckle))``.
    p_intensity : float
        Probability of applying the intensity steps (brightness to speckle).
    gain_ramp : float
        Scanner shift: a gain that runs linearly from 1 at the transducer (top row)
        to ``1 + u`` at the bottom, ``u`` drawn from [-gain_ramp, gain_ramp]; stands
        for another time-gain compensation.
    blur : float
        Scanner shift: Gaussian blur with sigma drawn from [0, blur] pixels (another
        focus or resolution), in-plane only.
    resample : float
        Scanner shift: down-sample by a factor drawn from [1 - resample, 1] and back
        (a coarser scanner at the same field of view).
    speckle_grain : float
        Scanner shift: the multiplicative speckle noise is smoothed with a sigma drawn
        from [0, speckle_grain] pixels, so its grain varies like another probe's; its
        standard deviation stays ``speckle``.
    speckle_max : float
        Scanner shift: when above ``speckle``, the speckle noise's standard deviation is
        drawn per image from [speckle, speckle_max], so that training sees clean and
        strongly speckled images alike (0, the default: always ``speckle``).

    The scanner-shift steps are off (0) by default, so recipes that do not name them
    replay exactly as before; they run inside the intensity step with their own seeds.
    """

    enabled: bool = True
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    p_geometric: float = 1.0
    flip_lr: bool = True
    flip_ud: bool = False
    flip_z: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.5)
    speckle: float = 0.1
    p_intensity: float = 1.0
    gain_ramp: float = 0.0
    blur: float = 0.0
    resample: float = 0.0
    speckle_grain: float = 0.0
    speckle_max: float = 0.0

    def __post_init__(self):
        def check(ok, problem):
            if not ok:
                raise ValueError(f"AugmentConfig: {problem}")

        check(0 <= self.rotation_deg <= 180, f"rotation_deg must be in [0, 180], got {self.rotation_deg}")
        for key in ("scale", "gamma"):
            lo, hi = getattr(self, key)
            check(0 < lo <= hi, f"{key} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        for key in ("p_geometric", "p_intensity"):
            check(0 <= getattr(self, key) <= 1, f"{key} must be in [0, 1], got {getattr(self, key)}")
        check(self.brightness >= 0, f"brightness must be >= 0, got {self.brightness}")
        check(0 <= self.contrast < 1, f"contrast must be in [0, 1), got {self.contrast}")
        check(self.speckle >= 0, f"speckle must be >= 0, got {self.speckle}")
        check(0 <= self.gain_ramp < 1, f"gain_ramp must be in [0, 1), got {self.gain_ramp}")
        check(0 <= self.blur <= MAX_BLUR, f"blur must be in [0, {MAX_BLUR}] pixels, got {self.blur}")
        check(0 <= self.resample < 1, f"resample must be in [0, 1), got {self.resample}")
        check(0 <= self.speckle_grain <= MAX_BLUR,
              f"speckle_grain must be in [0, {MAX_BLUR}] pixels, got {self.speckle_grain}")
        check(self.speckle_max == 0 or self.speckle_max >= self.speckle,
              f"speckle_max must be 0 (off) or >= speckle ({self.speckle}), got {self.speckle_max}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration with every step switched off (the identity)."""
        return cls(enabled=False, rotation_deg=0.0, scale=(1.0, 1.0), flip_lr=False,
                   flip_ud=False, flip_z=False, brightness=0.0, contrast=0.0,
                   gamma=(1.0, 1.0), speckle=0.0, gain_ramp=0.0, blur=0.0, resample=0.0,
                   speckle_grain=0.0, speckle_max=0.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Build from a mapping such as the ``[augment]`` table of a TOML file.

        Missing keys keep their defaults; lists are accepted for the pairs.

        Raises
        ------
        ConfigError
            For an unknown key, a wrongly typed value or one out of range.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(None, f"augment: unknown key(s) {', '.join(unknown)}; "
                                    f"known keys are {', '.join(fields)}")
        values = {}
        for key, value in d.items():
            default = fields[key].default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, tuple):
                ok = (isinstance(value, (list, tuple)) and len(value) == 2
                      and all(_is_number(v) for v in value))
                value = tuple(float(v) for v in value) if ok else value
            else:
                ok = _is_number(value)
                value = float(value) if ok else value
            if not ok:
                raise ConfigError(None, f"augment: {key} must be {_type_word(default)}, got {value!r}")
            values[key] = value
        try:
            return cls(**values)
        except ValueError as err:
            raise ConfigError(None, str(err)) from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_word(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, tuple):
        return "a pair of numbers [low, high]"
    return "a number"


@tf.autograph.experimental.do_not_convert
def augment_2d(image, mask, seed, config: AugmentConfig = AugmentConfig(), channels=None):
    """Augment one 2D image and its mask with the same geometric transform.

    Parameters
    ----------
    image : tensor, shape (H, W, C), float32 in [0, 1]
    mask : tensor, shape (H, W, 1), float32 in {0, 1}
    seed : tensor, shape (2,), integer
        For example from ``tf.data.Dataset.random(seed).batch(2)`` or
        ``tf.random.experimental.stateless_split``; a scalar ``s`` means ``(s, 0)``.
        The same seed gives the same output.
    config : AugmentConfig
    channels : sequence of str, optional
        Names of the image's C channels: intensity steps draw per channel and speckle
        touches ``us`` only. None: one grey image, augmented as a whole.

    Returns
    -------
    image, mask : tensors of the input shapes, float32; the image clipped to
        [0, 1] and the mask still binary.
    """
    image, mask = _as_float_tensors(image, mask, 3, "augment_2d", "(H, W, C)")
    config = dataclasses.replace(config, flip_z=False)
    image, mask = augment_3d(image[tf.newaxis], mask[tf.newaxis], seed, config, channels)
    return image[0], mask[0]


@tf.autograph.experimental.do_not_convert
def augment_3d(volume, mask, seed, config: AugmentConfig = AugmentConfig(), channels=None):
    """Augment one 3D stack and its mask: flips, in-plane rotation/zoom, intensity.

    Every slice gets the same in-plane transform, so the stack stays coherent.

    Parameters
    ----------
    volume : tensor, shape (D, H, W, C), float32 in [0, 1]
    mask : tensor, shape (D, H, W, 1), float32 in {0, 1}
    seed : tensor, shape (2,), integer
    config : AugmentConfig
    channels : sequence of str, optional
        As :func:`augment_2d`.

    Returns
    -------
    volume, mask : tensors of the input shapes (see :func:`augment_2d`).
    """
    volume, mask = _as_float_tensors(volume, mask, 4, "augment_3d", "(D, H, W, C)")
    if not config.enabled:
        return volume, mask
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), 16)))

    def chance(p):
        return tf.random.stateless_uniform([], next(seeds)) < p

    def uniform(lo, hi, shape=()):
        return tf.random.stateless_uniform(shape, next(seeds), lo, hi)

    if config.rotation_deg > 0 or config.scale != (1.0, 1.0):
        angle = uniform(-config.rotation_deg, config.rotation_deg) * (math.pi / 180)
        scale = tf.exp(uniform(math.log(config.scale[0]), math.log(config.scale[1])))
        volume, mask = tf.cond(chance(config.p_geometric),
                               lambda: rotate_scale(volume, mask, angle, scale),
                               lambda: (volume, mask))
    for flag, axis in ((config.flip_lr, 2), (config.flip_ud, 1), (config.flip_z, 0)):
        if flag:
            volume, mask = tf.cond(chance(0.5),
                                   lambda a=axis: (tf.reverse(volume, [a]), tf.reverse(mask, [a])),
                                   lambda: (volume, mask))
    if _changes_intensity(config):
        volume = tf.cond(chance(config.p_intensity),
                         lambda: _intensity(volume, config, uniform, next(seeds), channels),
                         lambda: volume)
    return volume, mask


def _changes_intensity(config: AugmentConfig) -> bool:
    return bool(config.brightness or config.contrast or config.speckle or config.speckle_max
                or config.gamma != (1.0, 1.0)
                or _shifts_scanner(config))


def _shifts_scanner(config: AugmentConfig) -> bool:
    return bool(config.gain_ramp or config.blur or config.resample)


def _intensity(volume, config, uniform, noise_seed, channels=None):
    """Contrast, brightness, gamma and speckle, with the image kept in [0, 1].

    A grey image (``channels`` None) draws each once for the whole image; named
    channels draw one per channel (shape ``[C]``, broadcast over the last axis), and
    only ``us`` gets speckle.
    """
    shape, axes = ((), None) if channels is None else ([len(channels)], [0, 1, 2])
    if config.contrast:
        # float64 accumulation: a float32 sum over threads varied in the last bit between
        # identical runs, which broke exact replay for --resume.
        mean = tf.cast(tf.reduce_mean(tf.cast(volume, tf.float64), axis=axes), volume.dtype)
        volume = mean + (volume - mean) * uniform(1 - config.contrast, 1 + config.contrast, shape)
    if config.brightness:
        volume = volume + uniform(-config.brightness, config.brightness, shape)
    volume = tf.clip_by_value(volume, 0.0, 1.0)
    if config.gamma != (1.0, 1.0):
        volume = volume ** tf.exp(uniform(math.log(config.gamma[0]), math.log(config.gamma[1]), shape))
    speckled = None if channels is None else [float(is_modality(name, ULTRASOUND)) for name in channels]
    if (config.speckle or config.speckle_max) and (speckled is None or any(speckled)):
        strength = config.speckle
        if config.speckle_max > config.speckle:  # a draw of its own: the others stay as they were
            strength = _draw(noise_seed, 5, config.speckle, config.speckle_max)
        noise = tf.random.stateless_normal(tf.shape(volume), noise_seed, stddev=strength)
        if config.speckle_grain:
            noise = _grain(noise, config, noise_seed, strength)
        if speckled is not None:
            noise = noise * tf.constant(speckled, tf.float32)
        volume = tf.clip_by_value(volume * (1.0 + noise), 0.0, 1.0)
    if _shifts_scanner(config):
        volume = _scanner_shift(volume, config, noise_seed)
    return volume


def _draw(seed, k: int, lo: float, hi: float):
    """A uniform draw of its own for the scanner-shift step ``k``.

    Folded in from the noise seed rather than taken from the shared stream, so
    switching a step on leaves every other step's draws unchanged.
    """
    return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, k), lo, hi)


def _gaussian_blur(volume, sigma):
    """Blur each slice of ``(D, H, W, C)`` in-plane with a Gaussian of ``sigma`` pixels."""
    radius = int(math.ceil(3 * MAX_BLUR))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * (x / tf.maximum(sigma, 1e-3)) ** 2)
    kernel = kernel / tf.reduce_sum(kernel)
    channels = tf.shape(volume)[-1]
    rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(volume, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "VALID")


def _grain(noise, config, seed, strength):
    """Smooth the speckle noise to a random grain, keeping its standard deviation."""
    sigma = _draw(seed, 1, 0.0, config.speckle_grain)
    smooth = _gaussian_blur(noise, sigma)
    scale = strength / (tf.math.reduce_std(smooth) + 1e-6)
    return tf.cond(sigma > 0.25, lambda: smooth * scale, lambda: noise)


def _scanner_shift(volume, config, seed):
    """Depth gain ramp, blur and resampling: what differs between scanners."""
    if config.gain_ramp:
        bottom = 1.0 + _draw(seed, 2, -config.gain_ramp, config.gain_ramp)
        ramp = tf.linspace(1.0, bottom, tf.shape(volume)[1])
        volume = volume * tf.reshape(ramp, [1, -1, 1, 1])
    if config.blur:
        sigma = _draw(seed, 3, 0.0, config.blur)
        volume = tf.cond(sigma > 0.25, lambda: _gaussian_blur(volume, sigma), lambda: volume)
    if config.resample:
        factor = _draw(seed, 4, 1.0 - config.resample, 1.0)
        size = tf.shape(volume)[1:3]
        small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1)
        volume = tf.image.resize(tf.image.resize(volume, small, "bilinear"), size, "bilinear")
    return tf.clip_by_value(volume, 0.0, 1.0)


def rotate_scale(images, masks, angle, scale):
    """Rotate and zoom a batch of slices about their centre in one bilinear resample.

    Parameters
    ----------
    images : tensor, shape (N, H, W, C), float32
    masks : tensor, shape (N, H, W, 1), float32 in {0, 1}
    angle : scalar tensor or float
        Radians, counter-clockwise as displayed (row 0 at the top).
    scale : scalar tensor or float
        Zoom factor; above 1 enlarges the centre.

    Returns
    -------
    images, masks : tensors of the input shapes. Areas brought in from outside
        are 0; masks are resampled bilinearly and thresholded at 0.5.
    """
    channels = tf.shape(images)[-1]
    both = tf.concat([images, masks], axis=-1)
    height, width = tf.shape(both)[1], tf.shape(both)[2]
    cy = (tf.cast(height, tf.float32) - 1) / 2
    cx = (tf.cast(width, tf.float32) - 1) / 2
    cos = tf.cos(tf.cast(angle, tf.float32)) / scale
    sin = tf.sin(tf.cast(angle, tf.float32)) / scale
    # Maps each output pixel (x, y) back to the input pixel it samples.
    matrix = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                       sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    both = tf.raw_ops.ImageProjectiveTransformV3(
        images=both, transforms=tf.tile(matrix[tf.newaxis], [tf.shape(both)[0], 1]),
        output_shape=tf.stack([height, width]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    images_out = tf.ensure_shape(both[..., :channels], images.shape)
    masks_out = tf.ensure_shape(tf.cast(both[..., channels:] >= 0.5, tf.float32), masks.shape)
    return images_out, masks_out


def _as_seed(seed):
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    return seed


def _as_float_tensors(image, mask, rank, function, layout):
    """Both as float32 tensors, checking their rank."""
    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.convert_to_tensor(mask, tf.float32)
    for what, x in (("image", image), ("mask", mask)):
        if x.shape.rank is not None and x.shape.rank != rank:
            raise ValueError(f"{function}: {what} must have shape {layout}, got {x.shape}")
    return image, mask


def _check_offline_request(image, mask, size: int, angle_step: int, crops_per_angle: int,
                           max_trim_tb: int, max_trim_lr: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``mask`` as arrays, after checking every argument by its name."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape != (size, size) or mask.shape != (size, size):
        raise ValueError(f"image and mask must have shape ({size}, {size}), "
                         f"got {image.shape} and {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if not 1 <= angle_step <= 360 or crops_per_angle < 1:
        raise ValueError("need 1 <= angle_step <= 360 and crops_per_angle >= 1, "
                         f"got {angle_step} and {crops_per_angle}")
    if not (0 <= max_trim_tb and 0 <= max_trim_lr and 2 * max(max_trim_tb, max_trim_lr) < size):
        raise ValueError(f"trims must be >= 0 and leave pixels: got {max_trim_tb} (top/bottom) "
                         f"and {max_trim_lr} (left/right) for size {size}")
    return image, mask


# The reference study's crops: up to 5 pixels trimmed from the top and from the bottom,
# up to 10 from the left and from the right (train refuses inputs these do not fit).
REFERENCE_MAX_TRIM_TB = 5
REFERENCE_MAX_TRIM_LR = 10


def reference_offline_augment(
    image: np.ndarray,
    mask: np.ndarray,
    size: int = 128,
    angle_step: int = 30,
    crops_per_angle: int = 2,
    max_trim_tb: int = REFERENCE_MAX_TRIM_TB,
    max_trim_lr: int = REFERENCE_MAX_TRIM_LR,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference study's offline augmentation: rotations, then random trims.

    For every angle 0, ``angle_step``, ... below 360 the image is rotated about its
    centre (``skimage.transform.rotate``: bilinear for the image, nearest for the
    mask, zero fill). Each rotation gives ``crops_per_angle`` crops that trim
    0..``max_trim_tb`` pixels from the top and from the bottom and
    0..``max_trim_lr`` from the left and from the right, each drawn independently,
    resized back to ``size × size``.

    Parameters
    ----------
    image : ndarray, shape (size, size), float in [0, 1]
    mask : ndarray, shape (size, size), bool
    size : int
        Side of the (already resized) square input and of every output.
    angle_step : int
        Degrees between rotations, 1 to 360.
    crops_per_angle : int
    max_trim_tb, max_trim_lr : int
        Largest trim at each of top/bottom and left/right, in pixels.
    rng : numpy.random.Generator or int, optional
        Random source, or a seed for one.

    Returns
    -------
    images : ndarray, shape (N, size, size), float32
    masks : ndarray, shape (N, size, size), bool
        ``N = ceil(360 / angle_step) * crops_per_angle``, 24 by default.

    Examples
    --------
    >>> images, masks = reference_offline_augment(np.zeros((128, 128)), np.zeros((128, 128), bool), rng=0)
    >>> images.shape
    (24, 128, 128)
    """
    image, mask = _check_offline_request(image, mask, size, angle_step, crops_per_angle,
                                         max_trim_tb, max_trim_lr)
    rng = np.random.default_rng(rng)
    images, masks = [], []
    for angle in range(0, 360, angle_step):
        turned = rotate(image.astype(np.float64), angle, order=1, mode="constant", cval=0.0)
        turned_mask = rotate(mask.astype(np.float64), angle, order=0, mode="constant", cval=0.0)
        for _ in range(crops_per_angle):
            top, bottom = rng.integers(0, max_trim_tb + 1, size=2)
            left, right = rng.integers(0, max_trim_lr + 1, size=2)
            rows, cols = slice(top, size - bottom), slice(left, size - right)
            images.append(resize(turned[rows, cols], (size, size), order=1, mode="edge", anti_aliasing=False))
            masks.append(resize(turned_mask[rows, cols], (size, size), order=0, mode="edge",
                                anti_aliasing=False) >= 0.5)
    return np.clip(np.stack(images), 0, 1).astype(np.float32), np.stack(masks)
