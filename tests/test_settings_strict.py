"""Settings files are complete or refused: a missing or unknown key, corrupt settings
inside a .keras archive, or an input size no machine can hold is one error naming the
file, never a run with default settings the model was not tuned with."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import imageio.v3 as iio
import keras
import numpy as np
import pytest

from bcseg.cli import main
from bcseg.errors import ConfigError, ModelError
from bcseg.learn.models import unet
from bcseg.rundir import (ARCHIVE_SETTINGS, MAX_INPUT_SIZE, InferenceSettings, archive_settings,
                          embed_settings, load_run, read_settings)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = (REPO / "src" / "bcseg" / "pretrained", REPO / "tests" / "data" / "busi_heldout")

# A run's settings as bcseg train writes them today: tuned threshold 0.3, not the default.
TUNED = InferenceSettings(threshold=0.3, postprocess=("fill",), tta=False, flips=("lr",), ndim=2,
                          input_size=16, info={"best_epoch": 3, "observer": "union"}).to_dict()
# As bcseg train wrote them before flips, channels, members, tuned, channel_names and
# normalisation were recorded (git show ed230c7^:src/bcseg/train.py).
OLD_STYLE = {"ndim": 2, "threshold": 0.3, "postprocess": ["fill"], "min_size": 0, "tta": False,
             "input_size": 16, "patch_size": None, "observer": "union", "best_epoch": 3,
             "validation_dice": 0.8}


def _tiny_model(path: Path, seed: int) -> Path:
    keras.utils.set_random_seed(seed)
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny untrained 2D U-Net saved as a .keras file, with no settings inside."""
    return _tiny_model(tmp_path_factory.mktemp("model") / "plain.keras", 0)


