"""Output safety (issue 12): no command destroys a user's files, and faults end cleanly.

Every data-loss case hashes every file under the test's folder before and after and
asserts that each one survives byte for byte. The commands run through the real
command line (``bcseg.cli.main``, or a fresh interpreter where a signal, a lock held
by another process or a file size limit is needed), on real files and tiny real models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

from bcseg.data import io
from bcseg import journal, outputs
from bcseg.atomic import PARTIAL_MARK, atomic_path, partial_name, partial_pid, write_text
from bcseg.cli import main
from bcseg.errors import DataError, UsageError
from bcseg.learn.models import unet
from bcseg.data.phantom import write_phantom
from bcseg.rundir import InferenceSettings, embed_settings, write_settings

pytestmark = [pytest.mark.filterwarnings("ignore:only 3 groups for 5 folds:UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
RNG = np.random.default_rng(12)


# --------------------------------------------------------------------------- helpers

def hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, hidden ones too."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_survives(before: dict[str, str], root: Path, changed: tuple[str, ...] = ()) -> None:
    """Every file hashed in ``before`` is still there with the same bytes."""
    after = hashes(root)
    lost = sorted(k for k in before if k not in changed and after.get(k) != before[k])
    assert not lost, f"destroyed or changed: {lost}"


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bcseg: error: "), err
    return lines[0]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def cli(*args, limit_bytes: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``bcseg ARGS`` in a fresh interpreter, optionally with a file size limit (RLIMIT_FSIZE)."""
    def limit():  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-m", "bcseg.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(),
                          preexec_fn=limit if limit_bytes else None)


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bcseg.cli", *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before the test could stop it: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.01)


def partials(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{PARTIAL_MARK}*"))


def stacks(folder: Path, n: int, shape=(4, 32, 40), spacing=(0.5, 0.2, 0.2)) -> Path:
    for i in range(n):
        io.write_image(folder / f"s{i}.tif", RNG.integers(0, 256, shape, dtype=np.uint8), spacing)
    return folder


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny 2D U-Net, and a model with a Lambda layer (code: refused by safe loading)."""
    folder = tmp_path_factory.mktemp("safety_models")
    keras.utils.set_random_seed(0)
    paths = {"2d": folder / "unet2d.keras", "lambda": folder / "lambda.keras"}
    unet(ndim=2, base_filters=4, depth=2).save(paths["2d"])
    embed_settings(paths["2d"], InferenceSettings())  # as a trained model carries them
    inputs = keras.Input((None, None, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs)).save(paths["lambda"])
    return paths


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety_phantom") / "data"
    write_phantom(root, n=3, shape=(8, 32, 32), seed=1)
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, models) -> Path:
    """A run folder as bcseg train leaves it, written inside a claim as train does (a real
    one-epoch run costs minutes on a shared CPU); tests copy it, never change it."""
    out = tmp_path_factory.mktemp("safety_run") / "run"
    with outputs.claim(out, "train"):
        write_text(out / "config.toml", "[train]\nepochs = 1\n")
        write_text(out / "inference.json", '{"threshold": 0.5}\n')
        write_text(out / "predictions" / "notes.csv", "id\n")
        write_text(out / "metrics.csv", "case,dice\n")  # train scores its test fold here
        with atomic_path(out / "model_best.keras") as tmp:  # as train saves it
            tmp.write_bytes(models["2d"].read_bytes())
    return out


def _copy_tree(source: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(source, dest)
    return dest


# --------------------------------------------------------------------------- data loss 1-2: train --force

def test_train_force_never_deletes_a_project_holding_the_data(tmp_path, capsys):
    """Issue 12, data loss 1: a project folder with config.toml, notes and the study."""
    proj = tmp_path / "proj"
    write_phantom(proj / "study", n=3, shape=(8, 24, 24))
    (proj / "config.toml").write_text("[train]\nepochs = 2\n")
    (proj / "notes").mkdir()
    (proj / "notes" / "precious.txt").write_text("months of annotation notes")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", proj / "study", "--out", proj, "--force",
                       "--init", tmp_path / "does_not_exist.keras")
    assert code == 4 and "does_not_exist.keras" in one_line(err)
    assert_survives(before, tmp_path)
    assert hashes(tmp_path) == before  # nothing added either
    code, _, err = run(capsys, "train", proj / "study", "--out", proj, "--force")
    assert code == 2 and str(proj) in one_line(err)
    assert hashes(tmp_path) == before


def test_train_force_validates_before_touching_a_finished_run(tmp_path, capsys, phantom, finished_run):
    """Issue 12, data loss 2: --force, then a typo: the finished run stays as it was."""
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--force",
                       "--init", tmp_path / "typo.keras")
    assert code == 4 and "typo.keras" in one_line(err)
    assert hashes(tmp_path) == before
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--force", "--observer", "nobody")
    assert code == 2 and "nobody" in one_line(err)
    assert hashes(tmp_path) == before


def test_init_given_a_run_folder_says_it_is_a_folder_and_names_the_model_inside(tmp_path, capsys,
                                                                                  phantom, finished_run):
    """--init takes a .keras file; a run folder read "initial model not found" while
    the folder was there to see."""
    code, _, err = run(capsys, "train", phantom, "--out", tmp_path / "new", "--init", finished_run)
    line = one_line(err)
    assert code == 4 and f"{finished_run}: is a folder; --init takes a .keras file, e.g. " in line, line
    assert str(finished_run / "model_best.keras") in line and not (tmp_path / "new").exists()
    os.mkfifo(tmp_path / "pipe.keras")  # nor a pipe, which is no model either (never opened)
    code, _, err = run(capsys, "train", phantom, "--out", tmp_path / "new", "--init", tmp_path / "pipe.keras")
    assert code == 4 and "pipe.keras: is a named pipe (FIFO), expected a .keras file" in one_line(err)


def test_train_force_refuses_a_run_holding_a_file_bcseg_did_not_write(tmp_path, capsys, phantom,
                                                                      finished_run):
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    (run_dir / "my_analysis.ipynb").write_text("{}")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--force")
    assert code == 2 and "my_analysis.ipynb: was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before


def _run_with_maps(run_dir: Path, phantom: Path) -> Path:
    """An earlier training run holding its test folds' probability maps of the phantom."""
    with outputs.claim(run_dir, "train"):
        write_text(run_dir / "config.toml", "[train]\nepochs = 1\n")
        for i in range(3):
            io.write_probability(run_dir / "predictions" / f"specimen_00{i}_prob.tif",
                                 RNG.random((8, 32, 32), np.float32), io.read_image(
                                     phantom / "images" / f"specimen_00{i}.tif")[1])
    return run_dir


def _cascade_manifest(path: Path, phantom: Path, run_dir: Path) -> Path:
    """A manifest taking each case's PA channel from the maps in ``run_dir``/predictions."""
    path.write_text("id,image_us,image_pa,mask_observer1,group\n" + "".join(
        f"s{i},{phantom}/images/specimen_00{i}.tif,{run_dir}/predictions/specimen_00{i}_prob.tif,"
        f"{phantom}/masks/observer1/specimen_00{i}.tif,g{i}\n" for i in range(3)))
    return path


def test_train_force_never_replaces_a_run_holding_a_later_channel_of_the_data(tmp_path, capsys, phantom):
    """A manifest may take a case's second channel from an earlier run's probability
    maps (a cascade). Only each case's first channel and masks were counted as inputs,
    so train --force moved that run aside and then failed reading the channel (exit 1,
    a FileNotFoundError), instead of refusing it before touching the run."""
    run_dir = _run_with_maps(tmp_path / "run", phantom)
    manifest = _cascade_manifest(tmp_path / "cascade.csv", phantom, run_dir)
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", manifest, "--out", run_dir, "--force", "--epochs", "1")
    assert code == 2 and f"{run_dir}: contains the input" in one_line(err)
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM in epoch 1"])
def test_train_force_interrupted_before_an_epoch_is_saved_puts_the_old_run_back(
        stop, tmp_path, capsys, monkeypatch, phantom, finished_run):
    """Red team 16: Ctrl-C early in train --force (caching the data, the first epoch:
    minutes on real data) kept the new run, which held no epoch to resume, and deleted
    the finished one."""
    from bcseg.learn import train

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt if stop == "Ctrl-C" else train.Interrupted("stopped during epoch 1", 0)

    monkeypatch.setattr(train, "fit", stopped)
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--force", "--epochs", "1")
    assert code == 130
    assert hashes(tmp_path) == before  # the old run, as it was, and nothing beside it
    if stop != "Ctrl-C":  # a Ctrl-C outside the epoch loop is "interrupted" alone
        assert err.count("\n") == 1 and "is as it was before this run" in err and "--resume" not in err


def test_train_force_interrupted_after_a_saved_epoch_keeps_the_new_run(
        tmp_path, capsys, monkeypatch, phantom, finished_run):
    """The other side of the rule: once an epoch is saved, --resume continues the new run."""
    from bcseg.learn import train

    def one_epoch_then_stopped(model, cfg, train_samples, val, out, state, plot=None):
        write_text(out / "state.json", '{"epoch": 1}\n')
        raise train.Interrupted("stopped after epoch 1", 1)

    monkeypatch.setattr(train, "fit", one_epoch_then_stopped)
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--force", "--epochs", "1")
    assert code == 130 and "--resume" in err
    assert (run_dir / "state.json").is_file() and not (run_dir / "model_best.keras").exists()


def test_a_k_fold_train_force_stopped_in_a_later_fold_says_to_resume(
        tmp_path, capsys, monkeypatch, phantom, finished_run):
    """Red team 17: stopped in fold 1's first epoch, with fold 0 saved, the new run was
    kept (rightly) but the message said the folder held the earlier run, and offered no
    --resume."""
    from bcseg.learn import train

    def fold_0_saved_then_stopped(model, cfg, train_samples, val, out, state, plot=None):
        write_text(out / "state.json", '{"epoch": 1}\n')  # as fold 0 leaves it
        raise train.Interrupted("stopped during epoch 1 of the next fold", 0)

    monkeypatch.setattr(train, "fit", fold_0_saved_then_stopped)
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--force", "--epochs", "1",
                       "--folds", "all")
    assert code == 130 and "--resume" in err and "as it was before" not in err, err
    assert not (run_dir / "model_best.keras").exists()  # the new run, kept for --resume


def test_train_init_with_an_unsafe_model_leaves_no_run_folder(tmp_path, capsys, phantom, models):
    out = tmp_path / "new" / "run"
    code, _, err = run(capsys, "train", phantom, "--out", out, "--init", models["lambda"])
    assert code == 4 and "lambda.keras" in one_line(err)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- --force and another command's result

def test_force_never_replaces_a_dataset_that_phantom_wrote(tmp_path, capsys, phantom):
    """Every file of a phantom dataset is bcseg's, so a mistyped --out with --force
    deleted the whole dataset (train) or its table (split). --force replaces an earlier
    result of the same command only."""
    data = tmp_path / "data"
    write_phantom(data, n=3, shape=(8, 24, 24), seed=2)
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", phantom, "--out", data, "--force", "--epochs", "1")
    assert code == 2 and "holds the output of 'bcseg phantom'" in one_line(err)
    code, _, err = run(capsys, "split", phantom, "--out", data / "specimens.csv", "--force")
    assert code == 2 and "is data that 'bcseg phantom' wrote" in one_line(err)
    code, _, err = run(capsys, "split", data, "--out", data / "masks" / "observer1" / "specimen_001.tif",
                       "--force")
    # the output folder's checks come first, and the folder is one of the dataset's
    assert code == 2 and "observer1: is a folder of the dataset" in one_line(err), err
    assert hashes(tmp_path) == before
    code, _, _ = run(capsys, "phantom", data, "--n", "2", "--shape", "8", "24", "24", "--force")
    assert code == 0 and len(list((data / "images").iterdir())) == 2  # its own command may


def test_phantom_force_never_replaces_a_trained_run(tmp_path, capsys, finished_run):
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "phantom", run_dir, "--n", "2", "--shape", "8", "24", "24", "--force")
    assert code == 2 and "holds the output of 'bcseg train'" in one_line(err)
    assert hashes(tmp_path) == before


def test_force_replaces_no_file_that_another_command_wrote(tmp_path, capsys, phantom, finished_run):
    """split --out RUN/model_best.keras --force put a splits JSON over the trained model;
    evaluate --out RUN --force rewrote the run's test-fold metrics with other numbers."""
    run_dir = _copy_tree(finished_run, tmp_path / "run")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "split", phantom, "--out", run_dir / "model_best.keras", "--force")
    assert code == 2 and "is the output of 'bcseg train'" in one_line(err)
    code, _, err = run(capsys, "evaluate", "--pred", phantom / "masks" / "observer1", "--truth", phantom,
                       "--out", run_dir, "--force", "--no-report")
    assert code == 2 and "metrics.csv: is the output of 'bcseg train'" in one_line(err)
    assert hashes(tmp_path) == before


def test_predict_never_replaces_or_removes_its_own_inputs(tmp_path, capsys, models):
    """An earlier run's probability map given as an input was deleted as a stale
    companion before it was read (and --save-prob would overwrite it)."""
    data = stacks(tmp_path / "data", 1)
    out = tmp_path / "out"
    code, _, err = run(capsys, "predict", data / "s0.tif", "--model", models["2d"], "--out", out,
                       "--save-prob", "--no-progress")
    assert code == 0, err
    before = hashes(tmp_path)
    for extra in ((), ("--save-prob",)):
        code, _, err = run(capsys, "predict", data / "s0.tif", out / "s0_prob.tif", "--model", models["2d"],
                           "--out", out, "--force", "--no-progress", *extra)
        assert code == 2 and "s0_prob.tif: is an input of this command" in one_line(err)
        assert hashes(tmp_path) == before


def test_resume_never_writes_over_files_bcseg_did_not_write(tmp_path, capsys, phantom):
    """`train --out exp` said "already holds a run; pass --resume" for a folder holding
    the user's config.toml and plot, and --resume then overwrote the plot."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.toml").write_text("[model]\nbase_filters = 4\ndepth = 2\n[train]\nepochs = 1\n")
    (exp / "loss.png").write_bytes(b"my own plot")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", phantom, "--out", exp, "--resume")
    assert code == 2 and "was not written by bcseg" in one_line(err) and "resume" in one_line(err)
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- replacing a folder

def test_a_failed_replacement_puts_the_old_result_back(tmp_path):
    """--force writes the new result beside the old; a failure leaves the old intact."""
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
        write_text(folder / "sub" / "b.csv", "old\n")
    before = hashes(tmp_path)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with outputs.claim(folder, "test", replace=True):
            assert not (folder / "a.csv").exists()  # the old one is aside
            write_text(folder / "a.csv", "new, half written\n")
            raise RuntimeError("disk on fire")
    assert hashes(tmp_path) == before
    with outputs.claim(folder, "test", replace=True):
        write_text(folder / "c.csv", "new\n")
    assert sorted(outputs.listing(folder)) == ["c.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # no aside, no lock left


KILLED_REPLACEMENT = """
import sys, time
from pathlib import Path
from bcseg import journal, outputs
from bcseg.atomic import write_text

folder, moment = Path(sys.argv[1]), sys.argv[2]
real_delete = outputs.delete_judged

def delete_judged(path, *args, **kwargs):  # stop just before the old or the new content is deleted
    if (moment == "removing the old" and outputs.ASIDE_MARK in Path(path).name
            or moment == "putting the old back" and Path(path) == folder):
        print("now", flush=True)
        time.sleep(120)
    return real_delete(path, *args, **kwargs)

outputs.delete_judged = delete_judged
with outputs.claim(folder, "test", replace=True):
    write_text(folder / "new.csv", "new\\n")
    if moment == "writing the new":
        print("now", flush=True)
        time.sleep(120)
    if moment == "putting the old back":
        raise RuntimeError("the new run fails")
"""


@pytest.mark.parametrize("by", ["folder", "parent"])
@pytest.mark.parametrize("moment, finished", [("writing the new", False),
                                              ("putting the old back", False),
                                              ("removing the old", True)])
def test_the_next_claim_settles_what_a_killed_replacement_left(moment, finished, by, tmp_path):
    """SIGKILL during a forced replacement leaves ``.NAME.bcseg-old-PID``; the next claim of the
    folder (or of the one holding it) puts the old content back when the new one was not
    complete, and deletes the leftover when it was."""
    folder = tmp_path / "out" / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
        write_text(folder / "sub" / "b.csv", "old\n")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    old = {k: v for k, v in hashes(tmp_path).items() if not k.endswith(outputs.RECORD)}
    process = subprocess.Popen([sys.executable, "-c", KILLED_REPLACEMENT, str(folder), moment],
                               stdout=subprocess.PIPE, text=True, env=subprocess_env())
    assert process.stdout.readline() == "now\n"
    process.send_signal(signal.SIGKILL)
    process.wait()
    leftover = folder.with_name(f".result{outputs.ASIDE_MARK}{process.pid}")
    assert leftover.is_dir()  # the state a kill leaves
    with outputs.claim(folder if by == "folder" else folder.parent, "test"):
        pass
    assert not leftover.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != outputs.RECORD) == [
        "notes.txt", "result"]  # no leftover, no lock
    if finished:
        assert outputs.listing(folder) == {"new.csv"} and outputs.owned(folder) == {"new.csv"}
    else:
        assert {k: v for k, v in hashes(tmp_path).items() if not k.endswith(outputs.RECORD)} == old
        assert outputs.owned(folder) == {"a.csv", "sub/", "sub/b.csv"}


KILLED_IN_A_NEW_FOLDER = """
import sys, time
from pathlib import Path
from bcseg import outputs
from bcseg.atomic import atomic_path, write_text

folder = Path(sys.argv[1])
with outputs.claim(folder, "test", replace=True):
    write_text(folder / "new.csv", "new\\n")
    with atomic_path(folder / "deep" / "c.csv") as tmp:  # its folder made, the file not yet
        print("now", flush=True)
        time.sleep(120)
