"""Two-channel (US + PA) samples through the input pipeline into tiny 2D and 3D U-Nets."""

from __future__ import annotations

import numpy as np
import pytest

from bcseg.data.cases import read_case_channel_arrays
from bcseg.data.dataset import discover
from bcseg.data.phantom import write_phantom
from bcseg.errors import DataError
from bcseg.learn import pipeline
from bcseg.learn.augment import AugmentConfig
from bcseg.learn.models import unet

SHAPE = (8, 24, 24)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("two") / "data"
    write_phantom(root, n=2, shape=SHAPE, channels=("us", "pa"), difficulty="realistic")
    return discover(root)


def test_slice_samples_keep_both_channels_normalised_apart(cases):
    samples = pipeline.slice_samples(cases, "observer1", size=16, channels=["us", "pa"])
    assert samples.images.shape == (2 * SHAPE[0], 16, 16, 2) and samples.channels == ["us", "pa"]
    assert 0 <= samples.images.min() and samples.images.max() <= 1
    # Channel 0 is US divided by 255 (no resizing at the corner pixel of a 24 -> 16 fit
    # would be exact, so compare means), channel 1 the log-compressed PA.
    arrays, _ = read_case_channel_arrays(cases[0], ["us", "pa"])
    first = samples.images[: SHAPE[0]]
    assert first[..., 0].mean() == pytest.approx(arrays["us"].mean() / 255, rel=0.05)
    assert not np.allclose(first[..., 0], first[..., 1])
    grey = pipeline.slice_samples(cases, "observer1", size=16)  # no channels: as before
    assert grey.images.shape == (2 * SHAPE[0], 16, 16) and grey.channels is None
    with pytest.raises(DataError, match="one grey channel"):
        pipeline.slice_samples(cases, "observer1", 16, offline_augment="reference", channels=["us"])


def test_tiny_two_channel_2d_model_trains_for_an_epoch(cases):
    samples = pipeline.slice_samples(cases, "observer1", size=16, channels=["us", "pa"])
    images, targets = pipeline.epoch_arrays(samples, epoch=0, seed=0, n=8, tumour_fraction=0.5)
    assert images.shape == (8, 16, 16, 2) and targets.shape == (8, 16, 16, 1)
    dataset = pipeline.epoch_dataset(images, targets, batch_size=4, seed=0, epoch=0,
                                     augment=AugmentConfig())
    model = unet(ndim=2, in_channels=2, base_filters=4, depth=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    val_images, _ = pipeline.validation_arrays(samples)
    assert model.predict(val_images[:2], verbose=0).shape == (2, 16, 16, 1)


def test_tiny_two_channel_3d_model_trains_for_an_epoch(cases):
    samples = pipeline.volume_samples(cases, "observer1", channels=["pa", "us"])
    assert samples.images[0].shape == SHAPE + (2,)
    images, targets = pipeline.epoch_arrays(samples, epoch=0, seed=0, n=2, tumour_fraction=1.0,
                                            patch_shape=(8, 32, 16))  # taller than the stack: padded
    assert images.shape == (2, 8, 32, 16, 2) and targets.shape == (2, 8, 32, 16, 1)
    assert targets.any()
    model = unet(ndim=3, in_channels=2, base_filters=2, depth=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(images, targets, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    val_images, val_targets = pipeline.validation_arrays(samples, patch_shape=(8, 16, 16))
    assert val_images.shape == (4, 8, 16, 16, 2) and val_targets.shape == (4, 8, 16, 16, 1)