def _run(folder: Path, model_file: Path, settings) -> Path:
    """A run folder: the model and an ``inference.json`` holding ``settings`` (JSON text or object)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_best.keras").write_bytes(model_file.read_bytes())
    text = settings if isinstance(settings, str) else json.dumps(settings)
    (folder / "inference.json").write_text(text, encoding="utf-8")
    return folder


def _with_entry(model: Path, text: str | bytes) -> None:
    """Rewrite the settings entry inside ``model`` (a .keras zip) to hold ``text``."""
    tmp = model.with_suffix(".tmp")
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(tmp, "w") as target:
        for item in source.infolist():
            if item.filename != ARCHIVE_SETTINGS:
                target.writestr(item, source.read(item))
        target.writestr(ARCHIVE_SETTINGS, text)
    tmp.replace(model)


def _without(*keys) -> dict:
    return {k: v for k, v in TUNED.items() if k not in keys}


# --------------------------------------------------------------------------- missing keys

@pytest.mark.parametrize("settings, named", [
    (_without("threshold"), "threshold"),
    ({}, "threshold, postprocess, min_size, tta, ndim"),
    (_without("ndim", "tta"), "tta, ndim"),
    (_without("postprocess", "tta"), "postprocess, tta"),
    (_without("input_size"), "input_size"),
    ({**_without("patch_size"), "ndim": 3, "input_size": None}, "patch_size"),
])
def test_a_missing_key_in_inference_json_is_refused(tmp_path, model_file, settings, named):
    run = _run(tmp_path / "run", model_file, settings)
    with pytest.raises(ConfigError, match="missing") as caught:
        load_run(run)
    message = str(caught.value)
    assert message.startswith(f"{run / 'inference.json'}: missing {named}:") and "\n" not in message


def test_a_missing_key_in_a_models_own_settings_is_refused(tmp_path, model_file):
    model = tmp_path / "copied.keras"
    model.write_bytes(model_file.read_bytes())
    _with_entry(model, json.dumps(_without("threshold")))
    with pytest.raises(ConfigError, match="missing threshold") as caught:
        load_run(model)
    assert str(caught.value).startswith(f"{model}: ")


def test_an_ensemble_member_missing_a_key_is_refused(tmp_path, model_file):
    (tmp_path / "a.keras").write_bytes(model_file.read_bytes())
    member = {"path": "a.keras", "flips": ["lr"], "ndim": 2}  # no input_size
    (tmp_path / "inference.json").write_text(json.dumps(
        {"threshold": 0.3, "postprocess": [], "min_size": 0, "tta": False, "members": [member]}))
    with pytest.raises(ConfigError, match="member 'a.keras' is missing input_size"):
        load_run(tmp_path)
    member["input_size"] = 16
    (tmp_path / "inference.json").write_text(json.dumps(
        {"threshold": 0.3, "postprocess": [], "min_size": 0, "tta": False, "members": [member]}))
    files, settings = load_run(tmp_path)
    assert files == [tmp_path / "a.keras"] and settings.threshold == 0.3


def test_an_unknown_key_is_refused(tmp_path, model_file):
    run = _run(tmp_path / "run", model_file, {**TUNED, "treshold": 0.4})  # a typo
    with pytest.raises(ConfigError, match="unknown key.*'treshold'") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json"))


def test_an_unknown_key_in_a_tuned_entry_is_refused(tmp_path, model_file):
    """Switching TTA takes only a tuned entry's threshold and postprocess: a min_size put
    there for its 'small' step (or a misspelt key) was dropped without a word."""
    tuned = {"with_tta": {"threshold": 0.4, "postprocess": ["small"], "min_size": 50, "validation_dice": 0.8}}
    run = _run(tmp_path / "run", model_file, {**TUNED, "tuned": tuned})
    with pytest.raises(ConfigError, match=r"tuned\.with_tta must be an object with keys threshold, "
                                          r"postprocess, validation_dice .*got \['min_size'\]") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json"))
    del tuned["with_tta"]["min_size"]  # as training records it
    _run(run, model_file, {**TUNED, "tuned": tuned})
    assert load_run(run)[1].tuned == tuned


def test_a_key_given_twice_is_refused_not_the_last_taken(tmp_path, model_file):
    """Python's parser keeps the last of two equal keys: a user who added a second
    "threshold" below the tuned one would run with one of them, silently."""
    text = json.dumps(TUNED)[:-1] + ', "threshold": 0.9}'
    run = _run(tmp_path / "run", model_file, text)
    with pytest.raises(ConfigError, match="key 'threshold' appears more than once") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json")) and "\n" not in str(caught.value)
    model = tmp_path / "copied.keras"  # the settings stored inside a model: the same rule
    model.write_bytes(model_file.read_bytes())
    _with_entry(model, text)
    with pytest.raises(ConfigError, match="appears more than once") as caught:
        load_run(model)
    assert str(caught.value).startswith(f"{model}: ")


def test_a_large_json_object_is_read_in_linear_time():
    """The repeated-key check counted each key over all keys: a predict folder's record
    of 30000 outputs (or a big fold.json) took seconds to read, 100000 minutes, where
    the parser alone takes milliseconds."""
    import time
    from bcseg.atomic import parse_json
    text = json.dumps({"files": {f"case_{i}_mask.tif": "predict" for i in range(50_000)}})
    start = time.perf_counter()
    assert len(parse_json(text)["files"]) == 50_000
    assert time.perf_counter() - start < 3.0


def test_settings_saved_with_a_byte_order_mark_are_read(tmp_path, model_file):
    """Notepad and Excel put a byte-order mark in front of UTF-8 text; channels.json and
    the manifest were read with it, inference.json was refused ("Unexpected UTF-8 BOM")."""
    run = _run(tmp_path / "run", model_file, "\ufeff" + json.dumps(TUNED))
    files, settings = load_run(run)
    assert settings.threshold == 0.3 and files == [run / "model_best.keras"]


def test_old_files_lacking_only_later_keys_still_load(tmp_path, model_file):
    run = _run(tmp_path / "old", model_file, OLD_STYLE)
    files, settings = load_run(run)
    assert (settings.threshold, settings.postprocess, settings.input_size) == (0.3, ("fill",), 16)
    assert settings.flips == ("z", "lr") and settings.channels == 1 and settings.members == ()
    assert settings.info == {"observer": "union", "best_epoch": 3, "validation_dice": 0.8}
    for folder in BUNDLED:  # the bundled model's settings, beside it and inside it (no flips)
        beside, inside = read_settings(folder / "inference.json"), archive_settings(
            folder / "busi_unet2d.keras")
        if beside.members:  # an ensemble: its entry for the file describes the same network
            beside = next(m for m in beside.members if m.info["path"] == "busi_unet2d.keras")
            assert (beside.input_size, beside.flips) == (inside.input_size, inside.flips)
        else:
            assert (beside.threshold, beside.input_size) == (inside.threshold, inside.input_size)
    for key in ("threshold", "postprocess", "min_size", "tta", "ndim", "input_size"):
        (run / "inference.json").write_text(json.dumps({k: v for k, v in OLD_STYLE.items() if k != key}))
        with pytest.raises(ConfigError, match=f"missing {key}"):
            load_run(run)


# --------------------------------------------------------------------------- corrupt archive

@pytest.mark.parametrize("data", [b'{"threshold": 0.3, "postprocess": [', b"\xff\xfe not UTF-8", b""])
def test_corrupt_settings_inside_a_model_are_refused(tmp_path, model_file, data):
    model = tmp_path / "model.keras"
    model.write_bytes(model_file.read_bytes())
    embed_settings(model, InferenceSettings.from_dict(TUNED))
    assert load_run(model)[1].threshold == 0.3
    _with_entry(model, data)
    with pytest.raises(ConfigError, match=f"{ARCHIVE_SETTINGS} inside it.*cannot be read") as caught:
        load_run(model)
    assert str(caught.value).startswith(f"{model}: ") and "\n" not in str(caught.value)
    # A plain Keras model, with no settings inside, still runs with its one-line warning.
    with pytest.warns(UserWarning, match="holds no inference settings"):
        assert load_run(model_file)[1].threshold == 0.5


# --------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("changes, key", [
    ({"input_size": 100_000}, "input_size"),
    ({"input_size": MAX_INPUT_SIZE + 1}, "input_size"),
    ({"ndim": 3, "input_size": None, "patch_size": [8, 100_000, 100_000]}, "patch_size"),
])
def test_a_huge_input_size_is_refused(tmp_path, model_file, changes, key):
    run = _run(tmp_path / "run", model_file, {**TUNED, **changes})
    with pytest.raises(ConfigError, match=f"{key} must be .* up to {MAX_INPUT_SIZE}") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json"))
    model = tmp_path / "alone.keras"  # the same inside a model file
    model.write_bytes(model_file.read_bytes())
    _with_entry(model, json.dumps({**TUNED, **changes}))
    with pytest.raises(ConfigError, match=key):
        load_run(model)
    (run / "inference.json").write_text(json.dumps({**TUNED, "input_size": MAX_INPUT_SIZE}))
    assert load_run(run)[1].input_size == MAX_INPUT_SIZE  # the bound itself is allowed


@pytest.mark.parametrize("ndim", [2.0, 3.0, "2", True, 4])
def test_ndim_must_be_the_whole_number_2_or_3(tmp_path, model_file, ndim):
    """"ndim": 2.0 passed the check (2.0 == 2) and was looked up in tables keyed by the
    integers 2 and 3, which it is not: the model ran with neither of its sizes."""
    run = _run(tmp_path / "run", model_file, {**TUNED, "ndim": ndim})
    with pytest.raises(ConfigError, match=r"ndim must be 2 or 3, got") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json"))


# --------------------------------------------------------------------------- command line

@pytest.mark.parametrize("settings, problem", [(_without("threshold"), "missing threshold"),
                                               ({**TUNED, "input_size": 100_000}, "input_size")])
def test_predict_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, model_file, settings, problem):
    image = tmp_path / "scan.png"
    iio.imwrite(image, np.random.default_rng(0).integers(0, 256, size=(24, 20)).astype(np.uint8))
    run = _run(tmp_path / "run", model_file, settings)
    capsys.readouterr()
    code = main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 4
    lines = err.splitlines()
    assert len(lines) == 1 and str(run / "inference.json") in lines[0] and problem in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("min_size", [10**30, 2**64 + 1])
def test_a_min_size_no_image_can_hold_is_refused(tmp_path, model_file, min_size):
    # It emptied every mask without a word; --min-size has the same bound.
    settings = {**TUNED, "postprocess": ["small"], "min_size": min_size}
    run = _run(tmp_path / "run", model_file, settings)
    with pytest.raises(ConfigError, match=r"min_size must be a whole number from 0 to "
                       r"18446744073709551616 \(2\*\*64\)"):
        load_run(run)


# --------------------------------------------------------------------------- contradictions

@pytest.mark.parametrize("threshold", [0, 1, 0.0, 1.0, 0.99999999, 1e-50])
def test_a_threshold_that_segments_all_or_nothing_is_refused(tmp_path, model_file, threshold):
    # At 0 every pixel with any probability is tumour; at 1 none is (--threshold 0 and 1:
    # test_bad_inputs). 0.99999999 and 1e-50 are 1 and 0 as the float32 of the maps.
    run = _run(tmp_path / "run", model_file, {**TUNED, "threshold": threshold})
    with pytest.raises(ConfigError, match="threshold must be a number between 0 and 1") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json"))


@pytest.mark.parametrize("changes", [{"input_size": 8}, {"channels": 2}, {"flips": ["lr", "ud"]},
                                     {"channels": 2, "channel_names": ["us", "pa"]}])
def test_settings_beside_a_model_that_describe_another_network_are_refused(tmp_path, model_file, changes):
    # The model's own copy (written when it was trained) says input_size 16, one grey
    # channel, flips lr; an inference.json beside it saying otherwise belongs elsewhere.
    run = _run(tmp_path / "run", model_file, {**TUNED, **changes})
    embed_settings(run / "model_best.keras", InferenceSettings.from_dict(TUNED))
    key = next(iter(changes))
    with pytest.raises(ConfigError, match=f"{key} .* differs from .* recorded inside model_best.keras") as caught:
        load_run(run)
    assert str(caught.value).startswith(str(run / "inference.json")) and "\n" not in str(caught.value)
    run.joinpath("inference.json").write_text(json.dumps({**TUNED, "threshold": 0.6, "tta": True}))
    assert load_run(run)[1].threshold == 0.6  # inference choices may differ from the copy's


def test_a_channel_count_the_graph_does_not_take_is_refused(tmp_path, model_file, capsys):
    # No copy inside the model to compare with: the graph itself (one input channel) decides.
    image = tmp_path / "scan.png"
    iio.imwrite(image, np.zeros((24, 20), np.uint8))
    run = _run(tmp_path / "run", model_file, {**TUNED, "channels": 2})
    capsys.readouterr()
    code = main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.splitlines()) == 1, err
    assert f"{run / 'inference.json'}: says channels 2, but model_best.keras takes 1 input channel(s)" in err
    assert not (tmp_path / "out").exists()


def test_ensemble_settings_beside_one_model_are_refused(tmp_path, model_file):
    # A folder with model_best.keras and an inference.json listing members ran the one
    # model and silently dropped the members.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.keras").write_bytes(model_file.read_bytes())
    member = {"path": "a.keras", "flips": ["lr"], "ndim": 2, "input_size": 16}
    run = _run(tmp_path / "run", model_file, {"threshold": 0.3, "postprocess": [], "min_size": 0,
                                              "tta": False, "members": [member]})
    with pytest.raises(ConfigError, match="lists ensemble members, so it is not the settings of the one model"):
        load_run(run)
    (run / "model_best.keras").unlink()
    assert load_run(run)[0] == [run / "a.keras"]  # without the lone model it is the ensemble


# --------------------------------------------------------------------------- unfinished runs

def _unfinished(folder: Path, model_file: Path) -> Path:
    """A run folder as training leaves it mid-way: config.toml and a checkpoint, no settings."""
    folder.mkdir(parents=True)
    (folder / "model_best.keras").write_bytes(model_file.read_bytes())
    (folder / "config.toml").write_text((REPO / "src" / "bcseg" / "configs" / "default.toml").read_text())
    return folder


def test_a_run_still_training_is_refused_and_its_checkpoint_runs_only_by_name(tmp_path, model_file):
    # It ran the mid-training checkpoint with the default threshold, without a word.
    run = _unfinished(tmp_path / "run", model_file)
    with pytest.raises(ModelError, match="its run has not finished: training writes inference.json") as caught:
        load_run(run)
    assert str(caught.value).startswith(f"{run}: ") and "\n" not in str(caught.value)
    with pytest.warns(UserWarning, match="its run has not finished.*its recipe's input size"):
        files, settings = load_run(run / "model_best.keras")
    assert files == [run / "model_best.keras"] and settings.threshold == 0.5
    assert (settings.ndim, settings.input_size, settings.flips) == (2, 128, ("lr",))  # default.toml


def test_a_kfold_run_whose_ensemble_is_not_tuned_is_refused(tmp_path, model_file):
    # Fold 2 of 3 still training: its checkpoint joined the "ensemble" untuned.
    run = tmp_path / "kfold"
    for k in range(2):
        _run(run / f"fold_{k}", model_file, TUNED)
    _unfinished(run / "fold_2", model_file).joinpath("config.toml").rename(run / "config.toml")
    with pytest.raises(ModelError, match="this k-fold run has not finished"):
        load_run(run)
    files, _ = load_run([run / "fold_0", run / "fold_1"])  # the finished folds, by hand
    assert files == [run / "fold_0" / "model_best.keras", run / "fold_1" / "model_best.keras"]


def test_a_model_given_twice_is_refused(tmp_path, model_file):
    run = _run(tmp_path / "run", model_file, TUNED)
    for twice in ([run, run], [run, run / "model_best.keras"], [run, tmp_path / "run" / ".." / "run"]):
        with pytest.raises(ModelError, match="is in the ensemble twice"):
            load_run(twice)


def test_a_fold_still_training_in_a_kfold_run_is_refused(tmp_path, model_file):
    # The recipe sits in the k-fold run's root; the fold holds state.json and a checkpoint.
    run = tmp_path / "kfold"
    _unfinished(run / "fold_2", model_file).joinpath("config.toml").rename(run / "config.toml")
    (run / "fold_2" / "state.json").write_text("{}")
    with pytest.raises(ModelError, match="its run has not finished"):
        load_run(run / "fold_2")


def _recorded(folder: Path, model_file: Path, entries: list[dict]) -> Path:
    """A recorded ensemble: member files with their own settings inside, and a top-level
    inference.json listing ``entries``."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        member = folder / entry["path"]
        member.parent.mkdir(parents=True, exist_ok=True)
        if not member.exists():
            member.write_bytes(model_file.read_bytes())
            embed_settings(member, InferenceSettings.from_dict(TUNED))
    (folder / "inference.json").write_text(json.dumps(
        {"threshold": 0.4, "postprocess": [], "min_size": 0, "tta": False, "members": entries}))
    return folder