"""


def test_a_replacement_killed_while_it_writes_into_a_new_folder_is_put_back(tmp_path):
    """Killed before the first file of a folder it made was complete, a --force run left
    that folder empty and unjournaled: the next run took it for the user's and refused to
    put back the earlier result ('deep: was not written by bcseg; ... move one away')."""
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
    old = {k: v for k, v in hashes(tmp_path).items() if not k.endswith(outputs.RECORD)}
    process = subprocess.Popen([sys.executable, "-c", KILLED_IN_A_NEW_FOLDER, str(folder)],
                               stdout=subprocess.PIPE, text=True, env=subprocess_env())
    assert process.stdout.readline() == "now\n"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (folder / "deep").is_dir()  # the state the kill leaves
    with outputs.claim(folder, "test"):
        pass
    assert {k: v for k, v in hashes(tmp_path).items() if not k.endswith(outputs.RECORD)} == old
    assert not (folder / "deep").exists()


@pytest.mark.parametrize("command", ["phantom", "export-nnunet"])
def test_a_killed_replacement_is_no_empty_folder_to_write_without_force(command, tmp_path, capsys):
    """A --force run killed just after it moved the old result aside leaves the folder
    holding only its record; without --force the next run must still find the old
    result (put back by its claim) and refuse, not replace it."""
    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(8, 24, 24))
    if command == "phantom":
        folder, argv = tmp_path / "p", ["phantom", tmp_path / "p", "--n", "2", "--shape", "8", "24", "24"]
    else:
        folder = tmp_path / "raw" / "Dataset009_P"
        argv = ["export-nnunet", data, tmp_path / "raw", "--dataset-id", "9", "--name", "P", "--k", "2"]
    assert run(capsys, *argv)[0] == 0
    aside = folder.with_name(f".{folder.name}{outputs.ASIDE_MARK}99999")  # the killed run's
    folder.rename(aside)
    folder.mkdir()
    (folder / outputs.RECORD).write_text(json.dumps({"files": {}, "open": {
        "pid": 99999, "token": "x", "command": command, "foreign": [], "edited": []}}))
    before = hashes(aside)
    code, _, err = run(capsys, *argv, "--seed", "5") if command == "phantom" else run(capsys, *argv)
    assert code == 2 and "already holds" in one_line(err), err
    # the old result is put back in its place before the folder is judged, untouched
    assert not aside.exists() and hashes(folder) == before


@pytest.mark.parametrize("given", ["run folder", "model file", "fold of a k-fold run"])
def test_predict_reads_the_run_a_killed_train_force_left_beside_its_folder(
        given, tmp_path, capsys, models):
    """Red team 22: SIGKILL just after train --force moved the finished run aside left the
    run's folder holding only the killed run's record, and predict --model RUN said the run
    held no model while the finished run waited beside it as .RUN.bcseg-old-PID. Reading
    the run settles it first, as the next train would: the old run is put back."""
    stacks(tmp_path / "in", 1, shape=(2, 32, 32))
    run_dir = tmp_path / ("kfold" if given == "fold of a k-fold run" else "run")
    trained = run_dir / "fold_0" if given == "fold of a k-fold run" else run_dir
    with outputs.claim(run_dir, "train"):  # what train --force replaced: the whole run
        with atomic_path(trained / "model_best.keras") as tmp:
            tmp.write_bytes(models["2d"].read_bytes())
        write_settings(trained, InferenceSettings())
    replaced = run_dir
    model = trained / "model_best.keras" if given == "model file" else trained
    before = hashes(run_dir)
    aside = replaced.with_name(f".{replaced.name}{outputs.ASIDE_MARK}99999")  # as a kill leaves
    replaced.rename(aside)
    replaced.mkdir()
    (replaced / outputs.RECORD).write_text(json.dumps({"files": {}, "open": {
        "pid": 99999, "token": "x", "command": "train", "foreign": [], "edited": []}}))
    code, _, err = run(capsys, "predict", tmp_path / "in", "--model", model, "--out", tmp_path / "o")
    assert code == 0, err
    assert (tmp_path / "o" / "s0_mask.tif").is_file()
    assert not aside.exists() and hashes(run_dir) == before  # the finished run, back as it was


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_something_named_like_the_record_is_no_record(kind, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    if kind == "folder":
        (out / outputs.RECORD).mkdir()
        (out / outputs.RECORD / "thesis.txt").write_text("mine")
    else:
        (tmp_path / "target.json").write_text("{}")
        (out / outputs.RECORD).symlink_to(tmp_path / "target.json")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "phantom", out, "--n", "2", "--shape", "8", "24", "24")
    assert code == 2 and one_line(err), err
    assert hashes(tmp_path) == before and (out / outputs.RECORD).is_symlink() == (kind == "link")


def test_settling_leftovers_never_deletes_what_bcseg_did_not_write(tmp_path):
    """A user folder that only looks like a leftover is left alone, and a killed
    replacement's folder holding a user's file is not deleted to restore the old one."""
    folder = tmp_path / "result"
    lookalike = tmp_path / f".result{outputs.ASIDE_MARK}1"
    (lookalike / "notes.txt").parent.mkdir(parents=True)
    (lookalike / "notes.txt").write_text("mine")  # no bcseg record: not an aside
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "new\n")
    assert (lookalike / "notes.txt").read_text() == "mine"
    aside = tmp_path / f".result{outputs.ASIDE_MARK}2"  # what a replacement killed before finishing leaves
    with outputs.claim(aside, "test"):
        write_text(aside / "a.csv", "old\n")
    record = json.loads((folder / outputs.RECORD).read_text())
    (folder / outputs.RECORD).write_text(json.dumps(dict(record, open={"pid": 2})))  # run 2 was killed
    (folder / "mine.txt").write_text("added by hand")
    before = hashes(tmp_path)
    with pytest.raises(UsageError, match="mine.txt: was not written by bcseg"):
        with outputs.claim(folder, "test"):
            pass
    assert hashes(tmp_path) == before


def test_a_leftover_of_empty_folders_is_removed_and_one_with_a_file_kept(tmp_path):
    """A replacement killed while it deleted the old result, after its files (the record
    among them) and before its emptied folders, left '.result.bcseg-old-PID' holding
    folders alone: no record, so never settled, there for good. Its empty folders go;
    a look-alike holding any file, or a link, stays whole."""
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "ours\n")
    emptied = tmp_path / f".result{outputs.ASIDE_MARK}2"
    (emptied / "images" / "us").mkdir(parents=True)
    (emptied / "masks").mkdir()
    with_file = tmp_path / f".result{outputs.ASIDE_MARK}3"
    (with_file / "deep" / "er").mkdir(parents=True)
    (with_file / "deep" / "notes.txt").write_text("mine")
    with_link = tmp_path / f".result{outputs.ASIDE_MARK}4"
    with_link.mkdir()
    (with_link / "to-data").symlink_to(tmp_path, target_is_directory=True)
    outputs.settle(folder)
    assert not emptied.exists()
    assert (with_file / "deep" / "notes.txt").read_text() == "mine"
    assert (with_file / "deep" / "er").is_dir()
    assert (with_link / "to-data").is_symlink() and (folder / "a.csv").is_file()


def test_replacing_never_removes_an_input(tmp_path):
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "images" / "a.tif", "bcseg wrote this, but it is now an input")
    before = hashes(tmp_path)
    with pytest.raises(UsageError, match="contains the input"):
        with outputs.claim(folder, "test", replace=True, inputs=[folder / "images"]):
            pass
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- data loss 3: export --force

def test_export_force_keeps_files_the_user_added(tmp_path, capsys, phantom):
    """Issue 12, data loss 3: imagesTs/ and notes added to an exported dataset."""
    raw = tmp_path / "raw"
    assert run(capsys, "export-nnunet", phantom, raw, "--dataset-id", 5, "--name", "BCS",
               "--k", 3)[0] == 0
    dataset = raw / "Dataset005_BCS"
    io.write_image(dataset / "imagesTs" / "new_0000.tif", np.zeros((4, 8, 8), np.uint8))
    (dataset / "notes.md").write_text("which specimens were re-scanned")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "export-nnunet", phantom, raw, "--dataset-id", 5, "--name", "BCS",
                       "--k", 3, "--force")
    assert code == 2 and "was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before
    (dataset / "notes.md").unlink()
    (dataset / "imagesTs" / "new_0000.tif").unlink()
    (dataset / "imagesTs").rmdir()
    assert run(capsys, "export-nnunet", phantom, raw, "--dataset-id", 5, "--name", "BCS",
               "--k", 3, "--force")[0] == 0
    assert (dataset / "dataset.json").is_file()


def test_export_force_into_its_own_source_deletes_nothing(tmp_path, capsys):
    """Issue 12, data loss 3: the source folder given as the destination."""
    raw = tmp_path / "raw"
    source = raw / "Dataset007_Src"
    write_phantom(source, n=3, shape=(8, 24, 24))
    before = hashes(tmp_path)
    code, _, err = run(capsys, "export-nnunet", source, raw, "--dataset-id", 7, "--name", "Src",
                       "--k", 3, "--force")
    assert code == 2 and "contains the input" in one_line(err)
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- data loss 4: margins.csv

def test_predict_margins_into_an_existing_out_merges_rows_by_case(tmp_path, capsys, models):
    """Issue 12, data loss 4: a second stack's run keeps the first stack's row."""
    data = stacks(tmp_path / "data", 2)
    out = tmp_path / "out"
    code, _, err = run(capsys, "predict", data / "s0.tif", "--model", models["2d"], "--out", out,
                       "--margins", "--no-progress")
    assert code == 0, err
    first = (out / "margins.csv").read_text().splitlines()
    before = hashes(tmp_path)
    code, _, err = run(capsys, "predict", data / "s1.tif", "--model", models["2d"], "--out", out,
                       "--margins", "--no-progress")
    assert code == 0, err
    assert_survives(before, tmp_path, changed=("out/margins.csv", "out/.bcseg-outputs.json"))
    rows = (out / "margins.csv").read_text().splitlines()
    assert rows[0] == first[0] and rows[1] == first[1]  # header, and s0's row as it was
    assert [r.split(",")[0] for r in rows[1:]] == ["s0", "s1"]


@pytest.mark.parametrize("name, extra", [("margins.csv", ["--margins"]),  # rows are merged
                                         ("s0_mask.tif", ["--force"])])  # drawn by hand
def test_predict_never_changes_an_output_bcseg_did_not_write(name, extra, tmp_path, capsys, models):
    data = stacks(tmp_path / "data", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("the user's own file")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", out, *extra)
    assert code == 2 and f"{name}: was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- data loss 5: concurrent runs

def test_a_second_run_into_a_claimed_folder_is_refused(tmp_path, capsys, models):
    """Issue 12, data loss 5: another process holds the output folder."""
    data = stacks(tmp_path / "data", 1)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom bcseg.outputs import claim\n"
         f"with claim({str(out)!r}, 'predict'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = hashes(tmp_path)
        code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", out,
                           "--no-progress")
        assert code == 2 and f"{out}: is being written by another bcseg run (process {holder.pid})" \
            in one_line(err)
        assert hashes(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is free again, and a run goes through.
    assert run(capsys, "predict", data, "--model", models["2d"], "--out", out, "--no-progress")[0] == 0
    assert (out / "s0_mask.tif").is_file()


# --------------------------------------------------------------------------- predict --force and --out

def test_predict_force_removes_the_stale_probability_map(tmp_path, capsys, models):
    data = stacks(tmp_path / "data", 1)
    out = tmp_path / "out"
    assert run(capsys, "predict", data, "--model", models["2d"], "--out", out, "--save-prob",
               "--quicklook", "--no-progress")[0] == 0
    assert (out / "s0_prob.tif").is_file() and (out / "s0_overlay.png").is_file()
    assert run(capsys, "predict", data, "--model", models["2d"], "--out", out, "--force",
               "--threshold", "0.9", "--no-progress")[0] == 0
    assert sorted(outputs.listing(out)) == ["s0_mask.tif"]


def test_predict_into_its_input_folder_never_segments_its_own_masks(tmp_path, capsys, models):
    folder = stacks(tmp_path / "data", 2)
    for extra in ([], ["--force"], ["--resume"]):
        code, _, err = run(capsys, "predict", folder, "--model", models["2d"], "--out", folder,
                           "--no-progress", *extra)
        assert code == 0, err
        assert sorted(p.name for p in folder.glob("*.tif")) == [
            "s0.tif", "s0_mask.tif", "s1.tif", "s1_mask.tif"]


@pytest.mark.parametrize("command", ["train", "predict", "export", "evaluate", "margins"])
def test_out_that_is_a_file_is_refused_before_any_model_loads(command, tmp_path, capsys, models,
                                                              phantom):
    """The model given is one safe loading refuses (exit 4): exit 2 shows it never loaded."""
    target = tmp_path / "taken.txt"
    target.write_text("not a folder")
    stack = phantom / "images" / "specimen_000.tif"
    argv = {"train": ["train", phantom, "--out", target, "--init", models["lambda"]],
            "predict": ["predict", stack, "--model", models["lambda"], "--out", target],
            "export": ["export-nnunet", phantom, target, "--dataset-id", 3, "--name", "X"],
            "evaluate": ["evaluate", "--pred", phantom / "masks" / "observer1", "--truth", phantom,
                         "--out", target / "sub"],
            "margins": ["margins", "--image", stack, "--tumour", stack, "--out", target]}[command]
    before = hashes(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "taken.txt: is a file" in one_line(err)
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- other writers

def test_split_force_never_overwrites_its_input_or_a_file_of_yours(tmp_path, capsys):
    data = tmp_path / "study"
    write_phantom(data, n=3, shape=(8, 24, 24))
    manifest = data / "manifest.csv"
    manifest.write_text("id,image,mask_observer1,group\n" + "".join(
        f"s{i},images/specimen_00{i}.tif,masks/observer1/specimen_00{i}.tif,g{i}\n" for i in range(3)))
    (tmp_path / "folds.json").write_text('{"mine": true}')
    before = hashes(tmp_path)
    code, _, err = run(capsys, "split", manifest, "--out", manifest, "--k", 3, "--force")
    assert code == 2 and "is an input" in one_line(err)
    code, _, err = run(capsys, "split", manifest, "--out", tmp_path / "folds.json", "--k", 3, "--force")
    assert code == 2 and "folds.json: was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before
    assert run(capsys, "split", manifest, "--out", tmp_path / "splits.json", "--k", 3)[0] == 0
    assert run(capsys, "split", manifest, "--out", tmp_path / "splits.json", "--k", 3, "--seed", 1,
               "--force")[0] == 0


def test_report_never_overwrites_a_report_html_of_yours(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "report.html").write_text("<p>my write-up</p>")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "report", folder)
    assert code == 2 and "report.html: was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before


def test_margins_force_with_a_given_specimen_removes_the_computed_one(tmp_path, capsys, phantom):
    image = phantom / "images" / "specimen_000.tif"
    tumour = phantom / "masks" / "observer1" / "specimen_000.tif"
    out = tmp_path / "out"
    assert run(capsys, "margins", "--image", image, "--tumour", tumour, "--out", out)[0] == 0
    assert (out / "specimen_000_specimen.tif").is_file()
    specimen = tmp_path / "drawn_specimen.tif"
    io.write_mask(specimen, np.ones((8, 32, 32), bool), (1.0, 0.25, 0.25))
    assert run(capsys, "margins", "--image", image, "--tumour", tumour, "--specimen", specimen,
               "--out", out, "--force")[0] == 0
    assert sorted(outputs.listing(out)) == ["specimen_000_margins.csv", "specimen_000_margins.png"]


def test_margins_force_never_writes_over_its_own_input(tmp_path, capsys, phantom):
    """An earlier run's specimen mask given as --tumour was rewritten in place."""
    image = phantom / "images" / "specimen_000.tif"
    out = tmp_path / "out"
    assert run(capsys, "margins", "--image", image, "--tumour",
               phantom / "masks" / "observer1" / "specimen_000.tif", "--out", out)[0] == 0
    before = hashes(tmp_path)
    code, _, err = run(capsys, "margins", "--image", image, "--tumour", out / "specimen_000_specimen.tif",
                       "--out", out, "--force")
    assert code == 2 and "specimen_000_specimen.tif: is an input of this command" in one_line(err)
    assert hashes(tmp_path) == before


def test_margins_force_with_a_specimen_keeps_an_earlier_specimen_mask_given_as_tumour(
        tmp_path, capsys, phantom):
    """With --specimen, the earlier run's computed specimen mask is removed as stale; given
    as --tumour it is an input, and it was deleted."""
    image = phantom / "images" / "specimen_000.tif"
    out = tmp_path / "out"
    assert run(capsys, "margins", "--image", image, "--tumour",
               phantom / "masks" / "observer1" / "specimen_000.tif", "--out", out)[0] == 0
    computed = out / "specimen_000_specimen.tif"
    kept = computed.read_bytes()
    specimen = tmp_path / "drawn_specimen.tif"
    io.write_mask(specimen, np.ones((8, 32, 32), bool), (1.0, 0.25, 0.25))
    run(capsys, "margins", "--image", image, "--tumour", computed, "--specimen", specimen,
        "--out", out, "--force")
    assert computed.read_bytes() == kept


def test_evaluate_force_no_report_leaves_no_stale_report(tmp_path, capsys, phantom):
    """A forced re-evaluation removes bcseg's report of the old numbers, never a file of yours."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in sorted((phantom / "masks" / "observer1").glob("*.tif"))[:2]:
        (pred / f"{mask.stem}_mask.tif").write_bytes(mask.read_bytes())
    out = tmp_path / "ev"
    argv = ["evaluate", "--pred", pred, "--truth", phantom, "--out", out]
    assert run(capsys, *argv)[0] == 0
    assert {"report.html", "case_metrics.png", "examples.png"} <= outputs.listing(out)
    (out / "examples_mine.png").write_bytes(b"my own figure")  # matches the pattern, is yours
    (out / "notes.txt").write_text("my notes")
    mine = {k: v for k, v in hashes(tmp_path).items() if k.endswith(("mine.png", "notes.txt"))}
    (pred / sorted(pred.iterdir())[1].name).unlink()  # the new evaluation scores other numbers
    code, _, err = run(capsys, *argv, "--force", "--no-report")
    assert code == 0, err
    assert sorted(outputs.listing(out)) == ["agreement.csv", "examples_mine.png", "metrics.csv",
                                            "notes.txt", "summary.json"]
    assert_survives(mine, tmp_path)


@pytest.mark.parametrize("yours", ["examples.png", "case_metrics.png", "report.html"])
def test_evaluate_never_draws_its_report_over_your_file(tmp_path, capsys, phantom, yours):
    """The report's page and figures are bcseg's to rebuild, never yours: refused before
    the evaluation writes anything (they were overwritten without --force)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in sorted((phantom / "masks" / "observer1").glob("*.tif"))[:2]:
        (pred / f"{mask.stem}_mask.tif").write_bytes(mask.read_bytes())
    out = tmp_path / "ev"
    out.mkdir()
    (out / yours).write_bytes(b"my own figure")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "evaluate", "--pred", pred, "--truth", phantom, "--out", out)
    assert code != 0 and yours in one_line(err) and "--no-report" in err
    assert outputs.listing(out) == {yours}
    assert_survives(before, tmp_path)
    code, _, err = run(capsys, "evaluate", "--pred", pred, "--truth", phantom, "--out", out,
                       "--no-report")
    assert code == 0, err
    assert_survives(before, tmp_path)


def test_a_report_of_a_folder_above_never_replaces_your_curves(tmp_path, capsys):
    """``bcseg report`` draws loss.png beside every history.csv below it: not over yours."""
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_text("epoch,loss,val_loss,dice,val_dice\n"
                                         "0,0.9,0.8,0.3,0.4\n1,0.7,0.6,0.5,0.6\n")
    (run_dir / "loss.png").write_bytes(b"my own curve")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "report", tmp_path / "runs")
    assert code != 0 and "loss.png" in one_line(err)
    assert_survives(before, tmp_path)
    assert not (tmp_path / "runs" / "report.html").exists()
    (run_dir / "loss.png").unlink()  # with the name free, the same report is built
    assert run(capsys, "report", tmp_path / "runs")[0] == 0
    assert (run_dir / "loss.png").is_file() and (tmp_path / "runs" / "report.html").is_file()
    assert run(capsys, "report", tmp_path / "runs")[0] == 0  # and rebuilt over its own figures


# --------------------------------------------------------------------------- names

