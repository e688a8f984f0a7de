"""Segmentation losses and metrics for Keras, the same in 2D and 3D.

Every function reduces over all axes but the batch, so ``(B, H, W, 1)`` and
``(B, Z, H, W, 1)`` tensors are handled alike. Losses return one value per sample
and Keras averages them over the batch.

The losses and metrics are registered with
``keras.saving.register_keras_serializable(package="bcseg")``. A model compiled with
them saves normally; loading it with ``compile=True`` needs ``bcseg.learn.losses`` imported
first (importing registers them). Inference needs neither: load with
``keras.saving.load_model(path, safe_mode=True, compile=False)``.
"""

from __future__ import annotations

import keras
from keras import ops

SMOOTH = 1.0
"""Added to the numerator and denominator of the soft Dice so that an empty truth
with an empty prediction gives Dice 1 (loss 0) and the gradient stays finite. One
pixel's worth is negligible against lesions of hundreds of pixels."""


def _sum_per_sample(x):
    return ops.sum(x, axis=tuple(range(1, len(x.shape))))


def _as_float32(y_true, y_pred):
    """Both tensors in float32, so sums over large 3D volumes cannot overflow float16."""
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


@keras.saving.register_keras_serializable(package="bcseg")
def soft_dice_loss(y_true, y_pred):
    """Soft Dice loss per sample: ``1 - (2·Σ t·p + s) / (Σ t + Σ p + s)``, ``s = SMOOTH``.

    Parameters
    ----------
    y_true : tensor, shape (B, ..., 1)
        Binary truth (0 or 1).
    y_pred : tensor, same shape
        Probabilities in [0, 1].

    Returns
    -------
    tensor, shape (B,)
        0 for a perfect prediction, near 1 for no overlap.
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    intersection = _sum_per_sample(y_true * y_pred)
    total = _sum_per_sample(y_true) + _sum_per_sample(y_pred)
    return 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)


@keras.saving.register_keras_serializable(package="bcseg")
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over all voxels of each sample; shape (B,)."""
    y_true, y_pred = _as_float32(y_true, y_pred)
    bce = ops.binary_crossentropy(y_true, y_pred, from_logits=False)
    return ops.mean(bce, axis=tuple(range(1, len(bce.shape))))


@keras.saving.register_keras_serializable(package="bcseg")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice loss, per sample (the default loss)."""
    return bce_loss(y_true, y_pred) + soft_dice_loss(y_true, y_pred)


REFERENCE_SMOOTH = 1e-7
"""``smooth`` of the reference study's ``dice_coef``, in every commit of its history."""


@keras.saving.register_keras_serializable(package="bcseg")
def reference_dice_loss(y_true, y_pred):
    """The reference study's loss as it executed under tf.keras 2, per sample.

    ``1 - mean over rows of (2·Σ t·p + s) / (Σ t + Σ p + s)``, ``s = 1e-7``, the
    sums running along each image row. The study's masks had no channel axis, so
    tf.keras 2 squeezed the model's ``(B, H, W, 1)`` output to ``(B, H, W)`` and
    its ``K.sum(..., axis=-1)`` summed over the columns of each row (see
    :func:`bcseg.measure.metrics.pixel_soft_score`). Every sample has as many rows, so
    Keras's mean of these per-sample values over the batch is the study's mean
    over all rows of the batch.

    Parameters
    ----------
    y_true, y_pred : tensor, shape (B, ..., H, W, 1)

    Returns
    -------
    tensor, shape (B,)
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    t, p = y_true[..., 0], y_pred[..., 0]  # drop the channel, as tf.keras 2 did
    score = (2.0 * ops.sum(ops.abs(t * p), axis=-1) + REFERENCE_SMOOTH) / (
        ops.sum(t, axis=-1) + ops.sum(p, axis=-1) + REFERENCE_SMOOTH)
    return 1.0 - ops.mean(score, axis=tuple(range(1, len(score.shape))))


LOSSES = {"dice": soft_dice_loss, "bce_dice": bce_dice_loss, "bce": bce_loss,
          "reference_dice": reference_dice_loss}


def get_loss(name: str):
    """The loss function called ``name``: ``"dice"``, ``"bce_dice"``, ``"bce"`` or ``"reference_dice"``.

    Raises
    ------
    ValueError
        For any other name, listing the known ones.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


class _OverlapMetric(keras.metrics.Metric):
    """Mean over samples of an overlap score between thresholded truth and prediction.

    A sample whose truth and prediction are both empty scores 1 (they agree);
    one with an empty truth and a non-empty prediction, or the reverse, scores 0.
    """

    def __init__(self, threshold: float = 0.5, name: str | None = None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _score(self, intersection, sum_true, sum_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(ops.convert_to_tensor(y_true) > 0.5, "float32")
        p = ops.cast(ops.convert_to_tensor(y_pred) > self.threshold, "float32")
        intersection = _sum_per_sample(t * p)
        sum_true, sum_pred = _sum_per_sample(t), _sum_per_sample(p)
        empty = ops.equal(sum_true + sum_pred, 0.0)
        score = ops.where(empty, 1.0, self._score(intersection, sum_true, sum_pred))
        if sample_weight is None:
            weight = ops.ones_like(score)
        else:
            weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            weight = ops.mean(ops.reshape(weight, (ops.shape(score)[0], -1)), axis=1)
        self.total.assign_add(ops.cast(ops.sum(score * weight), self.dtype))
        self.count.assign_add(ops.cast(ops.sum(weight), self.dtype))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="bcseg")
class DiceMetric(_OverlapMetric):
    """Mean per-sample Dice ``2|T∩P| / (|T|+|P|)`` at ``threshold``; history key ``dice``.

    Examples
    --------
    >>> import numpy as np
    >>> m = DiceMetric()
    >>> m.update_state(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))
    >>> float(m.result())
    1.0
    """

    def __init__(self, threshold: float = 0.5, name: str = "dice", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def _score(self, intersection, sum_true, sum_pred):
        return ops.divide_no_nan(2.0 * intersection, sum_true + sum_pred)


@keras.saving.register_keras_serializable(package="bcseg")
class IoUMetric(_OverlapMetric):
    """Mean per-sample IoU ``|T∩P| / |T∪P|`` at ``threshold``; history key ``iou``."""

    def __init__(self, threshold: float = 0.5, name: str = "iou", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def _score(self, intersection, sum_true, sum_pred):
        return ops.divide_no_nan(intersection, sum_true + sum_pred - intersection)
