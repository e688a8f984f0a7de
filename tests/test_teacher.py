"""Distillation (``bcseg train --teacher``): the soft targets, checked by hand, and a
real tiny teacher run teaching a real tiny student on the phantom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from bcseg import cli
from bcseg.after_fit import train_and_evaluate
from bcseg.config import load_config
from bcseg.data.phantom import write_phantom
from bcseg.errors import ConfigError
from bcseg.rundir import embed_settings, load_run
from bcseg.learn import pipeline
from bcseg.learn.augment import AugmentConfig
from bcseg.distil import load_teacher, teacher_probabilities
from bcseg.data.dataset import discover

pytestmark = [pytest.mark.filterwarnings("ignore:only 3 groups for 5 folds:UserWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
TINY = {"model": {"base_filters": 4, "depth": 2}, "data": {"size": 32},
        "train": {"epochs": 1, "batch_size": 8, "k": 5}}


def _errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("bcseg: error:")]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher_phantom") / "data"
    write_phantom(root, n=3, shape=(8, 32, 32), seed=5)
    return root


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, phantom) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    train_and_evaluate(phantom, out, overrides=TINY, report=False)
    return out


# --------------------------------------------------------------------------- soft targets by hand

def test_teacher_planes_average_to_the_probability_in_eighths():
    prob = np.array([0, 15, 16, 47, 48, 128, 239, 240, 255], dtype=np.uint8)
    planes = pipeline.teacher_planes(prob)
    assert planes.shape == (8, 9) and planes.dtype == bool
    # the cuts are (k + 1/2) / 8 * 255 = 15.94, 47.81, 79.69, ..., 239.06
    assert planes.sum(axis=0).tolist() == [0, 0, 1, 1, 2, 4, 7, 8, 8]


def test_an_empty_mask_clears_the_teacher_image_by_image_and_slice_by_slice():
    prob = np.full((2, 4, 4), 200, np.uint8)             # the teacher sees tumour everywhere
    truth = np.zeros((1, 2, 4, 4), np.uint8)
    truth[0, 1, 1:3, 1:3] = 1                            # the observer, on slice 1 only
    target = pipeline.with_teacher(truth, prob)
    assert target.shape == (2, 2, 4, 4) and target.dtype == np.uint8
    assert not target[1, 0].any()                        # slice 0: no tumour, no teacher
    assert (target[1, 1] == 200).all()                   # slice 1: the teacher's byte
    levels = pipeline.expand_teacher(target[None], truth_planes=1)[0]
    assert levels.shape == (9, 2, 4, 4) and (levels[0] == truth[0]).all()
    assert levels[1:, 1].sum(axis=0).tolist() == [[6] * 4] * 4  # 200/255 * 8 = 6.27: 6 of 8 planes
    assert not levels[1:, 0].any()
    image = pipeline.with_teacher(np.zeros((1, 4, 4), np.uint8), prob[0])  # a normal image
    assert not image.any()
    lesion = pipeline.with_teacher(truth[:, 1], prob[1])
    assert (lesion[1] == 200).all()


def test_the_epoch_target_is_the_weighted_blend_of_mask_and_teacher():
    # mask 1 on the left half; teacher 0.5 (4 of 8 planes) everywhere the mask is marked
    truth = np.zeros((1, 8, 8), np.uint8)
    truth[0, :, :4] = 1
    prob = np.full((8, 8), 128, np.uint8)                # 128/255 -> 4 of 8 planes
    target = pipeline.with_teacher(truth, prob)
    samples = pipeline._samples(np.zeros((1, 8, 8), np.float32), target[None].astype(np.uint8),
                                ["a"], "observer1", None, {"a": prob}, 0.25)
    assert samples.soft and samples.truth_planes == 1
    assert samples.weights == pytest.approx((0.75,) + (0.25 / 8,) * 8)
    images, targets = pipeline.epoch_arrays(samples, epoch=0, seed=0, n=1, tumour_fraction=0.0)
    for augment in (None, AugmentConfig(rotation_deg=10.0)):
        dataset = pipeline.epoch_dataset(images, targets, batch_size=1, seed=0, epoch=0,
                                         augment=augment, weights=samples.weights)
        _, y = next(iter(dataset))
        y = y.numpy()[0, ..., 0]
        if augment is None:  # 0.75 * 1 + 0.25 * 0.5 on the left, 0.75 * 0 + 0.25 * 0.5 right
            assert np.allclose(y[:, :4], 0.875) and np.allclose(y[:, 4:], 0.125)
        # rotated: every plane is still a binary mask, so the target stays on the grid
        sums = np.round(y * 32, 6)                        # 0.75 = 24/32, 0.25 / 8 = 1/32
        assert np.allclose(sums, np.round(sums)) and y.min() >= 0 and y.max() <= 1


def test_has_tumour_counts_the_observers_not_the_teacher():
    target = np.zeros((2, 2, 4, 4), np.uint8)
    target[0, 0, 1, 1] = 1                               # sample 0: the observer marked it
    target[1, 1, 2, 2] = 255                             # sample 1: only the teacher
    samples = pipeline.Samples(np.zeros((2, 4, 4), np.float32), target, ["a", "b"], soft=True,
                               truth_planes=1, weights=pipeline.plane_weights(1, 0.5))
    assert samples.has_tumour.tolist() == [True, False]


# --------------------------------------------------------------------------- real runs

def test_teacher_probabilities_are_the_teachers_own_in_bytes(teacher_run, phantom):
    cases = discover(phantom)[:1]
    models, settings = load_teacher([str(teacher_run)], None)
    probs = teacher_probabilities(models, settings, cases)
    from bcseg.infer.segment import segment_case
    _, _, _, prob = segment_case(models, cases[0], settings)
    assert probs[cases[0].id].dtype == np.uint8 and probs[cases[0].id].shape == prob.shape
    assert np.abs(probs[cases[0].id] / 255 - prob).max() <= 0.5 / 255 + 1e-6


def test_a_student_trains_on_the_blend_and_records_its_teacher(tmp_path, teacher_run, phantom, capsys):
    out = tmp_path / "student"
    code = cli.main(["train", str(phantom), "--out", str(out), "--config", str(_tiny(tmp_path)),
                     "--teacher", str(teacher_run), "--teacher-weight", "0.7"])
    assert code == 0, capsys.readouterr().err
    cfg = load_config(out / "config.toml")
    assert cfg["train"]["teacher"] == [str(teacher_run.absolute())]
    assert cfg["train"]["teacher_weight"] == 0.7
    assert "distilling: each training target is 0.3 x the mask + 0.7 x the teacher" in (out / "train.log").read_text()
    assert json.loads((out / "inference.json").read_text())["threshold"]  # tuned on the masks
    # the student is an ordinary run: it predicts alone
    assert cli.main(["predict", str(phantom / "images"), "--model", str(out),
                     "--out", str(tmp_path / "pred")]) == 0


def _with_nan_weights(run: Path, target: Path) -> Path:
    """A copy of ``run``'s model whose weights are all NaN, its settings inside."""
    model = keras.saving.load_model(run / "model_best.keras", compile=False)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(target)
    embed_settings(target, load_run(run)[1])
    return target


