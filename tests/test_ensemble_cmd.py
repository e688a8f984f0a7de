"""`bcseg ensemble`: finished runs become one folder that predicts as their tuned mean.

Real tiny models and real phantom stacks; each member is a run folder as `train`
leaves it (model, config.toml, inference.json, fold.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from bcseg import rundir
from bcseg.after_fit import validation_target
from bcseg.cli import main
from bcseg.config import load_config, save_config
from bcseg.data import io
from bcseg.data.cases import read_case_masks
from bcseg.data.content import case_digest
from bcseg.data.dataset import discover
from bcseg.infer.predict import load_model, segment_volume
from bcseg.infer.segment import load_models, segment_case
from bcseg.learn.models import unet
from bcseg.learn.pipeline import training_target
from bcseg.measure.metrics import dice

TINY = {"model": {"base_filters": 2, "depth": 2}, "data": {"size": 16}}


def _run(folder: Path, seed: int, validation: list[str], train: list[str] = (), recipe=TINY,
         threshold: float = 0.5) -> Path:
    """A finished training run folder of member ``seed``: a tiny real model, its
    settings, config.toml and fold.json."""
    folder.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(folder / rundir.MODEL_FILE)
    cfg = load_config(None, {**recipe, "train": {"member_seed": seed}})
    save_config(cfg, folder / rundir.CONFIG_FILE)
    rundir.save_run_settings(folder, rundir.recipe_settings(cfg, 1).replace(threshold=threshold))
    (folder / rundir.FOLD_FILE).write_text(json.dumps(
        {"fold": 0, "train": list(train), "validation": validation, "test": []}), encoding="utf-8")
    return folder


def _recorded_for_its_model(run: Path) -> None:
    """The run's settings as train records them for the model now in it (the digest of its
    weights): a model replaced after the run is otherwise refused for that alone."""
    rundir.write_settings(run, rundir.with_weights(rundir.read_settings(run / rundir.SETTINGS_FILE), run))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _bcseg(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_seed_ensemble_is_tuned_on_the_members_mean_and_predicts_it(tmp_path, phantom_root, capsys):
    cases = discover(phantom_root)
    validation = [cases[0].id, cases[1].id]
    runs = [_run(tmp_path / f"seed{k}", k, validation, threshold=0.3 + 0.4 * k) for k in (0, 1)]
    for run in runs:  # as train records them: the validation files match, so they are tuned on
        fold = json.loads((run / rundir.FOLD_FILE).read_text())
        fold["validation_sha256"] = {c.id: case_digest(c) for c in cases[:2]}
        (run / rundir.FOLD_FILE).write_text(json.dumps(fold))
    out = tmp_path / "ens"
    code, said, err = _bcseg(capsys, "ensemble", phantom_root, "--model", runs[0], "--model", runs[1],
                             "--out", out)
    assert code == 0, err
    assert "mean threshold" not in err  # no untuned mean threshold
    assert f"ensemble of 2 models in {out}" in said and "members alone" in said
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "inference.json", "member_0.keras", "member_1.keras"]
    for k, run in enumerate(runs):  # saved for inference: no optimiser state, its own settings inside
        member = out / f"member_{k}.keras"
        assert member.stat().st_size < (run / rundir.MODEL_FILE).stat().st_size
        assert rundir.model_settings(member, given_as_file=True).threshold == pytest.approx(0.3 + 0.4 * k)

    # What predict then runs is the mean of the members' probabilities ...
    models, settings = load_models(out)
    stack = io.read_image(cases[2].image)[0]
    _, prob = segment_volume(models, stack, settings)
    own = [segment_volume(load_model(r / rundir.MODEL_FILE), stack,
                          rundir.read_settings(r / rundir.SETTINGS_FILE).replace(tta=settings.tta))[1]
           for r in runs]
    assert np.abs(own[0] - own[1]).max() > 1e-3  # the members differ
    np.testing.assert_allclose(prob, np.mean(own, axis=0), atol=1e-6)

    # ... and the validation Dice recorded is the mean Dice of its masks on the two
    # validation stacks, recomputed here through the prediction path.
    target = validation_target(load_config(runs[0] / rundir.CONFIG_FILE))
    scores = []
    for case in cases[:2]:
        _, _, mask, _ = segment_case(models, case, settings, keep_prob=False)
        scores.append(dice(mask, training_target(read_case_masks(case, mask.shape), target, "")))
    assert settings.info["validation_dice"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert settings.info["source_run"] == ", ".join(str(r) for r in runs)

    # Each member's entry records the digest of the weights the threshold was tuned for: a
    # member file swapped for another's is refused, not averaged under this threshold.
    member = out / "member_0.keras"
    member.write_bytes((out / "member_1.keras").read_bytes())
    code, _, err = _bcseg(capsys, "predict", cases[2].image, "--model", out, "--out", tmp_path / "p")
    assert code == 4 and len(err.splitlines()) == 1, err
    assert f"{member}: its weights are not those {out / rundir.SETTINGS_FILE} was tuned for" in err
    assert not (tmp_path / "p").exists()


def test_the_folds_of_a_kfold_run_are_its_members(tmp_path, phantom_root, capsys):
    cases = discover(phantom_root)
    kfold = tmp_path / "kfold"
    for k in (0, 1):
        _run(kfold / f"fold_{k}", k, [cases[k].id], train=[cases[1 - k].id])
    code, said, err = _bcseg(capsys, "ensemble", phantom_root, "--model", kfold, "--out", tmp_path / "ens")
    assert code == 0, err
    assert "ensemble of 2 models" in said
    assert "2 validation cases (their pooled out-of-fold predictions)" in said


def test_a_split_saved_with_a_byte_order_mark_is_read_when_tuning_too(tmp_path, phantom_root, capsys):
    """fold.json with a byte-order mark (edited in Notepad) passed the members' check,
    which reads JSON as bcseg does, and then crashed the tuning, which parsed it again
    with json.loads: "JSONDecodeError: Unexpected UTF-8 BOM", exit 1."""
    cases = discover(phantom_root)
    runs = [_run(tmp_path / f"s{k}", k, [cases[0].id]) for k in (0, 1)]
    fold = runs[1] / rundir.FOLD_FILE
    fold.write_text("\ufeff" + fold.read_text(encoding="utf-8"), encoding="utf-8")
    code, said, err = _bcseg(capsys, "ensemble", phantom_root, "--model", runs[0], "--model", runs[1],
                             "--out", tmp_path / "ens")
    assert code == 0, err
    assert "ensemble of 2 models" in said


def test_a_member_giving_no_probabilities_is_named(tmp_path, phantom_root, capsys):
    """A member whose weights hold NaN (a run that diverged) is refused by the check that
    its output lies in 0 to 1; tuning met it in segment_case, which names no file, and
    the line said "gives values from nan to nan" without saying which model."""
    cases = discover(phantom_root)
    runs = [_run(tmp_path / f"s{k}", k, [cases[0].id]) for k in (0, 1)]
    model_file = runs[1] / rundir.MODEL_FILE
    model = keras.saving.load_model(model_file)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(model_file)
    _recorded_for_its_model(runs[1])  # a run that diverged as it trained
    code, _, err = _bcseg(capsys, "ensemble", phantom_root, "--model", runs[0], "--model", runs[1],
                          "--out", tmp_path / "ens")
    lines = err.splitlines()
    assert code == 4 and len(lines) == 1, err
    assert lines[0].startswith(f"bcseg: error: {model_file}: gives values from nan"), lines[0]
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize("problem", ["one run", "model file", "twice", "not in data", "no split",
                                     "split not lists", "split without train", "unfinished k-fold",
                                     "other observer", "other channels", "an ensemble",
                                     "fold beside its run", "out is a run",
                                     "out holds yours", "out is a link", "member file in out",
                                     "network unlike settings", "validation twice",
                                     "observer mask missing", "unknown observer", "a copy of a run",
                                     "empty config", "other images, same ids", "split nested too deeply",
                                     "digests not of its validation cases", "model a broken link"])
def test_bad_members_or_outputs_are_one_line_and_leave_nothing(problem, tmp_path, phantom_root, capsys):
    cases = discover(phantom_root)
    a = _run(tmp_path / "a", 0, [cases[0].id])
    b = _run(tmp_path / "b", 1, [cases[0].id])
    out = tmp_path / "ens"
    models = [a, b]
    expect = {"one run": (2, "an ensemble needs two models or more"),
              "model file": (4, "a/model_best.keras: is not a training run folder"),
              "twice": (4, "is in the ensemble twice"),
              "not in data": (3, "b/fold.json: validation case 'nobody' is not in"),
              "no split": (4, "b: has no fold.json or inference.json"),
              "other channels": (4, "b: takes 2D input of us, pa, but"),
              "out is a run": (2, "contains the input"),
              "split not lists": (4, "b/fold.json: is not a run's split: 'validation' must be a list"),
              "split without train": (4, "b/fold.json: is not a run's split: 'train' must be a list"),
              "unfinished k-fold": (4, "kfold: this k-fold run has not finished"),
              "other observer": (4, "b: was trained against 'observer2'"),
              "an ensemble": (4, "ens1: is an ensemble already"),
              "fold beside its run": (4, "fold_0: is in the ensemble twice: "),
              "out holds yours": (2, "notes.txt: was not written by bcseg"),
              "out is a link": (2, "ens: is a link to"),
              "member file in out": (2, "ens: contains the input"),
              "network unlike settings": (4, "b/model_best.keras: is a 3D model but its settings say ndim 2"),
              "validation twice": (4, "b/fold.json: lists validation case"),
              "observer mask missing": (3, "has no mask from observer(s) observer2"),
              "unknown observer": (4, "a/config.toml: 'data.observer': unknown observer 'observer3'"),
              "a copy of a run": (4, "c/model_best.keras: is a copy of"),
              "empty config": (4, "b/config.toml: is empty"),
              "other images, same ids": (3, "is not the one"),
              "split nested too deeply": (4, "b/fold.json: cannot be read as a run's split"),
              "model a broken link": (4, "b/model_best.keras: is a broken symbolic link"),
              "digests not of its validation cases": (
                  4, f"b/fold.json: 'validation_sha256' does not hold the digests of exactly its "
                     f"validation cases (not so for {cases[0].id!r})")}[problem]
    data = phantom_root
    if problem == "one run":
        models = [a]
    elif problem == "model file":
        models = [a / rundir.MODEL_FILE, b]
    elif problem == "twice":
        models = [a, a]
    elif problem == "not in data":
        (b / rundir.FOLD_FILE).write_text(json.dumps({"train": [], "validation": ["nobody"]}))
    elif problem == "no split":
        (b / rundir.FOLD_FILE).unlink()
    elif problem == "split not lists":
        (b / rundir.FOLD_FILE).write_text(json.dumps({"train": [], "validation": 5}))
    elif problem == "split nested too deeply":  # was RecursionError, exit 1
        (b / rundir.FOLD_FILE).write_text("[" * 100_000 + "]" * 100_000)
    elif problem == "split without train":
        (b / rundir.FOLD_FILE).write_text(json.dumps({"validation": [cases[0].id]}))
    elif problem == "unfinished k-fold":  # fold 1 of 2 is not trained yet
        kfold = tmp_path / "kfold"
        _run(kfold / "fold_0", 0, [cases[0].id])
        (kfold / "fold_0" / rundir.CONFIG_FILE).rename(kfold / rundir.CONFIG_FILE)
        models = [kfold, b]
    elif problem == "other observer":
        save_config(load_config(None, {**TINY, "data": {**TINY["data"], "observer": "observer2"}}),
                    b / rundir.CONFIG_FILE)
    elif problem == "other channels":
        (b / rundir.MODEL_FILE).unlink()
        unet(ndim=2, in_channels=2, base_filters=2, depth=2, norm=None).save(b / rundir.MODEL_FILE)
        settings = rundir.read_settings(b / rundir.SETTINGS_FILE)
        rundir.save_run_settings(b, settings.replace(channels=2, channel_names=("us", "pa")))
    elif problem == "an ensemble":
        (tmp_path / "ens1").mkdir()
        rundir.write_settings(tmp_path / "ens1", rundir.read_settings(a / rundir.SETTINGS_FILE).replace(
            members=(rundir.member_settings("member_0.keras", rundir.read_settings(a / rundir.SETTINGS_FILE)),)))
        models = [tmp_path / "ens1", b]
    elif problem == "fold beside its run":
        kfold = tmp_path / "kfold"
        for k in (0, 1):
            _run(kfold / f"fold_{k}", k, [cases[k].id])
        models = [kfold, kfold / "fold_0"]
    elif problem == "out is a run":
        out = a
    elif problem == "out holds yours":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif problem == "out is a link":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "old.txt").write_text("what --force would replace")
        out.symlink_to(tmp_path / "elsewhere")
    elif problem == "member file in out":  # c's model is a link to a member of the ensemble
        assert _bcseg(capsys, "ensemble", phantom_root, "--model", a, "--model", b, "--out", out)[0] == 0
        c = _run(tmp_path / "c", 2, [cases[0].id])
        (c / rundir.MODEL_FILE).unlink()
        (c / rundir.MODEL_FILE).symlink_to(out / "member_0.keras")
        models = [c, b]
    elif problem == "network unlike settings":  # a 3D network where the settings say 2D
        (b / rundir.MODEL_FILE).unlink()
        unet(ndim=3, base_filters=2, depth=2, norm=None).save(b / rundir.MODEL_FILE)
        _recorded_for_its_model(b)
    elif problem == "validation twice":
        (b / rundir.FOLD_FILE).write_text(json.dumps({"train": [], "validation": [cases[0].id] * 2}))
    elif problem == "observer mask missing":  # the union needs both observers' masks
        import shutil
        data = tmp_path / "data"
        shutil.copytree(phantom_root, data)
        (data / "masks" / "observer2" / cases[0].image.name).unlink()
        for run in (a, b):
            save_config(load_config(None, {**TINY, "data": {**TINY["data"], "observer": "union"}}),
                        run / rundir.CONFIG_FILE)
    elif problem == "unknown observer":
        for run in (a, b):
            save_config(load_config(None, {**TINY, "data": {**TINY["data"], "observer": "observer3"}}),
                        run / rundir.CONFIG_FILE)
    elif problem == "a copy of a run":
        import shutil
        shutil.copytree(a, tmp_path / "c")
        models = [a, tmp_path / "c"]
    elif problem == "empty config":
        (b / rundir.CONFIG_FILE).write_text("")
    elif problem == "other images, same ids":  # b recorded its validation files; data is another
        import shutil
        fold = json.loads((b / rundir.FOLD_FILE).read_text())
        fold["validation_sha256"] = {cases[0].id: case_digest(cases[0])}
        (b / rundir.FOLD_FILE).write_text(json.dumps(fold))
        data = tmp_path / "data"
        shutil.copytree(phantom_root, data)
        image = data / "images" / cases[0].image.name
        io.write_image(image, io.read_image(image)[0][::-1].copy(), None)  # the same id, other pixels
    elif problem == "model a broken link":  # was "holds no model_best.keras and no fold_K folders"
        (b / rundir.MODEL_FILE).unlink()
        (b / rundir.MODEL_FILE).symlink_to(tmp_path / "unmounted" / "model.keras")
    elif problem == "digests not of its validation cases":  # was taken on trust, as an older run
        fold = json.loads((b / rundir.FOLD_FILE).read_text())
        (b / rundir.FOLD_FILE).write_text(json.dumps({**fold, "validation_sha256": {}}))
    before = _hashes(tmp_path)
    argv = ["ensemble", data, "--out", out, "--force"]
    for model in models:
        argv += ["--model", model]
    code, said, err = _bcseg(capsys, *argv)
    assert code == expect[0], err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect[1] in lines[0], err
    assert "tuned" not in said  # refused before the members are loaded and tuned
    assert _hashes(tmp_path) == before
    if problem not in ("out is a run", "out holds yours", "out is a link", "member file in out"):
        assert not out.exists()


def test_an_existing_ensemble_is_replaced_only_with_force(tmp_path, phantom_root, capsys):
    cases = discover(phantom_root)
    runs = [_run(tmp_path / f"s{k}", k, [cases[0].id]) for k in (0, 1)]
    argv = ["ensemble", phantom_root, "--model", runs[0], "--model", runs[1], "--out", tmp_path / "ens"]
    assert _bcseg(capsys, *argv)[0] == 0
    code, _, err = _bcseg(capsys, *argv)
    assert code == 2 and "already holds an ensemble; pass --force" in err
    assert _bcseg(capsys, *argv, "--force")[0] == 0


def test_a_refusal_is_one_line_on_stderr_in_a_fresh_interpreter(tmp_path, phantom_root):
    """TensorFlow writes its start-up banners straight to the stderr descriptor, which
    capsys does not see; the command line keeps them quiet for ensemble as for predict."""
    import os
    import subprocess
    import sys

    a = _run(tmp_path / "a", 0, ["nobody"])
    b = _run(tmp_path / "b", 1, ["nobody"])
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-m", "bcseg.cli", "ensemble", str(phantom_root), "--model",
                             str(a), "--model", str(b), "--out", str(tmp_path / "ens")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"bcseg: error: {a / rundir.FOLD_FILE}: validation case 'nobody' is not in {phantom_root}; "
        "give the dataset the run was trained on"]


@pytest.mark.parametrize("appears", ["your file", "another ensemble"])
def test_what_appears_in_out_while_the_members_are_checked_is_not_overwritten(
        appears, tmp_path, phantom_root, capsys, monkeypatch):
    """The folder is judged free first and claimed later: whatever another run or the
    user put there meanwhile is refused under the claim's lock, not written over."""
    import bcseg.ensemble as ensemble

    cases = discover(phantom_root)
    runs = [_run(tmp_path / f"s{k}", k, [cases[0].id]) for k in (0, 1)]
    other = tmp_path / "other"
    assert _bcseg(capsys, "ensemble", phantom_root, "--model", runs[0], "--model", runs[1],
                  "--out", other)[0] == 0
    out = tmp_path / "ens"
    validation_cases = ensemble._validation_cases

    def meanwhile(members, data):
        found = validation_cases(members, data)
        if appears == "your file":
            out.mkdir()
            (out / "inference.json").write_text("my hand-tuned settings")
        else:  # a second `bcseg ensemble` finished there
            import shutil
            shutil.copytree(other, out)
        return found

    monkeypatch.setattr(ensemble, "_validation_cases", meanwhile)
    code, said, err = _bcseg(capsys, "ensemble", phantom_root, "--model", runs[0], "--model", runs[1],
                             "--out", out)
    assert code == 2, err
    expected = "inference.json: was not written by bcseg" if appears == "your file" else \
        "already holds an ensemble; pass --force"
    assert expected in err and "tuned" not in said
    if appears == "your file":
        assert (out / "inference.json").read_text() == "my hand-tuned settings"
    else:
        assert _hashes(out) == _hashes(other)


