"""Channel names bcseg gives a meaning (``us``, ``pa``) are matched whatever their case:
a study stored as images/US/ and images/PA/ missed every one of them."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from bcseg.after_predict import _margin_channels
from bcseg.data.cases import Case, Channel
from bcseg.data.intensity import check_methods
from bcseg.learn.augment import AugmentConfig, augment_2d


def test_photoacoustics_is_log_compressed_by_default_whatever_the_case_of_its_name():
    """PA was read linearly (auto) when its folder was called PA."""
    assert check_methods({}, ["US", "PA"]) == {"US": "auto", "PA": "log"}
    assert check_methods({}, ["us", "Pa"]) == {"us": "auto", "Pa": "log"}
    assert check_methods({"PA": "percentile"}, ["US", "PA"]) == {"US": "auto", "PA": "percentile"}


def test_margins_find_the_specimen_in_ultrasound_whatever_the_case_of_its_name(tmp_path):
    """Read in name order, PA came before US, and the specimen was found in the PA signal."""
    case = Case("S1", tmp_path / "PA" / "S1.tif", {},
                channels=(Channel("PA", tmp_path / "PA" / "S1.tif"), Channel("US", tmp_path / "US" / "S1.tif")))
    assert list(_margin_channels(case)) == ["US", "PA"]


def test_speckle_is_drawn_on_ultrasound_only_whatever_the_case_of_its_name():
    """Speckle belongs to ultrasound: with the channels named US and PA neither got it."""
    image = tf.fill((16, 16, 2), 0.5)
    mask = tf.zeros((16, 16, 1))
    speckle_only = dataclasses.replace(AugmentConfig.none(), enabled=True, speckle=0.3, p_intensity=1.0)
    out, _ = augment_2d(image, mask, tf.constant([1, 2]), speckle_only, channels=("US", "PA"))
    out = np.asarray(out)
    assert out[..., 0].std() > 0.01          # ultrasound speckled
    np.testing.assert_allclose(out[..., 1], 0.5, atol=1e-6)  # photoacoustics untouched