MEMBER = {"path": "fold_0/model_best.keras", "flips": ["lr"], "ndim": 2, "input_size": 16}


def test_a_recorded_member_entry_must_describe_the_network_it_names(tmp_path, model_file):
    """Named by its path in the folder: each fold's model is a model_best.keras, and the
    name alone did not say which member's entry was wrong."""
    second = {**MEMBER, "path": "fold_1/model_best.keras"}
    run = _recorded(tmp_path / "cv", model_file, [MEMBER, {**second, "input_size": 96}])
    with pytest.raises(ConfigError, match="input_size 96 differs from 16 recorded inside "
                                          "fold_1/model_best.keras when"):
        load_run(run)
    run = _recorded(tmp_path / "ok", model_file, [MEMBER])
    assert load_run(run)[1].threshold == 0.4


def test_a_member_path_too_long_for_the_file_system_is_refused_naming_the_settings(tmp_path, model_file):
    """It failed as 'OSError: [Errno 36] File name too long' (exit 1, naming no file)."""
    run = _recorded(tmp_path / "cv", model_file, [MEMBER])
    settings = json.loads((run / "inference.json").read_text())
    settings["members"].append({**MEMBER, "path": "fold_0/" + "a" * 300})  # in a folder that is there
    (run / "inference.json").write_text(json.dumps(settings))
    with pytest.raises(ModelError, match=r"member path 'fold_0/a+' cannot name a file \(File name too long\)") \
            as caught:
        load_run(run)
    assert str(caught.value).startswith(f"{run / 'inference.json'}: ")