def test_a_long_legal_name_gets_a_short_enough_temporary_name(tmp_path, capsys, models):
    stem = "s" * 240  # the mask's name is 249 bytes: legal, but not with the temporary mark
    tifffile.imwrite(tmp_path / f"{stem}.tif", RNG.integers(0, 256, (32, 40), dtype=np.uint8))
    out = tmp_path / "out"
    code, _, err = run(capsys, "predict", tmp_path / f"{stem}.tif", "--model", models["2d"],
                       "--out", out, "--no-progress")
    assert code == 0, err
    assert (out / f"{stem}_mask.tif").is_file() and not partials(out)
    long = partial_name(out / f"{stem}_mask.tif")
    assert len(long.name) <= 255 and PARTIAL_MARK in long.name and long.name.startswith(".")
    assert partial_name(out / f"{stem}x_mask.tif") != long  # still one per final name


def test_an_output_name_too_long_is_refused_before_the_model_loads(tmp_path, capsys, models):
    name = "s" * 250 + ".tif"  # legal; its mask's name would be 259 bytes
    tifffile.imwrite(tmp_path / name, RNG.integers(0, 256, (32, 40), dtype=np.uint8))
    code, _, err = run(capsys, "predict", tmp_path / name, "--model", models["lambda"],
                       "--out", tmp_path / "out")
    assert code == 2 and name in one_line(err) and "bytes" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- full disk

def test_mask_files_are_allocated_before_they_are_mapped(tmp_path):
    """A sparse memory-mapped file on a full disk dies with SIGBUS on first write;
    allocated blocks turn a full disk into an OSError before any is written."""
    from bcseg.infer.segment import _tiff_memmap

    path = tmp_path / "big.tif"
    array = _tiff_memmap(path, (8, 512, 512), np.uint8, None)
    del array
    assert os.stat(path).st_blocks * 512 >= os.stat(path).st_size >= 8 * 512 * 512


def test_predict_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    data = stacks(tmp_path / "data", 1, shape=(4, 256, 256))
    model = tmp_path / "m.keras"
    keras.utils.set_random_seed(0)
    unet(ndim=2, base_filters=4, depth=2).save(model)
    out = tmp_path / "out"
    result = cli("predict", data, "--model", model, "--out", out, "--no-progress",
                 limit_bytes=200_000)  # the mask needs 262,144 bytes
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert "s0_mask.tif: cannot be written: larger than the file system or the file size limit" \
        in line
    assert not partials(tmp_path) and not (out / "s0_mask.tif").exists()


def test_export_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, phantom):
    raw = tmp_path / "raw"
    result = cli("export-nnunet", phantom, raw, "--dataset-id", 9, "--name", "Full", "--k", 3,
                 limit_bytes=4000)  # each stack is 8 KiB
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert "Dataset009_Full/imagesTr/Full_0001_0000.tif: cannot be written" in line, line
    assert not raw.exists() or not any(raw.iterdir())


# --------------------------------------------------------------------------- signals and --resume

KILL_SHAPE = (32, 256, 256)


def test_sigterm_during_predict_is_an_interruption(tmp_path, models):
    data = stacks(tmp_path / "data", 6, shape=KILL_SHAPE)
    out = tmp_path / "out"
    process = popen("predict", data, "--model", models["2d"], "--out", out, "--no-progress")
    wait_for(lambda: out.is_dir() and any(out.glob("*_mask.tif")) and partials(out), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and one_line(err) == "bcseg: error: interrupted"
    assert not partials(tmp_path) and not list(tmp_path.rglob(f"*{outputs.LOCK_SUFFIX}"))
    assert sorted(outputs.owned(out)) == sorted(p.name for p in out.glob("*_mask.tif"))


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ignored_by_the_caller_stays_ignored(number, tmp_path, capsys, monkeypatch):
    """A shell starts a background job ('bcseg ... &' in a script) with SIGINT ignored,
    so that a Ctrl-C meant for the foreground leaves it running; a caller may ignore
    SIGTERM too. Python keeps such a signal ignored, and so must bcseg: the command runs
    on, and the caller's setting is there after it."""
    monkeypatch.setattr(outputs, "CLAIM_HOOKS", [*outputs.CLAIM_HOOKS, lambda: signal.raise_signal(number)])
    previous = signal.signal(number, signal.SIG_IGN)
    try:
        code, _, err = run(capsys, "phantom", tmp_path / "p", "--n", "2", "--shape", "8", "24", "24")
        assert signal.getsignal(number) is signal.SIG_IGN
    finally:
        signal.signal(number, previous)
    assert code == 0, err
    assert sorted(outputs.foreign(tmp_path / "p")) == []


@pytest.mark.parametrize("turned_into", [RuntimeError("a library's cleanup failed"),
                                         DataError("s0.tif", "cannot be read: truncated")])
def test_a_stop_that_code_turns_into_an_error_is_still_an_interruption(turned_into, tmp_path, capsys,
                                                                        monkeypatch, models):
    """SIGTERM during predict once exited 1, bcseg's line for an unexpected error: where
    the handler's KeyboardInterrupt lands, code may catch it and fail with an error of
    its own (here put in a mask's writing). A stopped command says it was interrupted,
    exit 130, never that it broke or that an input is damaged."""
    import bcseg.infer.segment

    real = bcseg.infer.segment._segment_into

    def stopped_while_writing(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, in the main thread
        except KeyboardInterrupt:
            raise turned_into from None
        return real(*args, **kwargs)

    monkeypatch.setattr(bcseg.infer.segment, "_segment_into", stopped_while_writing)
    data, out = stacks(tmp_path / "data", 2), tmp_path / "out"
    code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", out, "--no-progress")
    assert (code, one_line(err)) == (130, "bcseg: error: interrupted")
    assert not partials(tmp_path) and not list(out.glob("*_mask.tif"))
    monkeypatch.undo()  # and the next command, stopped by nothing, fails as itself
    code, _, err = run(capsys, "predict", tmp_path / "missing", "--model", models["2d"], "--out", out)
    assert code != 130 and "interrupted" not in err


def _predict_killed_part_way(tmp_path: Path, models) -> tuple[Path, Path]:
    """Six stacks; ``predict`` SIGKILLed while writing one after at least one finished."""
    data = stacks(tmp_path / "data", 6, shape=KILL_SHAPE)
    out = tmp_path / "out"
    process = popen("predict", data, "--model", models["2d"], "--out", out, "--no-progress")
    wait_for(lambda: out.is_dir() and any(out.glob("*_mask.tif")) and partials(out), process)
    process.kill()
    process.wait()
    return data, out


def test_resume_keeps_complete_masks_and_finishes_a_killed_run(tmp_path, capsys, models):
    data, out = _predict_killed_part_way(tmp_path, models)
    done = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*_mask.tif")}
    assert 1 <= len(done) < 6
    code, printed, err = run(capsys, "predict", data, "--model", models["2d"], "--out", out,
                             "--resume", "--no-progress")
    assert (code, err) == (0, "")
    assert f"({len(done)} already complete, kept)" in printed
    assert not partials(out)
    assert sorted(outputs.listing(out)) == [f"s{i}_mask.tif" for i in range(6)]
    assert all(hashlib.sha256((out / n).read_bytes()).hexdigest() == h for n, h in done.items())
    assert outputs.foreign(out) == []  # the killed run's masks are recorded as bcseg's


def test_force_after_a_killed_run_leaves_none_of_its_temporaries(tmp_path, capsys, models):
    """'predict --force' over a SIGKILLed run segmented every input again and left the
    killed run's '.s3_mask.bcseg-partial-PID.tif' beside the new masks; only --resume
    removed them."""
    data, out = _predict_killed_part_way(tmp_path, models)
    assert partials(out)
    code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", out,
                       "--force", "--no-progress")
    assert (code, err) == (0, "")
    assert not partials(out)
    assert sorted(outputs.listing(out)) == [f"s{i}_mask.tif" for i in range(6)]


# --------------------------------------------------------------------------- data loss found by the second red-team pass

def _phantom_force(capsys, out: Path) -> tuple[int, str]:
    code, _, err = run(capsys, "phantom", out, "--n", 1, "--shape", 8, 16, 16, "--force")
    return code, err


def test_force_on_a_linked_output_folder_keeps_the_result_and_the_link(tmp_path, capsys):
    """--out a link to an earlier result, with --force: refused, nothing moved or deleted
    (it used to move the result aside, fail to write through the link, and delete it)."""
    run1 = tmp_path / "run1"
    assert run(capsys, "phantom", run1, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    (tmp_path / "latest").symlink_to("run1")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, tmp_path / "latest")
    assert code == 2 and "latest: is a link to run1" in one_line(err)
    assert_survives(before, tmp_path)
    assert (tmp_path / "latest").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        "latest", "run1"]


@pytest.mark.parametrize("name", ["notes.partial-2.txt", "thesis/chapter1.partial-draft.docx",
                                  "results.partial-final.csv"])
def test_a_file_whose_name_merely_contains_partial_is_the_users(name, tmp_path, capsys, models):
    """Only bcseg's own temporary names (".STEM.bcseg-partial-PID.SUFFIX") count as its leftovers."""
    folder = tmp_path / "mine"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("a week of work")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, folder)
    assert code == 2 and "was not written by bcseg" in one_line(err)
    out = stacks(tmp_path / "data", 1).parent / "out"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("a week of work")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "predict", tmp_path / "data", "--model", models["2d"], "--out", out,
                       "--resume", "--no-progress")
    assert (code, err) == (0, "")
    assert_survives(before, tmp_path)


# --------------------------------------------------------------------------- data loss found by the third red-team pass

def _users_lookalikes(folder: Path) -> None:
    """Files named as bcseg's temporaries once were (hidden, ".partial-", an ended
    process's id): another tool's, or the user's. A folder so named too."""
    pid = dead_pid()
    (folder / f".backup.partial-{pid}.d").mkdir(parents=True)
    (folder / f".backup.partial-{pid}.d" / "data.txt").write_text("precious")
    (folder / f".thesis.partial-{pid}.docx").write_text("a week of work")


def test_force_never_deletes_a_users_files_named_like_temporaries(tmp_path, capsys):
    """phantom/train --force deleted a folder holding them: they counted as bcseg's by name."""
    folder = tmp_path / "result"
    assert run(capsys, "phantom", folder, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    _users_lookalikes(folder / "images")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, folder)
    assert code == 2 and "was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("flag", ["--resume", "--force"])
def test_resume_never_deletes_a_users_files_named_like_temporaries(tmp_path, capsys, models, flag):
    """predict --resume deleted them, even in a folder bcseg never wrote (--force removes
    a killed run's temporaries too, and no more than --resume)."""
    out = stacks(tmp_path / "data", 1).parent / "out"
    _users_lookalikes(out)
    before = hashes(tmp_path)
    code, _, err = run(capsys, "predict", tmp_path / "data", "--model", models["2d"], "--out", out,
                       flag, "--no-progress")
    assert (code, err) == (0, "")
    assert_survives(before, tmp_path)


def test_a_users_copy_named_like_an_old_aside_is_never_settled(tmp_path):
    """A user's backup of a result, ".result.old-PID" beside it, was taken for a killed
    replacement's old content and deleted by the next command writing there."""
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "ours\n")
    backup = tmp_path / f".result.old-{dead_pid()}"
    shutil.copytree(folder, backup)  # bcseg's files and record, copied by the user
    with outputs.claim(folder, "test"):
        write_text(folder / "b.csv", "more\n")
    assert (backup / "a.csv").read_text() == "ours\n"


def dead_pid() -> str:
    """The id of a process that has ended (reused only after the kernel wraps around)."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()


def test_remove_partials_takes_only_dead_runs_temporaries(tmp_path):
    from bcseg.atomic import remove_partials
    dead = dead_pid()
    mark = PARTIAL_MARK
    for name in (f".a_mask{mark}{dead}.tif", f".b{mark}{dead}.nii.gz", f"a{mark}1.tif",
                 f".c{mark}{os.getppid()}.tif", f".d{mark}x.tif", f".e.partial-{dead}.tif"):
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in remove_partials(tmp_path))
    assert removed == [f".a_mask{mark}{dead}.tif", f".b{mark}{dead}.nii.gz"]
    # a live process's temporary (here: pytest's parent) and look-alikes are kept: among
    # them another tool's ".NAME.partial-PID" (bcseg's temporaries carry its name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f".c{mark}{os.getppid()}.tif", f".d{mark}x.tif", f".e.partial-{dead}.tif", f"a{mark}1.tif"])


@pytest.mark.parametrize("kind", ["empty folders", "a pipe"])
def test_force_never_removes_a_users_folders_or_special_files(kind, tmp_path, capsys):
    folder = tmp_path / "p2"
    if kind == "empty folders":
        (folder / "patients" / "2024" / "scans").mkdir(parents=True)
    else:
        folder.mkdir()
        os.mkfifo(folder / "fifo")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    code, err = _phantom_force(capsys, folder)
    assert code == 2 and "was not written by bcseg" in one_line(err)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_a_folder_that_cannot_be_read_is_never_replaced(tmp_path, monkeypatch):
    """What an unreadable folder holds cannot be known, so it cannot be known to be bcseg's.
    (Permissions do not stop root, who runs CI; the read error is raised where os.walk
    meets it instead.)"""
    folder = tmp_path / "d"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "ours\n")
    (folder / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match="locked: cannot be read"):
        with outputs.claim(folder, "test", replace=True):
            pass
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_when_putting_the_old_result_back_fails_it_is_kept_aside_not_deleted(tmp_path, monkeypatch):
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
    real = os.replace

    def replace(src, dst):
        if outputs.ASIDE_MARK in Path(src).name:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        with outputs.claim(folder, "test", replace=True):
            raise RuntimeError("the new run fails")
    aside = tmp_path / f".result{outputs.ASIDE_MARK}{os.getpid()}"
    assert (aside / "a.csv").read_text() == "old\n"
    monkeypatch.setattr(outputs.os, "replace", real)
    # the next bcseg run (another process) that claims the folder puts it back
    aside.rename(tmp_path / f".result{outputs.ASIDE_MARK}{dead_pid()}")
    with outputs.claim(folder, "test"):
        pass
    assert (folder / "a.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def _manifest(tmp_path: Path, phantom: Path, ids: list[str]) -> Path:
    rows = ["id,image,mask_observer1,mask_observer2,group"]
    for i, case_id in enumerate(ids):
        name = f"specimen_{i:03d}.tif"
        rows.append(f'"{case_id}",{phantom}/images/{name},{phantom}/masks/observer1/{name},'
                    f'{phantom}/masks/observer2/{name},g{i}')
    path = tmp_path / "cases" / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("bad_id, problem", [("../../victim", "not a plain file name"),
                                             ("sub/dir/b", "not a plain file name"),
                                             ("..", "not a plain file name"),
                                             (".hidden", "starts with '.'"),
                                             ("x" * 220, "220 bytes long")])
def test_a_case_id_that_would_name_files_outside_the_output_is_refused(bad_id, problem, tmp_path,
                                                                      capsys, phantom, models):
    """Case ids name output files (ID_mask.tif): one with a folder part wrote outside --out
    and overwrote a user's file there; a too long one failed only after training."""
    manifest = _manifest(tmp_path, phantom, ["a", bad_id, "c"])
    (tmp_path / "victim_mask.tif").write_text("the user's")
    before = hashes(tmp_path)
    for argv in (["train", manifest, "--out", tmp_path / "work" / "run", "--epochs", 1],
                 ["predict", manifest, "--model", models["2d"], "--out", tmp_path / "work" / "out"],
                 ["check", manifest]):
        code, out, err = run(capsys, *argv)
        line = one_line(err)
        if argv[0] == "check":  # listed among the problems, the other cases checked
            line = next(line for line in out.splitlines() if line.startswith("problem: "))
        assert code == 3 and "manifest.csv" in line and problem in line, (argv[0], line)
    assert_survives(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases", "victim_mask.tif"]


def test_report_on_a_folder_with_nothing_to_report_leaves_it_untouched(tmp_path, capsys, phantom):
    data = _copy_tree(phantom, tmp_path / "data")
    (data / outputs.RECORD).unlink()  # a folder of the user's own, not one bcseg wrote
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    code, _, err = run(capsys, "report", data)
    assert code == 3 and "nothing to report" in one_line(err)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_a_claim_that_fails_before_writing_leaves_no_record_in_a_users_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with outputs.claim(folder, "test"):
            raise RuntimeError("refused after the claim began")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine", "notes.txt"]


def _kill_phantom_part_way(folder: Path) -> bool:
    """Run ``phantom`` into ``folder`` and SIGKILL it once two images are written; False
    when the kill fell between an image's rename and the record's touch that follows
    it (the image then looks newer than the run's last sign of life, and bcseg rightly
    refuses to take it for its own: safe, but not the case this test is about)."""
    process = popen("phantom", folder, "--n", 400, "--shape", 8, 32, 32)
    wait_for(lambda: len(list((folder / "images").glob("*.tif"))) >= 2 if folder.is_dir() else False,
             process, timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last_beat = (folder / outputs.RECORD).stat().st_mtime_ns
    # Complete files only: a partial file (and the folder it was made in) is younger than
    # the last beat whenever the kill fell mid-write, which bcseg cleans up as its own.
    return all(p.lstat().st_ctime_ns <= last_beat for p in folder.rglob("*")
               if p.is_file() and p.name != outputs.RECORD and partial_pid(p.name) is None)


def test_a_file_added_after_a_killed_run_is_not_adopted_as_bcsegs(tmp_path, capsys):
    """SIGKILL part-way through a run, then the user drops a file into its folder: a
    later --force must refuse (it used to adopt every file that appeared since the dead
    run began, and delete the user's)."""
    for attempt in range(5):  # a kill inside the rename-to-touch window is retried
        folder = tmp_path / f"k{attempt}"
        if _kill_phantom_part_way(folder):
            break
    else:
        pytest.fail("every kill fell inside the rename-to-touch window")
    time.sleep(0.05)  # the file system's clock ticks past the killed run's last write
    (folder / "NOTES_mine.txt").write_text("notes")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, folder)
    assert code == 2 and "NOTES_mine.txt: was not written by bcseg" in one_line(err)
    assert_survives(before, tmp_path, changed=(f".{folder.name}{outputs.LOCK_SUFFIX}",))  # the dead run's lock
    (folder / "NOTES_mine.txt").unlink()  # without it the killed run's files are bcseg's
    code, err = _phantom_force(capsys, folder)
    assert (code, err) == (0, "")


def _as_killed_by(folder: Path, pid) -> None:
    """Leave ``folder``'s record as a run ``pid`` left it when killed: its claim open,
    its last sign of life (the record's mtime) unchanged."""
    record_path = folder / outputs.RECORD
    stamp = record_path.stat().st_mtime_ns
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, open={"pid": pid, "command": "train",
                                                          "foreign": []})))
    os.utime(record_path, ns=(stamp, stamp))


def test_a_dead_run_with_this_process_id_is_not_taken_for_this_process(tmp_path):
    """In a container every run may be process 1: a killed run's claim with this process's
    id must not adopt a file the user added after the kill."""
    folder = tmp_path / "run"
    with outputs.claim(folder, "train"):
        write_text(folder / "a.csv", "ours\n")
    _as_killed_by(folder, os.getpid())
    time.sleep(0.05)
    (folder / "notes.txt").write_text("mine")
    before = hashes(tmp_path)
    with pytest.raises(UsageError, match="notes.txt: was not written by bcseg"):
        with outputs.claim(folder, "train", replace=True):
            pass
    assert_survives(before, tmp_path, changed=(f"run/{outputs.RECORD}",))


