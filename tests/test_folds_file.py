"""Fold files and manifests with bad rows: one error naming the file and the line.

Fold numbers used to go through plain ``int()`` (``-1`` and ``1_0`` accepted, 100000
making 100001 folds, gaps making empty folds, a case listed twice keeping its last
row), and messages counted CSV records rather than the lines an editor shows.
"""

from __future__ import annotations

import json

import pytest

from bcseg.cli import main
from bcseg.data.dataset import discover
from bcseg.data.manifest import read_manifest
from bcseg.data.splits import folds_from_file
from bcseg.errors import DataError

from conftest import PHANTOM_N


def specimen(k: int) -> str:
    return f"specimen_{k:03d}"


@pytest.fixture
def cases(phantom_root):
    cases = discover(phantom_root)
    assert sorted(c.id for c in cases) == [specimen(k) for k in range(PHANTOM_N)]
    return cases


def folds_csv(tmp_path, *lines: str, header: str = "id,fold"):
    path = tmp_path / "folds.csv"
    path.write_text("\n".join((header,) + lines) + "\n", encoding="utf-8")
    return path


def refused(path, cases, message: str) -> str:
    with pytest.raises(DataError) as error:
        folds_from_file(path, cases)
    assert error.value.path == str(path)
    assert message in error.value.problem, error.value.problem
    assert "\n" not in str(error.value)
    return error.value.problem


def test_a_good_file_still_reads(tmp_path, cases):
    path = folds_csv(tmp_path, "specimen_000,0", " specimen_001 , 1 ", "", "specimen_002,0",
                     "specimen_003,1")
    assert folds_from_file(path, cases) == {specimen(0): 0, specimen(1): 1, specimen(2): 0, specimen(3): 1}


def test_a_negative_fold_is_refused(tmp_path, cases):
    path = folds_csv(tmp_path, "specimen_000,0", "specimen_001,-1", "specimen_002,1", "specimen_003,1")
    refused(path, cases, "line 3: fold '-1' is not a fold number")


@pytest.mark.parametrize("fold", ["1_0", "+1", "1.0", "1e1", "١"])
def test_a_fold_that_is_not_plain_digits_is_refused(tmp_path, cases, fold):
    path = folds_csv(tmp_path, "specimen_000,0", "specimen_001,1", f"specimen_002,{fold}", "specimen_003,1")
    refused(path, cases, f"line 4: fold '{fold}' is not a fold number")


def test_folds_with_a_gap_are_refused_naming_the_missing_folds(tmp_path, cases):
    path = folds_csv(tmp_path, "specimen_000,0", "specimen_001,2", "specimen_002,3", "specimen_003,3")
    problem = refused(path, cases, "line 4: fold 3, but fold(s) 1 hold no case")
    assert "without gaps" in problem
    # Every case in fold 1: fold 0 is missing.
    path = folds_csv(tmp_path, *(f"{specimen(k)},1" for k in range(PHANTOM_N)))
    refused(path, cases, "line 2: fold 1, but fold(s) 0 hold no case")


def test_more_folds_than_cases_are_refused(tmp_path, cases):
    path = folds_csv(tmp_path, "specimen_000,0", "specimen_001,100000", "specimen_002,1", "specimen_003,1")
    refused(path, cases, f"line 3: fold 100000 but only {PHANTOM_N} case(s)")
    path = folds_csv(tmp_path, *(f"{specimen(k)},{k + 1}" for k in range(PHANTOM_N)))
    refused(path, cases, f"line 5: fold {PHANTOM_N} but only {PHANTOM_N} case(s)")


def test_a_case_listed_twice_is_refused(tmp_path, cases):
    path = folds_csv(tmp_path, "specimen_000,0", "specimen_001,1", "specimen_002,1", "specimen_003,1",
                     "specimen_001,0")
    refused(path, cases, "line 6: case 'specimen_001' is listed already on line 3")
    # Two paths with one file stem name one case.
    path = folds_csv(tmp_path, "a/specimen_000.tif,0", "images/specimen_001.tif,1",
                     "images/specimen_002.tif,1", "images/specimen_003.tif,1", "b/specimen_000.tif,0",
                     header="image,fold")
    refused(path, cases, "line 6: 'b/specimen_000.tif' names case 'specimen_000', which is listed "
                         "already on line 2")