def _no_file(path: Path, kind: str) -> None:
    """Put a folder, a named pipe or a broken link where a model file was."""
    import os

    path.unlink()
    {"folder": path.mkdir, "named pipe": lambda: os.mkfifo(path),
     "broken link": lambda: path.symlink_to(path.parent / "unmounted" / "model.keras")}[kind]()


@pytest.mark.parametrize("kind, said", [("folder", "is a folder, expected a .keras file"),
                                        ("named pipe", "is a named pipe (FIFO), expected a .keras file"),
                                        ("broken link", "is a broken symbolic link")])
def test_a_runs_model_that_is_no_file_is_named_as_what_it_is(kind, said, tmp_path, model_file):
    """A run's model_best.keras, or an ensemble member, that is a folder, a pipe or a broken
    link (a disk not mounted) was reported as the run holding no model_best.keras at all,
    or as a member "not found", while the name was there to see."""
    run = _run(tmp_path / "run", model_file, TUNED)
    _no_file(run / "model_best.keras", kind)
    with pytest.raises(ModelError) as caught:
        load_run(run)
    assert str(caught.value).startswith(f"{run / 'model_best.keras'}: {said}"), caught.value
    cv = _recorded(tmp_path / "cv", model_file, [MEMBER, {**MEMBER, "path": "fold_1/model_best.keras"}])
    _no_file(cv / "fold_1" / "model_best.keras", kind)
    with pytest.raises(ModelError) as caught:
        load_run(cv)
    assert str(caught.value).startswith(f"{cv / 'fold_1' / 'model_best.keras'}: {said}"), caught.value
    bundle = tmp_path / "bundle"  # a folder of one model and its settings, as the bundled one
    bundle.mkdir()
    (bundle / "busi_unet2d.keras").write_bytes(model_file.read_bytes())
    (bundle / "inference.json").write_text(json.dumps(TUNED), encoding="utf-8")
    _no_file(bundle / "busi_unet2d.keras", kind)
    with pytest.raises(ModelError) as caught:
        load_run(bundle)
    assert str(caught.value).startswith(f"{bundle / 'busi_unet2d.keras'}: {said}"), caught.value