def test_a_users_folder_named_like_this_processes_leftover_is_never_deleted(tmp_path):
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "ours\n")
    lookalike = tmp_path / f".result{outputs.ASIDE_MARK}{os.getpid()}"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")  # no bcseg record: not a leftover
    with pytest.raises(UsageError, match="is in the way"):
        with outputs.claim(folder, "test", replace=True):
            pass
    assert (lookalike / "notes.txt").read_text() == "mine" and (folder / "a.csv").is_file()


def test_a_run_killed_just_after_a_checkpoint_still_owns_the_checkpoint(tmp_path, monkeypatch):
    """The checkpoint's hard link and rename change the files' ctime after the last write;
    the run must mark itself alive after them, or a kill there leaves them foreign."""
    import bcseg.learn.train
    from bcseg.learn.train import _save_checkpoint
    real_write = bcseg.learn.train.write_text

    def write_then_pause(*args, **kwargs):  # the file system's clock ticks on (coarse ctime)
        path = real_write(*args, **kwargs)
        time.sleep(0.05)
        return path

    monkeypatch.setattr(bcseg.learn.train, "write_text", write_then_pause)
    out = tmp_path / "run"
    with outputs.claim(out, "train"):
        _save_checkpoint(unet(ndim=2, base_filters=4, depth=2), out, {"epoch": 1})
        time.sleep(0.05)
        _save_checkpoint(unet(ndim=2, base_filters=4, depth=2), out, {"epoch": 2})
        killed_at = json.loads((out / outputs.RECORD).read_text()), (out / outputs.RECORD).stat()
        journal = (out / outputs.JOURNAL).read_text()
    (out / outputs.RECORD).write_text(json.dumps(killed_at[0]))  # the record as the kill left it
    (out / outputs.JOURNAL).write_text(journal)  # and the journal
    os.utime(out / outputs.RECORD, ns=(killed_at[1].st_mtime_ns, killed_at[1].st_mtime_ns))
    record = json.loads((out / outputs.RECORD).read_text())
    record["open"].update(pid=int(dead_pid()), token="a dead run's")
    (out / outputs.RECORD).write_text(json.dumps(record))
    os.utime(out / outputs.RECORD, ns=(killed_at[1].st_mtime_ns, killed_at[1].st_mtime_ns))
    assert outputs.foreign(out) == []


def test_a_running_train_removes_its_own_old_checkpoints_not_the_users_copies(tmp_path):
    """Red team 16: every epoch_*.keras but the newest was deleted, so the copy a user
    kept of a good epoch while the run went on was gone at the next epoch."""
    from bcseg.learn.train import _save_checkpoint

    out, model = tmp_path / "run", unet(ndim=2, base_filters=4, depth=2)
    with outputs.claim(out, "train"):
        _save_checkpoint(model, out, {"epoch": 1})
        shutil.copyfile(out / "checkpoints" / "epoch_0001.keras", out / "checkpoints" / "epoch_0001_good.keras")
        (out / "checkpoints" / "epoch_0001_notes.keras").write_text("why epoch 1 looked best")
        _save_checkpoint(model, out, {"epoch": 2})
    with outputs.claim(out, "train"):  # resumed by another process: epoch 2 is the earlier run's
        _save_checkpoint(model, out, {"epoch": 3})
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_0001_good.keras", "epoch_0001_notes.keras", "epoch_0003.keras"]


def test_a_claim_of_a_folder_that_is_a_file_is_refused_and_leaves_no_lock(tmp_path):
    """A folder a command names itself (not --out, which is checked first) may be a file
    of the user's: the claim failed in its own clean-up and left its lock behind."""
    (tmp_path / "result").write_text("mine")
    for folder in (tmp_path / "result", tmp_path / "result" / "fold_0"):
        with pytest.raises(UsageError, match="result: is a file, not a folder"):
            with outputs.claim(folder, "test"):
                pass
    assert [p.name for p in tmp_path.iterdir()] == ["result"]
    assert (tmp_path / "result").read_text() == "mine"


@pytest.mark.parametrize("command", ["phantom", "split"])
def test_an_output_that_goes_up_out_of_a_missing_folder_leaves_nothing(tmp_path, capsys, phantom, command):
    """'--out new/sub/..' is 'new' to the lock and the record, but making it made
    new/sub too: an empty folder bcseg never recorded, left beside the result (and
    a later --force refused it as the user's), and left behind when the run failed."""
    (tmp_path / "kept").mkdir()  # '..' out of a folder that exists is fine
    argv = {"phantom": ["phantom", "{}", "--n", "1", "--shape", "8", "16", "16"],
            "split": ["split", phantom, "--out", "{}/splits.json", "--k", "3"]}[command]
    code, _, err = run(capsys, *(str(a).format(tmp_path / "kept" / ".." / "ok") for a in argv))
    assert code == 0, err
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "new" / "sub" / ".."
    code, _, err = run(capsys, *(str(a).format(out) for a in argv))
    assert code == 2 and "new/sub, which does not exist" in one_line(err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- third red-team pass

def _corrected_by_hand(mask: Path) -> None:
    """What a user does in Fiji: open bcseg's mask, repaint it, save over it."""
    corrected = np.zeros_like(tifffile.imread(mask))
    corrected[..., 2:6, 8:20] = 255
    tifffile.imwrite(mask, corrected)


def test_force_never_replaces_an_output_the_user_corrected_by_hand(tmp_path, capsys, models):
    """A mask bcseg wrote and the user then edited is the user's work: --force refuses it
    (it used to be overwritten, since ownership went by file name alone)."""
    data = stacks(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert run(capsys, "predict", data / "s0.tif", "--model", models["2d"], "--out", out,
               "--no-progress")[0] == 0
    _corrected_by_hand(out / "s0_mask.tif")
    # Another case into the same folder keeps the corrected mask the user's ...
    assert run(capsys, "predict", data / "s1.tif", "--model", models["2d"], "--out", out,
               "--no-progress")[0] == 0
    before = hashes(tmp_path)
    code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", out, "--force",
                       "--no-progress")
    assert code == 2 and "s0_mask.tif: was not written by bcseg, or was changed after" in one_line(err)
    assert hashes(tmp_path) == before
    # ... while an output left as bcseg wrote it is still replaced.
    assert run(capsys, "predict", data / "s1.tif", "--model", models["2d"], "--out", out, "--force",
               "--no-progress")[0] == 0


def test_replacing_a_run_refuses_when_a_file_in_it_was_edited(tmp_path, capsys):
    out = tmp_path / "ph"
    assert run(capsys, "phantom", out, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    mask = next((out / "masks").rglob("*.tif"))
    _corrected_by_hand(mask)
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, out)
    assert code == 2 and f"{mask.name}: was not written by bcseg, or was changed after" in one_line(err)
    assert_survives(before, tmp_path)


def test_a_record_without_sizes_and_times_cannot_let_force_delete_an_edited_file(tmp_path, capsys):
    """A record whose "stats" were lost (edited by hand, or a bcseg's before it kept them)
    listed every file as bcseg's: --force deleted the attributes table the user had edited."""
    out = tmp_path / "ph"
    assert run(capsys, "phantom", out, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    record = json.loads((out / outputs.RECORD).read_text())
    del record["stats"]
    (out / outputs.RECORD).write_text(json.dumps(record))
    with open(out / "specimens.csv", "a") as table:
        table.write("my note\n")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, out)
    assert code == 2 and "was not written by bcseg, or was changed after" in one_line(err)
    assert_survives(before, tmp_path)


def test_empty_folders_made_while_a_run_writes_stay_yours(tmp_path, capsys, monkeypatch):
    """A tree of empty folders the user made in the folder while phantom wrote it was
    adopted as phantom's, and the next --force deleted it."""
    out = tmp_path / "ph"
    real = io.write_mask

    def write_mask(*args, **kwargs):  # the user makes folders while the run writes
        (out / "mine" / "a" / "b").mkdir(parents=True, exist_ok=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(io, "write_mask", write_mask)
    assert run(capsys, "phantom", out, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    monkeypatch.setattr(io, "write_mask", real)
    code, err = _phantom_force(capsys, out)
    assert code == 2 and "ph/mine" in one_line(err)
    assert (out / "mine" / "a" / "b").is_dir()


def test_a_corrected_mask_in_the_input_folder_is_never_segmented_as_an_input(tmp_path, capsys, models):
    """predict --out its input folder: a mask bcseg wrote there and the user corrected
    is the user's (never replaced), and still a mask (never segmented: no _mask_mask)."""
    data = stacks(tmp_path / "data", 1)
    assert run(capsys, "predict", data, "--model", models["2d"], "--out", data, "--no-progress")[0] == 0
    _corrected_by_hand(data / "s0_mask.tif")
    code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", data, "--force",
                       "--no-progress")
    assert code == 2 and "s0_mask.tif: was not written by bcseg, or was changed" in one_line(err)
    assert sorted(outputs.listing(data)) == ["s0.tif", "s0_mask.tif"]
    from bcseg.infer.segment import _input_files
    assert _input_files(data) == [data / "s0.tif"]  # what any later predict of the folder reads


# --------------------------------------------------------------------------- outputs are never data

def _busi_like(root: Path) -> Path:
    """Two class folders of NAME.png + NAME_mask.png, as BUSI is laid out."""
    import imageio.v3 as iio

    for cls in ("benign", "malignant"):
        for i in range(2):
            (root / cls).mkdir(parents=True, exist_ok=True)
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 8:20] = 255
            iio.imwrite(root / cls / f"{cls} ({i}).png", RNG.integers(0, 256, (32, 32), dtype=np.uint8))
            iio.imwrite(root / cls / f"{cls} ({i})_mask.png", mask)
    return root


def test_a_run_folder_inside_a_dataset_is_never_read_as_cases(tmp_path, capsys):
    """``train --out data/run`` left loss.png and examples.png that discovery read as a
    class folder of images without masks: every later train on the data was refused."""
    from bcseg.atomic import atomic_path
    from bcseg.data.dataset import discover

    data = _busi_like(tmp_path / "data")
    before = sorted(c.id for c in discover(data))
    with outputs.claim(data / "run", "train"):  # what a run's report leaves, recorded as bcseg's
        for name in ("loss.png", "examples.png", "case_metrics.png"):
            with atomic_path(data / "run" / name) as tmp:
                tmp.write_bytes((data / "benign" / "benign (0).png").read_bytes())
    assert sorted(c.id for c in discover(data)) == before
    code, out, err = run(capsys, "check", data)
    assert code == 0 and "problems            0" in out, (out, err)


@pytest.mark.parametrize("where", ["masks/run", "masks/observer1/run", "images/run"])
def test_a_runs_predictions_inside_a_dataset_are_never_read_as_masks(tmp_path, capsys, phantom, where):
    """``train --out data/masks/run``: the run's predictions/*_mask.tif, recorded in the
    run's record (the folder above them), were read as masks with no image, and check,
    train and evaluate refused the dataset until the run was moved out."""
    from bcseg.atomic import atomic_path
    from bcseg.data.dataset import discover

    data = tmp_path / "data"
    data.mkdir()
    for part in ("images", "masks"):
        shutil.copytree(phantom / part, data / part)
    before = [(c.id, sorted(c.masks)) for c in discover(data)]
    image = sorted((data / "images").glob("*.tif"))[0]
    run_dir = data / where
    with outputs.claim(run_dir, "train"):
        for suffix in ("_mask", "_prob"):
            with atomic_path(run_dir / "predictions" / f"{image.stem}{suffix}.tif") as tmp:
                tmp.write_bytes(image.read_bytes())
    assert [(c.id, sorted(c.masks)) for c in discover(data)] == before
    code, out, err = run(capsys, "check", data)
    assert code == 0 and "problems            0" in out, (out, err)


def test_masks_predicted_into_the_images_folder_are_never_read_as_cases(tmp_path, phantom):
    from bcseg.atomic import atomic_path
    from bcseg.data.dataset import discover

    data = tmp_path / "data"
    data.mkdir()
    for part in ("images", "masks"):
        shutil.copytree(phantom / part, data / part)
    before = sorted(c.id for c in discover(data))
    image = sorted((data / "images").glob("*.tif"))[0]
    with outputs.claim(data / "images", "predict"):
        for suffix in ("_mask", "_prob"):
            with atomic_path(data / "images" / f"{image.stem}{suffix}.tif") as tmp:
                tmp.write_bytes(image.read_bytes())
    assert sorted(c.id for c in discover(data)) == before


def test_a_users_file_in_the_way_is_not_met_with_a_force_that_would_not_help(tmp_path, capsys, models):
    """A user's s_prob.tif beside where s_mask.tif goes: 'pass --force to overwrite it',
    and --force then refused it. The first refusal now says what --force would."""
    image = tmp_path / "s.tif"
    tifffile.imwrite(image, RNG.integers(0, 256, (32, 40), dtype=np.uint8))
    out = tmp_path / "seg"
    out.mkdir()
    (out / "s_prob.tif").write_text("the user's own map")
    before = hashes(tmp_path)
    for extra in ((), ("--force",)):
        code, _, err = run(capsys, "predict", image, "--model", models["2d"], "--out", out,
                           "--no-progress", *extra)
        line = one_line(err)
        assert code == 2 and "s_prob.tif: was not written by bcseg" in line and "pass --force" not in line
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- data loss found by the fifth red-team pass

def test_force_never_replaces_a_folder_holding_only_another_commands_export(tmp_path, capsys, phantom,
                                                                             models):
    """export-onnx MODEL --out models/deploy.onnx, then train or phantom --out models --force:
    the export was deleted, since an ONNX export or a report counted as anyone's to replace."""
    models_dir = tmp_path / "models"
    code, _, err = run(capsys, "export-onnx", models["2d"], "--out", models_dir / "deploy.onnx")
    assert code == 0, err
    before = hashes(tmp_path)
    for argv in (("phantom", models_dir, "--n", 1, "--shape", 8, 16, 16, "--force"),
                 ("train", phantom, "--out", models_dir, "--epochs", 1, "--force")):
        code, _, err = run(capsys, *argv)
        line = one_line(err)
        assert code == 2 and "deploy.onnx" in line and "'bcseg export-onnx'" in line, err
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("kind", ["a lock-named file", "a live process's temporary",
                                  "a folder named like a temporary"])
def test_force_never_deletes_a_users_files_named_with_bcsegs_marks(kind, tmp_path, capsys):
    """A user's ".thesis.bcseg-lock", ".draft.bcseg-partial-PID.txt" of a live process, and a
    folder so named were hidden from every check by their names and deleted by --force."""
    folder = tmp_path / "result"
    assert run(capsys, "phantom", folder, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    if kind == "a lock-named file":
        name = f".thesis{outputs.LOCK_SUFFIX}"
        (folder / name).write_text("a week of work")
    elif kind == "a live process's temporary":
        name = f".draft{PARTIAL_MARK}{os.getppid()}.txt"  # pytest's parent: a process that runs
        (folder / name).write_text("a draft")
    else:
        name = f".backup{PARTIAL_MARK}{dead_pid()}"
        (folder / name).mkdir()
        (folder / name / "data.txt").write_text("precious")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, folder)
    line = one_line(err)
    assert code == 2 and name in line and "was not written by bcseg" in line
    assert hashes(tmp_path) == before


def test_force_still_clears_what_a_killed_run_left(tmp_path, capsys):
    """The other side: a lock file holding a process id and a dead process's temporary file
    are bcseg's leftovers, and do not stop --force."""
    folder = tmp_path / "result"
    assert run(capsys, "phantom", folder, "--n", 1, "--shape", 8, 16, 16)[0] == 0
    (folder / f".images{outputs.LOCK_SUFFIX}").write_text(f"{dead_pid()}\n")
    (folder / "images" / f".x{PARTIAL_MARK}{dead_pid()}.tif").write_bytes(b"half a file")
    code, err = _phantom_force(capsys, folder)
    assert (code, err) == (0, "")
    assert not list(folder.rglob(f"*{PARTIAL_MARK}*"))


@pytest.mark.parametrize("command", ["train", "phantom", "export-nnunet", "demo"])
def test_a_folder_of_yours_is_not_met_with_a_force_that_would_not_help(command, tmp_path, capsys,
                                                                       phantom):
    """A folder holding the user's notes.txt: 'already holds a run/result; pass --force',
    and --force then refused the same folder. Both now name the file at once."""
    out = tmp_path / "u"
    target = out / "Dataset501_X" if command == "export-nnunet" else out
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    argv = {"train": ("train", phantom, "--out", out, "--epochs", 1),
            "phantom": ("phantom", out, "--n", 1, "--shape", 8, 16, 16),
            "export-nnunet": ("export-nnunet", phantom, out, "--dataset-id", 501, "--name", "X"),
            "demo": ("demo", "--out", out)}[command]
    before = hashes(tmp_path)
    for extra in ((), ("--force",)):
        code, _, err = run(capsys, *argv, *extra)
        line = one_line(err)
        assert code == 2 and "notes.txt: was not written by bcseg" in line and "pass --force" not in line, err
    assert hashes(tmp_path) == before


def test_a_force_refusal_names_the_file_as_the_user_gave_the_folder(tmp_path, capsys, monkeypatch):
    """phantom u --force named /tmp/.../u/notes.txt: the resolved folder, not the one given."""
    monkeypatch.chdir(tmp_path)
    Path("u").mkdir()
    Path("u", "notes.txt").write_text("mine")
    code, _, err = run(capsys, "phantom", "u", "--n", 1, "--shape", 8, 16, 16, "--force")
    assert code == 2 and one_line(err).startswith("bcseg: error: u/notes.txt: was not written by bcseg")


def test_a_users_file_deep_in_the_folder_is_named_not_its_folder(tmp_path, capsys):
    """phantom u with u/sub/notes.txt named u/sub: the file is what the user must move."""
    (tmp_path / "u" / "sub").mkdir(parents=True)
    (tmp_path / "u" / "sub" / "notes.txt").write_text("mine")
    for extra in ((), ("--force",)):
        code, _, err = run(capsys, "phantom", tmp_path / "u", "--n", 1, "--shape", 8, 16, 16, *extra)
        assert code == 2 and f"{tmp_path / 'u' / 'sub' / 'notes.txt'}: was not written" in one_line(err)


def test_an_interrupted_run_with_a_peek_at_its_masks_is_still_offered_resume(tmp_path, capsys, models,
                                                                             phantom):
    """train --out RUN on an interrupted run holding predict's RUN/peek said that --force
    would not delete peek, and no more; --resume, which works, went unmentioned."""
    out = tmp_path / "run"
    with outputs.claim(out, "train"):  # an interrupted run: config and checkpoint, no settings
        write_text(out / "config.toml", "[train]\nepochs = 3\n")
        with atomic_path(out / "model_last.keras") as tmp:  # as train saves it
            tmp.write_bytes(models["2d"].read_bytes())
    with outputs.claim(out / "peek", "predict"):
        write_text(out / "peek" / "s_mask.tif", "a peek at the masks")
    code, _, err = run(capsys, "train", phantom, "--out", out, "--epochs", 1)
    assert code == 2 and one_line(err).endswith(f"{out}: already holds a run; pass --resume to continue it")


def test_a_folds_report_and_export_go_with_the_k_fold_run_they_were_made_from(tmp_path, capsys, models):
    """report kf/fold_0 was refused (its figures are recorded in kf's record, not the
    fold's), and after export-onnx kf/fold_1, train --force refused the whole run."""
    kf = tmp_path / "kf"
    with outputs.claim(kf, "train"):  # a k-fold run as train writes one: one record, at the top
        for fold in ("fold_0", "fold_1"):
            write_text(kf / fold / "case_metrics.png", "train's figure")
            with outputs.claim(kf / fold, "train"), atomic_path(kf / fold / "model_best.keras") as tmp:
                shutil.copy(models["2d"], tmp)  # as train saves it
    from bcseg.report.html import check_report_files
    check_report_files(kf / "fold_0")  # raised: "was not written by bcseg"
    with outputs.claim(kf / "fold_0", "report"):  # the report rebuilds the fold's figures
        write_text(kf / "fold_0" / "case_metrics.png", "the report's figure")
    code, _, err = run(capsys, "export-onnx", kf / "fold_1" / "model_best.keras")
    assert code == 0, err
    with outputs.claim(kf, "train", replace=True):  # what train --force does first
        write_text(kf / "config.toml", "[train]\n")
    assert sorted(p.name for p in kf.iterdir()) == [outputs.RECORD, "config.toml"]
    # a file of the user's in a fold still stops it
    (kf / "fold_0").mkdir()
    (kf / "fold_0" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="notes.txt: was not written by bcseg"):
        with outputs.claim(kf, "train", replace=True):
            pass


@pytest.mark.parametrize("command", ["phantom", "export-nnunet"])
def test_a_file_put_in_the_output_after_it_was_judged_free_is_refused_by_the_claim(
        command, tmp_path, capsys, monkeypatch):
    """Commands judge the output free first and claim it later (after reading inputs,
    tuning, exporting): a file that appears in between, the user's or another run's, is
    refused under the claim's lock rather than written over."""
    import bcseg.data.phantom as phantom
    import bcseg.nnunet as nnunet

    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(8, 24, 24))
    if command == "phantom":
        module, folder = phantom, tmp_path / "p"
        argv = ["phantom", folder, "--n", "2", "--shape", "8", "24", "24"]
    else:
        module, folder = nnunet, tmp_path / "raw" / "Dataset009_P"
        argv = ["export-nnunet", data, tmp_path / "raw", "--dataset-id", "9", "--name", "P", "--k", "2"]
    judge = module.require_new_folder

    def then_a_file_appears(out, *args, **kwargs):
        free = judge(out, *args, **kwargs)
        out.mkdir(parents=True)
        (out / "dataset.json").write_text("mine")
        return free

    monkeypatch.setattr(module, "require_new_folder", then_a_file_appears)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "dataset.json: was not written by bcseg" in one_line(err), err
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json"]
    assert (folder / "dataset.json").read_text() == "mine"


