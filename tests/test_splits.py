"""Folds by group, fold files, saved splits and near-duplicate grouping."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from bcseg.data import io
from bcseg.data.cases import Case
from bcseg.data.dataset import discover
from bcseg.errors import DataError
from bcseg.data.splits import (folds_from_file, kfold_by_group, load_splits, near_duplicate_groups,
                          save_splits, validation_ids)


def specimens(sizes, classes=None) -> list[Case]:
    """Slice-like cases: specimen g contributes sizes[g] cases of one group."""
    cases = []
    for g, n in enumerate(sizes):
        label = None if classes is None else classes[g]
        cases += [Case(id=f"spec{g:02d}_z{i:02d}", image=Path(f"spec{g:02d}.tif"),
                       group=f"spec{g:02d}", label_class=label) for i in range(n)]
    return cases


def fold_of_group(cases, folds) -> dict[str, set[int]]:
    found = defaultdict(set)
    for case in cases:
        found[case.group].add(folds[case.id])
    return found


SIZES = [12, 20, 8, 15, 24, 10, 18, 9, 14, 22, 11, 16]  # 179 slices of 12 specimens


# --------------------------------------------------------------------------- kfold_by_group

def test_groups_never_straddle_folds_and_folds_are_balanced():
    classes = ["malignant" if g % 3 == 0 else "benign" for g in range(len(SIZES))]
    cases = specimens(SIZES, classes)
    folds = kfold_by_group(cases, k=4, seed=0)
    assert set(folds) == {c.id for c in cases}
    assert all(len(f) == 1 for f in fold_of_group(cases, folds).values())
    sizes = Counter(folds.values())
    assert sorted(sizes) == [0, 1, 2, 3]  # every fold is used
    # 179 / 4 = 44.75 slices per fold; whole specimens of 8-24 slices allow a few off.
    assert all(abs(n - 179 / 4) <= 6 for n in sizes.values()), sizes


def test_kfold_is_deterministic_from_the_seed_and_changes_with_it():
    cases = specimens([3] * 20)  # equal sizes: the shuffle decides the order
    first = kfold_by_group(cases, k=5, seed=0)
    assert kfold_by_group(cases, k=5, seed=0) == first
    other = kfold_by_group(cases, k=5, seed=1)
    assert other != first
    for folds in (first, other):
        assert Counter(folds.values()) == {f: 12 for f in range(5)}  # 4 groups of 3 each
        assert all(len(f) == 1 for f in fold_of_group(cases, folds).values())


def test_kfold_stratifies_classes():
    # 30 single-image groups, 20 benign and 10 malignant: 4 + 2 per fold of 5.
    cases = [Case(id=f"i{n}", image=Path(f"i{n}.png"), group=f"i{n}",
                  label_class="benign" if n < 20 else "malignant") for n in range(30)]
    folds = kfold_by_group(cases, k=5, seed=3)
    for fold in range(5):
        members = [c for c in cases if folds[c.id] == fold]
        assert Counter(c.label_class for c in members) == {"benign": 4, "malignant": 2}


def test_fewer_groups_than_folds_warns_and_reduces_k():
    cases = specimens([4, 6, 5])
    with pytest.warns(UserWarning, match="only 3 groups for 5 folds; using 3 folds"):
        folds = kfold_by_group(cases, k=5)
    assert sorted(set(folds.values())) == [0, 1, 2]
    assert sorted(len(f) for f in fold_of_group(cases, folds).values()) == [1, 1, 1]
    assert len({min(f) for f in fold_of_group(cases, folds).values()}) == 3  # one group each


def test_one_group_cannot_be_cross_validated():
    with pytest.raises(DataError, match="only 1 specimen/group"):
        kfold_by_group(specimens([10]), k=5)
    with pytest.raises(ValueError, match="k must be at least 2"):
        kfold_by_group(specimens([3, 3]), k=1)


# --------------------------------------------------------------------------- fold files

def write_folds(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "fold"])
        writer.writerows(rows)
    return path


def test_folds_from_file_matches_by_stem_and_checks_groups(tmp_path):
    cases = specimens([2, 2])
    rows = [(f"stacks/{c.id}.tif", 0 if c.group == "spec00" else 1) for c in cases]
    folds = folds_from_file(write_folds(tmp_path / "f.csv", rows), cases)
    assert folds == {"spec00_z00": 0, "spec00_z01": 0, "spec01_z00": 1, "spec01_z01": 1}

    rows[1] = (rows[1][0], 1)  # spec00's second slice on the other side
    path = write_folds(tmp_path / "straddle.csv", rows)
    with pytest.raises(DataError, match="group 'spec00' is split across folds") as error:
        folds_from_file(path, cases)
    assert error.value.path == str(path)


@pytest.mark.parametrize("text, message", [
    ("image,fold\nspec00_z00.tif,0\n", r"3 case\(s\) have no fold: spec00_z01, spec01_z00, spec01_z01"),
    ("image,fold\nspec00_z00.tif,zero\n", "line 2: fold 'zero' is not a fold number"),
    ("image,split\nspec00_z00.tif,0\n", "needs columns 'fold'"),
])
def test_folds_from_file_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        folds_from_file(path, specimens([2, 2]))


# --------------------------------------------------------------------------- saved splits

def test_save_and_load_splits_round_trip(tmp_path):
    cases = specimens([3, 2, 4, 1])
    folds = kfold_by_group(cases, k=2, seed=5)
    path = save_splits(tmp_path / "run" / "splits.json", cases, folds, seed=5)
    assert load_splits(path) == folds
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["k"] == 2 and data["seed"] == 5 and data["source"] == "kfold_by_group"
    assert data["groups"]["spec02_z03"] == "spec02"
    every = sorted(c.id for c in cases)
    for entry in data["folds"]:
        assert sorted(entry["test"] + entry["train"]) == every
        assert not set(entry["test"]) & set(entry["train"])


def test_load_splits_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"folds": [{"train": []}]}', encoding="utf-8")
    with pytest.raises(DataError, match="not a bcseg splits file") as error:
        load_splits(path)
    assert error.value.path == str(path)
    with pytest.raises(DataError, match="not a bcseg splits file"):
        load_splits(tmp_path / "missing.json")


# --------------------------------------------------------------------------- validation

def test_validation_ids_are_whole_groups_from_the_given_cases():
    cases = specimens([3, 5, 2, 4, 6, 1, 3, 2, 4, 5])
    folds = kfold_by_group(cases, k=5, seed=0)
    training = [c for c in cases if folds[c.id] != 0]
    chosen = validation_ids(training, fraction=0.25, seed=2)
    assert chosen == validation_ids(training, fraction=0.25, seed=2)
    training_ids = {c.id for c in training}
    assert set(chosen) <= training_ids
    groups = {c.group for c in training if c.id in chosen}
    n_groups = len({c.group for c in training})
    assert len(groups) == round(0.25 * n_groups)
    # Whole groups: every training case of a chosen group is in, no other case is.
    assert set(chosen) == {c.id for c in training if c.group in groups}


def test_validation_with_one_group_is_empty():
    with pytest.warns(UserWarning, match="no validation split"):
        assert validation_ids(specimens([4])) == []
    # Two groups: one validates, one trains.
    chosen = validation_ids(specimens([4, 2]), fraction=0.9)
    assert len({c[:6] for c in chosen}) == 1


# --------------------------------------------------------------------------- near-duplicates

def texture(seed: int, shape=(64, 80)) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 4)
    field = (field - field.min()) / (field.max() - field.min())
    return (30 + 180 * field).astype(np.uint8)


def test_near_duplicates_share_a_group(tmp_path):
    original = texture(1)
    paths = {
        "frame": tmp_path / "frame.png",
        "resaved": tmp_path / "frame_copy.jpg",
        "brighter": tmp_path / "frame_bright.png",
        "other": tmp_path / "other.png",
    }
    iio.imwrite(paths["frame"], original)
    iio.imwrite(paths["resaved"], original, quality=80)
    iio.imwrite(paths["brighter"], np.clip(original.astype(int) + 12, 0, 255).astype(np.uint8))
    iio.imwrite(paths["other"], texture(2))
    cases = [Case(id=name, image=path, group=name) for name, path in paths.items()]
    grouped = {c.id: c.group for c in near_duplicate_groups(cases)}
    assert grouped["frame"] == grouped["resaved"] == grouped["brighter"]
    assert grouped["other"] != grouped["frame"]
    assert len(set(grouped.values())) == 2


def test_near_duplicates_keep_groups_given_before(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    iio.imwrite(a, texture(3))
    iio.imwrite(b, texture(4))
    cases = [Case(id="a", image=a, group="patient"), Case(id="b", image=b, group="patient")]
    grouped = near_duplicate_groups(cases)
    assert grouped[0].group == grouped[1].group
    assert [c.id for c in grouped] == ["a", "b"] and grouped[0].image == a


# --------------------------------------------------------------------------- BUSI

@pytest.fixture(scope="module")
def busi_cases(busi_root):
    return discover(busi_root)


def test_busi_kfold_keeps_groups_whole_and_stratifies(busi_cases):
    folds = kfold_by_group(busi_cases, k=5, seed=0)
    assert all(len(f) == 1 for f in fold_of_group(busi_cases, folds).values())
    expected = {"benign": 437 / 5, "malignant": 210 / 5, "normal": 133 / 5}
    for fold in range(5):
        members = [c for c in busi_cases if folds[c.id] == fold]
        assert abs(len(members) - 156) <= 4
        counts = Counter(c.label_class for c in members)
        for label, mean in expected.items():
            assert abs(counts[label] - mean) <= 3, (fold, label, counts)
    assert kfold_by_group(busi_cases, k=5, seed=1) != folds


def test_busi_folds_file_is_reproduced_exactly(busi_root, busi_cases):
    folds = folds_from_file(busi_root / "folds.csv", busi_cases)
    with open(busi_root / "folds.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(folds) == len(rows) == 780
    assert folds == {io.file_stem(r["image"]): int(r["fold"]) for r in rows}
    assert all(len(f) == 1 for f in fold_of_group(busi_cases, folds).values())


def test_busi_folds_file_with_a_straddling_group_is_refused(tmp_path, busi_root, busi_cases):
    with open(busi_root / "folds.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    sizes = Counter(r["group"] for r in rows)
    group = min(g for g, n in sizes.items() if n >= 2)
    row = next(r for r in rows if r["group"] == group)
    row["fold"] = str((int(row["fold"]) + 1) % 5)
    path = tmp_path / "folds.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=f"group 'g{group}' is split across folds"):
        folds_from_file(path, busi_cases)


def test_near_duplicates_of_stacks_are_one_line_not_a_crash(tmp_path, capsys):
    # The hash is of 2D frames: stacks of other sizes crashed in np.stack ('all input
    # arrays must have the same shape'), and stacks of one size were hashed along x only
    from bcseg.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "masks" / "obs").mkdir(parents=True)
    for k, width in enumerate((16, 20)):
        tifffile.imwrite(tmp_path / "images" / f"s{k}.tif", np.full((8, 16, width), k + 1, np.uint8))
        tifffile.imwrite(tmp_path / "masks" / "obs" / f"s{k}.tif", np.ones((8, 16, width), np.uint8))
    with pytest.raises(DataError) as error:
        near_duplicate_groups(discover(tmp_path))
    assert error.value.path == str(tmp_path / "images" / "s0.tif") and "3D" in str(error.value)
    out = tmp_path / "splits.json"
    assert main(["split", str(tmp_path), "--out", str(out), "--near-duplicates", "--k", "2"]) != 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "s0.tif" in err and not out.exists()