def test_one_model_listed_twice_or_linked_twice_is_refused(tmp_path, model_file):
    twice = _recorded(tmp_path / "listed", model_file, [MEMBER, {**MEMBER, "path": "./fold_0/model_best.keras"}])
    with pytest.raises(ModelError, match="is in the ensemble twice"):
        load_run(twice)
    linked = tmp_path / "linked"
    _run(linked / "fold_0", model_file, TUNED)
    (linked / "fold_1").symlink_to("fold_0")
    with pytest.raises(ModelError, match="is in the ensemble twice"):
        load_run(linked)


def test_a_member_of_a_flat_recorded_ensemble_runs_alone_on_its_own_settings(tmp_path, model_file):
    bundle = _recorded(tmp_path / "bundle", model_file, [{**MEMBER, "path": "a.keras"}, {**MEMBER, "path": "b.keras"}])
    files, settings = load_run(bundle / "a.keras")
    assert files == [bundle / "a.keras"] and settings.threshold == 0.3  # its own, not the ensemble's
    assert load_run([bundle / "a.keras", bundle / "b.keras"])[0] == [bundle / "a.keras", bundle / "b.keras"]


def test_a_damaged_copy_inside_the_model_does_not_block_the_settings_beside_it(tmp_path, model_file):
    run = _run(tmp_path / "run", model_file, TUNED)
    _with_entry(run / "model_best.keras", b"\xff\xfe not UTF-8")
    with pytest.warns(UserWarning, match="cannot be read.*using the inference.json beside it"):
        assert load_run(run)[1].threshold == 0.3


