"""A dataset that reads but does not hang together is refused before anything is written.

Found by the third red-team pass: observers named like a consensus, a case lacking one
observer's mask under a consensus target, a bad file in a training (not test) case,
a folds file with every case in the test fold, a damaged ``summary.json``, and masks
that no image uses. Each test writes real files and runs the real command line; a
refusal is one line naming the file, and the output folder is never created.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bcseg.data import io
from test_bad_inputs import write_cases
from test_robustness import LESION, TINY_TRAINING, one_error_line, run_main

TINY = TINY_TRAINING.replace("epochs = 50", "epochs = 1\nk = 2")  # 2 folds: no warning for 4 groups


def two_observers(root: Path, n: int = 4) -> Path:
    """``write_cases`` plus a second observer whose lesion is one row shorter."""
    write_cases(root, n)
    second = LESION.copy()
    second[np.argmax(second.any(axis=1))] = False
    for i in range(n):
        io.write_mask(root / "masks" / "observer2" / f"c{i}.tif", second)
    return root


def refused(capsys, argv, code: int, culprit: str, out: Path) -> str:
    got, stdout, err = run_main(capsys, argv)
    assert got == code, (stdout, err)
    line = one_error_line(err)
    assert culprit in line, line
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    return line


@pytest.fixture
def tiny(tmp_path) -> Path:
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path / "tiny.toml"


@pytest.mark.parametrize("name", ["union", "intersection", "staple"])
def test_an_observer_named_like_a_consensus_is_refused_up_front(name, tmp_path, capsys, tiny):
    data = two_observers(tmp_path / "data")
    (data / "masks" / "observer2").rename(data / "masks" / name)
    line = refused(capsys, ["check", data], 3, f"masks/{name}", tmp_path / "none")
    assert "rename the observer" in line
    refused(capsys, ["train", data, "--out", tmp_path / "run", "--config", tiny], 3,
            f"masks/{name}", tmp_path / "run")


def test_a_manifest_column_named_like_a_consensus_is_refused(tmp_path, capsys):
    data = write_cases(tmp_path / "data", 2)
    manifest = data / "cases.csv"
    manifest.write_text("id,image,mask_union,group\n"
                        + "".join(f"c{i},images/c{i}.tif,masks/observer1/c{i}.tif,g{i}\n" for i in range(2)))
    refused(capsys, ["check", manifest], 3, "cases.csv", tmp_path / "none")


@pytest.mark.parametrize("target", ["intersection", "union", "staple"])
def test_a_consensus_needs_every_observers_mask_in_every_case(target, tmp_path, capsys, tiny):
    """A case lacking observer2 used to get observer1's mask alone as its 'intersection'."""
    data = two_observers(tmp_path / "data")
    (data / "masks" / "observer2" / "c1.tif").unlink()
    line = refused(capsys, ["train", data, "--out", tmp_path / "run", "--config", tiny,
                            "--observer", target], 3, "c1.tif", tmp_path / "run")
    assert "no mask from observer(s) observer2" in line
    refused(capsys, ["export-nnunet", data, tmp_path / "nn", "--dataset-id", 501, "--name", "X",
                     "--observer", target], 3, "c1.tif", tmp_path / "nn")


def test_evaluate_against_all_observers_names_a_case_lacking_one(tmp_path, capsys):
    data = two_observers(tmp_path / "data")
    (data / "masks" / "observer2" / "c1.tif").unlink()
    pred = tmp_path / "pred"
    for i in range(4):
        io.write_mask(pred / f"c{i}_mask.tif", LESION)
    line = refused(capsys, ["evaluate", "--pred", pred, "--truth", data, "--out", tmp_path / "ev"],
                   3, "c1: no mask from observer(s) observer2", tmp_path / "ev")
    assert "--observer" in line
    # Naming the observer every case has is fine.
    code, _, err = run_main(capsys, ["evaluate", "--pred", pred, "--truth", data, "--out",
                                     tmp_path / "ev", "--observer", "observer1", "--no-report"])
    assert code == 0, err