def test_fold_file_lines_count_blank_lines(tmp_path, cases):
    path = folds_csv(tmp_path, "", "specimen_000,0", "", "", "specimen_001,1", "specimen_002,zero",
                     "specimen_003,1")
    refused(path, cases, "line 7: fold 'zero' is not a fold number")


def test_manifest_lines_count_blank_lines_and_quoted_line_breaks(tmp_path, phantom_root):
    images = phantom_root / "images"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "id,image,group\n"
        f"A,{images / 'specimen_000.tif'},s0\n"
        "\n\n"
        f'B,{images / "specimen_001.tif"},"s\n1"\n'  # a group cell over two lines
        "\n"
        f"C,{images / 'missing.tif'},s2\n", encoding="utf-8")
    # Lines: 1 header, 2 A, 3-4 blank, 5-6 B, 7 blank, 8 C.
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert error.value.path == str(manifest)
    assert error.value.problem == f"line 8: file '{images / 'missing.tif'}' not found"


def test_cli_split_refuses_in_one_line_and_writes_nothing(phantom_root, tmp_path, capsys):
    path = folds_csv(tmp_path, "specimen_000,0", "", "specimen_001,1_0", "specimen_002,1", "specimen_003,1")
    out = tmp_path / "s.json"
    code = main(["split", str(phantom_root), "--out", str(out), "--folds-file", str(path)])
    _, err = capsys.readouterr()
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"bcseg: error: {path}: line 4: fold '1_0' is not a fold number "
                        "(0, 1, 2, ... in plain digits)")
    assert not out.exists()


def test_a_column_given_twice_is_refused(tmp_path, cases):
    """csv.DictReader keeps the last of two 'fold' columns: the file's first folds were
    silently dropped."""
    path = folds_csv(tmp_path, *(f"{specimen(k)},{k % 2},{(k + 1) % 2}" for k in range(PHANTOM_N)),
                     header="id,fold,fold")
    refused(path, cases, "has column(s) fold more than once")


def test_every_case_in_fold_0_is_refused(tmp_path, cases):
    """One fold: every case tested and none left to train on; split wrote it anyway."""
    path = folds_csv(tmp_path, *(f"{specimen(k)},0" for k in range(PHANTOM_N)))
    refused(path, cases, "puts every case in fold 0: none is left to train on")


def test_an_image_column_matches_the_case_of_that_image(tmp_path, phantom_root):
    """Rows were matched to case ids by the image's file stem: for a manifest whose ids
    are not its file names, a fold file of images named no case, or (ids that are other
    rows' file names) gave each case another image's fold, without a word."""
    images = sorted((phantom_root / "images").iterdir())
    ids = [specimen(k) for k in (1, 0, 3, 2)]  # each case named after another's file
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image,group\n" + "".join(f"{i},{p},{i}\n" for i, p in zip(ids, images)),
                        encoding="utf-8")
    cases = read_manifest(manifest)
    folds = folds_csv(tmp_path, *(f"images/{p.name},{k % 2}" for k, p in enumerate(images)),
                      header="image,fold")
    assert folds_from_file(folds, cases) == {i: k % 2 for k, i in enumerate(ids)}
    # two cases of one file name (one folder per patient): an image row cannot tell them apart
    (tmp_path / "P1").mkdir()
    (tmp_path / "P2").mkdir()
    (tmp_path / "P1" / "us.tif").write_bytes(images[0].read_bytes())
    (tmp_path / "P2" / "us.tif").write_bytes(images[1].read_bytes())
    manifest.write_text("id,image,group\nP1,P1/us.tif,P1\nP2,P2/us.tif,P2\n", encoding="utf-8")
    path = folds_csv(tmp_path, "P1/us.tif,0", "P2/us.tif,1", header="image,fold")
    line = refused(path, read_manifest(manifest), "line 2: image 'P1/us.tif' is the file name of cases P1, P2")
    assert "give an 'id' column" in line