def test_the_onnx_runtime_applies_the_same_rules(tmp_path, model_file):
    # It read whatever inference.json lay beside the .onnx file, or ran on defaults.
    from bcseg.infer.onnx_runtime import load_onnx_run

    unfinished = _unfinished(tmp_path / "training", model_file)
    (unfinished / "model_best.onnx").write_bytes(b"not read here")
    with pytest.raises(ModelError, match="its run has not finished"):
        load_onnx_run(unfinished)
    edited = _run(tmp_path / "edited", model_file, {**TUNED, "input_size": 8})
    embed_settings(edited / "model_best.keras", InferenceSettings.from_dict(TUNED))
    (edited / "model_best.onnx").write_bytes(b"not read here")
    with pytest.raises(ConfigError, match="input_size 8 differs from 16 recorded inside model_best.keras"):
        load_onnx_run(edited)
    (edited / "inference.json").write_text(json.dumps(TUNED))
    assert load_onnx_run(edited) == ([edited / "model_best.onnx"], InferenceSettings.from_dict(TUNED))


def test_a_run_folder_whose_model_is_a_listed_member_is_not_cut_down_to_it(tmp_path, model_file):
    # The folder's inference.json is an ensemble's; only a member named as a file runs alone.
    folder = _recorded(tmp_path / "mixed", model_file,
                       [{**MEMBER, "path": "model_best.keras"}, {**MEMBER, "path": "b.keras"}])
    with pytest.raises(ConfigError, match="lists ensemble members"):
        load_run(folder)
    assert load_run(folder / "model_best.keras")[1].threshold == 0.3


