"""Dataset checks and the command line: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bcseg.data import io
from bcseg.data.check import check_dataset, format_report
from bcseg.cli import main

from conftest import PHANTOM_N, PHANTOM_SHAPE

STACK = (np.arange(4 * 16 * 20) % 200).astype(np.uint8).reshape(4, 16, 20)
LESION = np.zeros(STACK.shape, bool)
LESION[1:3, 4:8, 4:10] = True


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``bcseg ARGS`` in a fresh interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "bcseg.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bcseg: error:")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def broken(tmp_path) -> Path:
    """Five stacks, two observers, and four problems.

    b: image cut in half; c: observer1 mask of the wrong shape; d: observer2 mask with
    values 0, 1, 2; e: no observer2 mask. Case a is fine.
    """
    root = tmp_path / "broken set"
    for number, name in enumerate("abcde"):  # distinct images: a copy is a problem of its own
        io.write_image(root / "images" / f"{name}.tif", STACK + number, (1.0, 0.25, 0.25))
        io.write_mask(root / "masks" / "observer1" / f"{name}.tif", LESION)
        if name != "e":
            io.write_mask(root / "masks" / "observer2" / f"{name}.tif", LESION)
    cut = root / "images" / "b.tif"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    io.write_mask(root / "masks" / "observer1" / "c.tif", LESION[:, :8])
    labels = LESION.astype(np.uint8)
    labels[2] *= 2
    tifffile.imwrite(root / "masks" / "observer2" / "d.tif", labels, photometric="minisblack")
    return root


def expected_problems(root: Path) -> list[tuple[str, str]]:
    return [
        (str(root / "images" / "b.tif"), "truncated"),
        (str(root / "masks" / "observer1" / "c.tif"), "mask shape (4, 8, 20) differs"),
        (str(root / "masks" / "observer2" / "d.tif"), "not binary (values 0, 1, 2)"),
        (str(root / "images" / "e.tif"), "no mask from observer 'observer2'"),
    ]


# --------------------------------------------------------------------------- check_dataset

def test_check_a_good_phantom(phantom_root):
    report = check_dataset(phantom_root)
    assert report.ok and report.problems == []
    assert len(report.cases) == PHANTOM_N
    assert set(report.shapes.values()) == {PHANTOM_SHAPE}
    assert set(report.dtypes.values()) == {"uint8"}
    assert all(s == pytest.approx((1.0, 0.25, 0.25)) for s in report.spacings.values())
    assert report.empty_masks == []
    table = format_report(report)
    assert re.search(r"^cases\s+4$", table, re.M)
    assert re.search(r"^3D shapes\s+Z 12, H 48, W 48$", table, re.M)
    assert re.search(r"^spacing\s+1x0\.25x0\.25 mm: 4$", table, re.M)
    assert re.search(r"^observers\s+observer1: 4, observer2: 4$", table, re.M)
    assert re.search(r"^problems\s+0$", table, re.M)


def test_check_lists_every_problem(broken):
    report = check_dataset(broken)
    assert not report.ok
    assert len(report.problems) == 4
    for (path, message), (want_path, want_message) in zip(report.problems, expected_problems(broken)):
        assert path == want_path and want_message in message
    # Unreadable masks are problems, not empty masks; the readable ones are not empty.
    assert report.empty_masks == []
    assert sorted(report.shapes) == ["a", "c", "d", "e"]


# --------------------------------------------------------------------------- CLI: check

def test_cli_check_good_phantom(phantom_root, capsys):
    assert main(["check", str(phantom_root)]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^cases\s+4$", out, re.M)
    assert re.search(r"^problems\s+0$", out, re.M)
    assert "problem:" not in out
    assert err == ""


def test_cli_check_broken_dataset(broken, capsys):
    assert main(["check", str(broken)]) == 3
    out, err = capsys.readouterr()
    listed = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(listed) == 4
    for line, (path, message) in zip(listed, expected_problems(broken)):
        assert line.startswith(f"problem: {path}: ") and message in line
    assert re.search(r"^problems\s+4$", out, re.M)
    line = assert_one_error_line(err)
    assert line == f"bcseg: error: {broken}: 4 problem(s) found, listed above"


def test_cli_check_broken_dataset_in_a_subprocess(broken):
    result = run_cli("check", broken)
    assert result.returncode == 3
    listed = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    assert [line.split(": ")[1] for line in listed] == [p for p, _ in expected_problems(broken)]
    assert_one_error_line(result.stderr)


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "not found"),
    (lambda root: root.mkdir(), "folder is empty"),
])
def test_cli_check_without_a_dataset(tmp_path, capsys, make, message):
    root = tmp_path / "data"
    make(root)
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    assert assert_one_error_line(err) == f"bcseg: error: {root}: {message}"


# --------------------------------------------------------------------------- CLI: phantom

def test_cli_phantom_writes_and_keeps_results(tmp_path, capsys):
    out = tmp_path / "ph"
    args = ["phantom", str(out), "--n", "2", "--shape", "12", "32", "32", "--truth"]
    assert main(args) == 0
    stdout, err = capsys.readouterr()
    assert stdout.startswith(f"wrote 2 synthetic specimens to {out}") and err == ""
    image = tifffile.imread(out / "images" / "specimen_001.tif")
    assert image.shape == (12, 32, 32) and image.dtype == np.uint8
    assert (out / "truth" / "tumour" / "specimen_001.tif").is_file()
    before = {p: p.read_bytes() for p in out.rglob("*.tif")}
    assert len(before) == 2 * 5

    assert main(args[:-1] + ["--seed", "9"]) == 2
    _, err = capsys.readouterr()
    assert assert_one_error_line(err) == (
        f"bcseg: error: {out}: already holds a result; pass --force to replace it")
    assert {p: p.read_bytes() for p in out.rglob("*.tif")} == before

    assert main(args[:-1] + ["--seed", "9", "--force"]) == 0
    assert not np.array_equal(tifffile.imread(out / "images" / "specimen_001.tif"), image)


# --------------------------------------------------------------------------- CLI: split

def test_cli_split_writes_json_and_keeps_it_without_force(phantom_root, tmp_path, capsys):
    out = tmp_path / "splits.json"
    assert main(["split", str(phantom_root), "--out", str(out), "--k", "2", "--seed", "1"]) == 0
    stdout, err = capsys.readouterr()
    assert stdout.strip() == f"wrote {out}: 2 folds of 2, 2 cases, 4 groups" and err == ""
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["k"] == 2 and data["seed"] == 1
    ids = [f"specimen_{k:03d}" for k in range(PHANTOM_N)]
    assert sorted(data["groups"]) == ids
    assert sorted(data["folds"][0]["test"] + data["folds"][1]["test"]) == ids
    before, stamp = out.read_bytes(), out.stat().st_mtime_ns

    assert main(["split", str(phantom_root), "--out", str(out), "--k", "3", "--seed", "2"]) == 2
    _, err = capsys.readouterr()
    assert assert_one_error_line(err) == (
        f"bcseg: error: {out}: already exists; pass --force to overwrite it")
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stamp

    assert main(["split", str(phantom_root), "--out", str(out), "--k", "3", "--force"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["k"] == 3


def test_cli_split_second_run_in_a_subprocess(phantom_root, tmp_path):
    out = tmp_path / "s.json"
    first = run_cli("split", phantom_root, "--out", out, "--k", "2")
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    again = run_cli("split", phantom_root, "--out", out, "--k", "2")
    assert again.returncode == 2
    assert again.stdout == ""
    assert_one_error_line(again.stderr)
    assert out.read_bytes() == before


def test_cli_split_with_a_straddling_folds_file(phantom_root, tmp_path, capsys):
    folds = tmp_path / "folds.csv"
    folds.write_text("image,fold\n" + "".join(
        f"images/specimen_{k:03d}.tif,{k % 2}\n" for k in range(PHANTOM_N)), encoding="utf-8")
    out = tmp_path / "s.json"
    assert main(["split", str(phantom_root), "--out", str(out), "--folds-file", str(folds)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["source"] == str(folds)
    capsys.readouterr()
    # A manifest whose two stacks share one specimen, with folds that separate them.
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"id,image,group\nA,{phantom_root}/images/specimen_000.tif,s1\n"
                        f"B,{phantom_root}/images/specimen_001.tif,s1\n", encoding="utf-8")
    bad = tmp_path / "bad_folds.csv"
    bad.write_text("id,fold\nA,0\nB,1\n", encoding="utf-8")
    assert main(["split", str(manifest), "--out", str(tmp_path / "x.json"),
                 "--folds-file", str(bad)]) == 3
    _, err = capsys.readouterr()
    line = assert_one_error_line(err)
    assert line == (f"bcseg: error: {bad}: group 's1' is split across folds; "
                    "that leaks one specimen into both train and test")
    assert not (tmp_path / "x.json").exists()


def test_cli_split_with_one_group(phantom_root, tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"id,image,group\nA,{phantom_root}/images/specimen_000.tif,s1\n"
                        f"B,{phantom_root}/images/specimen_001.tif,s1\n", encoding="utf-8")
    assert main(["split", str(manifest), "--out", str(tmp_path / "x.json")]) == 3
    _, err = capsys.readouterr()
    assert "cross-validation needs at least 2" in assert_one_error_line(err)


# --------------------------------------------------------------------------- CLI: usage

def test_cli_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["frobnicate"])
    assert stop.value.code == 2
    _, err = capsys.readouterr()
    assert "invalid choice: 'frobnicate'" in err and "Traceback" not in err


def test_cli_unknown_subcommand_in_a_subprocess():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["check", "--help"])
    assert stop.value.code == 0
    assert "dataset folder or manifest CSV" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["split", "export-nnunet"])
@pytest.mark.parametrize("flag", ["--k", "--seed"])
def test_k_or_seed_beside_a_folds_file_is_refused(command, flag, phantom_root, tmp_path, capsys):
    """--k 3 with --folds-file was dropped for the file's folds without a word."""
    folds = tmp_path / "folds.csv"
    folds.write_text("image,fold\n" + "".join(f"specimen_{k:03d}.tif,{k % 2}\n" for k in range(PHANTOM_N)))
    out = tmp_path / "out"
    argv = ["split", str(phantom_root), "--out", str(out / "s.json")] if command == "split" else \
        ["export-nnunet", str(phantom_root), str(out), "--dataset-id", "5", "--name", "P"]
    assert main(argv + ["--folds-file", str(folds), flag, "3"]) == 2
    assert assert_one_error_line(capsys.readouterr().err).startswith(
        f"bcseg: error: {flag}: the folds come from --folds-file")
    assert not out.exists()


