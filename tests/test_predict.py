"""Inference: 2D and 3D models, sliding windows, TTA, post-processing, files."""

from __future__ import annotations

import itertools
import json

import keras
import numpy as np
import pytest
import tifffile
from keras import layers

from bcseg.data import io
from bcseg.errors import ConfigError, DataError, ModelError, UsageError
from bcseg.learn.models import unet
from bcseg.infer.postprocess import fill_holes, keep_largest_component, postprocess, remove_small_components
from bcseg.infer.predict import load_model, predict_volume, segment_volume, tta_flips
from bcseg.journal import JOURNAL
from bcseg.outputs import RECORD
from bcseg.rundir import InferenceSettings, load_run, member_settings, read_settings
from bcseg.infer.segment import load_models, predict_files

ALL_FLIPS = ("z", "ud", "lr")


def _layer(kind, ndim):
    return getattr(layers, f"{kind}{ndim}D")


def constant_model(ndim, bias):
    """Output sigmoid(bias) everywhere; size divisor 2 (one pooling)."""
    inputs = keras.Input((None,) * ndim + (1,))
    x = _layer("MaxPooling", ndim)(2)(inputs)
    x = _layer("UpSampling", ndim)(2)(x)
    out = _layer("Conv", ndim)(1, 1, activation="sigmoid", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(bias))(x)
    return keras.Model(inputs, out)


def pointwise_model(ndim, weight, bias):
    """sigmoid(weight * x + bias) voxel by voxel (size divisor 1)."""
    inputs = keras.Input((None,) * ndim + (1,))
    out = _layer("Conv", ndim)(1, 1, activation="sigmoid",
                               kernel_initializer=keras.initializers.Constant(weight),
                               bias_initializer=keras.initializers.Constant(bias))(inputs)
    return keras.Model(inputs, out)