def test_a_bad_file_in_a_training_case_is_found_before_the_run_folder_exists(tmp_path, capsys, tiny):
    """Only the test fold used to be read up front: a truncated training image left a
    run folder behind, and the corrected command was then refused ('already holds a run')."""
    data = write_cases(tmp_path / "data", 4)
    image = data / "images" / "c2.tif"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    folds = tmp_path / "folds.csv"
    folds.write_text("id,fold\nc0,0\nc1,1\nc2,1\nc3,1\n")  # c2 trains, c0 is tested
    run = tmp_path / "run"
    argv = ["train", data, "--out", run, "--config", tiny, "--folds-file", folds]
    refused(capsys, argv, 3, "c2.tif", run)  # and no run folder for the corrected command to trip over


def test_a_folds_file_with_every_case_in_the_test_fold_is_refused(tmp_path, capsys, tiny):
    data = write_cases(tmp_path / "data", 4)
    folds = tmp_path / "folds.csv"
    folds.write_text("id,fold\n" + "".join(f"c{i},0\n" for i in range(4)))
    line = refused(capsys, ["train", data, "--out", tmp_path / "run", "--config", tiny,
                            "--folds-file", folds], 3, "folds.csv", tmp_path / "run")
    assert "every case in fold 0" in line


def test_report_names_a_damaged_summary_and_writes_nothing(tmp_path, capsys):
    evaluation = tmp_path / "ev"
    evaluation.mkdir()
    (evaluation / "metrics.csv").write_text("case,level,observer,dice\n")
    (evaluation / "summary.json").write_text('{"n_cases": 3, "obs')  # cut short
    got, _, err = run_main(capsys, ["report", evaluation])
    assert got == 3 and "summary.json: cannot be read as JSON" in one_error_line(err)
    assert sorted(p.name for p in evaluation.iterdir()) == ["metrics.csv", "summary.json"]


def test_check_lists_a_mask_that_no_image_uses(tmp_path, capsys):
    """masks/observer1/c_9.tif beside images/c9.tif: the image silently had no mask."""
    data = write_cases(tmp_path / "data", 2)
    io.write_mask(data / "masks" / "observer1" / "c_9.tif", LESION)
    code, out, _ = run_main(capsys, ["check", data])
    assert code != 0
    assert "c_9.tif: is a mask with no image of the same name" in out


def _mask_in_a_subfolder(data: Path) -> Path:
    path = data / "masks" / "observer1" / "done" / "c1.tif"  # moved there, read by no layout
    path.parent.mkdir()
    (data / "masks" / "observer1" / "c1.tif").rename(path)
    return path


def _busi_mask_in_another_class_folder(data: Path) -> Path:
    from test_bad_inputs import write_busi

    write_busi(data)
    (data / "malignant").mkdir()
    path = data / "malignant" / "benign (1)_mask_1.png"  # the second mask of benign (1), misplaced
    path.write_bytes((data / "benign" / "benign (2)_mask.png").read_bytes())
    return path


@pytest.mark.parametrize("build", [_mask_in_a_subfolder, _busi_mask_in_another_class_folder])
def test_a_mask_no_case_reads_is_listed_by_check_and_refused_by_train_evaluate_and_export(
        build, tmp_path, capsys, tiny):
    """check listed (or, in a subfolder, did not even list) a mask no case reads, and
    train, evaluate and export-nnunet went on without it: a lesion scored without its
    second mask, an image trained with no mask of that observer."""
    data = tmp_path / "data"
    if build is _mask_in_a_subfolder:
        write_cases(data, 4)
    culprit = build(data)
    code, out, _ = run_main(capsys, ["check", data])
    assert code != 0 and f"{culprit}: is a mask" in out
    said = f"{culprit}: is a mask that no case reads"
    refused(capsys, ["train", data, "--out", tmp_path / "run", "--config", tiny], 3, said, tmp_path / "run")
    refused(capsys, ["evaluate", "--truth", data, "--pred", data, "--out", tmp_path / "ev"], 3, said,
            tmp_path / "ev")
    refused(capsys, ["export-nnunet", data, tmp_path / "nn", "--dataset-id", "5", "--name", "X"], 3,
            said, tmp_path / "nn")


