"""Multi-channel (US + PA) models end to end: ``bcseg train --channels``, the channels
recorded with the model, ``bcseg predict`` on a dataset folder, refusals, TTA, 3D
windows and ``--init busi``.

Real tiny phantoms (3 specimens of 8 x 32 x 32, US and PA) and real tiny models
(4 filters, depth 2), one epoch each, through ``bcseg.cli.main``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tifffile

from bcseg import cli, rundir
from bcseg.config import to_toml
from bcseg.learn.augment import AugmentConfig, augment_2d
from bcseg.learn.saved import load_model

SHAPE = (8, 32, 32)
TINY = {"model": {"base_filters": 4, "depth": 2}, "data": {"size": 32, "patch_depth": 8},
        "train": {"epochs": 1, "batch_size": 8, "k": 3}}
pytestmark = [pytest.mark.filterwarnings("ignore:only 3 groups:UserWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uspa") / "data"
    assert cli.main(["phantom", str(root), "--n", "3", "--shape", *map(str, SHAPE),
                     "--channels", "us,pa", "--seed", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(to_toml(TINY), encoding="utf-8")
    return path


def _train(phantom, config, out: Path, *extra: str) -> None:
    assert cli.main(["train", str(phantom), "--out", str(out), "--config", str(config), *extra]) == 0


@pytest.fixture(scope="module")
def run2d(tmp_path_factory, phantom, config) -> Path:
    out = tmp_path_factory.mktemp("run2d") / "run"
    _train(phantom, config, out, "--channels", "us,pa")
    return out


def _errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("bcseg: error:")]


def test_two_channel_run_records_its_channels_in_the_settings_and_the_archive(run2d, tmp_path):
    assert load_model(run2d / rundir.MODEL_FILE).inputs[0].shape[-1] == 2
    recorded = json.loads((run2d / rundir.SETTINGS_FILE).read_text(encoding="utf-8"))
    assert recorded["channels"] == 2 and recorded["channel_names"] == ["us", "pa"]
    assert recorded["normalisation"] == {"us": "auto", "pa": "log"}
    copy = tmp_path / "copied.keras"  # a model copied on its own keeps them
    copy.write_bytes((run2d / rundir.MODEL_FILE).read_bytes())
    inside = rundir.archive_settings(copy)
    assert inside.channel_names == ("us", "pa") and inside.normalisation == recorded["normalisation"]
    assert sorted(p.name for p in (run2d / "predictions").glob("*_mask.tif"))  # the test fold


def test_two_channel_model_predicts_a_dataset_folder_with_tta(run2d, phantom, tmp_path):
    out = tmp_path / "pred"
    assert cli.main(["predict", str(phantom), "--model", str(run2d), "--out", str(out),
                     "--tta", "--no-progress"]) == 0
    masks = sorted(out.glob("*_mask.tif"))
    assert [m.name for m in masks] == [f"{p.stem}_mask.tif" for p in sorted((phantom / "images" / "us").iterdir())]
    assert tifffile.imread(masks[0]).shape == SHAPE


def test_one_image_for_a_two_channel_model_is_refused_naming_it_and_writing_nothing(
        run2d, phantom, tmp_path, capsys):
    image = sorted((phantom / "images" / "us").iterdir())[0]
    out = tmp_path / "pred"
    assert cli.main(["predict", str(image), "--model", str(run2d), "--out", str(out)]) != 0
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and str(image) in errors[0] and "us, pa" in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_case_lacking_a_channel_is_refused_naming_its_file(run2d, phantom, tmp_path, capsys):
    data = tmp_path / "us_only"
    (data / "images" / "us").mkdir(parents=True)
    first = sorted((phantom / "images" / "us").iterdir())[0]
    (data / "images" / "us" / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "pred"
    assert cli.main(["predict", str(data), "--model", str(run2d), "--out", str(out)]) == 3
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and first.name in errors[0] and "us, pa" in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_channels_pa_trains_a_one_channel_pa_model_that_predicts_single_files(
        phantom, config, tmp_path):
    out = tmp_path / "pa"
    _train(phantom, config, out, "--channels", "pa")
    settings = rundir.read_settings(out / rundir.SETTINGS_FILE)
    assert settings.channel_names == ("pa",) and settings.normalisation == {"pa": "log"}
    assert load_model(out / rundir.MODEL_FILE).inputs[0].shape[-1] == 1
    image = sorted((phantom / "images" / "pa").iterdir())[0]
    assert cli.main(["predict", str(image), "--model", str(out), "--out", str(tmp_path / "p"),
                     "--no-progress"]) == 0
    assert tifffile.imread(tmp_path / "p" / f"{image.stem}_mask.tif").shape == SHAPE


def test_two_channel_3d_model_trains_and_predicts_with_windows_and_tta(phantom, config, tmp_path):
    out = tmp_path / "run3d"
    _train(phantom, config, out, "--channels", "us,pa", "--model", "unet3d")
    assert load_model(out / rundir.MODEL_FILE).inputs[0].shape[-1] == 2
    pred = tmp_path / "pred"
    assert cli.main(["predict", str(phantom), "--model", str(out), "--out", str(pred), "--tta",
                     "--save-prob", "--no-progress"]) == 0
    prob = tifffile.imread(sorted(pred.glob("*_prob.tif"))[0])
    assert prob.shape == SHAPE and np.isfinite(prob).all()


def test_init_busi_fine_tunes_a_two_channel_model(phantom, config, tmp_path):
    out = tmp_path / "busi"
    _train(phantom, config, out, "--channels", "pa,us", "--init", "busi")
    model = load_model(out / rundir.MODEL_FILE)
    assert model.inputs[0].shape[-1] == 2
    assert rundir.read_settings(out / rundir.SETTINGS_FILE).channel_names == ("pa", "us")
    from bcseg.pretrained import pretrained_path  # recorded, so that --resume starts later folds from it

    assert json.loads((out / rundir.INIT_FILE).read_text()) == {
        "init": "busi", "weights": rundir.weights_digest(pretrained_path())}


def test_widened_busi_model_keeps_its_us_response_and_starts_other_channels_at_zero():
    from bcseg.learn.models import with_input_channels
    from bcseg.pretrained import pretrained_path

    busi = load_model(pretrained_path())
    wide = with_input_channels(busi, 2, keep=1)
    us = np.random.default_rng(0).random((1, 32, 32, 1), np.float32)
    pa = np.random.default_rng(1).random((1, 32, 32, 1), np.float32)
    np.testing.assert_allclose(wide.predict_on_batch(np.concatenate([pa, us], -1)),
                               busi.predict_on_batch(us), atol=1e-5)


def test_geometry_is_shared_by_channels_and_speckle_touches_us_only():
    image = np.stack([np.full((16, 16), 0.5, np.float32), np.full((16, 16), 0.5, np.float32)], -1)
    mask = np.zeros((16, 16, 1), np.float32)
    speckle = AugmentConfig(rotation_deg=0, scale=(1, 1), flip_lr=False, brightness=0, contrast=0,
                            gamma=(1, 1), speckle=0.2)
    out, _ = augment_2d(image, mask, tf.constant([1, 2]), speckle, channels=("pa", "us"))
    assert np.allclose(out[..., 0], 0.5) and not np.allclose(out[..., 1], 0.5)
    grey, _ = augment_2d(image[..., :1], mask, tf.constant([1, 2]), speckle)
    assert not np.allclose(grey, 0.5)  # a grey image keeps its speckle
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    both = np.stack([ramp, ramp], -1)
    turn = AugmentConfig(rotation_deg=30, scale=(1, 1), p_geometric=1.0, brightness=0,
                                          contrast=0, gamma=(1, 1), speckle=0)
    out, _ = augment_2d(both, mask, tf.constant([3, 4]), turn, channels=("us", "pa"))
    assert not np.allclose(out[..., 0], ramp) and np.array_equal(out[..., 0], out[..., 1])  # one geometry
    shift = AugmentConfig(rotation_deg=0, scale=(1, 1), flip_lr=False, brightness=0.3, contrast=0,
                          gamma=(1, 1), speckle=0)
    out, _ = augment_2d(both, mask, tf.constant([3, 4]), shift, channels=("us", "pa"))
    assert not np.allclose(out[..., 0], out[..., 1])  # brightness drawn per channel


def _named_model(path: Path, in_channels: int, names: tuple[str, ...]) -> Path:
    """A tiny untrained 2D model whose settings (inside it) name its channels."""
    from bcseg.learn.models import unet

    unet(ndim=2, in_channels=in_channels, base_filters=4, depth=2).save(path)
    rundir.embed_settings(path, rundir.InferenceSettings(
        ndim=2, input_size=32, channels=in_channels, channel_names=names,
        normalisation={n: "auto" for n in names}))
    return path


def _first_kernel(model) -> np.ndarray:
    return next(w for w in model.get_weights() if w.ndim == 4)


def test_init_of_a_one_channel_pa_model_widens_onto_the_pa_channel(tmp_path):
    # A model trained with --channels pa, fine-tuned into a us,pa run: its kernel must
    # read pa; it went to 'us' (the grey BUSI model's rule) and read ultrasound.
    from bcseg.learn.starting_model import initial_model

    path = _named_model(tmp_path / "pa.keras", 1, ("pa",))
    original = _first_kernel(load_model(path))
    wide = _first_kernel(initial_model(path, ["us", "pa"]))
    np.testing.assert_array_equal(wide[:, :, 1:2], original)
    assert not wide[:, :, 0].any()


def test_init_of_a_model_of_the_run_channels_in_another_order_is_refused(phantom, config, tmp_path,
                                                                        capsys):
    # A pa,us model starting a us,pa run: its first layer would read us as pa.
    init = _named_model(tmp_path / "pa_us.keras", 2, ("pa", "us"))
    out = tmp_path / "run"
    code = cli.main(["train", str(phantom), "--out", str(out), "--config", str(config),
                     "--channels", "us,pa", "--init", str(init)])
    errors = _errors(capsys.readouterr().err)
    assert code == 4 and len(errors) == 1 and str(init) in errors[0] and "pa, us" in errors[0]
    assert not out.exists()


def test_predict_margins_finds_the_specimen_in_us_whatever_the_layout_orders_first(phantom, tmp_path):
    # Without channels.json, channel folders are read in name order: pa before us. The
    # specimen (tissue bright against the medium) was then found in PA, so the same
    # images gave other margins than with channels.json ["us", "pa"].
    import shutil

    model = _named_model(tmp_path / "m.keras", 2, ("us", "pa"))
    plain = tmp_path / "plain"
    for folder in ("images", "masks"):
        shutil.copytree(phantom / folder, plain / folder)
    specimens = []
    for data, out in ((phantom, tmp_path / "a"), (plain, tmp_path / "b")):
        assert cli.main(["predict", str(data), "--model", str(model), "--out", str(out),
                         "--margins", "--no-progress"]) == 0
        specimens.append(tifffile.imread(sorted(out.glob("*_specimen.tif"))[0]))
    np.testing.assert_array_equal(specimens[1], specimens[0])


def test_an_ensemble_of_models_of_other_channel_orders_is_refused_naming_the_model(
        phantom, tmp_path, capsys):
    first = _named_model(tmp_path / "us_pa.keras", 2, ("us", "pa"))
    other = _named_model(tmp_path / "pa_us.keras", 2, ("pa", "us"))
    out = tmp_path / "pred"
    assert cli.main(["predict", str(phantom), "--model", str(first), "--model", str(other),
                     "--out", str(out)]) == 4
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"bcseg: error: {other}: ")
    assert "pa, us" in errors[0] and not out.exists()
