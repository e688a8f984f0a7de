"""Input pipeline: square fitting, per-epoch draws, observers, offline augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from bcseg.learn import pipeline
from bcseg.data.cases import read_case_masks
from bcseg.data.dataset import discover
from bcseg.errors import DataError
from bcseg.learn.pipeline import Samples, draw_indices, epoch_arrays, from_square, to_square


def _smooth_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(float)
    return 0.5 + 0.25 * np.sin(yy / 6) + 0.25 * np.cos(xx / 9)


def _samples(n: int = 20, observers: int = 1, size: int = 16, tumour_every: int = 4) -> Samples:
    """``n`` random images; every ``tumour_every``-th sample's target holds tumour."""
    rng = np.random.default_rng(5)
    images = rng.random((n, size, size)).astype(np.float32)
    targets = np.zeros((n, observers, size, size), np.uint8)
    targets[::tumour_every, :, 4:8, 4:8] = 1
    return Samples(images, targets, [f"c{k}" for k in range(n)])


# --------------------------------------------------------------------------- geometry

def test_square_round_trip_on_a_non_square_image():
    image = _smooth_image(30, 50)
    square = to_square(image, 32)
    assert square.shape == (32, 32) and square.dtype == np.float32
    # Padding goes below: 30/50 of the 32 rows hold the image, the rest stay zero.
    assert np.all(square[21:] == 0) and square[:19].mean() == pytest.approx(image.mean(), abs=0.05)
    back = from_square(square, (30, 50))
    assert back.shape == (30, 50) and back.dtype == np.float32
    error = np.abs(back - image)
    assert error.mean() < 0.02
    assert error[:-3].max() < 0.05  # the last rows blend with the padding


def test_square_round_trip_of_a_mask_and_without_resizing():
    yy, xx = np.mgrid[:30, :50]
    mask = (yy - 15) ** 2 + (xx - 25) ** 2 < 100
    square = to_square(mask.astype(np.float32), 32, order=0)
    assert set(np.unique(square)) <= {0.0, 1.0}  # nearest neighbour: still binary
    back = from_square(square, (30, 50)) > 0.5
    assert (back != mask).sum() < 0.1 * mask.sum()
    image = _smooth_image(30, 50)
    padded = to_square(image, 50)  # already the side: padded only, not resized
    assert np.allclose(padded[:30], image) and np.all(padded[30:] == 0)
    same = image[:30, :30]
    assert to_square(same, 30) is same


def _square_resized(image: np.ndarray, size: int, order: int) -> np.ndarray:
    """The definition: pad to the square, then resize the square."""
    from skimage.transform import resize
    side = max(image.shape)
    square = np.zeros((side, side), np.float32)
    square[:image.shape[0], :image.shape[1]] = image
    return resize(square, (size, size), order=order, anti_aliasing=order > 0, preserve_range=True)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (2, 1200), (1200, 2), (719, 1048), (40, 24)])
def test_fitting_axis_by_axis_equals_resizing_the_padded_square(shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape).astype(np.float32)
    for order in (0, 1):
        assert np.abs(to_square(image, 32, order) - _square_resized(image, 32, order)).max() < 1e-3
    prob = rng.random((32, 32)).astype(np.float32)
    from skimage.transform import resize
    side = max(shape)
    whole = resize(prob, (side, side), order=1, preserve_range=True)[:shape[0], :shape[1]]
    assert np.abs(from_square(prob, shape) - whole).max() < 1e-6


def test_a_long_thin_image_is_fitted_without_its_padded_square():
    """2 x 40000 pixels (80 kB) made a 40000² float array (6.4 GB) before resizing."""
    import tracemalloc
    image = np.ones((2, 40000), np.float32)
    tracemalloc.start()
    square = to_square(image, 64)
    back = from_square(square, image.shape)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert square.shape == (64, 64) and back.shape == image.shape
    assert peak < 50e6, peak


# --------------------------------------------------------------------------- draws

def test_draw_indices_forces_the_tumour_share():
    has_tumour = np.zeros(100, bool)
    has_tumour[::10] = True  # 10 % of the samples hold tumour
    n, fraction = 1000, 0.5
    picks = draw_indices(has_tumour, n, fraction, np.random.default_rng(0))
    assert picks.shape == (n,) and picks.min() >= 0 and picks.max() < 100
    # Expected share: forced (0.5) plus uniform draws that hit tumour (0.5 * 0.1) = 0.55,
    # with a binomial sd of sqrt(0.55 * 0.45 / 1000) = 0.016: 0.05 is over 3 sd.
    share = has_tumour[picks].mean()
    assert abs(share - 0.55) < 0.05
    assert has_tumour[draw_indices(has_tumour, n, 1.0, np.random.default_rng(0))].all()