def _tiny(folder: Path) -> Path:
    path = folder / "tiny.toml"
    path.write_text("[model]\nbase_filters = 4\ndepth = 2\n[data]\nsize = 32\n"
                    "[train]\nepochs = 1\nbatch_size = 8\nk = 5\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- refused before output

@pytest.mark.parametrize("make, named, code", [
    (lambda tmp, run: ["--teacher", str(tmp / "nosuch")], "nosuch", 4),
    (lambda tmp, run: ["--teacher", str(tmp)], None, 4),            # a folder with no model
    (lambda tmp, run: ["--teacher", str(run), "--observer", "random"], "random", 4),
    (lambda tmp, run: ["--teacher", str(run), "--teacher", str(run)], "twice", 4),
    # NaN weights: the teacher gives no probabilities; it was blamed on the first image
    # (exit 3, "specimen_000.tif: the teacher ... cannot segment it")
    (lambda tmp, run: ["--teacher", str(_with_nan_weights(run, tmp / "nan.keras"))], "nan.keras: gives", 4),
])
def test_a_bad_teacher_is_one_error_before_anything_is_written(tmp_path, teacher_run, phantom,
                                                               capsys, make, named, code):
    out = tmp_path / "student"
    got = cli.main(["train", str(phantom), "--out", str(out), "--config", str(_tiny(tmp_path)),
                    *make(tmp_path, teacher_run)])
    [line] = _errors(capsys.readouterr().err)
    assert got == code, line
    assert named is None or named in line
    assert not out.exists()


def test_a_teacher_of_other_channels_is_refused(tmp_path, teacher_run, two_channel_root, capsys):
    out = tmp_path / "student"
    got = cli.main(["train", str(two_channel_root), "--out", str(out), "--config", str(_tiny(tmp_path)),
                    "--teacher", str(teacher_run)])
    [line] = _errors(capsys.readouterr().err)
    assert got == 4 and "channel" in line and str(teacher_run) in line
    assert not out.exists()


@pytest.mark.parametrize("weight", ["0", "1.5", "nan"])
def test_teacher_weight_outside_zero_to_one_is_a_usage_error(weight, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "data", "--out", "run", "--teacher", "t", "--teacher-weight", weight])
    assert stop.value.code == 2 and "teacher-weight" in capsys.readouterr().err