def test_the_json_that_split_writes_is_refused_saying_what_folds_file_reads(tmp_path, cases,
                                                                            phantom_root, capsys):
    """It was refused as 'line 1: fold file needs columns ...', a CSV's complaint."""
    out = tmp_path / "splits.json"
    assert main(["split", str(phantom_root), "--out", str(out), "--k", "2"]) == 0
    problem = refused(out, cases, "is JSON (bcseg split writes its folds so")
    assert "a CSV with columns 'fold' and 'image' or 'id'" in problem


# --------------------------------------------------------------------------- train.k beside a file

class _Reached(Exception):
    """Raised where training would begin, after every check of the folds (the command
    line names it as an unexpected error, exit 1)."""


@pytest.fixture
def two_folds(tmp_path):
    return folds_csv(tmp_path, *(f"{specimen(k)},{k % 2}" for k in range(PHANTOM_N)))


def _train_argv(data, out, recipe, folds) -> list[str]:
    return ["train", str(data), "--out", str(out), "--config", str(recipe), "--epochs", "1",
            "--folds-file", str(folds)]


@pytest.mark.parametrize("k", [3, 4])
def test_a_recipes_k_other_than_the_folds_files_is_refused_before_the_run(tmp_path, capsys,
                                                                        phantom_root, two_folds, k):
    """k = 3 beside a file of 2 folds trained those 2 without a word, and the run's
    config.toml recorded k = 3 as if used."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"[train]\nk = {k}\n")
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(_train_argv(phantom_root, out, recipe, two_folds)) == 4
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bcseg: error: {recipe}: 'train.k' = {k}")
    assert "--folds-file gives 2" in lines[0] and "set k = 2" in lines[0], lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["folds.csv",
                                                                               "recipe.toml"]


@pytest.mark.parametrize("recipe_text", ["[train]\nk = 2\n", "[train]\nk = 5\n", "",
                                         "demo"], ids=["the file's k", "the default k",
                                                       "no k", "a preset setting k"])
def test_a_k_that_agrees_with_the_folds_file_or_is_the_default_still_trains(
        tmp_path, capsys, monkeypatch, phantom_root, two_folds, recipe_text):
    """Refusing any k beside --folds-file broke the recipes that set one (one recipe
    serves runs with and without a file): these pass every check up to training."""
    from bcseg.learn import train as training

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(training, "_teacher", reached)  # the step after the folds' checks
    recipe = "demo" if recipe_text == "demo" else tmp_path / "recipe.toml"
    if recipe != "demo":
        recipe.write_text(recipe_text)
    capsys.readouterr()
    code = main(_train_argv(phantom_root, tmp_path / "run", recipe, two_folds))
    err = capsys.readouterr().err
    assert code == 1 and "_Reached" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["split", "export-nnunet"])
def test_a_k_flag_equal_to_the_folds_files_folds_is_taken(tmp_path, capsys, phantom_root,
                                                          two_folds, command):
    """--k beside --folds-file was refused whatever its value; one that says what the
    file does (2 folds) is taken, as train takes a recipe's k equal to the file's."""
    out = tmp_path / "out"
    argv = ["split", str(phantom_root), "--out", str(out / "s.json")] if command == "split" else \
        ["export-nnunet", str(phantom_root), str(out), "--dataset-id", "5", "--name", "P"]
    capsys.readouterr()
    assert main(argv + ["--folds-file", str(two_folds), "--k", "2"]) == 0, capsys.readouterr().err
    # the file's two folds, specimens k % 2, were written
    if command == "split":
        folds = json.loads((out / "s.json").read_text())["folds"]
        tests = [sorted(f["test"]) for f in folds]
    else:  # nnU-Net's case names, mapped back to bcseg's ids
        ids = json.loads(next(out.rglob("bcseg_case_map.json")).read_text())["cases"]
        splits = json.loads(next(out.rglob("splits_final.json")).read_text())
        tests = [sorted(ids[name]["id"] for name in f["val"]) for f in splits]
    assert tests == [[specimen(k) for k in range(PHANTOM_N) if k % 2 == f] for f in (0, 1)], tests