def test_an_unfinished_checkpoint_keeps_its_recipes_normalisation(tmp_path, model_file):
    run = _unfinished(tmp_path / "run", model_file)
    (run / "config.toml").write_text('[data]\nchannels = ["us", "pa"]\n'
                                     'normalisation = { us = "percentile", pa = "uint8" }\n')
    with pytest.warns(UserWarning, match="its run has not finished"):
        settings = load_run(run / "model_best.keras")[1]
    assert settings.channel_names == ("us", "pa")
    assert settings.normalisation == {"us": "percentile", "pa": "uint8"}


def test_a_checkpoint_beside_the_best_model_is_warned_about_its_borrowed_threshold(tmp_path, model_file):
    run = _run(tmp_path / "run", model_file, TUNED)
    (run / "model_last.keras").write_bytes(model_file.read_bytes())  # no copy of its own
    with pytest.warns(UserWarning, match="tuned for model_best.keras, not for this file"):
        load_run(run / "model_last.keras")


def test_onnx_takes_the_copy_of_the_keras_file_it_was_exported_from(tmp_path, model_file):
    from bcseg.infer.onnx_runtime import load_onnx_run

    (tmp_path / "foo.keras").write_bytes(model_file.read_bytes())
    embed_settings(tmp_path / "foo.keras", InferenceSettings.from_dict(TUNED))
    (tmp_path / "foo.onnx").write_bytes(b"not read here")
    assert load_onnx_run(tmp_path / "foo.onnx")[1].threshold == 0.3


