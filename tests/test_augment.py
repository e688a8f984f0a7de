"""Paired augmentation: graph (tf.data) recipe and the reference offline recipe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from bcseg.learn.augment import (AugmentConfig, augment_2d, augment_3d, reference_offline_augment,
                           rotate_scale)
from bcseg.errors import ConfigError


def _l_shape(shape=(32, 40)):
    """A bright L on a dim, textured background, and its mask: no symmetry to hide errors."""
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[6:24, 8:14] = True
    mask[18:24, 8:26] = True
    image = np.where(mask, 0.9, 0.1 + 0.1 * rng.random(shape))
    return image[..., None].astype(np.float32), mask[..., None].astype(np.float32)


def test_keeps_shapes_dtypes_range_and_binary_mask():
    image, mask = _l_shape()
    out_image, out_mask = augment_2d(image, mask, tf.constant([1, 2]))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert out_image.dtype == tf.float32 and out_mask.dtype == tf.float32
    assert 0 <= out_image.numpy().min() and out_image.numpy().max() <= 1
    assert set(np.unique(out_mask)) <= {0.0, 1.0}


def test_3d_keeps_shapes_and_moves_every_slice_alike():
    image, mask = _l_shape()
    volume, volume_mask = np.stack([image] * 3), np.stack([mask] * 3)
    config = dataclasses.replace(AugmentConfig.none(), enabled=True, rotation_deg=40.0, flip_z=True)
    out, out_mask = augment_3d(volume, volume_mask, tf.constant([3, 4]), config)
    assert out.shape == volume.shape and out_mask.shape == volume_mask.shape
    for z in (1, 2):
        np.testing.assert_array_equal(out_mask[z], out_mask[0])
        np.testing.assert_allclose(out[z], out[0])
    assert not np.array_equal(out_mask[0], mask)


def test_same_seed_same_output_different_seed_differs():
    image, mask = _l_shape()
    a = augment_2d(image, mask, tf.constant([7, 8]))
    b = augment_2d(image, mask, tf.constant([7, 8]))
    c = augment_2d(image, mask, tf.constant([9, 10]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_runs_in_a_tf_data_graph():
    image, mask = _l_shape()
    pairs = tf.data.Dataset.from_tensors((image, mask)).repeat(3)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    data = tf.data.Dataset.zip(pairs, seeds).map(lambda pair, seed: augment_2d(*pair, seed))
    outputs = [m.numpy() for _, m in data]
    assert len(outputs) == 3 and not np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("config", [AugmentConfig.none(), AugmentConfig(enabled=False),
                                    dataclasses.replace(AugmentConfig.none(), enabled=True)])
def test_disabled_is_identity(config):
    image, mask = _l_shape()
    out_image, out_mask = augment_2d(image, mask, tf.constant([1, 2]), config)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_exact_quarter_turn_matches_rot90():
    image, mask = _l_shape((24, 24))
    out_image, out_mask = rotate_scale(image[None], mask[None], np.pi / 2, 1.0)
    np.testing.assert_allclose(out_image[0], np.rot90(image), atol=1e-5)
    np.testing.assert_array_equal(out_mask[0], np.rot90(mask))


def test_rotation_moves_image_and_mask_together():
    image, mask = _l_shape()
    config = dataclasses.replace(AugmentConfig.none(), enabled=True, rotation_deg=90.0, scale=(0.8, 1.2))
    for seed in range(3):
        out_image, out_mask = (x.numpy()[..., 0] for x in augment_2d(image, mask, tf.constant([seed, 0]), config))
        inside = out_mask > 0
        assert inside.sum() > 0.5 * mask.sum()
        assert not np.array_equal(inside, mask[..., 0] > 0)  # it did move
        assert out_image[inside].mean() > 0.8  # the mask still sits on the bright L
        assert (out_image[~inside] > 0.5).mean() < 0.02  # and the L lies inside the mask


def test_flip_lr_only():
    image, mask = _l_shape()
    config = dataclasses.replace(AugmentConfig.none(), enabled=True, flip_lr=True)
    outputs = {augment_2d(image, mask, tf.constant([s, 0]), config)[1].numpy().tobytes() for s in range(12)}
    assert outputs == {mask.tobytes(), mask[:, ::-1].tobytes()}


def test_intensity_changes_image_only():
    image, mask = _l_shape()
    config = dataclasses.replace(AugmentConfig(), rotation_deg=0.0, scale=(1.0, 1.0), flip_lr=False)
    out_image, out_mask = augment_2d(image, mask, tf.constant([5, 5]), config)
    np.testing.assert_array_equal(out_mask, mask)
    assert not np.allclose(out_image, image)


def test_from_dict():
    config = AugmentConfig.from_dict({"rotation_deg": 10, "scale": [0.9, 1.1], "flip_ud": True})
    assert (config.rotation_deg, config.scale, config.flip_ud) == (10.0, (0.9, 1.1), True)
    with pytest.raises(ConfigError, match="unknown key.*rotate"):
        AugmentConfig.from_dict({"rotate": 10})
    with pytest.raises(ConfigError, match="flip_lr must be true or false"):
        AugmentConfig.from_dict({"flip_lr": "yes"})
    with pytest.raises(ConfigError, match="scale must be a pair"):
        AugmentConfig.from_dict({"scale": 1.1})
    with pytest.raises(ConfigError, match="contrast"):
        AugmentConfig.from_dict({"contrast": 1.5})


def test_reference_offline_augment_default_gives_24_binary_pairs():
    image, mask = _l_shape((128, 128))
    images, masks = reference_offline_augment(image[..., 0], mask[..., 0] > 0, rng=0)
    assert images.shape == masks.shape == (24, 128, 128)
    assert images.dtype == np.float32 and masks.dtype == bool
    assert images.min() >= 0 and images.max() <= 1
    # Angle 0 comes first; angle 90's crops (indices 6, 7) hold the L turned a quarter.
    assert np.mean(images[0][masks[0]]) > 0.85
    assert masks[6].sum() > 0.8 * mask.sum()


def test_reference_offline_augment_trims_within_bounds():
    size = 64
    rows = np.repeat(np.arange(size, dtype=float)[:, None], size, axis=1) / (size - 1)
    mask = np.zeros((size, size), bool)
    for image in (rows, rows.T):  # value = row (then column) position
        images, _ = reference_offline_augment(image, mask, size=size, angle_step=360,
                                              crops_per_angle=50, rng=1)
        along = images[:, :, 0] if image is rows else images[:, 0, :]
        first, last = along[:, 0] * (size - 1), (1 - along[:, -1]) * (size - 1)
        limit = 5 if image is rows else 10
        for trim in (first, last):
            np.testing.assert_allclose(trim, np.round(trim), atol=1e-4)  # whole pixels
            assert np.round(trim).min() == 0 and np.round(trim).max() == limit


def test_reference_offline_augment_checks_input():
    with pytest.raises(ValueError, match="shape"):
        reference_offline_augment(np.zeros((64, 64)), np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="bool"):
        reference_offline_augment(np.zeros((128, 128)), np.zeros((128, 128)))
