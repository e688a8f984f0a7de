"""Files bcseg may not read and folders it may not write: one line naming the path,
the right exit code (3: an input; 2: where the outputs go), nothing left behind.

Permissions do not bind root, and tests often run as root (CI does): the commands then
run as root without the capabilities that override file permissions (``setpriv
--bounding-set -dac_override,-dac_read_search``), so that root is held to a file's owner
bits like any user, while the checkout and its virtual environment stay readable.
Where that is not possible the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bcseg.cli import main
from test_robustness import models  # noqa: F401  (tiny real .keras files)

WITHOUT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _as_user(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``bcseg argv`` in a process that file permissions bind."""
    command = [sys.executable, "-c", "import sys; from bcseg.cli import main_exit; "
               "sys.argv[0] = 'bcseg'; main_exit()", *map(str, argv)]
    if os.geteuid() == 0:
        command = WITHOUT_OVERRIDE + command
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def place(tmp_path):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    if os.geteuid() == 0 and subprocess.run(WITHOUT_OVERRIDE + ["true"]).returncode != 0:
        pytest.skip("setpriv cannot drop the capabilities here: permissions cannot be tested")
    yield tmp_path
    for path in tmp_path.rglob("*"):  # give back what the tests took away
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("bcseg: error:")]


@pytest.fixture
def study(place) -> Path:
    assert main(["phantom", str(place / "study"), "--n", "2", "--shape", "8", "32", "32"]) == 0
    return place / "study"


def test_an_unreadable_image_is_bad_input_named_in_one_line(study, place, models):
    model = models["2d"]
    image = study / "images" / "specimen_000.tif"
    image.chmod(0)
    result = _as_user(["predict", image, "--model", model, "--out", place / "out"], place)
    assert result.returncode == 3, result.stderr
    (line,) = _errors(result)
    assert line.startswith(f"bcseg: error: {image}: cannot be read: permission denied")
    assert not (place / "out").exists()


def test_check_lists_an_unreadable_mask_among_the_problems(study, place):
    mask = study / "masks" / "observer1" / "specimen_001.tif"
    mask.chmod(0)
    result = _as_user(["check", study], place)
    assert result.returncode == 3, result.stderr
    assert f"{mask}: cannot be read: permission denied" in result.stdout + result.stderr


def test_an_output_folder_that_may_not_be_written_is_named_and_stays_empty(study, place, models):
    model = models["2d"]
    locked = place / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = _as_user(["predict", study / "images" / "specimen_000.tif", "--model", model,
                       "--out", locked / "out"], place)
    assert result.returncode == 2, result.stderr
    (line,) = _errors(result)
    assert str(locked) in line and "permission denied" in line
    assert list(locked.iterdir()) == []


def test_an_output_folder_of_yours_that_may_not_be_written_is_named_itself(study, place, models):
    """An existing --out that may not be written (its parent may) was named by a hidden
    temporary file that does not exist, 'out/..bcseg-outputs.bcseg-partial-4242.json:
    cannot be read or written', and only once the model had loaded."""
    out = place / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    out.chmod(0o555)
    result = _as_user(["predict", study / "images" / "specimen_000.tif", "--model", models["2d"],
                       "--out", out], place)
    assert result.returncode == 2, result.stderr
    (line,) = _errors(result)
    assert line.startswith(f"bcseg: error: {out}: ") and "permission denied" in line, line
    assert "bcseg-partial" not in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in place.iterdir()) == ["out", "study"]


def test_force_in_a_folder_whose_parent_may_not_be_written_is_refused_naming_why(place):
    """--force moves the old result aside beside it: with a parent that may not be
    written that failed as 'out: cannot be read or written: permission denied', the
    folder named absolutely though it may be written, and a train only after reading
    its data."""
    parent = place / "parent"
    parent.mkdir()
    out = parent / "out"
    assert main(["phantom", str(out), "--n", "1", "--shape", "8", "16", "16"]) == 0
    parent.chmod(0o555)
    before = sorted(p.relative_to(place) for p in place.rglob("*"))
    result = _as_user(["phantom", "parent/out", "--n", "1", "--shape", "8", "16", "16", "--force"], place)
    assert result.returncode == 2, result.stderr
    (line,) = _errors(result)
    assert line.startswith("bcseg: error: parent/out: cannot be replaced") and "aside" in line, line
    assert sorted(p.relative_to(place) for p in place.rglob("*")) == before
    # an empty folder there holds nothing to move aside (only the lock, inside it): written
    parent.chmod(0o755)
    (parent / "empty").mkdir()
    parent.chmod(0o555)
    result = _as_user(["phantom", "parent/empty", "--n", "1", "--shape", "8", "16", "16", "--force"], place)
    assert result.returncode == 0, result.stderr
    assert (parent / "empty" / "images").is_dir()