def test_a_folder_of_one_model_and_its_settings_is_a_model_and_two_models_are_not_guessed(
        tmp_path, model_file):
    """The bundled default and its held-out twin are folders of one .keras file and its
    inference.json (build_pretrained.py --target); given as --model such a folder was
    refused ("holds no model_best.keras"). Two model files beside one settings file are
    still refused: which one the settings are for cannot be told."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "busi_unet2d.keras").write_bytes(model_file.read_bytes())
    (folder / "inference.json").write_text(json.dumps(TUNED), encoding="utf-8")
    files, settings = load_run(folder)
    assert files == [folder / "busi_unet2d.keras"] and settings.threshold == 0.3
    (folder / "other.keras").write_bytes(model_file.read_bytes())
    with pytest.raises(ModelError, match="holds no model_best.keras"):
        load_run(folder)


def test_a_finished_run_without_its_best_model_is_refused_not_run_as_its_last_checkpoint(
        tmp_path, model_file):
    """A training run folder holds model_last.keras beside the inference.json tuned for
    model_best.keras; with model_best.keras gone it is one .keras file and its settings,
    and was run as its last checkpoint at the best model's threshold, without a word."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_last.keras").write_bytes(model_file.read_bytes())
    (run / "inference.json").write_text(json.dumps(TUNED), encoding="utf-8")
    (run / "config.toml").write_text("", encoding="utf-8")
    # named as what is missing: the model the settings beside it were tuned for (it said the
    # run held "no inference.json listing ensemble members", with one there)
    with pytest.raises(ModelError, match="not found, though .*inference.json holds the settings "
                                         "tuned for it") as caught:
        load_run(run)
    assert str(caught.value).startswith(f"{run / 'model_best.keras'}: ")
    (run / "config.toml").unlink()  # a fold of a k-fold run: its recipe is in the run above
    (run / "fold.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="not found, though"):
        load_run(run)


# --------------------------------------------------------------------------- weights they were tuned for

@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """The same tiny network with other weights: another run of the same recipe."""
    return _tiny_model(tmp_path_factory.mktemp("other") / "other.keras", 1)


def test_a_runs_model_swapped_for_other_weights_is_refused(tmp_path, capsys, model_file, other_model):
    """A run's model_best.keras replaced by another run's (same recipe, so the network and
    its copy of the settings agree) predicted silently with the threshold tuned for the
    old weights: the settings record the digest of the weights they were tuned for."""
    from bcseg import rundir

    run = tmp_path / "run"
    run.mkdir()
    (run / "model_best.keras").write_bytes(model_file.read_bytes())
    rundir.save_run_settings(run, InferenceSettings.from_dict(TUNED))
    assert json.loads((run / "inference.json").read_text())["weights_sha256"] == \
        rundir.weights_digest(run / "model_best.keras")
    assert load_run(run)[1].threshold == 0.3
    other = tmp_path / "other.keras"
    other.write_bytes(other_model.read_bytes())
    embed_settings(other, InferenceSettings.from_dict(TUNED))  # as a model of the recipe holds them
    (run / "model_best.keras").write_bytes(other.read_bytes())
    image = tmp_path / "scan.png"
    iio.imwrite(image, np.zeros((24, 20), np.uint8))
    capsys.readouterr()
    code = main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"), "--no-progress"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 4 and len(lines) == 1, lines
    assert str(run / "model_best.keras") in lines[0] and str(run / "inference.json") in lines[0]
    assert "weights are not those" in lines[0] and not (tmp_path / "out").exists()
    # settings written before the digest was recorded (the bundled model's) keep working
    (run / "inference.json").write_text(json.dumps(TUNED), encoding="utf-8")
    assert load_run(run)[1].threshold == 0.3


def test_an_ensemble_member_swapped_for_other_weights_is_refused(tmp_path, model_file, other_model):
    from bcseg import rundir

    entries = [MEMBER, {**MEMBER, "path": "fold_1/model_best.keras"}]
    run = _recorded(tmp_path / "cv", model_file, entries)
    (run / "fold_1" / "model_best.keras").write_bytes(other_model.read_bytes())
    embed_settings(run / "fold_1" / "model_best.keras", InferenceSettings.from_dict(TUNED))
    rundir.write_settings(run, rundir.with_weights(read_settings(run / "inference.json"), run))
    assert len(load_run(run)[0]) == 2
    (run / "fold_0" / "model_best.keras").write_bytes((run / "fold_1" / "model_best.keras").read_bytes())
    with pytest.raises(ModelError, match="weights are not those") as caught:
        load_run(run)
    assert str(caught.value).startswith(f"{run / 'fold_0' / 'model_best.keras'}: ")
    assert str(run / "inference.json") in str(caught.value)
    bad = json.loads((run / "inference.json").read_text())
    bad["members"][0]["weights_sha256"] = "not a digest"
    (run / "inference.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="weights_sha256 must be the SHA-256"):
        load_run(run)


def test_a_kfold_runs_record_listing_fewer_members_than_its_folds_is_refused(tmp_path, model_file):
    """An inference.json edited to list two of a run's three finished folds predicted
    silently with the two, under a threshold tuned for the three."""
    run = tmp_path / "kfold"
    for k in range(3):
        _run(run / f"fold_{k}", model_file, TUNED)
    (run / "config.toml").write_text((REPO / "src" / "bcseg" / "configs" / "default.toml").read_text())
    entries = [{**MEMBER, "path": f"fold_{k}/model_best.keras"} for k in range(3)]
    _recorded(run, model_file, entries)
    assert len(load_run(run)[0]) == 3
    _recorded(run, model_file, entries[:2])
    with pytest.raises(ModelError, match="does not list the finished fold fold_2/model_best.keras") as caught:
        load_run(run)
    assert str(caught.value).startswith(f"{run / 'inference.json'}: ") and "\n" not in str(caught.value)
    assert len(load_run([run / "fold_0", run / "fold_1"])[0]) == 2  # the subset, named by its folds
