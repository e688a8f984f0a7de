"""Manifests without groups: flagged in one line; per-slice rows of a stack refused."""

from __future__ import annotations

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from bcseg.data.check import check_dataset, format_report
from bcseg.data.dataset import discover
from bcseg.errors import DataError
from bcseg.data.splits import check_groups_whole, group_note, kfold_by_group, require_groups, ungrouped_stacks


def _manifest(root, names, groups=None, header_group=True):
    """2D slices written as PNG with a mask each, listed in manifest.csv."""
    (root / "slices").mkdir(parents=True)
    (root / "obs1").mkdir()
    image = (np.arange(16 * 16) % 200).astype(np.uint8).reshape(16, 16)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    lines = ["id,image,mask_observer1" + (",group" if header_group else "")]
    for k, name in enumerate(names):
        # Each slice differs, so the duplicate-image check has nothing to say here.
        iio.imwrite(root / "slices" / f"{name}.png", np.roll(image, k, axis=1))
        iio.imwrite(root / "obs1" / f"{name}.png", mask)
        group = "" if groups is None else groups[k]
        lines.append(f"{name},slices/{name}.png,obs1/{name}.png" + (f",{group}" if header_group else ""))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


SLICES = [f"S{s:02d}_z{z:03d}" for s in (1, 2, 3) for z in range(4)]


def test_per_slice_rows_without_group_are_refused(tmp_path):
    manifest = _manifest(tmp_path, SLICES, header_group=False)
    cases = discover(manifest)
    assert not any(c.group_given for c in cases)
    assert ungrouped_stacks(cases) == {str(tmp_path / "slices" / f"S0{s}_z#"): SLICES[4 * (s - 1):4 * s]
                                       for s in (1, 2, 3)}
    with pytest.raises(DataError, match=r"12 case\(s\) without a group look like slices of 3 stack"):
        kfold_by_group(cases, k=3, source=manifest)
    with pytest.raises(DataError) as error:
        require_groups(cases, manifest)
    assert error.value.path == str(manifest) and "S01_z000, S01_z001" in str(error.value)


def test_groups_given_let_the_same_rows_split_by_specimen(tmp_path):
    manifest = _manifest(tmp_path, SLICES, groups=[n[:3] for n in SLICES])
    cases = discover(manifest)
    assert group_note(cases) is None and ungrouped_stacks(cases) == {}
    folds = kfold_by_group(cases, k=3)
    assert all(len({folds[c.id] for c in cases if c.group == g}) == 1 for g in ("S01", "S02", "S03"))


def test_independent_images_without_group_are_flagged_not_refused(tmp_path):
    # A lone number names an image or a specimen, not a slice: no stack to refuse.
    names = ["benign (1)", "benign (2)", "S01", "S02", "case7"]
    manifest = _manifest(tmp_path, names, groups=["", "", "", "", ""])
    cases = discover(manifest)
    note = group_note(cases)
    assert note.startswith("5 of 5 case(s) have no group") and "\n" not in note
    require_groups(cases, manifest)  # nothing to refuse
    assert len(set(kfold_by_group(cases, k=5).values())) == 5


def test_check_flags_in_one_line_and_lists_the_stack_as_a_problem(tmp_path):
    manifest = _manifest(tmp_path, SLICES, groups=[""] * 6 + ["S02"] * 2 + ["S03"] * 4)
    report = check_dataset(manifest)
    text = format_report(report)
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {group_note(report.cases)}"]
    assert warnings[0].startswith("warning: 6 of 12 case(s) have no group")
    assert len(report.problems) == 1
    path, problem = report.problems[0]
    assert path == str(manifest) and "6 case(s) without a group look like slices of 2 stack(s)" in problem


