"""Soft Dice, BCE+Dice and the Dice/IoU metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from bcseg.learn.losses import (SMOOTH, DiceMetric, IoUMetric, bce_dice_loss, bce_loss, get_loss,
                          soft_dice_loss)

SPATIAL = {2: (8, 8), 3: (2, 8, 8)}


def _empty(ndim, batch=1):
    return np.zeros((batch, *SPATIAL[ndim], 1), np.float32)


def _metric(metric, y_true, y_pred):
    metric.update_state(y_true, y_pred)
    return float(metric.result())


@pytest.mark.parametrize("ndim", [2, 3])
def test_perfect_prediction(ndim):
    y = _empty(ndim)
    y[:, :4] = 1  # 32 pixels in 2D, 64 voxels in 3D
    np.testing.assert_allclose(soft_dice_loss(y, y), [0.0], atol=1e-7)
    assert _metric(DiceMetric(), y, y) == 1.0
    assert _metric(IoUMetric(), y, y) == 1.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_half_overlap(ndim):
    # Truth: rows 0-3. Prediction: rows 2-5. Each has n pixels and they share n/2.
    y_true, y_pred = _empty(ndim), _empty(ndim)
    y_true[:, ..., 0:4, :, :] = 1
    y_pred[:, ..., 2:6, :, :] = 1
    n = y_true.sum()
    expected_loss = 1 - (2 * n / 2 + SMOOTH) / (2 * n + SMOOTH)
    np.testing.assert_allclose(soft_dice_loss(y_true, y_pred), [expected_loss], rtol=1e-6)
    assert _metric(DiceMetric(), y_true, y_pred) == pytest.approx(0.5)
    assert _metric(IoUMetric(), y_true, y_pred) == pytest.approx(1 / 3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_truth(ndim):
    empty, full = _empty(ndim), _empty(ndim) + 1
    np.testing.assert_allclose(soft_dice_loss(empty, empty), [0.0], atol=1e-7)
    assert _metric(DiceMetric(), empty, empty) == 1.0
    assert _metric(IoUMetric(), empty, empty) == 1.0
    assert _metric(DiceMetric(), empty, full) == 0.0
    assert _metric(IoUMetric(), empty, full) == 0.0
    assert _metric(DiceMetric(), full, empty) == 0.0


def test_metrics_threshold_and_average_per_sample_over_batches():
    y_true = _empty(2, batch=2)
    y_true[0, :4] = 1
    y_pred = np.where(y_true > 0, 0.6, 0.4).astype(np.float32)  # sample 0 right; sample 1 empty=empty
    y_pred[0, 6:] = 0.4
    dice = DiceMetric()
    dice.update_state(y_true, y_pred)
    assert float(dice.result()) == 1.0
    dice.update_state(y_true[:1], np.zeros_like(y_true[:1]))  # a third sample, dice 0
    assert float(dice.result()) == pytest.approx(2 / 3)
    dice.reset_state()
    assert float(dice.result()) == 0.0
    assert (DiceMetric().name, IoUMetric().name) == ("dice", "iou")
    assert DiceMetric(threshold=0.7).get_config()["threshold"] == 0.7


def test_bce_dice_is_the_sum_and_per_sample():
    y_true = _empty(3, batch=2)
    y_true[0, :, :4] = 1  # 2 slices x 4 rows x 8 columns = 64 of 128 voxels
    y_pred = np.full_like(y_true, 0.25)
    p = 0.25  # BCE per voxel: -log(p) where truth is 1, -log(1-p) where it is 0
    bce0 = (-np.log(p) * 64 - np.log(1 - p) * 64) / 128
    np.testing.assert_allclose(bce_loss(y_true, y_pred), [bce0, -np.log(1 - p)], rtol=1e-5)
    np.testing.assert_allclose(bce_dice_loss(y_true, y_pred),
                               np.asarray(bce_loss(y_true, y_pred)) + np.asarray(soft_dice_loss(y_true, y_pred)),
                               rtol=1e-6)


def test_get_loss():
    assert get_loss("dice") is soft_dice_loss
    assert get_loss("bce_dice") is bce_dice_loss
    assert get_loss("bce") is bce_loss
    with pytest.raises(ValueError, match="dice, bce_dice, bce"):
        get_loss("focal")