def test_draw_indices_without_forcing_is_uniform():
    has_tumour = np.zeros(10, bool)
    has_tumour[3] = True
    picks = draw_indices(has_tumour, 10, 0.0, np.random.default_rng(1))
    assert sorted(picks) == list(range(10))  # one pass: a permutation
    assert len(draw_indices(has_tumour, 25, 0.0, np.random.default_rng(1))) == 25
    # No tumour anywhere: the fraction cannot be met and draws stay uniform.
    picks = draw_indices(np.zeros(10, bool), 10, 0.9, np.random.default_rng(1))
    assert sorted(picks) == list(range(10))


def test_epoch_arrays_repeat_per_seed_and_epoch():
    samples = _samples()
    first = epoch_arrays(samples, 3, 7, 16, 0.5)
    again = epoch_arrays(samples, 3, 7, 16, 0.5)
    later = epoch_arrays(samples, 4, 7, 16, 0.5)
    other_seed = epoch_arrays(samples, 3, 8, 16, 0.5)
    images, targets = first
    assert images.shape == (16, 16, 16, 1) and targets.shape == (16, 16, 16, 1)
    assert images.dtype == np.float32 and targets.dtype == np.float32
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], later[0])
    assert not np.array_equal(first[0], other_seed[0])
    # Each drawn image comes with its own target.
    for image, target in zip(images[..., 0], targets[..., 0]):
        k = next(i for i, x in enumerate(samples.images) if np.array_equal(x, image))
        assert np.array_equal(target, samples.targets[k, 0])


def test_epoch_arrays_of_3d_patches_repeat():
    rng = np.random.default_rng(2)
    volumes = [rng.random((6, 12, 12)).astype(np.float32) for _ in range(3)]
    targets = [np.zeros((1, 6, 12, 12), np.uint8) for _ in range(3)]
    targets[1][0, 2:4, 5:8, 5:8] = 1
    samples = Samples(volumes, targets, ["a", "b", "c"])
    first = epoch_arrays(samples, 0, 1, 8, 1.0, patch_shape=(4, 8, 8))
    again = epoch_arrays(samples, 0, 1, 8, 1.0, patch_shape=(4, 8, 8))
    later = epoch_arrays(samples, 1, 1, 8, 1.0, patch_shape=(4, 8, 8))
    assert first[0].shape == (8, 4, 8, 8, 1) and first[1].shape == (8, 4, 8, 8, 1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], later[0])
    assert all(t.any() for t in first[1])  # every patch forced onto the tumour


def test_random_observer_picks_each_observer():
    # Observer 0 drew nothing, observer 1 drew the whole image: a target tells which.
    n, size = 40, 8
    images = np.random.default_rng(0).random((n, size, size)).astype(np.float32)
    targets = np.stack([np.zeros((n, size, size), np.uint8), np.ones((n, size, size), np.uint8)], 1)
    samples = Samples(images, targets, ["c"] * n)
    _, drawn = epoch_arrays(samples, 0, 0, 200, 0.0)
    per_sample = drawn.reshape(200, -1)
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # one observer whole
    ones = int(per_sample[:, 0].sum())
    assert 60 < ones < 140  # each observer about half the time (sd 7)
    _, other_epoch = epoch_arrays(samples, 1, 0, 200, 0.0)
    assert not np.array_equal(drawn, other_epoch)


# --------------------------------------------------------------------------- cached samples

def test_random_target_keeps_every_observer(phantom_root):
    cases = discover(phantom_root)[:1]
    masks = read_case_masks(cases[0])
    kept = pipeline.training_target(masks, pipeline.RANDOM_OBSERVER, "here")
    assert kept.shape == (2,) + masks["observer1"].shape
    assert np.array_equal(kept[0], masks["observer1"]) and np.array_equal(kept[1], masks["observer2"])
    union = pipeline.training_target(masks, "union", "here")
    assert np.array_equal(union, masks["observer1"] | masks["observer2"])

    samples = pipeline.slice_samples(cases, pipeline.RANDOM_OBSERVER, 32)
    z = masks["observer1"].shape[0]
    assert samples.images.shape == (z, 32, 32) and samples.targets.shape == (z, 2, 32, 32)
    assert samples.has_tumour.any() and not samples.has_tumour.all()
    single = pipeline.slice_samples(cases, "observer2", 32)
    assert single.targets.shape == (z, 1, 32, 32)
    assert np.array_equal(single.targets[:, 0], samples.targets[:, 1])
    with pytest.raises(DataError, match="observer"):
        pipeline.training_target({}, "union", "here")


def test_reference_offline_augmentation_gives_24_per_slice(phantom_root):
    cases = discover(phantom_root)[:1]
    plain = pipeline.slice_samples(cases, "union", 32)
    z = len(plain.images)
    samples = pipeline.slice_samples(cases, "union", 32, offline_augment="reference", seed=0)
    assert samples.images.shape == (24 * z, 32, 32) and samples.targets.shape == (24 * z, 1, 32, 32)
    assert samples.case_ids == [cases[0].id] * (24 * z)
    assert samples.images.min() >= 0 and samples.images.max() <= 1
    again = pipeline.slice_samples(cases, "union", 32, offline_augment="reference", seed=0)
    assert np.array_equal(samples.images, again.images)
    # The 24 copies of a slice with tumour hold tumour (it lies inside the specimen).
    assert all(samples.targets[24 * k: 24 * k + 24].any() for k in np.flatnonzero(plain.has_tumour))
    assert not samples.targets[: 24 * np.argmax(plain.has_tumour)].any()
    with pytest.raises(DataError, match="one target"):
        pipeline.slice_samples(cases, pipeline.RANDOM_OBSERVER, 32, offline_augment="reference")