def test_an_interrupted_phantom_leaves_no_part_of_a_dataset(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the first image: the folders it created are gone, not left holding
    half a dataset under a record that calls it finished."""
    import bcseg.data.phantom as phantom

    write = phantom.io.write_image
    calls = []

    def interrupted(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(args[0])
        return write(*args, **kwargs)

    monkeypatch.setattr(phantom.io, "write_image", interrupted)
    code, _, _ = run(capsys, "phantom", tmp_path / "new" / "p", "--n", "2", "--shape", "8", "24", "24")
    assert code == 130 and len(calls) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("where", ["name too long", "under /proc"])
@pytest.mark.parametrize("command", ["phantom", "export-nnunet", "predict"])
def test_an_output_path_the_system_cannot_hold_is_one_line_and_leaves_nothing(
        command, where, tmp_path, capsys):
    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(8, 24, 24))
    if where == "name too long":
        out = tmp_path / ("a" * 300) / "out"
        expected = "is 300 bytes, more than the"
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc on this system")
        out = Path("/proc") / f"bcseg-test-{os.getpid()}"
        expected = "cannot be written there"
    argv = {"phantom": ["phantom", out, "--n", "1", "--shape", "8", "24", "24"],
            "export-nnunet": ["export-nnunet", data, out, "--dataset-id", "9", "--name", "P", "--k", "2"],
            "predict": ["predict", data / "images", "--out", out]}[command]
    before = hashes(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and expected in one_line(err), err
    assert hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --------------------------------------------------------------------------- red-team pass 13

def test_a_file_added_while_a_run_writes_stays_yours_and_force_refuses_it(tmp_path, capsys):
    """A live claim adopted every new file in its folder: notes the user saved into a
    running phantom's folder became bcseg's, and the next --force deleted them."""
    out = tmp_path / "p"
    with outputs.claim(out, "phantom"):
        write_text(out / "images" / "a.tif", "bcseg's")
        (out / "notes.txt").write_text("mine")
        (out / "mine").mkdir()
        (out / "mine" / "draft.txt").write_text("mine too")
    assert outputs.owned(out) >= {"images/a.tif"}
    assert {"notes.txt", "mine/draft.txt"} <= set(outputs.foreign(out))
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, out)
    assert code == 2 and "was not written by bcseg" in one_line(err)
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("yours", ["added beside its files", "put in place of its own"])
def test_a_failed_replacement_keeps_a_file_added_meanwhile_and_the_old_result(yours, tmp_path):
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
    with pytest.raises(RuntimeError):
        with outputs.claim(folder, "test", replace=True):
            write_text(folder / "b.csv", "new\n")
            if yours == "added beside its files":
                (folder / "notes.txt").write_text("written during the run")
            else:
                write_text(folder / "a.csv", "new!\n")
                _replace_by_hand(folder / "a.csv", "moved onto it")
            raise RuntimeError("disk on fire")
    if yours == "added beside its files":
        assert (folder / "notes.txt").read_text() == "written during the run"
    else:
        assert (folder / "a.csv").read_bytes() == b"xxxxx"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".result.bcseg-old-")]
    assert len(aside) == 1 and (aside[0] / "a.csv").read_text() == "old\n"  # not deleted either
    with pytest.raises(UsageError, match="a killed replacement left the earlier result"):
        with outputs.claim(folder, "test"):
            pass


def test_a_users_file_named_like_the_lock_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / ".p.bcseg-lock").write_text("thesis text")
    code, _, err = run(capsys, "phantom", tmp_path / "p", "--n", "1", "--shape", "8", "24", "24")
    assert code == 2 and ".p.bcseg-lock: is where bcseg keeps its lock" in one_line(err)
    assert (tmp_path / ".p.bcseg-lock").read_text() == "thesis text"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.bcseg-lock"]


def test_an_empty_folder_in_an_unwritable_parent_is_written(tmp_path, capsys, monkeypatch):
    """The lock then lies inside the folder, and it made the folder count as a result."""
    parent = tmp_path / "par"
    (parent / "empty").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access",
                        lambda path, mode, **kw: False if Path(path) == parent else real_access(path, mode, **kw))
    code, _, err = run(capsys, "phantom", parent / "empty", "--n", "1", "--shape", "8", "24", "24")
    assert code == 0, err
    assert (parent / "empty" / "images").is_dir() and not (parent / "empty" / outputs.LOCK_SUFFIX).exists()


def test_settle_puts_a_killed_replacements_earlier_result_back(tmp_path):
    """train --resume read a killed --force run's new config before the claim put the
    old run back; train now settles the folder first."""
    folder = tmp_path / "run"
    with outputs.claim(folder, "train"):
        write_text(folder / "config.toml", "[train]\nepochs = 6\n")
    aside = folder.with_name(f".run{outputs.ASIDE_MARK}{dead_pid()}")
    folder.rename(aside)
    folder.mkdir()  # the killed --force run had started writing its own
    write_text(folder / "config.toml", "[train]\nepochs = 9\n")
    (folder / outputs.RECORD).write_text(json.dumps({"files": {}, "open": {
        "pid": int(aside.name.rsplit("-", 1)[1]), "token": "x", "command": "train", "foreign": [],
        "edited": []}}))
    outputs.settle(folder)
    assert (folder / "config.toml").read_text() == "[train]\nepochs = 6\n" and not aside.exists()


HOLD_A_CLAIM = """
import sys, time
from pathlib import Path
from bcseg import journal, outputs
with outputs.claim(Path(sys.argv[1]), "train"):
    print("holding", flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def claim_held_by_another_run(folder: Path):
    """Inside the block, another process holds bcseg's claim of ``folder``, as a live run does."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_A_CLAIM, str(folder)],
                               env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "holding\n"
        yield
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("held", ["the k-fold run above", "a fold folder inside"])
def test_a_folder_inside_or_around_one_being_written_is_refused(held, tmp_path, capsys):
    """A train into kl/fold_1 while a k-fold run wrote kl was accepted, and the k-fold
    run then wrote over it: each run locked only its own folder."""
    kl = tmp_path / "kl"
    holder_folder, target = (kl, kl / "fold_1") if held == "the k-fold run above" else (kl / "fold_1", kl)
    with claim_held_by_another_run(holder_folder):
        before = hashes(tmp_path)
        if held == "the k-fold run above":
            code, _, err = run(capsys, "phantom", target, "--n", "1", "--shape", "8", "24", "24")
            assert code == 2 and "is inside" in one_line(err) and "is writing" in one_line(err), err
        else:  # the k-fold run resumed around a fold another run writes
            with pytest.raises(UsageError, match="fold_1, which another bcseg run .* is writing"):
                with outputs.claim(target, "train"):
                    pass
        assert hashes(tmp_path) == before


def test_an_output_name_that_leaves_no_room_for_bcsegs_companions_is_refused(tmp_path, capsys):
    out = tmp_path / ("n" * 240)
    code, _, err = run(capsys, "phantom", out, "--n", "1", "--shape", "8", "24", "24")
    assert code == 2 and "the name is 240 bytes; an output folder's name may have" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_a_killed_phantom_left_half_written_is_not_read_as_data(tmp_path, capsys):
    """check (and train) read the 4 finished specimens of a killed 30-specimen phantom as
    a valid dataset."""
    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(8, 24, 24))
    record = json.loads((data / outputs.RECORD).read_text())
    record["open"] = {"pid": int(dead_pid()), "token": "x", "command": "phantom", "foreign": [], "edited": []}
    (data / outputs.RECORD).write_text(json.dumps(record))
    code, _, err = run(capsys, "check", data)
    assert code == 3 and "is the unfinished output of a 'bcseg phantom' run" in one_line(err), err


def _replace_by_hand(path: Path, how: str) -> None:
    """Put the user's own file where bcseg wrote ``path``: over it in place (an editor
    saving, ``cp`` onto it) or moved onto it (``mv``), keeping size and time, so that
    only which file it is tells them apart."""
    old = path.stat()
    if how == "moved onto it":
        mine = path.with_name("mine.tmp")
        mine.write_bytes(b"x" * old.st_size)
        os.utime(mine, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.replace(mine, path)
    else:
        path.write_bytes(b"y" * (old.st_size + 1))


@pytest.mark.parametrize("how", ["moved onto it", "written over it"])
def test_a_file_the_user_put_in_place_of_one_a_failed_run_wrote_is_kept(how, tmp_path):
    """An interrupted all-or-nothing run (ensemble, phantom) deleted every file by the
    names it wrote: one the user had put in place of its file meanwhile went too."""
    folder = tmp_path / "ens"
    with pytest.raises(KeyboardInterrupt):
        with outputs.claim(folder, "ensemble", new=True, all_or_nothing=True):
            write_text(folder / "inference.json", "{}\n")
            write_text(folder / "members.json", "[]\n")
            _replace_by_hand(folder / "inference.json", how)
            raise KeyboardInterrupt
    assert not (folder / "members.json").exists()  # the run's own file: removed
    assert (folder / "inference.json").read_bytes()[:1] in (b"x", b"y")  # yours: kept
    assert "inference.json" not in outputs.owned(folder)


@pytest.mark.parametrize("how", ["moved onto it", "written over it"])
def test_a_file_the_user_put_in_place_of_one_a_run_wrote_is_not_adopted(how, tmp_path, capsys):
    """A finished run recorded every name it wrote as its own: a file the user put in
    place of one of them while it ran became bcseg's, and the next --force deleted it."""
    out = tmp_path / "p"
    with outputs.claim(out, "phantom"):
        write_text(out / "images" / "a.tif", "bcseg's")
        write_text(out / "notes.txt", "bcseg's")
        _replace_by_hand(out / "notes.txt", how)
    assert "images/a.tif" in outputs.owned(out)
    assert "notes.txt" in outputs.foreign(out)
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, out)
    assert code == 2 and "notes.txt" in one_line(err)
    assert hashes(tmp_path) == before


def _kill_phantom_after_notes(folder: Path) -> bool:
    """Run ``phantom`` into ``folder``; save the user's notes and a folder of theirs into
    it after its first image, SIGKILL it two images later, then make another empty
    folder. False when the kill fell between an image's rename and its journal line
    (that image is then not the run's by its journal: safe, but not this test's case)."""
    images = folder / "images"
    process = popen("phantom", folder, "--n", 400, "--shape", 8, 32, 32)
    wait_for(lambda: len(list(images.glob("*.tif"))) >= 1 if images.is_dir() else False, process)
    (folder / "notes.txt").write_text("mine, saved while it ran")
    (folder / "mine").mkdir()
    wait_for(lambda: len(list(images.glob("*.tif"))) >= 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (folder / "figures" / "final").mkdir(parents=True)  # after the kill: empty folders of yours
    journaled = journal.read(folder)
    return all(p.relative_to(folder).as_posix() in journaled for p in folder.rglob("*")
               if p.is_file() and p.name not in (outputs.RECORD, outputs.JOURNAL, "notes.txt")
               and partial_pid(p.name) is None)


def test_what_the_user_added_while_a_killed_run_wrote_is_not_adopted(tmp_path, capsys):
    """After a SIGKILL the next claim adopted every file changed before the dead run's
    last write, and every folder: notes saved into the folder while it ran, and empty
    folders made after the kill, became bcseg's and --force deleted them. The run's
    journal says which files it wrote."""
    for attempt in range(5):
        folder = tmp_path / f"k{attempt}"
        if _kill_phantom_after_notes(folder):
            break
    else:
        pytest.fail("every kill fell between a rename and its journal line")
    before = hashes(tmp_path)
    code, err = _phantom_force(capsys, folder)
    assert code == 2 and "notes.txt: was not written by bcseg" in one_line(err)
    assert_survives(before, tmp_path, changed=(f".{folder.name}{outputs.LOCK_SUFFIX}",))
    (folder / "notes.txt").unlink()
    code, err = _phantom_force(capsys, folder)
    assert code == 2 and "was not written by bcseg" in one_line(err)
    assert (folder / "figures" / "final").is_dir() and (folder / "mine").is_dir()
    for name in ("figures", "mine"):
        shutil.rmtree(folder / name)
    code, err = _phantom_force(capsys, folder)  # the killed run's own files are bcseg's
    assert (code, err) == (0, "")


def _copied_masks(phantom: Path, pred: Path) -> Path:
    pred.mkdir(parents=True)
    for mask in sorted((phantom / "masks" / "observer1").glob("*.tif"))[:2]:
        (pred / f"{mask.stem}_mask.tif").write_bytes(mask.read_bytes())
    return pred


def test_evaluate_force_never_replaces_a_k_fold_runs_test_fold_metrics(tmp_path, capsys, phantom):
    """In a k-fold run each fold's test evaluation was recorded as evaluate's, not the
    run's: 'evaluate --out kf/fold_0 --force' overwrote fold 0's metrics with other
    numbers, leaving its report describing the old ones."""
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nbase_filters = 2\ndepth = 2\n[data]\nsize = 16\n"
                      "[train]\nepochs = 1\nbatch_size = 4\nk = 2\n[inference]\ntune = false\n")
    kf = tmp_path / "kf"  # two folds: fold 1's predictions offered as fold 0's evaluation
    code, _, err = run(capsys, "train", phantom, "--out", kf, "--config", config, "--folds", "all")
    assert code == 0, err
    assert outputs.writers(kf / "fold_0")["metrics.csv"] == "train"
    before = hashes(tmp_path)
    code, _, err = run(capsys, "evaluate", "--pred", kf / "fold_1" / "predictions", "--truth", phantom,
                       "--out", kf / "fold_0", "--force", "--no-report")
    assert code == 2 and "metrics.csv: is the output of 'bcseg train'" in one_line(err)
    assert_survives(before, tmp_path)


def test_evaluate_force_into_a_folder_with_no_evaluation_keeps_its_report(tmp_path, capsys, phantom):
    """'bcseg report' wrote a page in a folder holding no evaluation; evaluate --force
    into it took the page for the report of an evaluation it replaced and deleted it."""
    folder = tmp_path / "study"
    with outputs.claim(folder, "report"):
        write_text(folder / "report.html", "<html>the report of the runs below</html>")
    pred = _copied_masks(phantom, tmp_path / "pred")
    code, _, err = run(capsys, "evaluate", "--pred", pred, "--truth", phantom, "--out", folder,
                       "--force", "--no-report")
    assert code == 0, err
    assert (folder / "report.html").read_text() == "<html>the report of the runs below</html>"


# The next claim killed while it starts: just as it writes the record of what it settled.
KILLED_IN_START = """
import inspect, os, signal, sys
from bcseg import journal, outputs
from bcseg.cli import main
real = outputs.write_text
def write_text(path, *args, **kwargs):
    if inspect.stack()[1].function == "_start":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *args, **kwargs)
outputs.write_text = write_text
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_the_next_claim_starts_keeps_the_killed_runs_files_its_own(tmp_path, capsys, models):
    """The next claim dropped the killed run's journal before writing the record that
    settled it: a kill in between left a record of an open claim with no journal, and
    neither --resume nor --force would touch the killed run's masks again."""
    data, out = _predict_killed_part_way(tmp_path, models)
    done = sorted(p.name for p in out.glob("*_mask.tif"))
    resume = ("predict", data, "--model", models["2d"], "--out", out, "--resume", "--no-progress")
    started = subprocess.run([sys.executable, "-c", KILLED_IN_START, *map(str, resume)],
                             capture_output=True, text=True, env=subprocess_env(), timeout=240)
    assert started.returncode == -signal.SIGKILL, started.stderr
    code, printed, err = run(capsys, *resume)
    assert (code, err) == (0, "")
    assert f"({len(done)} already complete, kept)" in printed
    assert outputs.foreign(out) == []


@pytest.mark.parametrize("kind", ["a file of yours", "a pipe"])
def test_a_users_file_named_like_the_journal_is_refused_and_kept(kind, tmp_path, capsys, models):
    """A file of the user's named .bcseg-outputs.journal was taken for bcseg's: hidden from
    every check and deleted (predict, train --force); a pipe of that name hung the run."""
    data = stacks(tmp_path / "data", 1)
    out = tmp_path / "out"
    out.mkdir()
    journal = out / outputs.JOURNAL
    if kind == "a pipe":
        os.mkfifo(journal)
    else:
        journal.write_text("my notes on the journal club\n")
    result = cli("predict", data / "s0.tif", "--model", models["2d"], "--out", out, "--no-progress",
                 timeout=120)
    assert result.returncode == 2 and "is named like bcseg's journal" in one_line(result.stderr)
    assert sorted(p.name for p in out.iterdir()) == [outputs.JOURNAL]
    if kind != "a pipe":
        assert journal.read_text() == "my notes on the journal club\n"