@pytest.mark.parametrize("body, named", [
    ("[train]\nteacher_weight = 0.0\n", "train.teacher_weight"),
    ("[train]\nteacher = [\"\"]\n", "train.teacher"),
    ("[train]\nteacher = [1]\n", "train.teacher"),
])
def test_bad_teacher_settings_in_a_config_are_named(tmp_path, body, named):
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(path)


def test_3d_samples_carry_the_teacher_and_force_patches_onto_the_observers_tumour(phantom):
    cases = discover(phantom)[:2]
    teacher = {}
    for case in cases:
        shape = pipeline.read_case_image(case)[0].shape
        teacher[case.id] = np.full(shape, 255, np.uint8)  # the teacher: tumour everywhere
    samples = pipeline.volume_samples(cases, "union", teacher=teacher)
    assert samples.truth_planes == 1 and all(t.shape[0] == 2 for t in samples.targets)
    for target in samples.targets:  # slices the observers left empty have no teacher either
        marked = target[0].any(axis=(1, 2))
        assert (target[1].any(axis=(1, 2)) == marked).all() and target[1].max() == 255
    images, targets = pipeline.epoch_arrays(samples, epoch=0, seed=0, n=6, tumour_fraction=1.0,
                                            patch_shape=(4, 16, 16))
    assert targets.shape == (6, 4, 16, 16, 9)
    assert all(t[..., 0].any() for t in targets)  # forced onto the observers' tumour


