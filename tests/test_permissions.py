"""Files bcseg may not read and folders it may not write: one line naming the path,
the right exit code (3: an input; 2: where the outputs go), nothing left behind.

Permissions do not bind root, and tests often run as root (CI does): the commands then
run as the unprivileged user ``nobody`` through ``setpriv``, in a folder that user can
reach. Where neither is possible the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bcseg.cli import main
from test_robustness import models  # noqa: F401  (tiny real .keras files)

NOBODY = 65534


def _as_user(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``bcseg argv`` as this user, or as nobody when this user is root."""
    command = [sys.executable, "-c", "import sys; from bcseg.cli import main_exit; "
               "sys.argv[0] = 'bcseg'; main_exit()", *map(str, argv)]
    if os.geteuid() == 0:
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    env = dict(os.environ, HOME=str(cwd), MPLCONFIGDIR=str(cwd / ".mpl"), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def place(tmp_path_factory):
    """A folder every user can reach (pytest's own are root's alone)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    folder = Path(tempfile.mkdtemp(prefix="bcseg-perm-", dir="/tmp"))
    folder.chmod(0o777)
    yield folder
    for path in folder.rglob("*"):  # give back what the tests took away, then remove
        if not path.is_symlink():
            path.chmod(stat.S_IRWXU | (path.stat().st_mode & 0o777))
    shutil.rmtree(folder)


def _open_to_all(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("bcseg: error:")]


@pytest.fixture
def study(place) -> Path:
    assert main(["phantom", str(place / "study"), "--n", "2", "--shape", "8", "32", "32"]) == 0
    _open_to_all(place)
    return place / "study"


def test_an_unreadable_image_is_bad_input_named_in_one_line(study, place, models):
    model = shutil.copy(models["2d"], place / "model.keras")
    os.chmod(model, 0o644)
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
    model = shutil.copy(models["2d"], place / "model.keras")
    os.chmod(model, 0o644)
    locked = place / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = _as_user(["predict", study / "images" / "specimen_000.tif", "--model", model,
                       "--out", locked / "out"], place)
    assert result.returncode == 2, result.stderr
    (line,) = _errors(result)
    assert str(locked) in line and "permission denied" in line
    assert list(locked.iterdir()) == []