@pytest.mark.parametrize("damage", ["cut short", "emptied", "not a number"])
def test_report_on_a_damaged_metrics_table_is_one_line_and_redraws_nothing(damage, tmp_path, capsys,
                                                                           phantom):
    """A metrics.csv cut short crashed the report (KeyError) after it had redrawn the
    figures; an emptied one, or a Dice of 'abc', gave a report of blanks."""
    pred = _copied_masks(phantom, tmp_path / "pred")
    ev = tmp_path / "ev"
    code, _, err = run(capsys, "evaluate", "--pred", pred, "--truth", phantom, "--out", ev)
    assert code == 0, err
    table = ev / "metrics.csv"
    text = table.read_text()
    if damage == "cut short":
        table.write_text(text[:len(text.splitlines()[0]) + 40])
    elif damage == "emptied":
        table.write_text("")
    else:
        header, first, *rest = text.splitlines()
        cells = first.split(",")
        cells[header.split(",").index("dice")] = "abc"
        table.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "report", ev)
    assert code == 3 and "metrics.csv" in one_line(err)
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- red team 16: Ctrl-C between files

def _interrupt_after(monkeypatch, name: str) -> None:
    """Ctrl-C the moment bcseg has finished writing a file called ``name``."""
    from bcseg import atomic

    def hook(path):
        if Path(path).name == name:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "WRITE_HOOKS", [*atomic.WRITE_HOOKS, hook])


def _truth_and_two_predictions(tmp_path) -> tuple[Path, Path, Path]:
    truth = tmp_path / "data"
    write_phantom(truth, n=2, shape=(8, 24, 24), seed=3)
    preds = []
    for name, observer in (("pred1", "observer1"), ("pred2", "observer2")):
        folder = tmp_path / name
        for mask in sorted((truth / "masks" / observer).iterdir()):
            io.write_mask(folder / f"{mask.stem}_mask.tif", io.read_mask(mask), io.read_spacing(mask))
        preds.append(folder)
    return truth, *preds


def test_evaluate_force_interrupted_between_its_tables_leaves_no_mixed_evaluation(
        tmp_path, capsys, monkeypatch):
    """New metrics.csv beside the old summary.json was left, recorded as finished, and
    bcseg report drew one page of two evaluations."""
    truth, pred1, pred2 = _truth_and_two_predictions(tmp_path)
    out = tmp_path / "ev"
    assert run(capsys, "evaluate", "--pred", pred1, "--truth", truth, "--out", out)[0] == 0
    _interrupt_after(monkeypatch, "metrics.csv")
    code, _, _ = run(capsys, "evaluate", "--pred", pred2, "--truth", truth, "--out", out, "--force")
    assert code == 130
    assert outputs.listing(out) == set()  # neither table of either evaluation


def test_margins_interrupted_before_its_figure_leaves_no_half_result(tmp_path, capsys, monkeypatch):
    """A Ctrl-C during the figure (a third of the run) left the table without it, and
    with --force a new table beside the old figure."""
    truth, pred1, _ = _truth_and_two_predictions(tmp_path)
    image, tumour, out = truth / "images" / "specimen_000.tif", pred1 / "specimen_000_mask.tif", tmp_path / "m"
    assert run(capsys, "margins", "--image", image, "--tumour", tumour, "--out", out)[0] == 0
    _interrupt_after(monkeypatch, "specimen_000_margins.csv")
    for extra in (["--force", "--close-mm", "9"], []):
        code, _, _ = run(capsys, "margins", "--image", image, "--tumour", tumour, "--out", out, *extra)
        assert code == 130
        assert outputs.listing(out) == set()


def test_evaluate_force_keeps_predicts_quick_look_of_a_case_named_examples(tmp_path, capsys, models):
    """The report's figures examples_*.png were removed by name and owner alone, so
    predict's examples_overlay.png in the same folder went with them."""
    data = tmp_path / "data"
    io.write_image(data / "images" / "examples.tif", RNG.integers(0, 256, (4, 32, 40), dtype=np.uint8))
    io.write_image(data / "images" / "other.tif", RNG.integers(0, 256, (4, 32, 40), dtype=np.uint8))
    for name in ("examples", "other"):
        io.write_mask(data / "masks" / "observer1" / f"{name}.tif", np.ones((4, 32, 40), bool))
    out = tmp_path / "seg"
    assert run(capsys, "predict", data / "images", "--model", models["2d"], "--out", out, "--quicklook",
               "--no-progress")[0] == 0
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, "evaluate", "--pred", out, "--truth", data, "--out", out, *extra)
        assert code == 0, err
    assert (out / "examples_overlay.png").is_file()


def test_resume_remakes_masks_another_model_or_threshold_made(tmp_path, capsys, models):
    """Red team 16: --resume counted every mask bcseg wrote as complete, whatever model
    or threshold made it, so an interrupted predict --force finished with --resume left
    a folder of two models' masks, which evaluate scored as one model."""
    data = stacks(tmp_path / "data", 2)
    out = tmp_path / "seg"
    argv = ("predict", data, "--model", models["2d"], "--out", out, "--no-progress")
    assert run(capsys, *argv)[0] == 0
    code, text, err = run(capsys, *argv, "--resume")
    assert code == 0 and "segmented 0 of 2" in text and "2 already complete, kept" in text, err
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.tif")}
    code, text, err = run(capsys, *argv, "--resume", "--threshold", "0.9")
    assert code == 0 and "segmented 2 of 2" in text, text
    assert "2 mask(s) in" in err and "were made with another model or other settings" in err
    assert all(p.stat().st_mtime_ns != first[p.name] for p in out.glob("*_mask.tif"))
    code, text, _ = run(capsys, *argv, "--resume", "--threshold", "0.9")
    assert code == 0 and "2 already complete, kept" in text


def test_a_report_of_a_folder_of_runs_leaves_each_run_resumable_and_forceable(tmp_path, capsys):
    """Red team 16: report EXP redrew each run's curves and recorded them in EXP's record
    only; the run's own record then found them changed, and train --resume and --force
    of EXP/r1 were refused with 'was not written by bcseg'."""
    run_dir = tmp_path / "EXP" / "r1"
    with outputs.claim(run_dir, "train"):
        write_text(run_dir / "config.toml", "[train]\nepochs = 2\n")
        write_text(run_dir / "history.csv", "epoch,loss,dice,val_loss,val_dice\n0,0.8,0.3,0.9,0.2\n")
        write_text(run_dir / "loss.png", "an old figure\n")  # as train draws its curves
    time.sleep(0.01)  # the redrawn figure gets another modification time
    code, _, err = run(capsys, "report", tmp_path / "EXP")
    assert code == 0, err
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"  # redrawn
    assert outputs.foreign(run_dir) == []  # every file is bcseg's, by the run's own record
    outputs.check_one_writer(run_dir, "train")  # train --force may replace it


def test_resume_keeps_masks_of_the_same_ensemble_named_another_way(tmp_path, capsys, models):
    """Red team 17: the digest held each member's path as typed, so the same two models
    given as /abs/m.keras and /abs/x/../m.keras had every mask segmented again."""
    data = stacks(tmp_path / "data", 2)
    (tmp_path / "m").mkdir()
    second = tmp_path / "m" / "second.keras"
    shutil.copyfile(models["2d"], second)
    out = tmp_path / "seg"
    assert run(capsys, "predict", data, "--model", models["2d"], "--model", second, "--out", out,
               "--no-progress")[0] == 0
    same = tmp_path / "m" / ".." / "m" / "second.keras"
    code, text, err = run(capsys, "predict", data, "--model", models["2d"], "--model", same, "--out", out,
                          "--no-progress", "--resume")
    assert code == 0 and "2 already complete, kept" in text and "another model" not in err, (text, err)


def test_a_ctrl_c_while_a_finished_result_is_recorded_waits_until_it_is(tmp_path, monkeypatch):
    """Red team 17: Ctrl-C while a claim recorded its finished result left the record
    open, so the next run took the result for a killed run's (export-nnunet: 'unfinished
    output'; train --force: the old run put back over the new, finished one)."""
    real = outputs._finish

    def finish_with_ctrl_c(*args, **kwargs):
        # raise_signal, not os.kill: a process's signal may go to one of TensorFlow's
        # threads, and then Python runs the handler only when the main thread next looks
        # (once 1 run in ~4 under load, after the block: the test failed, not the hold)
        signal.raise_signal(signal.SIGINT)  # handled here, unless it is held
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, "_finish", finish_with_ctrl_c)
    folder = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt):  # delivered once the result is recorded
        with outputs.claim(folder, "test"):
            write_text(folder / "a.csv", "ours\n")
    record = json.loads((folder / outputs.RECORD).read_text())
    assert "open" not in record and list(record["files"]) == ["a.csv"]
    assert outputs.foreign(folder) == [] and not list(tmp_path.glob(".*lock*"))


def test_a_file_put_into_the_replaced_result_meanwhile_keeps_it(tmp_path):
    """The old result moved aside held only bcseg's files when moved; one the user put
    into it while the replacement ran was deleted with it."""
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
    with pytest.warns(UserWarning, match="was put into the replaced result"):
        with outputs.claim(folder, "test", replace=True):
            aside = next(tmp_path.glob(f".result{outputs.ASIDE_MARK}*"))
            (aside / "notes.txt").write_text("mine")
            write_text(folder / "a.csv", "new\n")
    assert (aside / "notes.txt").read_text() == "mine" and (folder / "a.csv").read_text() == "new\n"


def test_a_file_put_at_the_locks_name_meanwhile_is_not_removed(tmp_path):
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        lock = tmp_path / f".result{outputs.LOCK_SUFFIX}"
        lock.unlink()
        lock.write_text("mine")
    assert lock.read_text() == "mine"


# --------------------------------------------------------------------------- red team 18

def _dataset_of_six_large_stacks(root: Path) -> Path:
    """Six stacks large enough to stop predict between two of them, with one observer."""
    stacks(root / "images", 6, shape=KILL_SHAPE)
    mask = np.zeros(KILL_SHAPE, bool)
    mask[8:24, 64:192, 64:192] = True
    for i in range(6):
        io.write_mask(root / "masks" / "observer1" / f"s{i}.tif", mask, (0.5, 0.2, 0.2))
    return root


def _predict_stopped_after_a_mask(inputs: Path, out: Path, models) -> None:
    """A `bcseg predict` process sent SIGTERM once its first mask is written."""
    process = popen("predict", inputs, "--model", models["2d"], "--out", out, "--no-progress")
    wait_for(lambda: out.is_dir() and any(out.glob("*_mask.tif")) and partials(out), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    # stopped, not finished: what these tests check is the folder it leaves. (Exit 130 is
    # test_sigterm_during_predict_is_an_interruption's; here it once exited 1 under load)
    assert process.returncode != 0 and len(list(out.glob("*_mask.tif"))) < 6, err


def test_a_predict_stopped_in_this_process_is_not_scored_by_it_either(tmp_path, capsys, monkeypatch, models):
    """An API user (or a notebook) whose predict_files failed part-way, then evaluated
    the folder in the same Python process: the open record was this process's, so it was
    taken for a live claim of its own and the masks so far were scored as the study."""
    import bcseg.infer.segment

    truth = tmp_path / "truth"
    stacks(truth / "images", 2)
    for i in range(2):
        io.write_mask(truth / "masks" / "observer1" / f"s{i}.tif", np.ones((4, 32, 40), bool), (0.5, 0.2, 0.2))
    real, done = bcseg.infer.segment._segment_file, []

    def second_fails(*args, **kwargs):
        if done:
            raise OSError(5, "Input/output error")
        done.append(real(*args, **kwargs))
        return done[-1]

    monkeypatch.setattr(bcseg.infer.segment, "_segment_file", second_fails)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        bcseg.infer.segment.predict_files(models["2d"], truth / "images", out, progress=False)
    assert len(list(out.glob("*_mask.tif"))) == 1
    code, _, err = run(capsys, "evaluate", "--pred", out, "--truth", truth, "--out", tmp_path / "ev")
    assert code == 3 and "unfinished output of a 'bcseg predict' run" in one_line(err)
    assert not (tmp_path / "ev").exists()
    monkeypatch.undo()  # and this process's --resume finishes it, as another's would
    bcseg.infer.segment.predict_files(models["2d"], truth / "images", out, progress=False, resume=True)
    assert outputs.unfinished_claim(out) is None and outputs.foreign(out) == []
    assert sorted(outputs.owned(out)) == ["s0_mask.tif", "s1_mask.tif"]


def test_a_stopped_predict_is_not_scored_as_a_finished_one(tmp_path, capsys, models):
    """SIGTERM part-way through predict closed the folder's record as if the run had
    finished: evaluate then scored the masks so far as the whole study, exit 0, the
    missing cases only "left out" as a run's test fold leaves cases out."""
    truth, out = _dataset_of_six_large_stacks(tmp_path / "truth"), tmp_path / "out"
    images = truth / "images"
    _predict_stopped_after_a_mask(images, out, models)
    code, _, err = run(capsys, "evaluate", "--pred", out, "--truth", truth, "--out", tmp_path / "ev")
    assert code == 3 and "unfinished output of a 'bcseg predict' run" in one_line(err)
    assert not (tmp_path / "ev").exists()
    code, _, _ = run(capsys, "predict", images, "--model", models["2d"], "--out", out,
                     "--resume", "--no-progress")
    assert code == 0 and outputs.unfinished_claim(out) is None
    assert len(list(out.glob("*_mask.tif"))) == 6


def test_a_predict_stopped_before_its_first_mask_leaves_the_earlier_result_finished(tmp_path):
    """The record, written through the same hook as the masks, counted as something the
    stopped run wrote: an earlier finished result was marked unfinished, and evaluate
    refused it."""
    folder = tmp_path / "pred"
    with outputs.claim(folder, "predict", open_on_failure=True):
        write_text(folder / "a_mask.tif", "an earlier run's mask")
    with pytest.raises(KeyboardInterrupt):
        with outputs.claim(folder, "predict", open_on_failure=True):
            raise KeyboardInterrupt  # Ctrl-C while the first stack is segmented
    record = json.loads((folder / outputs.RECORD).read_text())
    assert "open" not in record and list(record["files"]) == ["a_mask.tif"]
    with pytest.raises(KeyboardInterrupt):
        with outputs.claim(folder, "predict", open_on_failure=True):
            write_text(folder / "b_mask.tif", "this run's first mask")
            raise KeyboardInterrupt
    assert json.loads((folder / outputs.RECORD).read_text())["open"]["command"] == "predict"


def test_a_predict_into_its_datasets_folder_stopped_part_way_can_be_resumed(tmp_path, capsys, models):
    """Every reader refused the dataset holding a stopped predict's open record, predict
    --resume and --force included (they read their inputs from it): only deleting the
    record by hand got out."""
    data = _dataset_of_six_large_stacks(tmp_path / "data")
    _predict_stopped_after_a_mask(data, data, models)
    assert run(capsys, "check", data)[0] == 0  # the masks beside the layout are no cases
    code, _, err = run(capsys, "predict", data, "--model", models["2d"], "--out", data,
                       "--resume", "--no-progress")
    assert code == 0, err
    assert len(list(data.glob("*_mask.tif"))) == 6 and outputs.unfinished_claim(data) is None


@pytest.mark.parametrize("name", ["manifest.csv", "folds.csv", "channels.json"])
def test_split_never_writes_a_file_the_dataset_would_read_as_its_own(tmp_path, capsys, phantom, name):
    """split DATA --out DATA/manifest.csv wrote its JSON where the dataset's manifest is
    read from: every command then failed on the dataset ('manifest lacks column(s) id')."""
    data = _copy_tree(phantom, tmp_path / "data")
    before = hashes(tmp_path)
    code, _, err = run(capsys, "split", data, "--out", data / name, "--k", 3)
    assert code == 2 and "choose another name" in one_line(err)
    assert hashes(tmp_path) == before
    assert run(capsys, "check", data)[0] == 0


@pytest.mark.parametrize("name", ["report.html", "margins.csv", "S_mask.tif", "splits", "model_best.onnx"])
def test_split_writes_only_a_json_file(tmp_path, capsys, phantom, name):
    """split wrote its JSON at any name: as ev/report.html or seg/margins.csv it took
    the place of another command's output, which that command then rewrote (or read)
    as its own: a plain evaluate --out ev drew its report over it, a plain predict --out
    seg emptied it as its margins table. A splits file is named *.json, or refused
    before anything is written."""
    out = tmp_path / "out" / name
    code, _, err = run(capsys, "split", phantom, "--out", out, "--k", 3)
    assert code == 2 and "must end in .json" in one_line(err) and str(out) in one_line(err)
    assert not out.parent.exists()
    assert run(capsys, "split", phantom, "--out", out.with_name("s.JSON"), "--k", 3)[0] == 0


@pytest.mark.parametrize("name", [".bcseg-outputs.journal", ".bcseg-outputs.json", ".s.bcseg-lock",
                                  ".s.bcseg-partial-999999.json", ".s.bcseg-old-12"])
def test_split_never_writes_at_a_name_bcseg_keeps_for_itself(tmp_path, capsys, phantom, name):
    """split --out out/.bcseg-outputs.journal wrote the splits over the folder's journal;
    every later command into out/ refused it ('is named like bcseg's journal ... but is
    not one'), and the splits were recorded nowhere."""
    out = tmp_path / "out" / name
    code, _, err = run(capsys, "split", phantom, "--out", out, "--k", 3)
    assert code == 2 and "keeps for its own records" in one_line(err)
    assert not out.parent.exists()


def test_a_run_stopped_while_its_test_fold_is_segmented_is_resumed_not_finished(
        tmp_path, capsys, monkeypatch, phantom):
    """Ctrl-C after fitting, while the test fold was segmented (minutes on real stacks):
    inference.json, the mark of a finished fold, was already written, so the run passed
    for a finished one (predict and ensemble took it) and --resume said 'fold 0 already
    finished' and left it with no predictions, metrics or report."""
    from bcseg import after_fit

    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nbase_filters = 2\ndepth = 2\n[data]\nsize = 16\n[train]\n"
                      "epochs = 1\nbatch_size = 4\nk = 3\n[inference]\ntune = false\n")
    out = tmp_path / "run"
    real = after_fit.predict_test

    def stopped(*args, **kwargs):  # once the test fold is segmented, before it is scored
        real(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(after_fit, "predict_test", stopped)
        code, _, _ = run(capsys, "train", phantom, "--out", out, "--config", config)
    assert code == 130 and (out / "model_best.keras").is_file()
    assert not (out / "inference.json").exists()  # not finished: predict and ensemble refuse it
    # nor is its test fold scored as finished (evaluate took what masks there were)
    assert list((out / "predictions").glob("*_mask.tif"))
    code, _, err = run(capsys, "evaluate", "--pred", out / "predictions", "--truth", phantom,
                       "--out", tmp_path / "ev")
    assert code == 3 and "the test fold of a training run that has not finished" in one_line(err)
    assert not (tmp_path / "ev").exists()
    code, printed, _ = run(capsys, "train", phantom, "--out", out, "--config", config, "--resume")
    assert code == 0 and "already finished" not in printed
    assert all((out / name).is_file() for name in ("inference.json", "metrics.csv", "summary.json"))
    assert list((out / "predictions").glob("*_mask.tif"))
    code, _, _ = run(capsys, "evaluate", "--pred", out / "predictions", "--truth", phantom,
                     "--out", tmp_path / "ev")
    assert code == 0  # finished now


# --------------------------------------------------------------------------- a file saved as bcseg deletes

def _saving_a_file_once_judged(monkeypatch, where, check="foreign", name="notes.txt"):
    """After bcseg judged a folder to hold only its own files (``foreign`` or
    ``_added_meanwhile``), the user saves a file into it: the instant between that check
    and the deletion, where ``shutil.rmtree`` deleted whatever it found."""
    saved = []

    def wrap(real):
        def judged_then_saved(folder, *args):
            answer = real(folder, *args)
            if where(Path(folder)) and not saved:
                (Path(folder) / name).write_text("the user's")
                saved.append(Path(folder) / name)
            return answer
        return judged_then_saved

    monkeypatch.setattr(outputs, check, wrap(getattr(outputs, check)))
    return saved


def _finished_result(folder: Path, text: str = "old\n") -> Path:
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", text)
    return folder


def test_a_file_saved_into_the_replaced_result_as_it_is_deleted_is_kept(tmp_path, monkeypatch):
    folder = _finished_result(tmp_path / "result")
    saved = _saving_a_file_once_judged(monkeypatch, lambda f: outputs.ASIDE_MARK in f.name)
    with pytest.warns(UserWarning, match="was put into the replaced result while it was deleted"):
        with outputs.claim(folder, "test", replace=True):
            write_text(folder / "a.csv", "new\n")
    assert len(saved) == 1 and saved[0].read_text() == "the user's"
    assert sorted(p.name for p in saved[0].parent.iterdir()) == ["notes.txt"]  # the old result went
    assert (folder / "a.csv").read_text() == "new\n"


def test_an_interrupted_replacement_that_keeps_the_old_result_aside_does_not_say_it_is_back(tmp_path):
    """train --force stopped before its first epoch says the old run 'is as it was' when
    the claim put it back; with a file of the user's in the new folder the old run stays
    aside instead, and the message must not say otherwise."""
    folder = _finished_result(tmp_path / "result")
    with pytest.raises(KeyboardInterrupt) as stopped:
        with outputs.claim(folder, "test", replace=True):
            write_text(folder / "b.csv", "new\n")
            (folder / "notes.txt").write_text("the user's")
            raise KeyboardInterrupt
    aside = tmp_path / f".result{outputs.ASIDE_MARK}{os.getpid()}"
    assert (aside / "a.csv").read_text() == "old\n" and stopped.value.bcseg_old_result_back is False
    other = _finished_result(tmp_path / "other")
    with pytest.raises(KeyboardInterrupt) as stopped:  # and when it is put back, it says so
        with outputs.claim(other, "test", replace=True):
            raise KeyboardInterrupt
    assert stopped.value.bcseg_old_result_back is True and (other / "a.csv").read_text() == "old\n"


def test_a_file_saved_into_a_failed_replacement_as_it_is_undone_is_kept(tmp_path, monkeypatch):
    folder = _finished_result(tmp_path / "result")
    saved = _saving_a_file_once_judged(monkeypatch, lambda f: f.name == "result", "_added_meanwhile")
    with pytest.raises(RuntimeError):
        with outputs.claim(folder, "test", replace=True):
            write_text(folder / "b.csv", "new\n")
            raise RuntimeError("the new run fails")
    assert saved == [folder / "notes.txt"] and saved[0].read_text() == "the user's"
    aside = tmp_path / f".result{outputs.ASIDE_MARK}{os.getpid()}"
    assert (aside / "a.csv").read_text() == "old\n"  # kept aside, not deleted either
    monkeypatch.undo()
    with pytest.raises(UsageError, match="a killed replacement left the earlier result"):
        with outputs.claim(folder, "test"):
            pass


def test_a_file_saved_into_a_finished_replacements_leftover_as_it_is_deleted_is_kept(tmp_path, monkeypatch):
    folder = _finished_result(tmp_path / "result", "new\n")
    leftover = _finished_result(tmp_path / f".result{outputs.ASIDE_MARK}{dead_pid()}")
    saved = _saving_a_file_once_judged(monkeypatch, lambda f: f == leftover)
    with pytest.warns(UserWarning, match="a killed replacement left beside result"):
        with outputs.claim(folder, "test"):
            pass
    assert saved == [leftover / "notes.txt"] and saved[0].read_text() == "the user's"
    assert not (leftover / "a.csv").exists() and (folder / "a.csv").read_text() == "new\n"


def test_a_file_saved_into_a_killed_replacements_new_content_as_it_is_deleted_is_kept(tmp_path, monkeypatch):
    folder = _finished_result(tmp_path / "result")
    pid = dead_pid()
    leftover = folder.rename(tmp_path / f".result{outputs.ASIDE_MARK}{pid}")
    folder.mkdir()  # the killed --force run's new content, its record still open
    write_text(folder / "b.csv", "new\n")
    (folder / outputs.RECORD).write_text(json.dumps({"files": {}, "open": {
        "pid": int(pid), "token": "a dead run's", "command": "test", "foreign": [], "edited": []}}))
    saved = _saving_a_file_once_judged(monkeypatch, lambda f: f.name == "result")
    with pytest.raises(UsageError, match="notes.txt: was not written by bcseg; a killed replacement"):
        with outputs.claim(folder, "test"):
            pass
    assert saved == [folder / "notes.txt"] and saved[0].read_text() == "the user's"
    assert (leftover / "a.csv").read_text() == "old\n"


def test_a_file_saved_into_an_abandoned_folder_as_it_is_deleted_is_kept(tmp_path, monkeypatch):
    stage = _finished_result(tmp_path / f".export{PARTIAL_MARK}{dead_pid()}")
    record = json.loads((stage / outputs.RECORD).read_text())
    record["open"] = {"pid": int(dead_pid()), "token": "a dead run's", "command": "export-nnunet"}
    (stage / outputs.RECORD).write_text(json.dumps(record))
    saved = _saving_a_file_once_judged(monkeypatch, lambda f: f == stage)
    assert outputs.remove_abandoned(stage) is False
    assert saved == [stage / "notes.txt"] and saved[0].read_text() == "the user's"
    assert not (stage / "a.csv").exists()


def test_a_result_moved_into_the_replaced_result_as_it_is_deleted_keeps_its_record(tmp_path, monkeypatch):
    """A record (and journal) is bcseg's by its name, but one that was not in the folder
    when it was judged came with what the user put there: a finished result of theirs,
    moved in as the old one is deleted, stays whole, still known as bcseg's."""
    folder = _finished_result(tmp_path / "result")
    mine = _finished_result(tmp_path / "mine", "mine\n")
    moved = []
    real = outputs.foreign

    def judged_then_moved(path, *args):
        answer = real(path, *args)
        if outputs.ASIDE_MARK in Path(path).name and not moved:
            moved.append(mine.rename(Path(path) / "mine"))
        return answer

    monkeypatch.setattr(outputs, "foreign", judged_then_moved)
    with pytest.warns(UserWarning, match="was put into the replaced result while it was deleted"):
        with outputs.claim(folder, "test", replace=True):
            write_text(folder / "a.csv", "new\n")
    assert len(moved) == 1 and (moved[0] / "a.csv").read_text() == "mine\n"
    assert (moved[0] / outputs.RECORD).is_file() and outputs.owned(moved[0]) == {"a.csv"}


def test_a_replaced_result_moved_away_and_linked_back_as_it_is_deleted_is_kept(tmp_path, monkeypatch):
    """The user moves the old result elsewhere, and links it back under its name, right
    after bcseg judged it: the deletion does not follow the link (shutil.rmtree refused
    a link; a walk from the folder's name went through it and deleted the moved files)."""
    folder = _finished_result(tmp_path / "result")
    kept = tmp_path / "kept"
    moved = []
    real = outputs.foreign

    def judged_then_moved(path, *args):
        answer = real(path, *args)
        if outputs.ASIDE_MARK in Path(path).name and not moved:
            Path(path).rename(kept)
            Path(path).symlink_to(kept)
            moved.append(kept)
        return answer

    monkeypatch.setattr(outputs, "foreign", judged_then_moved)
    with pytest.warns(UserWarning):
        with outputs.claim(folder, "test", replace=True):
            write_text(folder / "a.csv", "new\n")
    assert moved and (kept / "a.csv").read_text() == "old\n"
    assert (kept / outputs.RECORD).is_file()


def test_a_folder_of_bcseg_files_is_deleted_whole(tmp_path):
    """The other side of the tests above: with nothing saved meanwhile, all of it goes,
    nested folders included."""
    folder = _finished_result(tmp_path / "result")
    with outputs.claim(folder, "test"):
        write_text(folder / "sub" / "deeper" / "b.csv", "ours\n")
    assert outputs.remove_if_ours(folder) == [] and not folder.exists()


def test_deleting_a_judged_folder_never_follows_its_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not in the folder")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.csv").write_text("x")
    (folder / "to_file").symlink_to(outside / "keep.txt")
    (folder / "sub" / "to_dir").symlink_to(outside)
    assert outputs.delete_judged(folder, outputs.files_now(folder)) == [] and not folder.exists()
    assert (outside / "keep.txt").read_text() == "not in the folder"