def test_force_never_replaces_the_folder_that_holds_the_teacher(tmp_path, phantom, capsys):
    teacher = tmp_path / "runs" / "teacher"
    train_and_evaluate(phantom, teacher, overrides=TINY, report=False)
    config = _tiny(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (teacher, tmp_path / "runs"):  # the teacher's run, or a folder holding it
        got = cli.main(["train", str(phantom), "--out", str(out), "--config", str(config),
                        "--teacher", str(teacher), "--force"])
        [line] = _errors(capsys.readouterr().err)
        assert got != 0 and "input" in line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_2d_samples_resample_the_teacher_as_a_probability_not_a_mask(phantom):
    cases = discover(phantom)[:1]
    shape = pipeline.read_case_image(cases[0])[0].shape  # (Z, H, W): slices of a stack
    samples = pipeline.slice_samples(cases, "union", size=16, teacher={cases[0].id: np.full(shape, 128, np.uint8)})
    marked = samples.targets[:, 0].any(axis=(1, 2))
    assert samples.targets.shape[1] == 2 and marked.any() and not marked.all()
    inside = samples.targets[marked, 1][:, :8, :8]  # the image's corner, away from the padding
    assert (inside == 128).all()                       # a byte of 128 stays 128, not 0 or 1
    assert not samples.targets[~marked, 1].any()       # tumour-free slices: no teacher


def test_resume_refuses_a_teacher_that_changed_since_the_run_started(tmp_path, teacher_run, phantom, capsys):
    import shutil
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    out = tmp_path / "student"
    args = ["train", str(phantom), "--out", str(out), "--config", str(_tiny(tmp_path)),
            "--teacher", str(teacher)]
    assert cli.main(args) == 0
    recorded = json.loads((out / "teacher.json").read_text())
    assert recorded["models"][0]["file"] == str((teacher / "model_best.keras").absolute())
    assert len(recorded["models"][0]["sha256"]) == 64
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0  # the same teacher: fine (the fold is finished)
    settings = json.loads((teacher / "inference.json").read_text())
    settings["tta"] = not settings["tta"]          # the teacher now segments otherwise
    (teacher / "inference.json").write_text(json.dumps(settings))
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 2
    [line] = _errors(capsys.readouterr().err)
    assert "teacher.json" in line and "changed since the run started" in line
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_teacher_that_saw_the_test_cases_is_named(teacher_run, phantom):
    from bcseg.distil import warn_if_seen
    fold = json.loads((teacher_run / "fold.json").read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_seen([teacher_run / "model_best.keras"], set(fold["test"]))  # held out: quiet
    assert not caught
    with pytest.warns(UserWarning, match=r"the teacher saw 1 of this run's 2 test case\(s\)"):
        warn_if_seen([teacher_run / "model_best.keras"], {fold["train"][0], "unseen"})


def test_a_refused_student_prints_its_error_alone_not_the_teachers_warning(tmp_path, teacher_run,
                                                                         phantom):
    """The leak warning came out (unprefixed, through the logger) before the refusal of
    an --out folder that is not bcseg's: a refused command says one line."""
    fold = json.loads((teacher_run / "fold.json").read_text())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's folder")
    test_fold = next(k for k in range(1, 5) if k != fold["fold"])  # the teacher trained on its cases
    # In a process of its own: pytest's log capture would swallow a logger's line.
    done = subprocess.run([sys.executable, "-c", "from bcseg.cli import main_exit; main_exit()", "train",
                           str(phantom), "--out", str(mine), "--force", "--config", str(_tiny(tmp_path)),
                           "--teacher", str(teacher_run), "--fold", str(test_fold)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 2, done.stderr
    err = done.stderr
    [line] = _errors(err)
    assert err.splitlines() == [line] and "notes.txt" in line
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_relative_teacher_in_a_config_file_is_found_beside_the_file(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "student.toml"
    path.write_text('[train]\nteacher = ["../runs/all", "/abs/run"]\n', encoding="utf-8")
    monkeypatch.chdir("/")
    teacher = load_config(path)["train"]["teacher"]
    assert Path(teacher[0]).resolve() == (tmp_path / "runs" / "all").resolve() and teacher[1] == "/abs/run"


def test_teacher_weight_without_a_teacher_is_refused(tmp_path, phantom, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", str(phantom), "--out", str(out), "--teacher-weight", "0.3"]) == 2
    [line] = _errors(capsys.readouterr().err)
    assert "--teacher-weight needs --teacher" in line and not out.exists()


def test_an_existing_run_is_refused_before_the_teacher_segments_anything(teacher_run, phantom, capsys,
                                                                         monkeypatch):
    from bcseg import distil as teacher

    def segmenting(*args, **kwargs):
        raise AssertionError("the teacher segmented before the cheap refusal")
    monkeypatch.setattr(teacher, "teacher_probabilities", segmenting)
    got = cli.main(["train", str(phantom), "--out", str(teacher_run), "--teacher", str(teacher_run)])
    [line] = _errors(capsys.readouterr().err)
    assert got == 2 and "--force" in line