def test_volume_samples_refuse_2d_images(tmp_path):
    from bcseg.data import io

    yy, xx = np.mgrid[:16, :16]
    io.write_image(tmp_path / "images" / "a.tif", ((yy + xx) * 4).astype(np.uint8))
    io.write_mask(tmp_path / "masks" / "o1" / "a.tif", (yy > 8) & (xx > 8))
    with pytest.raises(DataError, match="2D"):
        pipeline.volume_samples(discover(tmp_path), "o1")


def test_validation_arrays():
    samples = _samples(n=4, observers=2)
    images, targets = pipeline.validation_arrays(samples)
    assert images.shape == (4, 16, 16, 1) and targets.shape == (4, 16, 16, 1)
    assert np.array_equal(targets[..., 0], samples.targets[:, 0])


def test_epoch_dataset_replays_exactly_and_differs_across_epochs():
    """--resume relies on this: the same (seed, epoch) gives the same augmented batches."""
    from bcseg.learn.augment import AugmentConfig
    from bcseg.learn.pipeline import epoch_dataset

    rng = np.random.default_rng(0)
    images = rng.random((12, 32, 32, 1)).astype(np.float32)
    targets = (rng.random((12, 32, 32, 1)) > 0.7).astype(np.float32)

    def batches(epoch):
        ds = epoch_dataset(images, targets, 4, seed=3, epoch=epoch, augment=AugmentConfig())
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, again, other = batches(1), batches(1), batches(2)
    for (x1, y1), (x2, y2) in zip(first, again):
        # Masks replay exactly. Images did too in isolation, but once in a full-suite run
        # they differed in the last float32 bits (threaded reductions): the same tolerance
        # as the resume test, far below any augmentation step.
        assert np.array_equal(y1, y2)
        np.testing.assert_allclose(x1, x2, rtol=1e-5, atol=1e-7)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


# --------------------------------------------------------------------------- soft target
def _nested_observers(n=8, size=32):
    """Observer 1 draws a 8x8 square, observer 2 the same square grown by 4 px."""
    images = np.random.default_rng(0).random((n, size, size)).astype(np.float32)
    targets = np.zeros((n, 2, size, size), np.uint8)
    targets[:, 0, 12:20, 12:20] = 1
    targets[:, 1, 8:24, 8:24] = 1
    return Samples(images, targets, [f"c{k}" for k in range(n)], soft=True)


def test_training_target_soft_keeps_every_observer():
    a, b = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    a[1:3, 1:3], b[1:4, 1:4] = True, True
    target = pipeline.training_target({"obs1": a, "obs2": b}, "soft", "x")
    assert target.shape == (2, 6, 6) and np.array_equal(target[0], a)
    assert pipeline.evaluation_target("soft") == "union" == pipeline.evaluation_target("random")
    assert pipeline.evaluation_target("obs1") == "obs1"


def test_soft_target_is_the_mean_of_the_observers():
    from bcseg.learn.augment import AugmentConfig

    samples = _nested_observers()
    images, targets = epoch_arrays(samples, 0, 1, 8, 0.0)
    assert targets.shape == (8, 32, 32, 2)  # one channel per observer until averaged
    batch = next(iter(pipeline.epoch_dataset(images, targets, 8, 1, 0, None)))[1].numpy()
    expected = samples.targets.mean(axis=1)[..., None]  # 1 inside both, 0.5 in the ring, 0 out
    assert np.array_equal(np.sort(batch.reshape(8, -1), axis=1), np.sort(expected.reshape(8, -1), axis=1))
    assert set(np.unique(batch)) == {0.0, 0.5, 1.0} and (batch == 0.5).sum() == 8 * (256 - 64)
    # Rotated and zoomed, each observer's mask is resampled as a binary mask and then
    # averaged: the ring stays 0.5 rather than becoming the union (bilinear >= 0.5).
    augment = AugmentConfig(rotation_deg=30.0, p_geometric=1.0)
    batch = next(iter(pipeline.epoch_dataset(images, targets, 8, 1, 0, augment)))[1].numpy()
    assert set(np.unique(batch)) == {0.0, 0.5, 1.0}
    assert 0.7 < (batch == 0.5).sum() / (8 * 192) < 1.3


def test_soft_target_refuses_the_reference_offline_augmentation(tmp_path):
    from bcseg.data.phantom import write_phantom

    write_phantom(tmp_path, n=1, shape=(8, 32, 32))
    with pytest.raises(DataError, match="'soft'"):
        pipeline.slice_samples(discover(tmp_path), "soft", 32, "reference")
    samples = pipeline.slice_samples(discover(tmp_path), "soft", 32)
    assert samples.soft and samples.targets.shape[1] == 2
