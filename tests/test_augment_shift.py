"""Scanner-shift augmentation: depth gain ramp, blur, resampling, speckle grain.

Each step is checked on an image whose expected output can be worked out by hand,
with every other step switched off.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from bcseg.errors import ConfigError
from bcseg.learn.augment import AugmentConfig, augment_2d

ONLY = dataclasses.replace(AugmentConfig.none(), enabled=True)
SEEDS = [tf.constant([s, 1]) for s in range(8)]


def _run(config, image, seed):
    mask = np.zeros(image.shape, np.float32)
    out, out_mask = augment_2d(image[..., None], mask[..., None], seed, config)
    np.testing.assert_array_equal(out_mask.numpy()[..., 0], mask)  # intensity only
    return out.numpy()[..., 0]


def test_gain_ramp_is_linear_in_depth_from_one_at_the_top():
    config = dataclasses.replace(ONLY, gain_ramp=0.5)
    image = np.full((20, 12), 0.5, np.float32)
    bottoms = []
    for seed in SEEDS:
        out = _run(config, image, seed)
        np.testing.assert_allclose(out[0], 0.5, rtol=1e-6)          # gain 1 at the transducer
        rows = out[:, 0]
        np.testing.assert_allclose(np.diff(rows), np.diff(rows).mean(), atol=1e-6)  # linear
        np.testing.assert_allclose(out, out[:, :1].repeat(12, axis=1))             # same across
        bottoms.append(rows[-1] / 0.5)
    assert all(0.5 - 1e-6 <= b <= 1.5 + 1e-6 for b in bottoms)
    assert min(bottoms) < 1 < max(bottoms)  # both directions are drawn


def test_blur_spreads_a_point_and_keeps_its_mass():
    config = dataclasses.replace(ONLY, blur=3.0)
    image = np.zeros((41, 41), np.float32)
    image[20, 20] = 1.0
    peaks = []
    for seed in SEEDS:
        out = _run(config, image, seed)
        assert out.sum() == pytest.approx(1.0, abs=1e-4)
        peaks.append(out.max())
    # sigma drawn from [0, 3]: at sigma 3 the peak is 1 / (2 pi 9) = 0.018; below 0.25
    # pixels the step is skipped and the point stays 1.
    assert min(peaks) < 0.2 and all(p >= 1 / (2 * np.pi * 9) - 1e-3 for p in peaks)


def test_resample_loses_fine_detail_only():
    config = dataclasses.replace(ONLY, resample=0.6)
    stripes = np.tile([0.2, 0.8], (32, 16)).astype(np.float32)   # 1-pixel period
    flat = np.full((32, 32), 0.4, np.float32)
    contrast = [_run(config, stripes, seed).std() for seed in SEEDS]
    assert min(contrast) < 0.5 * stripes.std()
    for seed in SEEDS:
        np.testing.assert_allclose(_run(config, flat, seed), flat, atol=1e-6)


def test_speckle_grain_correlates_neighbours_and_keeps_the_strength():
    flat = np.full((64, 64), 0.5, np.float32)
    fine = dataclasses.replace(ONLY, speckle=0.1)
    coarse = dataclasses.replace(fine, speckle_grain=4.0)

    def lag1(x):
        d = x - x.mean()
        return (d[:, 1:] * d[:, :-1]).mean() / d.var()

    seed = tf.constant([5, 1])
    out_fine, out_coarse = _run(fine, flat, seed), _run(coarse, flat, seed)
    assert abs(lag1(out_fine)) < 0.1
    corr = [lag1(_run(coarse, flat, s)) for s in SEEDS]
    assert max(corr) > 0.8                       # grain of a few pixels
    assert out_coarse.std() == pytest.approx(0.05, rel=0.25)   # 0.5 * speckle 0.1


def test_speckle_max_draws_the_strength_per_image():
    """speckle 0, speckle_max 0.3: some images nearly clean, some strongly speckled,
    each image's noise SD in [0, 0.3] (the image is 0.5, so its SD is 0.5 x the draw)."""
    flat = np.full((64, 64), 0.5, np.float32)
    ranged = dataclasses.replace(ONLY, speckle=0.0, speckle_max=0.3)
    sds = [_run(ranged, flat, seed).std() / 0.5 for seed in SEEDS]
    assert all(0 <= sd <= 0.3 * 1.1 for sd in sds), sds
    assert min(sds) < 0.12 < 0.18 < max(sds), sds   # a spread, not one fixed strength
    fixed = dataclasses.replace(ONLY, speckle=0.1)   # speckle_max off: the strength as before
    assert all(_run(fixed, flat, s).std() / 0.5 == pytest.approx(0.1, rel=0.1) for s in SEEDS)
    grainy = dataclasses.replace(ranged, speckle_grain=3.0)   # the grain keeps the drawn strength
    assert [_run(grainy, flat, s).std() / 0.5 for s in SEEDS] == pytest.approx(sds, rel=0.25)


def test_a_scanner_shift_step_leaves_the_other_draws_alone():
    # The new steps draw from seeds of their own, so switching them on must not move
    # the geometric transform (seen in the mask) or the classic intensity steps.
    base = AugmentConfig()
    shifted = dataclasses.replace(base, gain_ramp=0.3, blur=2.0, resample=0.4, speckle_max=0.3)
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 1)).astype(np.float32)
    mask = (rng.random((32, 32, 1)) > 0.7).astype(np.float32)
    for seed in SEEDS[:4]:
        _, mask_a = augment_2d(image, mask, seed, base)
        _, mask_b = augment_2d(image, mask, seed, shifted)
        np.testing.assert_array_equal(mask_a, mask_b)


def test_config_reads_and_checks_the_new_keys():
    config = AugmentConfig.from_dict({"gain_ramp": 0.3, "blur": 1.5, "resample": 0.5,
                                      "speckle_grain": 2})
    assert (config.gain_ramp, config.blur, config.resample, config.speckle_grain) == (0.3, 1.5, 0.5, 2.0)
    for key, value in (("gain_ramp", 1.0), ("blur", 9.0), ("resample", -0.1), ("speckle_grain", 5)):
        with pytest.raises(ConfigError, match=key):
            AugmentConfig.from_dict({key: value})
    assert AugmentConfig().gain_ramp == 0 and AugmentConfig.none().blur == 0