@pytest.mark.parametrize("rows, what", [
    # c1's row names c0's mask: c1 would train and be scored against another image's tumour
    ("c0,images/c0.tif,masks/observer1/c0.tif\nc1,images/c1.tif,masks/observer1/c0.tif\n",
     "line 3: 'masks/observer1/c0.tif' is observer observer1's mask of case 'c1', but also "
     "observer observer1's mask of case 'c0' (line 2)"),
    # an image given as a mask: a binary image passed every other check
    ("c0,images/c0.tif,masks/observer1/c0.tif\nc1,masks/observer1/c0.tif,masks/observer1/c1.tif\n",
     "line 3: 'masks/observer1/c0.tif' is the image of case 'c1', but also observer observer1's "
     "mask of case 'c0' (line 2)"),
])
def test_a_manifest_giving_one_mask_file_two_roles_is_refused(rows, what, tmp_path, capsys, tiny):
    data = write_cases(tmp_path / "data", 2)
    manifest = data / "manifest.csv"
    manifest.write_text("id,image,mask_observer1\n" + rows)
    # check lists it among the problems (one row's, not the manifest's as a whole)
    code, out, _ = run_main(capsys, ["check", data])
    assert code == 3 and f"problem: {data / 'manifest.csv'}: {what}" in out, out
    line = refused(capsys, ["train", data, "--out", tmp_path / "run", "--config", tiny], 3,
                   "manifest.csv", tmp_path / "run")
    assert what in line, line


def test_a_mask_linked_to_another_cases_mask_is_refused(tmp_path, capsys):
    """masks/observer1/c1.tif a link to c0.tif: c1 silently had c0's tumour."""
    data = write_cases(tmp_path / "data", 2)
    (data / "masks" / "observer1" / "c1.tif").unlink()
    (data / "masks" / "observer1" / "c1.tif").symlink_to("c0.tif")
    code, out, _ = run_main(capsys, ["check", data])  # listed among the problems
    assert code == 3, out
    assert f"problem: {data / 'masks' / 'observer1' / 'c1.tif'}: is observer observer1's mask of case " \
        "'c1', but also observer observer1's mask of case 'c0'" in out, out
    line = refused(capsys, ["export-nnunet", data, tmp_path / "nn", "--dataset-id", "5", "--name", "X"],
                   3, "observer1/c1.tif", tmp_path / "nn")
    assert "also observer observer1's mask of case 'c0'" in line, line


def test_one_file_for_two_observers_is_refused_before_training(tmp_path, capsys, tiny):
    """Training went through fold after fold, then the evaluation of a test fold holding
    the case refused it (exit 3) and left the run folder half made."""
    data = two_observers(tmp_path / "data")
    (data / "manifest.csv").write_text(
        "id,image,mask_observer1,mask_observer2,group\n" + "".join(
            f"c{i},images/c{i}.tif,masks/observer1/c{i}.tif,masks/observer{1 if i == 2 else 2}/c{i}.tif,g{i}\n"
            for i in range(4)))
    code, out, _ = run_main(capsys, ["check", data])
    assert code == 3
    assert "observer1/c2.tif: is the mask of observers observer1 and observer2 of case 'c2'" in out, out
    line = refused(capsys, ["train", data, "--out", tmp_path / "run", "--config", tiny, "--folds", "all"],
                   3, "observer1/c2.tif", tmp_path / "run")
    assert "checked before training" in line, line