def symmetric_model(ndim, seed=0):
    """Conv-pool-conv-upsample with kernels symmetric under every flip: flip-equivariant."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((None,) * ndim + (1,))
    conv1 = _layer("Conv", ndim)(3, 3, padding="same", activation="relu")
    conv2 = _layer("Conv", ndim)(1, 3, padding="same", activation="sigmoid")
    x = conv1(inputs)
    x = _layer("MaxPooling", ndim)(2)(x)
    out = _layer("UpSampling", ndim)(2)(conv2(x))
    model = keras.Model(inputs, out)
    for conv in (conv1, conv2):
        kernel, bias = conv.get_weights()
        kernel = rng.normal(size=kernel.shape).astype(np.float32)
        kernel = sum(np.flip(kernel, axes) for r in range(ndim + 1)
                     for axes in itertools.combinations(range(ndim), r))
        conv.set_weights([kernel, rng.normal(size=bias.shape).astype(np.float32) * 0.1])
    return model


def symmetrise(array):
    return sum(np.flip(array, axes) for r in range(array.ndim + 1)
               for axes in itertools.combinations(range(array.ndim), r)) / 2**array.ndim


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def unet2d():
    keras.utils.set_random_seed(0)
    return unet(ndim=2, base_filters=2, depth=2, norm=None)


@pytest.fixture(scope="module")
def unet3d():
    keras.utils.set_random_seed(1)
    return unet(ndim=3, base_filters=2, depth=2, norm=None)


@pytest.fixture
def stack():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(5, 32, 24)).astype(np.uint8)


# --------------------------------------------------------------------------- 2D / 3D

def test_2d_model_on_stack_equals_slice_by_slice(unet2d, stack):
    mask, prob = predict_volume(unet2d, stack, batch_size=2)
    assert mask.dtype == bool and prob.dtype == np.float32 and mask.shape == stack.shape
    for z, image in enumerate(stack):
        by_hand = unet2d.predict(image[None, ..., None] / np.float32(255), verbose=0)[0, ..., 0]
        np.testing.assert_allclose(prob[z], by_hand, atol=1e-5)
    np.testing.assert_array_equal(mask, prob > 0.5)


def test_input_size_fits_slices_as_training_did(unet2d, stack):
    from bcseg.learn.pipeline import from_square, to_square

    volume = stack[:2, :30, :21]
    _, prob = predict_volume(unet2d, volume, input_size=16)
    for z, image in enumerate(volume):
        square = to_square(image / np.float32(255), 16)
        by_hand = unet2d.predict(square[None, ..., None], verbose=0)[0, ..., 0]
        np.testing.assert_allclose(prob[z], from_square(by_hand, image.shape), atol=1e-5)
    with pytest.raises(ValueError, match="input_size"):
        predict_volume(unet2d, volume, input_size=16, patch_size=(16, 16))


def test_2d_image_with_padding_keeps_its_shape(unet2d, stack):
    image = stack[0, :30, :21]  # not a multiple of the divisor 4
    mask, prob = predict_volume(unet2d, image, threshold=0.3)
    assert mask.shape == prob.shape == image.shape
    np.testing.assert_array_equal(mask, prob > 0.3)
    mask, prob = predict_volume(unet2d, image, keep_prob=False)
    assert prob is None and mask.shape == image.shape


@pytest.mark.parametrize("ndim, shape, patch", [
    (3, (7, 37, 21), (8, 16, 16)),   # several windows in y and x, z padded 7 -> 8
    (2, (3, 37, 21), (16, 16)),      # a 2D model tiled slice by slice
])
def test_constant_model_blends_without_seams(ndim, shape, patch):
    bias = 0.7
    volume = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    _, prob = predict_volume(constant_model(ndim, bias), volume, patch_size=patch, overlap=0.5)
    np.testing.assert_allclose(prob, sigmoid(bias), rtol=1e-6)


def test_sliding_window_puts_every_voxel_in_place():
    volume = np.random.default_rng(5).integers(0, 256, size=(13, 29, 40)).astype(np.uint8)
    mask, prob = predict_volume(pointwise_model(3, 4.0, -2.0), volume, patch_size=(8, 8, 16),
                                overlap=0.25, batch_size=3)
    expected = sigmoid(4.0 * volume / 255.0 - 2.0)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    np.testing.assert_array_equal(mask, expected > 0.5)


def test_3d_default_patch_covers_a_small_volume(unet3d):
    volume = np.random.default_rng(6).integers(0, 256, size=(6, 18, 20)).astype(np.uint8)
    mask, prob = predict_volume(unet3d, volume)
    padded = np.pad(volume / np.float32(255), [(1, 1), (1, 1), (0, 0)], mode="reflect")
    by_hand = unet3d.predict(padded[None, ..., None].astype(np.float32), verbose=0)[0, 1:-1, 1:-1, :, 0]
    np.testing.assert_allclose(prob, by_hand, atol=1e-5)


# --------------------------------------------------------------------------- TTA

@pytest.mark.parametrize("ndim, shape", [(2, (3, 16, 12)), (3, (8, 12, 16))])
def test_tta_on_symmetric_model_and_input_changes_nothing(ndim, shape):
    model = symmetric_model(ndim)
    volume = np.random.default_rng(7).random(shape).astype(np.float32)
    volume = symmetrise(volume) if ndim == 3 else np.stack([symmetrise(s) for s in volume])
    _, plain = predict_volume(model, volume)
    _, mirrored = predict_volume(model, volume, tta=True, flips=ALL_FLIPS)
    np.testing.assert_allclose(mirrored, plain, atol=1e-6)
    assert plain.std() > 0.01  # the test means something: the output is not flat


def _mean_of_flips(model, x, axes):
    predictions = []
    for r in range(len(axes) + 1):
        for flip in itertools.combinations(axes, r):
            out = model.predict(np.flip(x, flip)[..., None], verbose=0)[..., 0]
            predictions.append(np.flip(out, flip))
    return np.mean(predictions, axis=0)


def test_tta_is_the_mean_of_the_flipped_predictions_2d(unet2d, stack):
    _, plain = predict_volume(unet2d, stack)
    _, mirrored = predict_volume(unet2d, stack, tta=True, flips=ALL_FLIPS)
    expected = _mean_of_flips(unet2d, stack / np.float32(255), (1, 2))
    np.testing.assert_allclose(mirrored, expected, atol=1e-5)
    assert np.abs(mirrored - plain).max() > 1e-4


def test_tta_is_the_mean_of_all_8_flips_3d(unet3d):
    volume = np.random.default_rng(8).integers(0, 256, size=(8, 12, 16)).astype(np.uint8)
    _, mirrored = predict_volume(unet3d, volume, tta=True, flips=ALL_FLIPS)
    expected = _mean_of_flips(unet3d, volume[None] / np.float32(255), (1, 2, 3))[0]
    np.testing.assert_allclose(mirrored, expected, atol=1e-5)


@pytest.mark.parametrize("ndim, flips, expected", [
    (2, ("lr",), [(), (2,)]),                       # bcseg's recipes: never up-down
    (2, ("lr", "z"), [(), (2,)]),                   # a 2D model has no slice axis
    (2, ("ud", "lr"), [(), (1,), (2,), (1, 2)]),
    (3, ("lr", "z"), [(), (1,), (3,), (1, 3)]),
    (2, (), [()]),                                  # trained without flips: TTA is a no-op
])
def test_tta_runs_exactly_the_trained_flips(ndim, flips, expected):
    assert tta_flips(ndim, flips, tta=True) == expected
    assert tta_flips(ndim, flips, tta=False) == [()]


def test_default_tta_never_flips_up_down(unet2d, stack):
    # A bare model: bcseg's recipes mirror left-right (and z in 3D) only, so that is the default.
    _, mirrored = predict_volume(unet2d, stack, tta=True)
    np.testing.assert_allclose(mirrored, _mean_of_flips(unet2d, stack / np.float32(255), (2,)),
                               atol=1e-5)
    with_ud = _mean_of_flips(unet2d, stack / np.float32(255), (1, 2))
    assert np.abs(mirrored - with_ud).max() > 1e-4


# --------------------------------------------------------------------------- post-processing

def _two_blobs(ndim):
    mask = np.zeros((20,) * ndim, bool)
    mask[(slice(2, 5),) * ndim] = True     # 27 voxels in 3D, 9 in 2D
    mask[(slice(8, 16),) * ndim] = True    # the large one
    return mask


@pytest.mark.parametrize("ndim", [2, 3])
def test_keep_largest_component(ndim):
    mask = _two_blobs(ndim)
    large = np.zeros_like(mask)
    large[(slice(8, 16),) * ndim] = True
    np.testing.assert_array_equal(keep_largest_component(mask), large)
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(keep_largest_component(empty), empty)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fill_holes_fills_a_ring_but_not_an_open_cup(ndim):
    solid = np.zeros((12,) * ndim, bool)
    solid[(slice(2, 10),) * ndim] = True
    ring = solid.copy()
    ring[(slice(4, 8),) * ndim] = False
    np.testing.assert_array_equal(fill_holes(ring), solid)
    cup = ring.copy()
    cup[(slice(4, 12),) + (slice(4, 8),) * (ndim - 1)] = False  # opened to the border
    np.testing.assert_array_equal(fill_holes(cup), cup)


@pytest.mark.parametrize("ndim", [2, 3])
def test_remove_small_components(ndim):
    mask = _two_blobs(ndim)
    mask[(19,) * ndim] = True   # a one-voxel speck
    small = 3**ndim
    kept = remove_small_components(mask, small + 1)
    np.testing.assert_array_equal(kept, keep_largest_component(mask))
    np.testing.assert_array_equal(remove_small_components(mask, small), mask & ~np.pad(
        np.ones((1,) * ndim, bool), [(19, 0)] * ndim))
    np.testing.assert_array_equal(remove_small_components(mask, 0), mask)
    with pytest.raises(ValueError, match="min_size"):
        remove_small_components(mask, -1)


def test_postprocess_chains_steps_and_rejects_unknown_names():
    mask = _two_blobs(3)
    mask[10:14, 10:14, 10:14] = False  # a cavity inside the large blob
    mask[19, 19, 19] = True
    out = postprocess(mask.astype(np.uint8) * 255, ["small", "largest", "fill"], min_size=2)
    expected = np.zeros_like(mask)
    expected[8:16, 8:16, 8:16] = True
    assert out.dtype == bool
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(postprocess(mask, []), mask)
    with pytest.raises(ValueError, match="unknown post-processing step 'biggest'"):
        postprocess(mask, ["largest", "biggest"])


def test_predict_volume_applies_postprocessing():
    image = np.zeros((20, 24), np.uint8)
    image[2:5, 2:5] = 255
    image[8:18, 8:20] = 255
    model = pointwise_model(2, 10.0, -5.0)
    mask, _ = predict_volume(model, image)
    assert mask[3, 3] and mask[10, 10]
    mask, _ = predict_volume(model, image, postprocess=["largest"])
    assert not mask[3, 3] and mask[10, 10]
    with pytest.raises(ValueError, match="unknown post-processing"):
        predict_volume(model, image, postprocess=["blur"])


# --------------------------------------------------------------------------- bad input

def test_garbage_model_file_raises_model_error_naming_it(tmp_path):
    path = tmp_path / "x.keras"
    path.write_bytes(b"\x00not a zip archive" * 10)
    with pytest.raises(ModelError, match="x.keras") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.keras")


def test_3d_model_with_2d_image_raises(unet3d):
    with pytest.raises(DataError, match="3D model .* 2D"):
        predict_volume(unet3d, np.zeros((16, 16), np.uint8))


def test_2d_model_with_4d_array_raises(unet2d):
    with pytest.raises(DataError, match="2D model .* 4D array"):
        predict_volume(unet2d, np.zeros((2, 3, 16, 16), np.uint8))


def test_channel_mismatch_raises():
    model = unet(ndim=2, in_channels=3, base_filters=2, depth=1, norm=None)
    with pytest.raises(DataError, match="expects 3 input channels"):
        predict_volume(model, np.zeros((16, 16), np.uint8))


def test_nan_in_stack_raises(unet2d):
    volume = np.zeros((3, 16, 16), np.float32)
    volume[2, 5, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        predict_volume(unet2d, volume)


def test_output_arrays_are_checked(unet2d, stack):
    with pytest.raises(ValueError, match="mask_out"):
        predict_volume(unet2d, stack, mask_out=np.zeros(stack.shape[1:], bool))
    with pytest.raises(ValueError, match="prob_out"):
        predict_volume(unet2d, stack, prob_out=np.zeros(stack.shape, np.float64))


def test_memmapped_input_and_outputs_match_in_memory(tmp_path, unet2d):
    # Slices of several memory pages, so pages really are released between batches.
    stack = np.random.default_rng(11).integers(0, 256, size=(7, 64, 96)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack)
    volume = tifffile.memmap(tmp_path / "in.tif", mode="r")
    mask_out = tifffile.memmap(tmp_path / "mask.tif", shape=stack.shape, dtype=np.uint8)
    prob_out = tifffile.memmap(tmp_path / "prob.tif", shape=stack.shape, dtype=np.float32)
    predict_volume(unet2d, volume, mask_out=mask_out, prob_out=prob_out, batch_size=2)
    mask_out.flush(), prob_out.flush()
    del mask_out, prob_out, volume
    mask, prob = predict_volume(unet2d, stack, batch_size=2)  # same batches, same rounding
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "mask.tif"), mask * np.uint8(255))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "prob.tif"), prob)


# --------------------------------------------------------------------------- settings

def test_settings_default_without_inference_json(tmp_path, unet2d):
    unet2d.save(tmp_path / "model_best.keras")
    with pytest.warns(UserWarning, match="holds no inference settings") as caught:
        files, settings = load_run(tmp_path)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)  # one line
    assert files == [tmp_path / "model_best.keras"]
    assert settings.threshold == 0.5 and settings.postprocess == () and settings.tta is False
    assert settings.flips == ("z", "lr")  # never up-down
    with pytest.warns(UserWarning):
        assert load_run(files[0]) == (files, settings)


def test_settings_read_and_checked(tmp_path):
    (tmp_path / "inference.json").write_text(json.dumps(
        {"threshold": 0.4, "postprocess": ["largest", "fill"], "min_size": 10, "tta": True, "ndim": 3,
         "patch_size": [16, 32, 32], "best_epoch": 7}))
    settings = read_settings(tmp_path / "inference.json")
    assert settings == InferenceSettings(
        threshold=0.4, postprocess=("largest", "fill"), min_size=10, tta=True, ndim=3,
        patch_size=(16, 32, 32), info={"best_epoch": 7})  # run metadata is kept
    assert InferenceSettings.from_dict(settings.to_dict()) == settings  # round trip
    for bad in ({"threshold": "high"}, {"postprocess": ["blur"]}, {"tta": 1}, {"input_size": 0},
                {"ndim": 3, "patch_size": [16, 16]}, {"flips": ["diagonal"]}, {"channels": 0},
                {"tuned": {"with_tta": {"threshold": 2, "postprocess": []}}},
                {"members": [{"flips": ["lr"]}]}):
        (tmp_path / "inference.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match="inference.json"):
            read_settings(tmp_path / "inference.json")
    with pytest.raises(ConfigError, match="inference.json"):  # read first: it may list members
        load_run(tmp_path)
    (tmp_path / "inference.json").unlink()
    with pytest.raises(ModelError, match="model_best.keras"):
        load_run(tmp_path)


def test_settings_travel_inside_a_copied_model(tmp_path, unet2d):
    from bcseg.rundir import save_run_settings

    run = tmp_path / "run"
    run.mkdir()
    unet2d.save(run / "model_best.keras")
    recorded = InferenceSettings(threshold=0.35, postprocess=("largest",), flips=("lr",), ndim=2,
                                 input_size=16, info={"best_epoch": 3})
    save_run_settings(run, recorded)
    copy = tmp_path / "elsewhere" / "copied.keras"
    copy.parent.mkdir()
    copy.write_bytes((run / "model_best.keras").read_bytes())  # the model alone, no inference.json
    assert load_run(copy) == ([copy], recorded)
    np.testing.assert_array_equal(load_model(copy).get_weights()[0], unet2d.get_weights()[0])


def test_switching_tta_uses_the_threshold_tuned_for_it_or_warns():
    tuned = {"with_tta": {"threshold": 0.3, "postprocess": ["fill"]},
             "without_tta": {"threshold": 0.6, "postprocess": []}}
    settings = InferenceSettings(threshold=0.6, tuned=tuned)
    switched = settings.overridden(tta=True)
    assert (switched.tta, switched.threshold, switched.postprocess) == (True, 0.3, ("fill",))
    assert settings.overridden(tta=True, threshold=0.5).threshold == 0.5  # the user's choice wins
    with pytest.warns(UserWarning, match="tuned without TTA") as caught:
        untuned = InferenceSettings(threshold=0.6).overridden(tta=True)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert untuned.tta and untuned.threshold == 0.6


# --------------------------------------------------------------------------- files

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, unet2d):
    folder = tmp_path_factory.mktemp("run")
    unet2d.save(folder / "model_best.keras")
    (folder / "inference.json").write_text(json.dumps(
        {"threshold": 0.5, "postprocess": ["fill"], "min_size": 0, "tta": True, "ndim": 2,
         "input_size": 16, "patch_size": None, "best_epoch": 3, "observer": "union"}))
    return folder


def test_predict_files_2d_png(tmp_path, run_dir, unet2d):
    import imageio.v3 as iio

    image = np.random.default_rng(9).integers(0, 256, size=(30, 21)).astype(np.uint8)
    iio.imwrite(tmp_path / "scan.png", image)
    records = predict_files(run_dir, [tmp_path / "scan.png"], tmp_path / "out", save_prob=True,
                            quicklook=True, progress=False)
    assert [r["status"] for r in records] == ["ok"]
    mask = tifffile.imread(records[0]["mask"])
    assert mask.shape == image.shape and mask.dtype == np.uint8
    expected, prob = predict_volume(unet2d, image, tta=True, postprocess=["fill"],  # inference.json
                                    input_size=16)
    np.testing.assert_array_equal(mask, expected * np.uint8(255))
    saved_prob, spacing = io.read_image(records[0]["prob"])
    assert saved_prob.dtype == np.float32 and spacing is None
    np.testing.assert_allclose(saved_prob, prob, atol=1e-6)
    overlay = iio.imread(records[0]["overlay"])
    assert overlay.ndim == 3 and overlay.shape[0] > 100
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        RECORD, "scan_mask.tif", "scan_overlay.png", "scan_prob.tif"]


@pytest.mark.filterwarnings("ignore:.*holds no inference settings:UserWarning")
def test_predict_files_3d_tiff_keeps_shape_and_spacing(tmp_path, unet3d):
    unet3d.save(tmp_path / "model3d.keras")
    stack = np.random.default_rng(10).integers(0, 4000, size=(6, 18, 20)).astype(np.uint16)
    io.write_image(tmp_path / "images" / "specimen.tif", stack, spacing_mm=(0.5, 0.1, 0.2))
    records = predict_files(tmp_path / "model3d.keras", tmp_path / "images", tmp_path / "out",
                            threshold=0.45, save_prob=True, quicklook=True, progress=False)
    mask, spacing = io.read_image(records[0]["mask"])
    assert mask.shape == stack.shape and mask.dtype == np.uint8
    np.testing.assert_allclose(spacing, (0.5, 0.1, 0.2), rtol=1e-6)
    expected, prob = predict_volume(unet3d, stack, threshold=0.45)
    np.testing.assert_array_equal(mask, expected * np.uint8(255))
    saved_prob, prob_spacing = io.read_image(records[0]["prob"])
    np.testing.assert_allclose(saved_prob, prob, atol=1e-6)
    np.testing.assert_allclose(prob_spacing, (0.5, 0.1, 0.2), rtol=1e-6)
    assert (tmp_path / "out" / "specimen_overlay.png").stat().st_size > 1000


def test_existing_output_without_force_is_kept(tmp_path, run_dir, stack):
    io.write_image(tmp_path / "a.tif", stack)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_mask.tif").write_bytes(b"earlier result")
    with pytest.raises(UsageError, match="a_mask.tif"):
        predict_files(run_dir, tmp_path / "a.tif", out, progress=False)
    assert (out / "a_mask.tif").read_bytes() == b"earlier result"
    assert [p.name for p in out.iterdir()] == ["a_mask.tif"]
    with pytest.raises(UsageError, match="a_mask.tif: was not written by bcseg"):
        predict_files(run_dir, tmp_path / "a.tif", out, force=True, progress=False)
    assert (out / "a_mask.tif").read_bytes() == b"earlier result"  # --force: only bcseg's own
    (out / "a_mask.tif").unlink()
    predict_files(run_dir, tmp_path / "a.tif", out, progress=False)
    predict_files(run_dir, tmp_path / "a.tif", out, force=True, threshold=0.9, progress=False)
    assert tifffile.imread(out / "a_mask.tif").shape == stack.shape


def test_inputs_whose_outputs_would_collide_are_refused(tmp_path, run_dir, stack):
    io.write_image(tmp_path / "a.tif", stack)
    io.write_image(tmp_path / "sub" / "a.tif", stack)
    with pytest.raises(UsageError, match="same name"):
        predict_files(run_dir, [tmp_path / "a.tif", tmp_path / "sub"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # a_mask.tif and A_mask.tif are one file on macOS and Windows
    io.write_image(tmp_path / "A.tif", stack)
    with pytest.raises(UsageError, match="same name as .*a.tif .letter case or Unicode form aside"):
        predict_files(run_dir, [tmp_path / "a.tif", tmp_path / "A.tif"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # and so are café_mask.tif in its two Unicode forms (one code point, or e + accent)
    io.write_image(tmp_path / "caf\u00e9.tif", stack)
    io.write_image(tmp_path / "cafe\u0301.tif", stack)
    with pytest.raises(UsageError, match="letter case or Unicode form aside"):
        predict_files(run_dir, [tmp_path / "caf\u00e9.tif", tmp_path / "cafe\u0301.tif"], tmp_path / "out",
                      progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:.*holds no inference settings:UserWarning")
def test_failure_leaves_no_partial_files(tmp_path, stack):
    model = unet(ndim=3, base_filters=2, depth=1, norm=None)
    model.save(tmp_path / "m3.keras")
    images = tmp_path / "images"
    io.write_image(images / "a_stack.tif", stack)
    bad = stack.astype(np.float32)
    bad[2, 5, 5] = np.nan  # found only when read, after the first stack's outputs exist
    io.write_image(images / "b_nan.tif", bad)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="b_nan.tif: .*NaN"):
        predict_files(tmp_path / "m3.keras", images, out, save_prob=True, progress=False)
    # the first stack's outputs are complete; the folder says the run did not finish
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL, RECORD, "a_stack_mask.tif", "a_stack_prob.tif"]
    assert json.loads((out / RECORD).read_text())["open"]["command"] == "predict"
    records = predict_files(tmp_path / "m3.keras", images, out, force=True, keep_going=True,
                            progress=False)
    assert [r["status"] for r in records] == ["ok", "error"]
    assert "b_nan.tif" in records[1]["error"] and records[1]["mask"] is None
    # the forced run asked for no probability map: the old one no longer matches its mask
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "a_stack_mask.tif"]
    assert "open" not in json.loads((out / RECORD).read_text())  # every input tried: finished

# --------------------------------------------------------------------------- ensembles

def _member(path, **fields):
    return member_settings(path, InferenceSettings(**fields))


def test_ensemble_is_the_mean_of_its_members_each_with_its_own_settings(stack):
    keras.utils.set_random_seed(5)
    first, second = (unet(ndim=2, base_filters=2, depth=2, norm=None) for _ in range(2))
    settings = InferenceSettings(threshold=0.45, tta=True, members=(
        _member("a.keras", flips=("lr",), input_size=16), _member("b.keras", flips=("ud", "lr"))))
    mask, prob = segment_volume([first, second], stack, settings, batch_size=2)
    _, p1 = predict_volume(first, stack, tta=True, flips=("lr",), input_size=16)
    _, p2 = predict_volume(second, stack, tta=True, flips=("ud", "lr"))
    np.testing.assert_allclose(prob, (p1 + p2) / 2, atol=1e-6)
    np.testing.assert_array_equal(mask, prob > 0.45)
    assert np.abs(p1 - p2).max() > 1e-3  # the members differ, so the mean means something


def test_3d_ensemble_with_different_windows_matches_the_mean(unet3d):
    keras.utils.set_random_seed(6)
    other = unet(ndim=3, base_filters=2, depth=2, norm=None)
    volume = np.random.default_rng(11).integers(0, 256, size=(13, 20, 18)).astype(np.uint8)
    settings = InferenceSettings(members=(_member("a", patch_size=(4, 8, 8)),
                                          _member("b", patch_size=(8, 12, 12))))
    # One window per call: the members deliver their slices in runs of different lengths.
    _, prob = segment_volume([unet3d, other], volume, settings, batch_size=1)
    _, p1 = predict_volume(unet3d, volume, patch_size=(4, 8, 8), batch_size=1)
    _, p2 = predict_volume(other, volume, patch_size=(8, 12, 12), batch_size=1)
    np.testing.assert_allclose(prob, (p1 + p2) / 2, atol=1e-6)


def test_several_models_predict_as_an_ensemble(tmp_path, stack):
    keras.utils.set_random_seed(7)
    paths = []
    for name, threshold in (("a", 0.4), ("b", 0.6)):
        (tmp_path / name).mkdir()
        unet(ndim=2, base_filters=2, depth=2, norm=None).save(tmp_path / name / "model_best.keras")
        (tmp_path / name / "inference.json").write_text(json.dumps(
            {"threshold": threshold, "postprocess": [], "min_size": 0, "tta": False, "ndim": 2,
             "input_size": 16, "flips": ["lr"]}))
        paths.append(tmp_path / name)
    io.write_image(tmp_path / "scan.tif", stack)
    with pytest.warns(UserWarning, match="members' mean threshold 0.5"):
        records = predict_files(paths, [tmp_path / "scan.tif"], tmp_path / "out", save_prob=True,
                                progress=False)
    with pytest.warns(UserWarning):
        models, settings = load_models(paths)
    assert [m.info["path"] for m in settings.members] == [str(p / "model_best.keras") for p in paths]
    probs = [predict_volume(m, stack, input_size=16)[1] for m in models]
    saved = tifffile.imread(records[0]["prob"])
    np.testing.assert_allclose(saved, (probs[0] + probs[1]) / 2, atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(records[0]["mask"]) > 0, saved > 0.5)


def _peak_bytes(models, volume, settings, batch_size):
    """Peak NumPy memory of segmenting ``volume`` into a preallocated mask."""
    import tracemalloc

    mask = np.empty(volume.shape, bool)
    segment_volume(models, volume[:4], settings, batch_size=batch_size, keep_prob=False,
                   mask_out=mask[:4])  # warm-up: graph tracing allocates once
    tracemalloc.start()
    try:
        segment_volume(models, volume, settings, batch_size=batch_size, keep_prob=False, mask_out=mask)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ensemble_memory_is_bounded_by_slabs_not_the_volume():
    keras.utils.set_random_seed(8)
    members = [unet(ndim=2, base_filters=2, depth=2, norm=None) for _ in range(3)]
    settings = InferenceSettings(members=tuple(_member(f"{i}.keras") for i in range(3)))
    batch, slab = 4, 4 * 64 * 64 * 4  # one batch of float32 probabilities
    excess = {}
    for depth in (48, 192):
        volume = np.random.default_rng(3).integers(0, 256, size=(depth, 64, 64)).astype(np.uint8)
        single = _peak_bytes(members[0], volume, InferenceSettings(), batch)
        excess[depth] = _peak_bytes(members, volume, settings, batch) - single
    # Members advance in turn, so each holds at most one slab the others have not
    # reached (plus the running sum and its copy): the ensemble's extra memory is a
    # few slabs per member, and does not grow with the stack. A member-by-member
    # mean would hold whole probability volumes: 4x more for the 4x deeper stack.
    assert excess[192] <= 2 * 3 * slab + 2 * slab, (excess, slab)
    assert excess[192] <= excess[48] + slab, excess


def test_a_folder_listing_its_members_loads_as_a_tuned_ensemble(tmp_path):
    from bcseg.rundir import write_settings

    for name in ("a.keras", "b.keras"):
        unet(ndim=2, base_filters=2, depth=2, norm=None).save(tmp_path / name)
    tuned = InferenceSettings(threshold=0.35, postprocess=("largest",), members=(
        _member("a.keras", input_size=16), _member("b.keras", input_size=24)))
    write_settings(tmp_path, tuned)
    files, settings = load_run(tmp_path)  # no warning: the threshold was tuned for the set
    assert files == [tmp_path / "a.keras", tmp_path / "b.keras"]
    assert (settings.threshold, settings.postprocess) == (0.35, ("largest",))
    assert [m.input_size for m in settings.members] == [16, 24]


@pytest.mark.parametrize("member, problem", [("../a.keras", "not a file inside"),
                                             ("/tmp/a.keras", "not a file inside"),
                                             ("c.keras", "not found")])
def test_a_members_list_cannot_point_outside_its_folder_or_at_nothing(tmp_path, member, problem):
    from bcseg.rundir import write_settings

    run = tmp_path / "run"
    run.mkdir()
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(tmp_path / "a.keras")
    write_settings(run, InferenceSettings(members=(_member(member), _member(member))))
    with pytest.raises(ModelError, match=problem):
        load_run(run)


class _Constant:
    """A model in the shape OnnxModel offers (``spec`` and ``predict_on_batch``) that
    gives ``value`` everywhere."""

    def __init__(self, value):
        from bcseg.learn.saved import ModelSpec
        self.spec, self.value = ModelSpec(2, 1, (None, None), 1), np.float32(value)

    def predict_on_batch(self, x):
        return np.full(x.shape[:-1] + (1,), self.value, np.float32)


def test_a_sigmoid_one_ulp_above_one_is_a_probability_not_a_refusal():
    """ONNX Runtime's Sigmoid (MLAS, CPU) gives 1.0000001 for some inputs (17.844, for
    one): every confident pixel of an exported bcseg model near such a logit had the
    model refused as giving "values from 0 to 1, not probabilities"."""
    mask, prob = predict_volume(_Constant(np.nextafter(np.float32(1), np.float32(2))), np.zeros((8, 8), np.float32))
    assert mask.all() and prob.max() <= 1.0
    for wrong in (1.01, -0.01, np.nan):  # scores and NaN are still refused
        with pytest.raises(ModelError, match="not probabilities"):
            predict_volume(_Constant(wrong), np.zeros((8, 8), np.float32))


def test_an_exported_sigmoid_run_by_onnx_runtime_is_accepted():
    """The same with ONNX Runtime itself: a Sigmoid node at the input it rounds above 1."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Add", ["z", "k"], ["s"]),
         helper.make_node("Sigmoid", ["s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, 1])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("k", TensorProto.FLOAT, [], [17.844])])  # the logit, whatever the image
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    class Exported(_Constant):
        def predict_on_batch(self, x):
            return session.run(None, {"x": np.asarray(x, np.float32)})[0]

    mask, prob = predict_volume(Exported(0), np.ones((8, 8), np.float32), tta=False)
    assert mask.all() and prob.max() <= 1.0


def test_an_ensemble_of_a_2d_and_a_3d_model_is_refused_before_any_output(tmp_path, stack, capsys):
    """A 2D model's slices and a 3D model's windows averaged are no one model's output,
    and ``bcseg ensemble`` refuses such runs: ``predict --model A --model B`` averaged
    them, and on a 2D image blamed the image for the 3D member."""
    from bcseg.cli import main

    kinds = {"a": (2, {"input_size": 16}), "b": (3, {"patch_size": [8, 16, 16]})}
    for name, (ndim, size) in kinds.items():
        (tmp_path / name).mkdir()
        unet(ndim=ndim, base_filters=2, depth=2, norm=None).save(tmp_path / name / "model_best.keras")
        (tmp_path / name / "inference.json").write_text(json.dumps(
            {"threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False, "ndim": ndim,
             "flips": ["lr"], **size}))
    io.write_image(tmp_path / "scan.tif", stack)
    for first, second in (("a", "b"), ("b", "a")):
        code = main(["predict", str(tmp_path / "scan.tif"), "--model", str(tmp_path / first),
                     "--model", str(tmp_path / second), "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 4 and len(err.strip().splitlines()) == 1, err
        assert f"{tmp_path / second / 'model_best.keras'}: is a " in err and "one kind" in err, err
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("finished", [True, False])
def test_an_epoch_checkpoint_runs_with_its_runs_settings_as_model_last_does(tmp_path, stack, finished):
    """model_last.keras is a link to the latest checkpoints/epoch_K.keras; named there, the
    same file ran with the defaults (whole slices instead of the run's training square,
    every default flip, threshold 0.5), though its run's settings or recipe lay one folder up."""
    import os

    from bcseg.config import load_config, save_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(run / "checkpoints" / "epoch_0002.keras")
    os.link(run / "checkpoints" / "epoch_0002.keras", run / "model_last.keras")
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(run / "model_best.keras")
    save_config(load_config(None, {"model": {"base_filters": 2, "depth": 2}, "data": {"size": 16},
                                   "augment": {"flip_lr": True, "flip_z": False}}), run / "config.toml")
    (run / "state.json").write_text(json.dumps({"epoch": 2, "checkpoint": "checkpoints/epoch_0002.keras"}))
    if finished:
        (run / "inference.json").write_text(json.dumps(
            {"threshold": 0.35, "postprocess": [], "min_size": 0, "tta": False, "ndim": 2,
             "input_size": 16, "flips": ["lr"]}))
    with pytest.warns(UserWarning) as last_said:
        _, by_last = load_run(run / "model_last.keras")
    with pytest.warns(UserWarning) as checkpoint_said:
        _, by_checkpoint = load_run(run / "checkpoints" / "epoch_0002.keras")
    assert by_checkpoint == by_last
    assert (by_checkpoint.input_size, by_checkpoint.flips) == (16, ("lr",))
    assert by_checkpoint.threshold == (0.35 if finished else 0.5)
    assert "holds no inference settings" not in str(checkpoint_said[0].message)
    assert str(last_said[0].message).split(": ", 1)[1] == str(checkpoint_said[0].message).split(": ", 1)[1]


def test_a_checkpoint_of_an_unfinished_run_with_an_empty_recipe_is_refused_naming_it(tmp_path, stack,
                                                                                    capsys):
    """An emptied config.toml was read as the defaults: the checkpoint ran on the default
    training square (256) instead of its own (16), silently; ensemble already refused one."""
    from bcseg.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(run / "checkpoints" / "epoch_0001.keras")
    (run / "config.toml").write_text("")
    (run / "state.json").write_text(json.dumps({"epoch": 1, "checkpoint": "checkpoints/epoch_0001.keras"}))
    io.write_image(tmp_path / "scan.tif", stack)
    code = main(["predict", str(tmp_path / "scan.tif"), "--model", str(run / "checkpoints" / "epoch_0001.keras"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1, err
    assert err[0].startswith(f"bcseg: error: {run / 'config.toml'}: is empty"), err
    assert not (tmp_path / "out").exists()


def test_keep_going_stops_at_a_damaged_model_rather_than_blaming_each_file(tmp_path, stack, capsys):
    """--keep-going carries on past a bad file; a model whose weights hold NaN failed every
    file in turn, one error per image and exit 3 (bad data), as if the images were at fault."""
    from bcseg.cli import main

    run = tmp_path / "run"
    run.mkdir()
    model = unet(ndim=2, base_filters=2, depth=2, norm=None)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(run / "model_best.keras")
    (run / "inference.json").write_text(json.dumps(
        {"threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False, "ndim": 2,
         "input_size": 16, "flips": ["lr"]}))
    (tmp_path / "in").mkdir()
    for name in ("a.tif", "b.tif"):
        io.write_image(tmp_path / "in" / name, stack)
    code = main(["predict", str(tmp_path / "in"), "--model", str(run), "--out", str(tmp_path / "out"),
                 "--keep-going", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and err[0].startswith(f"bcseg: error: {run}: gives values"), err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- hostile keywords

@pytest.mark.parametrize("spacing", [(0, 1, 1), (-1, 1, 1), (np.nan, 1, 1), (np.inf, 1, 1),
                                     ("abc", 1, 1), (1e-12, 1, 1), 5])
def test_predict_volume_refuses_an_unusable_spacing(unet2d, stack, spacing):
    """Only the spacing's length was checked: zero, negative, NaN or text spacings were
    taken without a word (and a number, 5, failed as 'int has no len()')."""
    with pytest.raises(DataError, match="spacing"):
        predict_volume(unet2d, stack, spacing)


@pytest.mark.parametrize("shape", [(0, 16, 16), (3, 0, 16), (0, 16)])
def test_predict_volume_refuses_an_empty_array(unet2d, shape):
    """An array with no pixels failed inside NumPy ('zero-size array to reduction
    operation') or TensorFlow ('Incompatible shapes'), naming nothing."""
    with pytest.raises(DataError, match="no pixels"):
        predict_volume(unet2d, np.zeros(shape, np.uint8))


@pytest.mark.parametrize("keywords, name", [
    ({"input_size": 10**9}, "input_size"),  # a 10**18-pixel square: the process was killed
    ({"input_size": 32.5}, "input_size"), ({"input_size": True}, "input_size"),
    ({"patch_size": (16.5, 16)}, "patch_size"),  # taken, rounded somewhere, without a word
    ({"min_size": -1, "postprocess": ["small"]}, "min_size"),
    ({"min_size": 2.5, "postprocess": ["small"]}, "min_size"),
    ({"min_size": 5}, "min_size"),  # read by the 'small' step alone: dropped without a word
    ({"threshold": "0.5"}, "threshold"), ({"threshold": 0}, "threshold"),
    ({"threshold": True}, "threshold"),
    ({"tta": True, "flips": ["x"]}, "flips"),
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": "8"}, "batch_size"),
    ({"overlap": "0.5"}, "overlap"),
])
def test_predict_volume_refuses_a_bad_keyword_naming_it(unet2d, stack, keywords, name):
    with pytest.raises(ValueError, match=name) as caught:
        predict_volume(unet2d, stack, **keywords)
    assert "\n" not in str(caught.value)


def test_predict_volume_takes_numpy_scalars(unet2d, stack):
    """NumPy's own numbers are numbers: a threshold or size read from an array is taken."""
    _, expected = predict_volume(unet2d, stack, threshold=0.4, input_size=16, batch_size=2)
    mask, prob = predict_volume(unet2d, stack, threshold=np.float32(0.4), input_size=np.int64(16),
                                batch_size=np.int64(2), tta=np.bool_(False))
    np.testing.assert_array_equal(prob, expected)
    np.testing.assert_array_equal(mask, expected > np.float32(0.4))


def test_output_arrays_that_cannot_take_the_result_are_refused_before_the_model(unet2d, stack):
    """A read-only mask_out failed part-way as NumPy's 'assignment destination is
    read-only', a list as "'list' object has no attribute 'shape'", and the input array
    itself as mask_out was overwritten by the mask while it was being read."""
    read_only = np.zeros(stack.shape, bool)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="mask_out .*read-only"):
        predict_volume(unet2d, stack, mask_out=read_only)
    with pytest.raises(ValueError, match="mask_out"):
        predict_volume(unet2d, stack, mask_out=[[0]])
    with pytest.raises(ValueError, match="mask_out .*the image"):
        predict_volume(unet2d, stack, mask_out=stack)
    assert stack.any()


def test_a_huge_slice_is_tiled_and_a_frame_is_not(monkeypatch):
    """A 2D model of free size segments a slice over WHOLE_SLICE_PIXELS in tiles (a whole
    30000-pixel slice would need tens of GB of feature maps), and a frame below it whole;
    tiled, a pointwise model gives exactly its pixel-by-pixel output."""
    from bcseg.infer import predict as predict_module
    from bcseg.learn.saved import model_spec

    model = pointwise_model(2, 4.0, -2.0)
    spec = model_spec(model)
    assert predict_module._resolve_patch(spec, (1024, 1280), None) is None
    assert predict_module._resolve_patch(spec, (30000, 30000), None) == (2048, 2048)
    assert predict_module._resolve_patch(spec, (300, 30000), None) == (300, 2048)

    monkeypatch.setattr(predict_module, "WHOLE_SLICE_PIXELS", 16 * 16)
    monkeypatch.setattr(predict_module, "SLICE_TILE", 16)
    assert predict_module._resolve_patch(spec, (40, 70), None) == (16, 16)
    seen = []  # the inputs the real model is given: tiles, not the whole slice
    real = predict_module.probabilities
    monkeypatch.setattr(predict_module, "probabilities",
                        lambda m, x: seen.append(x.shape[1:3]) or real(m, x))
    image = np.random.default_rng(8).integers(0, 256, size=(40, 70)).astype(np.uint8)
    _, prob = predict_volume(model, image)
    assert len(seen) > 1 and all(h <= 16 and w <= 16 for h, w in seen), seen
    np.testing.assert_allclose(prob, sigmoid(4.0 * image / 255.0 - 2.0), atol=1e-5)