def test_an_interrupted_ensemble_leaves_no_part_of_one(tmp_path, phantom_root, capsys, monkeypatch):
    """Ctrl-C or SIGTERM while the members are written: the folder it created is gone,
    rather than left holding one member under a record that calls it finished."""
    import bcseg.ensemble as ensemble

    cases = discover(phantom_root)
    runs = [_run(tmp_path / f"s{k}", k, [cases[0].id]) for k in (0, 1)]
    save_member = ensemble._save_member
    saved = []

    def interrupted(source, path):
        if saved:
            raise KeyboardInterrupt
        save_member(source, path)
        saved.append(path)

    monkeypatch.setattr(ensemble, "_save_member", interrupted)
    out = tmp_path / "new" / "ens"
    code, _, err = _bcseg(capsys, "ensemble", phantom_root, "--model", runs[0], "--model", runs[1],
                          "--out", out)
    assert code == 130 and saved == [out / "member_0.keras"]
    assert not (tmp_path / "new").exists()


def test_a_killed_runs_unfinished_ensemble_is_named_so_and_force_replaces_it(tmp_path, phantom_root, capsys):
    cases = discover(phantom_root)
    runs = [_run(tmp_path / f"s{k}", k, [cases[0].id]) for k in (0, 1)]
    out = tmp_path / "ens"
    out.mkdir()  # what a SIGKILL after the first member leaves: it, and the open record
    (out / "member_0.keras").write_bytes((runs[0] / rundir.MODEL_FILE).read_bytes())
    (out / ".bcseg-outputs.json").write_text(json.dumps({"files": {}, "open": {
        "pid": 99999, "token": "x", "command": "ensemble", "foreign": [], "edited": []}}))
    argv = ["ensemble", phantom_root, "--model", runs[0], "--model", runs[1], "--out", out]
    code, _, err = _bcseg(capsys, *argv)
    assert code == 2
    assert "holds the unfinished output of a 'bcseg ensemble' run that was killed (process 99999); " \
           "pass --force to replace it" in err
    assert _bcseg(capsys, *argv, "--force")[0] == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "inference.json", "member_0.keras", "member_1.keras"]