@pytest.mark.parametrize("command", ["split", "train"])
def test_split_and_train_refuse_in_one_line_and_write_nothing(tmp_path, command):
    manifest = _manifest(tmp_path / "data", SLICES, header_group=False)
    out = tmp_path / ("splits.json" if command == "split" else "run")
    run = subprocess.run([sys.executable, "-m", "bcseg.cli", command, str(manifest), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr
    # The refusal alone: the group warning that the same check raises first is held back.
    assert run.stderr.splitlines() == [run.stderr.strip()], run.stderr
    assert run.stderr.startswith(f"bcseg: error: {manifest}: 12 case(s) without a group")
    assert not out.exists()


@pytest.mark.parametrize("other", ["s01", "S01\u200b", "S 01", "Spe\u0301c"])
def test_group_names_that_differ_only_in_case_spacing_or_unicode_form_are_refused(tmp_path, other):
    # 'S01' and 's01' (or 'Spéc' typed precomposed and with a combining accent) name one
    # specimen to a reader, but were two groups: its slices could land in training and test
    first = "Sp\u00e9c" if other.startswith("Spe") else "S01"
    names = [f"S{s:02d}_z{z:03d}" for s in (1, 2, 3, 4) for z in range(2)]
    groups = [first, other, "S02", "S02", "S03", "S03", "S04", "S04"]
    manifest = _manifest(tmp_path, names, groups=groups)
    cases = discover(manifest)
    assert len({c.group for c in cases}) == 5  # the variant is a group of its own
    with pytest.raises(DataError) as error:
        kfold_by_group(cases, k=2, source=manifest)
    assert error.value.path == str(manifest)
    assert repr(first) in str(error.value) and repr(other) in str(error.value)
    folds = {c.id: int(c.id[2]) % 2 for c in cases}  # whole groups, as a folds file gives them
    folds["S01_z001"] = 1 - folds["S01_z000"]
    with pytest.raises(DataError, match="same specimen"):
        check_groups_whole(cases, folds, manifest)


def test_a_slice_left_without_a_group_beside_its_grouped_stack_is_refused(tmp_path):
    # S01_z003's group cell is blank: it became group 'S01_z003', free to land in test
    # while S01_z000..z002 train; only stacks of two or more ungrouped rows were caught
    groups = [n[:3] for n in SLICES]
    groups[3] = ""
    manifest = _manifest(tmp_path, SLICES, groups=groups)
    cases = discover(manifest)
    assert [c.id for c in cases if not c.group_given] == ["S01_z003"]
    with pytest.raises(DataError) as error:
        kfold_by_group(cases, k=3, source=manifest)
    assert error.value.path == str(manifest) and "S01_z003" in str(error.value)


def test_lookalike_groups_are_refused_by_the_last_specimens_split_and_reported_by_check(tmp_path):
    # split = "last" sorts the groups and tests the last ones: 's01' sorts after 'S04',
    # so the specimen 'S01' trained while 's01' was tested
    from bcseg.config import load_config
    from bcseg.learn.train import choose_folds

    names = [f"S{s:02d}_z{z:03d}" for s in range(1, 9) for z in range(2)]
    groups = [n[:3] for n in names]
    groups[1] = "s01"
    manifest = _manifest(tmp_path, names, groups=groups)
    cases = discover(manifest)
    with pytest.raises(DataError, match="'S01' and 's01'"):
        choose_folds(cases, load_config("seed"), data=manifest)
    report = check_dataset(manifest)
    assert any("'S01' and 's01'" in problem for _, problem in report.problems)


def test_a_resumed_run_refuses_splits_that_now_cut_a_group_in_two(tmp_path):
    # The run started with S01_z003 in a group of its own (fold 1); the manifest was then
    # corrected to put it in S01 (fold 0). Resuming kept the old folds: S01's slices
    # trained in one fold and were tested in the other.
    from bcseg.config import load_config
    from bcseg.data.cases import Case
    from bcseg.data.splits import save_splits
    from bcseg.learn.train import _plan_folds

    manifest = _manifest(tmp_path, SLICES, groups=[n[:3] for n in SLICES])
    cases = discover(manifest)
    folds = {c.id: int(c.group[2]) - 1 for c in cases}  # S01 -> 0, S02 -> 1, S03 -> 2
    folds["S01_z003"] = 1
    out = tmp_path / "run"
    out.mkdir()
    started = [Case(id=c.id, image=c.image, group=c.id if c.id == "S01_z003" else c.group) for c in cases]
    save_splits(out / "splits.json", started, folds, seed=0)
    with pytest.raises(DataError, match="group 'S01' is split across folds"):
        _plan_folds(out, cases, load_config("default"), "all", None, True, manifest)