def test_check_warns_of_a_mask_drawn_inverted(tmp_path, capsys):
    """A mask drawn white-on-black the other way round (the background marked, the
    lesion not) read as a tumour filling the image, and check said nothing. It cannot
    be told from the file, so check warns, naming the mask, and still passes; a large
    lesion that fills most of the image but not its border is no warning."""
    from PIL import Image

    root = tmp_path / "study"
    big = np.zeros(STACK.shape[1:], bool)
    big[1:15, 1:19] = True  # 79% of the image, none of its border
    for name, lesion in (("a", LESION[2]), ("b", LESION[2]), ("c", big)):
        (root / "masks" / "observer1").mkdir(parents=True, exist_ok=True)
        (root / "images").mkdir(exist_ok=True)
        Image.fromarray(STACK[2] + ord(name)).save(root / "images" / f"{name}.png")
        Image.fromarray(lesion.astype(np.uint8) * 255).save(root / "masks" / "observer1" / f"{name}.png")
    # b's lesion in palette index 1, black, and the background in index 0, white
    drawn = Image.fromarray(LESION[2].astype(np.uint8), mode="P")
    drawn.putpalette([255, 255, 255, 0, 0, 0])
    drawn.save(root / "masks" / "observer1" / "b.png")
    report = check_dataset(root)
    assert report.ok and report.inverted_masks == [str(root / "masks" / "observer1" / "b.png")]
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"warning: 1 mask(s) mark most of the image and of its border (e.g. {root / 'masks' / 'observer1' / 'b.png'})" in out
    Image.fromarray(LESION[2].astype(np.uint8) * 255).save(root / "masks" / "observer1" / "b.png")
    assert check_dataset(root).inverted_masks == []


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_lists_every_row_and_clashing_id_that_discovery_refuses(tmp_path, capsys):
    """Manifest rows naming a missing file, and ids that clash, are problems of one row or
    file: check stopped at the first, naming none of the rest. It lists each and checks
    the good case; train and the others still refuse at the first."""
    from bcseg.data.dataset import discover
    from bcseg.errors import DataError

    root = tmp_path / "study"
    for number, name in enumerate(("a", "b")):
        io.write_image(root / "images" / f"{name}.tif", STACK + number, (1.0, 0.25, 0.25))
        io.write_mask(root / "masks" / "observer1" / f"{name}.tif", LESION)
    (root / "manifest.csv").write_text(
        "id,image,mask_observer1,group\n"
        "a,images/a.tif,masks/observer1/a.tif,a\n"
        "b,images/gone.tif,masks/observer1/b.tif,b\n"
        "c,images/b.tif,masks/observer1/none.tif,c\n"
        "A,images/b.tif,masks/observer1/b.tif,A\n")
    before = _tree(tmp_path)
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    listed = [line for line in out.splitlines() if line.startswith("problem: ")]
    manifest = root / "manifest.csv"
    assert listed[0] == f"problem: {manifest}: line 3: file 'images/gone.tif' not found", out
    assert listed[1] == f"problem: {manifest}: line 4: file 'masks/observer1/none.tif' not found", out
    assert listed[2].startswith(f"problem: {manifest}: two images have ids that differ only in letter "
                                "case or Unicode form, 'a' and 'A'"), out
    assert len(listed) == 3 and re.search(r"^cases\s+1$", out, re.M), out
    assert assert_one_error_line(err) == f"bcseg: error: {root}: 3 problem(s) found, listed above"
    with pytest.raises(DataError, match="line 3: file 'images/gone.tif' not found"):
        discover(root)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("layout", ["images", "class folders"])
def test_check_lists_every_broken_link_even_where_no_image_is_left(layout, tmp_path, capsys):
    """Images that are all broken links (a disk not mounted) were one line, the first
    link; and where the links were all the folder held, "holds no images" hid them."""
    import os

    root = tmp_path / "study"
    folder = root / ("images" if layout == "images" else "benign")
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        os.symlink(f"/nowhere/{name}.png", folder / f"{name}.png")
    if layout == "class folders":
        os.symlink("/nowhere/a_mask.png", folder / "a_mask.png")
    before = _tree(tmp_path)
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    listed = [line for line in out.splitlines() if line.startswith("problem: ")]
    names = ["a.png", "a_mask.png", "b.png"] if layout == "class folders" else ["a.png", "b.png"]
    assert [line.split(": ")[1] for line in listed] == [str(folder / n) for n in names], out
    assert all("broken symbolic link" in line for line in listed)
    assert assert_one_error_line(err) == f"bcseg: error: {root}: {len(names)} problem(s) found, listed above"
    assert _tree(tmp_path) == before
