"""Intensity normalisation: the same scaling for training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from bcseg.errors import DataError
from bcseg.data.intensity import IntensityStats, intensity_stats, normalise, normalise_slices


def test_uint8_is_divided_by_255_exactly():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = normalise(image)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32) / np.float32(255))
    assert out[0, 0] == 0 and out[-1, -1] == 1


def test_uint16_is_scaled_between_percentiles_and_clipped():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 40000, size=(3, 40, 50)).astype(np.uint16)
    low, high = np.percentile(image, [0.5, 99.5])
    out = normalise(image)
    assert out.dtype == np.float32
    assert out.min() == 0 and out.max() == 1
    expected = np.clip((image - low) / (high - low), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_signed_and_float_images_use_percentiles(dtype):
    image = np.linspace(-5, 5, 1000).astype(dtype).reshape(20, 50)
    out = normalise(image)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert intensity_stats(image).method == "percentile"


def test_constant_and_bool_images():
    np.testing.assert_array_equal(normalise(np.full((4, 4), 7, np.uint16)), np.zeros((4, 4)))
    mask = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(normalise(mask), mask.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_raises(bad):
    image = np.ones((8, 8), np.float32)
    image[3, 4] = bad
    with pytest.raises(DataError, match="NaN or infinite"):
        normalise(image)
    with pytest.raises(DataError, match="NaN or infinite"):  # also with precomputed stats
        normalise(image, IntensityStats(0.0, 1.0, "percentile"))


def test_non_numeric_image_raises():
    with pytest.raises(DataError, match="cannot normalise"):
        normalise(np.ones((4, 4), np.complex64))


def test_slices_with_volume_stats_match_the_whole_stack():
    rng = np.random.default_rng(1)
    stack = rng.gamma(2.0, 300.0, size=(7, 20, 30)).astype(np.uint16)
    stats = intensity_stats(stack)
    parts = [normalise_slices(stack, s, min(s + 3, 7), stats) for s in range(0, 7, 3)]
    np.testing.assert_array_equal(np.concatenate(parts), normalise(stack))


def test_large_memmapped_stack_stats_come_from_a_subsample(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "stack.tif"
    stack = tifffile.memmap(path, shape=(40, 128, 128), dtype=np.uint16)
    stack[:] = rng.normal(20000, 3000, size=stack.shape).clip(0, 65535)
    stack.flush()
    volume = tifffile.memmap(path, mode="r")
    exact = np.percentile(volume, [0.5, 99.5])
    stats = intensity_stats(volume, max_samples=50_000)
    assert stats.method == "percentile"
    np.testing.assert_allclose([stats.low, stats.high], exact, rtol=0.02)


def test_log_compression_of_sparse_absorbers_in_a_zero_background_keeps_them():
    """A photoacoustic stack whose absorbers (vessels) fill under 0.5% of it, in a
    background of zeros: its 99.5th percentile is 0, and log compression mapped the
    whole channel to zeros (a model then saw no PA at all, without a word)."""
    from bcseg.data.intensity import normalise_channels

    pa = np.zeros((8, 64, 64), np.float32)
    pa[4, 30:32, 30:32] = 500.0
    pa[2, 10, 10:12] = 50.0
    out = normalise_channels({"pa": pa})[..., 0]
    # The top of the absorbers, 500, maps to 1 and 40 dB below it (5) to 0: 50 is
    # log10(50 / 5) / log10(500 / 5) = 0.5; the background stays 0.
    assert out[4, 30, 30] == pytest.approx(1.0)
    assert out[2, 10, 10] == pytest.approx(0.5)
    assert out[pa == 0].max() == 0.0


@pytest.mark.parametrize("scale, dtype", [(1e290, np.float64), (1e-290, np.float64)])
def test_log_compression_of_values_beyond_float32_is_that_of_the_scaled_image(scale, dtype):
    """A photoacoustic channel of float64 values beyond float32's range (1e296..1e300):
    log compression cast the image and its range to float32 first, both became
    infinite, the channel NaN, and predict blamed the model ('gives values from nan to
    nan ... its weights intact?', exit 4) for what the file holds. The percentile path
    normalises such images in float64; the log path now does too."""
    from bcseg.data.intensity import channel_stats

    pa = np.random.default_rng(0).uniform(1e6, 1e10, (4, 16, 16))
    wide = (pa * scale).astype(dtype)
    out = normalise(wide, channel_stats(wide, "log"))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, normalise(pa, channel_stats(pa, "log")), atol=1e-5)