@pytest.mark.parametrize("kind", ["folder", "named pipe", "broken link", "nested too deeply"])
def test_a_record_that_is_no_file_is_refused_before_writing(kind, tmp_path, models, phantom, capsys):
    """An output folder whose .bcseg-outputs.json was a named pipe blocked predict forever
    (the record is read before writing); a folder there failed with IsADirectoryError
    (exit 1) once the masks were written; a record nested too deeply for the JSON parser
    was a RecursionError (exit 1)."""
    out = tmp_path / "out"
    out.mkdir()
    record = out / outputs.RECORD
    if kind == "folder":
        record.mkdir()
    elif kind == "named pipe":
        os.mkfifo(record)
    elif kind == "broken link":
        record.symlink_to(tmp_path / "gone.json")
    else:
        record.write_text("[" * 100_000 + "]" * 100_000)

    def stuck(signum, frame):
        raise TimeoutError("predict blocked on a named pipe")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(120)
    try:
        code, _, err = run(capsys, "predict", phantom / "images" / "specimen_000.tif",
                           "--model", models["2d"], "--out", out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if kind == "nested too deeply":  # unreadable, as a damaged record: nothing in it is bcseg's
        assert code == 0 and (out / "specimen_000_mask.tif").is_file(), err
        return
    assert code == 2, err
    assert one_line(err).startswith(f"bcseg: error: {record}: is not a file"), err
    assert sorted(p.name for p in out.iterdir()) == [outputs.RECORD]


@pytest.mark.parametrize("argv", [
    ["train", "DATA", "--out", ""],
    ["predict", "DATA", "--out", " "],
    ["evaluate", "--pred", "DATA", "--truth", "DATA", "--out", ""],
    ["ensemble", "DATA", "--model", "DATA", "--out", ""],
    ["phantom", ""],
    ["export-nnunet", "DATA", "", "--dataset-id", "7", "--name", "X"],
])
def test_an_empty_output_folder_is_a_usage_error_not_the_current_folder(argv, tmp_path, capsys,
                                                                        monkeypatch):
    """`--out ''` is the current folder to Path(): train was refused naming some file of
    the user's there (or, in an empty folder, would have written the run into it)."""
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = hashes(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "must name a folder, got ''" in err, err
    assert hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("damage", ["bit rot", "not a zip"])
def test_resume_from_a_damaged_checkpoint_is_one_line_naming_it_and_changes_nothing(
        damage, tmp_path, capsys, phantom):
    """A checkpoint damaged where its record cannot see it (bits flipped on the disk, the
    size and time as bcseg left them) was loaded only inside the run: 'BadZipFile: Bad
    CRC-32 for file model.weights.h5', exit 1, naming no file, after fold.json and the
    log were written again."""
    import zipfile

    from bcseg.learn import train

    run_dir = tmp_path / "run"
    tiny = {"model": {"base_filters": 4, "depth": 2}, "data": {"size": 32},
            "train": {"epochs": 1, "batch_size": 8, "k": 5}}
    train.train(phantom, run_dir, overrides=tiny)  # fitted, not finished: no inference.json
    state = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    checkpoint = run_dir / state["checkpoint"]
    data = bytearray(checkpoint.read_bytes())
    if damage == "bit rot":
        with zipfile.ZipFile(checkpoint) as archive:
            entry = archive.getinfo("model.weights.h5")
        start = entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + entry.compress_size // 2
        data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    else:
        data[:] = b"\0" * len(data)
    times = checkpoint.stat()
    checkpoint.write_bytes(bytes(data))  # model_last.keras is the same file, linked
    os.utime(checkpoint, ns=(times.st_atime_ns, times.st_mtime_ns))
    before = hashes(tmp_path)
    code, _, err = run(capsys, "train", phantom, "--out", run_dir, "--resume")
    assert code == 4 and f"{checkpoint}: " in one_line(err) and "cannot be resumed" in err, err
    assert hashes(tmp_path) == before


# --------------------------------------------------------------------------- fourth red-team pass

@pytest.mark.parametrize("command", ["phantom", "split"])
def test_an_output_that_goes_up_out_of_a_link_is_refused_and_changes_nothing(tmp_path, capsys, phantom,
                                                                           command):
    """'--out lk/..' with lk a link into a result is the folder above the link's target
    to the system, the folder holding the link to a shell's cd: phantom --force moved the
    result aside, then could not make 'lk/..' (its link now led nowhere), exit 1 with a
    FileNotFoundError, and the result was left aside, not put back."""
    data = tmp_path / "ph"
    write_phantom(data, n=1, shape=(8, 16, 16))
    (tmp_path / "lk").symlink_to(data / "images", target_is_directory=True)
    argv = {"phantom": ["phantom", "{}", "--n", "1", "--shape", "8", "16", "16", "--force"],
            "split": ["split", phantom, "--out", "{}/splits.json", "--k", "3"]}[command]
    before = hashes(tmp_path)
    listed = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, *(str(a).format(tmp_path / "lk" / "..") for a in argv))
    assert code == 2 and "is a link" in one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == listed
    assert_survives(before, tmp_path)


def _mounted_tmpfs(folder: Path) -> bool:
    """Mount a small tmpfs at ``folder`` (only root may): whether it worked."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("how", ["patched", "mounted"])
def test_force_on_a_mount_point_is_refused_before_any_work(tmp_path, capsys, monkeypatch, how):
    """A mount point (a USB disk, a container's volume: docker -v ...:/out) cannot be
    moved aside: phantom --force failed with 'OSError: [Errno 16] Device or resource
    busy', exit 1, and train only after its training."""
    out = tmp_path / "out"
    if how == "mounted":
        if not _mounted_tmpfs(out):
            pytest.skip("mounting a tmpfs needs root")
    else:
        real = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    try:
        argv = ["phantom", out, "--n", "1", "--shape", "8", "16", "16"]
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        before = hashes(tmp_path)
        code, _, err = run(capsys, *argv, "--force")
        assert code == 2 and "is a mount point" in one_line(err), err
        assert_survives(before, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    finally:
        if how == "mounted":
            subprocess.run(["umount", str(out)], check=False)


@pytest.mark.parametrize("how", ["patched", "mounted"])
def test_an_nnunet_dataset_folder_that_is_a_mount_point_is_refused_before_any_work(
        tmp_path, capsys, monkeypatch, phantom, how):
    """The export is written beside DatasetXXX_NAME and moved in: into a disk mounted
    there the first move failed, 'OSError: [Errno 18] Invalid cross-device link', exit 1,
    after every image had been written."""
    dest = tmp_path / "raw" / "Dataset009_Z"
    if how == "mounted":
        (tmp_path / "raw").mkdir()
        if not _mounted_tmpfs(dest):
            pytest.skip("mounting a tmpfs needs root")
    else:
        dest.mkdir(parents=True)
        real = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == dest or real(p))
    try:
        before = hashes(tmp_path)
        code, _, err = run(capsys, "export-nnunet", phantom, tmp_path / "raw", "--dataset-id", "9",
                           "--name", "Z", "--k", "2")
        assert code == 2 and "is on another file system" in one_line(err), err
        assert_survives(before, tmp_path)
        assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset009_Z"]
        assert not any(dest.iterdir())
    finally:
        if how == "mounted":
            subprocess.run(["umount", str(dest)], check=False)


@pytest.mark.parametrize("command", ["phantom", "split", "evaluate", "export-nnunet"])
def test_an_output_path_longer_than_the_system_allows_is_one_short_line(tmp_path, capsys, phantom,
                                                                        command):
    """Every name in it legal, the whole path over the system's limit (4096 bytes on
    Linux): 'OSError: [Errno 36] File name too long', exit 1, the whole path in the line."""
    deep = tmp_path.joinpath(*["d" * 200] * 22)
    argv = {"phantom": ["phantom", deep, "--n", "1"],
            "split": ["split", phantom, "--out", deep / "splits.json"],
            "evaluate": ["evaluate", "--pred", tmp_path, "--truth", phantom, "--out", deep],
            "export-nnunet": ["export-nnunet", phantom, deep, "--dataset-id", "3", "--name", "Q"]}[command]
    code, _, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2 and "choose a shorter path" in line and len(line) < 300, err
    assert list(tmp_path.iterdir()) == []


def test_force_on_a_folder_inside_another_commands_result_names_that_command(tmp_path, capsys):
    """phantom data/images --force, data a phantom: 'data/images/specimen_000.tif: was not
    written by bcseg', a file bcseg wrote, recorded in the folder above."""
    data = tmp_path / "data"
    write_phantom(data, n=1, shape=(8, 16, 16))
    before = hashes(tmp_path)
    code, _, err = run(capsys, "phantom", data / "images", "--n", "1", "--shape", "8", "16", "16", "--force")
    line = one_line(err)
    # the phantom's images/ is a dataset's folder, which may be said first
    said = ("is the output of 'bcseg phantom'", "is a folder of the dataset")
    assert code == 2 and any(words in line for words in said) and "not written" not in line, err
    assert_survives(before, tmp_path)


# --------------------------------------------------------------------------- the same folder by another path

@pytest.fixture
def bind_mount():
    """``bind_mount(source, target)``: ``target`` shows ``source`` (a second path to the
    same folder, as a container's volume or a cluster's second mount gives). Needs the
    right to mount (root); skipped without it. Unmounted after the test."""
    mounted = []

    def mount(source: Path, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_replacing_never_removes_an_input_reached_through_a_bind_mount(tmp_path, bind_mount):
    """The input named by another path to the same folder (a bind mount, which no link
    resolving sees through): compared by path only, the folder holding the input was
    moved aside and, with the new result complete, deleted, the input with it."""
    folder = tmp_path / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "images" / "a.tif", "bcseg wrote this, but it is now an input")
    alias = bind_mount(folder, tmp_path / "alias")
    before = hashes(folder)
    with pytest.raises(UsageError, match="contains the input"):
        with outputs.claim(folder, "test", replace=True, inputs=[alias / "images" / "a.tif"]):
            pass
    assert hashes(folder) == before


def test_train_force_never_replaces_a_run_whose_maps_it_reads_through_a_bind_mount(
        tmp_path, capsys, phantom, bind_mount):
    """test_train_force_never_replaces_a_run_holding_a_later_channel_of_the_data, with the
    manifest naming the run's maps through a second mount of its folder: train --force
    trained on them, then deleted the old run and the maps with it."""
    run_dir = _run_with_maps(tmp_path / "run", phantom)
    alias = bind_mount(run_dir, tmp_path / "mnt" / "run")
    manifest = _cascade_manifest(tmp_path / "cascade.csv", phantom, alias)
    before = hashes(run_dir)
    code, _, err = run(capsys, "train", manifest, "--out", run_dir, "--force", "--epochs", "1")
    assert code == 2 and f"{run_dir}: contains the input" in one_line(err)
    assert hashes(run_dir) == before


def test_predict_never_removes_an_input_named_through_a_bind_mount(tmp_path, capsys, models,
                                                                   bind_mount):
    """test_predict_never_replaces_or_removes_its_own_inputs, with the earlier map named
    through a second mount of the output folder: it was deleted as the case's stale
    companion, then reading it failed ('mnt/s0_prob.tif: file not found'); with
    --save-prob it was replaced before it was read."""
    data = stacks(tmp_path / "data", 1)
    out = tmp_path / "out"
    code, _, err = run(capsys, "predict", data / "s0.tif", "--model", models["2d"], "--out", out,
                       "--save-prob", "--no-progress")
    assert code == 0, err
    alias = bind_mount(out, tmp_path / "mnt")
    before = hashes(out)
    for extra in ((), ("--save-prob",)):
        code, _, err = run(capsys, "predict", data / "s0.tif", alias / "s0_prob.tif", "--model",
                           models["2d"], "--out", out, "--force", "--no-progress", *extra)
        assert code == 2 and "s0_prob.tif: is an input of this command" in one_line(err)
        assert hashes(out) == before


def test_a_folder_being_written_is_refused_under_another_path_to_it(tmp_path, bind_mount):
    """Each run locked the folder by its path (a lock file beside it): the same folder
    given by a second mount was claimed while another run wrote it, and that claim took
    the live run's open record for a dead one's, settling and rewriting it."""
    out = tmp_path / "out"
    out.mkdir()
    alias = bind_mount(out, tmp_path / "mnt")
    with claim_held_by_another_run(out):
        before = hashes(out)
        with pytest.raises(UsageError, match="is being written by another bcseg run"):
            with outputs.claim(alias, "predict"):
                pass
        assert hashes(out) == before


@pytest.mark.parametrize("name, said", [("Channels.json", "choose another name"),
                                        ("CHANNELS.JSON", "choose another name"),
                                        (".BCSEG-OUTPUTS.json", "a name bcseg keeps for its own records")])
def test_split_never_writes_a_name_the_dataset_or_bcseg_reads_in_another_letter_case(
        tmp_path, capsys, phantom, name, said):
    """The names a dataset is read by (channels.json) and bcseg's own (its record) were
    compared letter for letter. On a file system that ignores letter case (macOS's and
    Windows's by default), data/Channels.json is data/channels.json: split wrote its
    JSON where the dataset reads its channel names, and every command then failed on
    the dataset; run/.BCSEG-OUTPUTS.json was written over the folder's record."""
    data = _copy_tree(phantom, tmp_path / "data")
    (data / outputs.RECORD).unlink(missing_ok=True)  # the user's own dataset
    before = hashes(tmp_path)
    code, _, err = run(capsys, "split", data, "--out", data / name, "--k", 3)
    assert code == 2 and said in one_line(err)
    assert hashes(tmp_path) == before


def test_replacing_never_moves_away_the_current_folder_named_through_a_bind_mount(
        tmp_path, monkeypatch, bind_mount):
    """The current folder is never replaced (the shell would be left in a deleted
    folder, and a command run there next wrote nowhere); it was recognised by its path
    only, so the same folder named through a second mount of its parent was moved
    aside and deleted from under the user."""
    parent = tmp_path / "parent"
    folder = parent / "result"
    with outputs.claim(folder, "test"):
        write_text(folder / "a.csv", "old\n")
    alias = bind_mount(parent, tmp_path / "mnt")
    monkeypatch.chdir(folder)
    before = hashes(folder)
    with pytest.raises(UsageError, match="is the current folder"):
        with outputs.claim(alias / "result", "test", replace=True):
            write_text(alias / "result" / "a.csv", "new\n")
    assert hashes(folder) == before and Path.cwd().samefile(folder)


# --------------------------------------------------------------------------- in a dataset

def _prediction_copies(data: Path, pred: Path) -> Path:
    """Observer 1's masks as predictions (``<stem>_mask.tif``), for evaluate to score."""
    pred.mkdir()
    for mask in sorted((data / "masks" / "observer1").glob("*.tif")):
        (pred / f"{mask.stem}_mask.tif").write_bytes(mask.read_bytes())
    return pred


def _among_the_data_argv(command: str, data: Path, pred: Path, folder: Path, model: Path) -> list:
    return {"split": ["split", data, "--out", folder / "s.json", "--k", 3],
            "predict": ["predict", data, "--model", model, "--out", folder, "--no-progress"],
            "evaluate": ["evaluate", "--pred", pred, "--truth", data, "--out", folder],
            "export-nnunet": ["export-nnunet", data, folder, "--dataset-id", 7, "--name", "Q",
                              "--k", 3]}[command]


@pytest.mark.parametrize("owner", ["phantom", "user"])
@pytest.mark.parametrize("where", ["images", "masks", "masks/observer1", "a link to images",
                                   "images/../masks"])
@pytest.mark.parametrize("command", ["split", "evaluate", "export-nnunet", "predict"])
def test_no_output_goes_among_the_input_datasets_own_files(tmp_path, capsys, phantom, models,
                                                           command, where, owner):
    """'split data --out data/images/s.json' was written (only the phantom's top folder was
    refused), 'evaluate --out data/masks/observer1' put its tables, figures and record
    among the annotations, and 'export-nnunet data data/masks' made a folder that every
    later command read as an observer's masks without images: check, train and
    evaluate refused the dataset; 'predict data --out data/masks/observer1' (the dataset
    given whole) put its masks among an observer's. A folder holding the input dataset's
    images or masks (or masks/) is refused before anything is written, however named."""
    data = _copy_tree(phantom, tmp_path / "data")
    if owner == "user":
        for record in data.rglob(outputs.RECORD):
            record.unlink()
    pred = _prediction_copies(data, tmp_path / "pred")
    if where == "a link to images":
        folder = tmp_path / "lk"
        folder.symlink_to(data / "images")
    else:
        folder = data / where
    before = hashes(tmp_path)
    code, _, err = run(capsys, *_among_the_data_argv(command, data, pred, folder, models["2d"]))
    # a phantom's folders are its whole result's too, which may be said first
    said = ("is a folder of the dataset", *(("'bcseg phantom'",) if owner == "phantom" else ()))
    assert code == 2 and any(words in one_line(err) for words in said), err
    assert hashes(tmp_path) == before  # nothing written, not even a record or a lock
    assert run(capsys, "check", data)[0] == 0


@pytest.mark.parametrize("command", ["split", "evaluate", "export-nnunet", "predict"])
def test_a_new_folder_inside_the_dataset_is_still_an_output_folder(tmp_path, capsys, phantom,
                                                                   models, command):
    """What the refusal of the dataset's own folders suggests (data/<command>) works, and
    leaves the dataset readable."""
    data = _copy_tree(phantom, tmp_path / "data")
    pred = _prediction_copies(data, tmp_path / "pred")
    before = hashes(data)
    code, _, err = run(capsys, *_among_the_data_argv(command, data, pred, data / command,
                                                     models["2d"]))
    assert code == 0, err
    assert_survives(before, data)
    assert run(capsys, "check", data)[0] == 0


def _into_a_dataset_argv(command: str, data: Path, folder: str, models: dict, run_dir: Path,
                         other: Path) -> list:
    """``command`` writing into ``folder`` while reading no file of the dataset ``data``
    as a dataset: plain files, a model, a run, another dataset, or nothing at all."""
    stack = data / "images" / "specimen_000.tif"
    mask = data / "masks" / "observer1" / "specimen_000.tif"
    return {"phantom": ["phantom", folder, "--n", 1, "--shape", 8, 16, 16],
            "margins": ["margins", "--image", stack, "--tumour", mask, "--out", folder],
            "predict": ["predict", stack, "--model", models["2d"], "--out", folder,
                        "--no-progress"],
            "train": ["train", other, "--out", folder, "--epochs", 1],
            "ensemble": ["ensemble", other, "--model", run_dir, "--model", run_dir,
                         "--out", folder],
            "export-onnx": ["export-onnx", models["2d"], "--out", Path(folder) / "m.onnx"],
            "demo": ["demo", "--out", folder],
            "report": ["report", folder]}[command]


def _into_a_dataset_cases() -> list[tuple[str, str]]:
    """(command, where) pairs that must be refused: predict, and the margins and report
    that follow it, may write beside the images (images/sub), and report writes into the
    folder that holds what it reports, so only a folder of masks is one it could name."""
    wheres = ["masks/observer1", "masks/observer3", "masks/observer3/", "images/sub",
              "a link to masks/observer1", "masks/new through a link to the dataset",
              "images/../masks/new", "masks/new, masks/ a link elsewhere"]
    commands = ["phantom", "margins", "predict", "train", "ensemble", "export-onnx", "demo",
                "report"]
    return [(command, where) for command in commands for where in wheres
            if not (where == "images/sub" and command in outputs.BESIDE_IMAGES)
            and not (command == "report"
                     and where not in ("masks/observer1", "a link to masks/observer1"))]


@pytest.mark.parametrize("command, where", _into_a_dataset_cases())
def test_no_output_goes_into_a_datasets_folders_whatever_the_inputs(
        tmp_path, capsys, phantom, models, finished_run, command, where):
    """'phantom data/masks/observer3' wrote a dataset that 'check data' then read as masks
    without images, and 'margins --out data/masks/observer1' (its inputs plain files) put
    a specimen mask among an observer's: only commands reading the dataset itself knew its
    folders. Any output inside the images/ or masks/ of a folder with the dataset layout is
    refused, new or not, by whatever path, before anything is written."""
    data = _copy_tree(phantom, tmp_path / "data")
    for record in data.rglob(outputs.RECORD):  # a dataset of the user's, not a phantom's
        record.unlink()
    (tmp_path / "lk").symlink_to(data / "masks" / "observer1")
    (tmp_path / "dl").symlink_to(data)
    if where == "masks/new, masks/ a link elsewhere":  # on the disk, masks/new is in no dataset
        (data / "masks").rename(tmp_path / "elsewhere")
        (data / "masks").symlink_to(tmp_path / "elsewhere")
    folder = {"a link to masks/observer1": str(tmp_path / "lk"),
              "masks/new through a link to the dataset": str(tmp_path / "dl" / "masks" / "new"),
              "masks/new, masks/ a link elsewhere": str(data / "masks" / "new"),
              }.get(where, f"{data}/{where}")
    before, entries = hashes(tmp_path), sorted(tmp_path.rglob("*"))
    code, _, err = run(capsys, *_into_a_dataset_argv(command, data, folder, models, finished_run,
                                                    phantom))
    line = one_line(err)
    assert code == 2 and "is a folder of the dataset" in line, err
    assert line.startswith(f"bcseg: error: {folder.rstrip('/')}"), line
    assert hashes(tmp_path) == before and sorted(tmp_path.rglob("*")) == entries
    assert run(capsys, "check", data)[0] == 0


def test_the_output_folder_check_itself_refuses_a_datasets_folders(tmp_path):
    """The refusal of a folder in a dataset's images/ or masks/ was a second call beside
    check_output_folder, which every writer had to remember: one that forgot it wrote
    among a dataset's masks. It is part of check_output_folder now, which cannot be
    called without the command (predict may write beside the images, phantom may not)."""
    data = tmp_path / "data"
    image = np.zeros((4, 8, 8), np.uint8)
    for name in ("images/case_1.tif", "masks/observer1/case_1.tif"):
        (data / name).parent.mkdir(parents=True)
        tifffile.imwrite(data / name, image)
    before, entries = hashes(tmp_path), sorted(tmp_path.rglob("*"))
    for folder, command in [(data / "masks" / "x", "predict"), (data / "masks", "margins"),
                            (data / "masks" / "observer1" / "new" / "sub", "train"),
                            (data / "images" / "x", "phantom")]:
        with pytest.raises(UsageError, match="is a folder of the dataset") as refused:
            outputs.check_output_folder(folder, command=command)
        assert refused.value.path == str(folder) and f"no {command} output" in str(refused.value)
    # beside the images is predict's documented place; a new folder beside images/ is fine
    for folder, command in [(data / "images" / "x", "predict"), (data / "split", "split")]:
        assert outputs.check_output_folder(str(folder), command=command) == folder
    assert hashes(tmp_path) == before and sorted(tmp_path.rglob("*")) == entries
    with pytest.raises(TypeError, match="command"):
        outputs.check_output_folder(data / "masks" / "x")
    with pytest.raises(TypeError):  # keyword-only: a stray positional is no command
        outputs.check_output_folder(data / "masks" / "x", "predict")


def test_a_folder_bcseg_wrote_inside_a_dataset_is_still_an_output_folder(tmp_path, capsys,
                                                                         phantom, finished_run):
    """A run written into data/masks/run (its predictions are never read as masks) is
    bcseg's folder, not the dataset's: a new folder in it takes margins as before."""
    data = _copy_tree(phantom, tmp_path / "data")
    _copy_tree(finished_run, data / "masks" / "run")
    stack = data / "images" / "specimen_000.tif"
    mask = data / "masks" / "observer1" / "specimen_000.tif"
    code, _, err = run(capsys, "margins", "--image", stack, "--tumour", mask, "--out",
                       data / "masks" / "run" / "margins")
    assert code == 0, err
    assert run(capsys, "check", data)[0] == 0


def test_predictions_in_masks_beside_the_new_stacks_stay_an_output_folder(tmp_path, capsys,
                                                                          phantom, models):
    """The README's 'predict new_stacks/ --out masks/' with the stacks in images/ gives
    the folder the dataset layout; masks/ is bcseg's whole result, so predict's --force
    re-run, margins into masks/margins and 'report masks' (after margins) still write."""
    shutil.copytree(phantom / "images", tmp_path / "images")
    stack, pred = tmp_path / "images" / "specimen_000.tif", tmp_path / "masks"
    argv = ["predict", tmp_path / "images", "--model", models["2d"], "--out", pred,
            "--no-progress"]
    assert run(capsys, *argv)[0] == 0
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    code, _, err = run(capsys, "margins", "--image", stack, "--tumour",
                       pred / "specimen_000_mask.tif", "--out", pred / "margins")
    assert code == 0, err
    code, _, err = run(capsys, "report", pred)
    assert code == 0 and (pred / "report.html").is_file(), err


def test_predictions_go_into_a_masks_folder_holding_only_bcseg_runs(tmp_path, capsys, phantom,
                                                                      models, finished_run):
    """masks/ holding only a run trained into it (masks/run, its own record) and no record
    of its own was refused as a folder of the dataset for the README's 'predict images/
    --out masks/', though nothing in it is the user's."""
    data = tmp_path / "data"
    shutil.copytree(phantom / "images", data / "images")
    _copy_tree(finished_run, data / "masks" / "run")
    code, _, err = run(capsys, "predict", data / "images", "--model", models["2d"], "--out",
                       data / "masks", "--no-progress")
    assert code == 0 and (data / "masks" / "specimen_000_mask.tif").is_file(), err
    assert run(capsys, "check", data)[0] == 0


@pytest.mark.parametrize("command", ["phantom", "demo"])
def test_no_dataset_is_written_inside_masks_that_bcseg_wrote(tmp_path, capsys, phantom, models,
                                                             command):
    """After 'predict images/ --out masks/' masks/ is bcseg's whole folder, and a new folder
    in it was any command's: 'phantom data/masks/x' wrote a dataset whose images read as an
    observer's masks without images, and check refused the dataset. The demo writes a
    phantom dataset too (its list of such commands was shadowed by another of that name)."""
    data = tmp_path / "data"
    shutil.copytree(phantom / "images", data / "images")
    assert run(capsys, "predict", data / "images", "--model", models["2d"], "--out",
               data / "masks", "--no-progress")[0] == 0
    before, entries = hashes(tmp_path), sorted(tmp_path.rglob("*"))
    argv = {"phantom": ["phantom", data / "masks" / "x", "--n", 1, "--shape", 8, 16, 16],
            "demo": ["demo", "--out", data / "masks" / "x", "--epochs-2d", 1, "--epochs-3d", 1]}
    # the demo's own check, not only its phantom's later one inside the demo's folder
    with pytest.raises(UsageError, match="is a folder of the dataset"):
        outputs.check_output_folder(data / "masks" / "x", command=command)
    code, _, err = run(capsys, *argv[command])
    assert code == 2 and "is a folder of the dataset" in one_line(err), err
    assert hashes(tmp_path) == before and sorted(tmp_path.rglob("*")) == entries
    assert run(capsys, "check", data)[0] == 0


@pytest.mark.parametrize("command, where", [("phantom", "masks"), ("phantom", "masks/x"),
                                             ("margins", "masks/x"), ("predict", "masks/x")])
def test_no_output_makes_the_masks_of_a_dataset_of_images_alone(tmp_path, capsys, phantom,
                                                                 models, command, where):
    """A dataset of images alone (no masks/ yet) has the layout too: 'phantom data/masks/x'
    wrote x as an observer whose masks matched no image, and 'phantom data/masks' an
    observer 'images' of every case, so 'check data' refused the dataset. masks/ itself
    stays open to predict (the README's 'predict images/ --out masks/', tested above)."""
    data = tmp_path / "data"
    shutil.copytree(phantom / "images", data / "images")
    folder = data / where
    argv = _into_a_dataset_argv(command, data, str(folder), models, tmp_path, phantom)
    if command == "margins":
        argv[argv.index("--tumour") + 1] = phantom / "masks" / "observer1" / "specimen_000.tif"
    before, entries = hashes(tmp_path), sorted(tmp_path.rglob("*"))
    code, _, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2 and line.startswith(f"bcseg: error: {folder}: is a folder of the dataset"), err
    assert hashes(tmp_path) == before and sorted(tmp_path.rglob("*")) == entries
    assert run(capsys, "check", data)[0] == 0


@pytest.mark.parametrize("how", ["a link", "another letter case"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "split"])
def test_a_runs_folder_named_another_way_is_still_the_runs(tmp_path, capsys, models, phantom,
                                                           bind_mount, command, how):
    """'evaluate --out run/predictions' is refused (its tables there kept 'train --force'
    and '--resume' from the run), but through 'lk', a link to run/predictions, the run's
    record was looked for above the link and not found: evaluate wrote its tables into the
    run's test-fold folder, predict its masks beside the run's. 'run/Predictions' is the
    same folder where letter case is ignored (macOS, Windows), shown here by a mount of
    the folder at that name."""
    run_dir = tmp_path / "run"
    with outputs.claim(run_dir, "train"):
        write_text(run_dir / "config.toml", "[model]\n")
        for mask in sorted((phantom / "masks" / "observer1").glob("*.tif")):
            with atomic_path(run_dir / "predictions" / f"{mask.stem}_mask.tif") as tmp:
                tmp.write_bytes(mask.read_bytes())
    if how == "a link":
        folder = tmp_path / "lk"
        folder.symlink_to(run_dir / "predictions")
    else:
        folder = bind_mount(run_dir / "predictions", run_dir / "Predictions")
    before = hashes(run_dir / "predictions")
    argv = {"predict": ["predict", phantom / "images" / "specimen_000.tif", "--model", models["2d"],
                        "--out", folder, "--no-progress"],
            "evaluate": ["evaluate", "--pred", run_dir / "predictions", "--truth", phantom,
                         "--out", folder, "--no-report"],
            "split": ["split", phantom, "--out", folder / "s.json", "--k", 3]}[command]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "is a folder of the output of 'bcseg train'" in one_line(err), err
    assert hashes(run_dir / "predictions") == before
