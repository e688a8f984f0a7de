"""Export to nnU-Net v2: files read back by nnU-Net's own naming conventions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from bcseg.data import io
from bcseg.data.dataset import discover
from bcseg.errors import DataError, UsageError
from bcseg.nnunet import export_nnunet
from bcseg.data.phantom import write_phantom
from bcseg.atomic import PARTIAL_MARK
from bcseg.outputs import RECORD

SPACING = (1.0, 0.25, 0.25)  # the phantom's (z, y, x)


@pytest.fixture(scope="module")
def specimens(tmp_path_factory) -> Path:
    """Three phantom stacks of 10x32x32, two observers each. Read only."""
    root = tmp_path_factory.mktemp("nnunet") / "specimens"
    write_phantom(root, n=3, shape=(10, 32, 32))
    return root


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _union(root: Path, stem: str) -> np.ndarray:
    masks = [io.read_mask(root / "masks" / obs / f"{stem}.tif") for obs in ("observer1", "observer2")]
    return masks[0] | masks[1]


def _check_splits(folder: Path, k: int) -> None:
    """k folds whose val sets partition the cases, train = the rest, groups whole."""
    splits = _load(folder / "splits_final.json")
    cases = _load(folder / "bcseg_case_map.json")["cases"]
    assert len(splits) == k
    vals = [set(s["val"]) for s in splits]
    assert sum(len(v) for v in vals) == len(cases)
    assert set().union(*vals) == set(cases)
    for split, val in zip(splits, vals):
        assert val and set(split["train"]) == set(cases) - val
        groups_val = {cases[c]["group"] for c in val}
        groups_train = {cases[c]["group"] for c in split["train"]}
        assert not groups_val & groups_train


def test_3d_tiff_export(specimens, tmp_path):
    folder = export_nnunet(specimens, tmp_path / "raw", 7, "Phantom", k=3)
    assert folder == tmp_path / "raw" / "Dataset007_Phantom"
    ids = ["Phantom_0001", "Phantom_0002", "Phantom_0003"]
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert images == sorted([f"{i}_0000.tif" for i in ids] + [f"{i}.json" for i in ids])
    assert labels == sorted([f"{i}.tif" for i in ids] + [f"{i}.json" for i in ids])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    assert _load(folder / "dataset.json") == {
        "channel_names": {"0": "zscore"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": 3,
        "file_ending": ".tif",
        "overwrite_image_reader_writer": "Tiff3DIO",
        "name": "Phantom",
        "description": "Exported by bcseg; label = union of the observers' masks",
    }
    case_map = _load(folder / "bcseg_case_map.json")
    assert [case_map["cases"][i]["id"] for i in ids] == ["specimen_000", "specimen_001", "specimen_002"]
    for nn_id in ids:
        stem = case_map["cases"][nn_id]["id"]
        # Tiff3DIO: <case>.json beside image and label, spacing in array order (z, y, x).
        for sidecar in (folder / "imagesTr" / f"{nn_id}.json", folder / "labelsTr" / f"{nn_id}.json"):
            assert _load(sidecar) == {"spacing": list(SPACING)}
        image = tifffile.imread(folder / "imagesTr" / f"{nn_id}_0000.tif")
        assert np.array_equal(image, tifffile.imread(specimens / "images" / f"{stem}.tif"))
        label = tifffile.imread(folder / "labelsTr" / f"{nn_id}.tif")
        assert label.dtype == np.uint8 and label.shape == (10, 32, 32)
        assert set(np.unique(label)) == {0, 1}
        assert np.array_equal(label == 1, _union(specimens, stem))
    _check_splits(folder, 3)


def _busi_like(root: Path) -> Path:
    """BUSI layout: class folders, 'name (n).png' + '_mask.png' (+ '_mask_1.png')."""
    rng = np.random.default_rng(0)
    square = np.zeros((24, 32), np.uint8)
    square[4:10, 4:12] = 255
    other = np.zeros((24, 32), np.uint8)
    other[12:20, 16:28] = 255
    for folder, stem in [("benign", "benign (1)"), ("benign", "benign (2)"),
                         ("malignant", "malignant (1)")]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / folder / f"{stem}.png", rng.integers(0, 256, (24, 32), dtype=np.uint8))
        iio.imwrite(root / folder / f"{stem}_mask.png", square)
    iio.imwrite(root / "benign" / "benign (2)_mask_1.png", other)
    # benign (1) and malignant (1) are near-duplicates of one lesion: one group.
    (root / "folds.csv").write_text("image,group\nbenign/benign (1).png,1\n"
                                    "benign/benign (2).png,2\nmalignant/malignant (1).png,1\n")
    return root


def test_2d_busi_png_export(tmp_path):
    data = _busi_like(tmp_path / "busi")
    folder = export_nnunet(data, tmp_path / "raw", 501, "BUSI", k=2)
    assert folder.name == "Dataset501_BUSI"
    dataset = _load(folder / "dataset.json")
    assert dataset["file_ending"] == ".png" and dataset["numTraining"] == 3
    assert dataset["overwrite_image_reader_writer"] == "NaturalImage2DIO"

    cases = _load(folder / "bcseg_case_map.json")["cases"]
    assert all(re.fullmatch(r"BUSI_\d{4}", nn_id) for nn_id in cases)
    by_bcseg = {v["id"]: k for k, v in cases.items()}
    assert sorted(by_bcseg) == ["benign (1)", "benign (2)", "malignant (1)"]
    assert cases[by_bcseg["benign (2)"]]["image"] == str((data / "benign" / "benign (2).png").resolve())
    assert cases[by_bcseg["benign (1)"]]["group"] == cases[by_bcseg["malignant (1)"]]["group"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(f"{i}_0000.png" for i in cases)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(f"{i}.png" for i in cases)

    two = by_bcseg["benign (2)"]
    label = iio.imread(folder / "labelsTr" / f"{two}.png")
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    expected = np.zeros((24, 32), bool)
    expected[4:10, 4:12] = True
    expected[12:20, 16:28] = True  # the second mask file, OR-merged
    assert np.array_equal(label == 1, expected)
    image = iio.imread(folder / "imagesTr" / f"{two}_0000.png")
    assert np.array_equal(image, iio.imread(data / "benign" / "benign (2).png"))
    _check_splits(folder, 2)


def test_nifti_export_keeps_spacing_and_observer(specimens, tmp_path):
    folder = export_nnunet(specimens, tmp_path, 8, "Slicer", observer="observer2",
                           file_ending=".nii.gz", k=3)
    assert _load(folder / "dataset.json")["overwrite_image_reader_writer"] == "SimpleITKIO"
    assert sorted(p.name for p in folder.rglob("*.json") if p.name != RECORD) == [  # no spacing files
        "bcseg_case_map.json", "dataset.json", "splits_final.json"]
    for path in (folder / "imagesTr" / "Slicer_0001_0000.nii.gz", folder / "labelsTr" / "Slicer_0001.nii.gz"):
        image = sitk.ReadImage(str(path))
        assert np.allclose(image.GetSpacing(), SPACING[::-1])  # ITK: (x, y, z)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "Slicer_0001.nii.gz")))
    assert np.array_equal(label == 1, io.read_mask(specimens / "masks" / "observer2" / "specimen_000.tif"))


def test_given_folds_are_used_and_checked(specimens, tmp_path):
    cases = discover(specimens)
    folds = {"specimen_000": 1, "specimen_001": 0, "specimen_002": 1}
    folder = export_nnunet(cases, tmp_path, 9, "Given", folds=folds, file_ending="nii.gz")
    splits = _load(folder / "splits_final.json")
    assert splits == [{"train": ["Given_0001", "Given_0003"], "val": ["Given_0002"]},
                      {"train": ["Given_0002"], "val": ["Given_0001", "Given_0003"]}]
    with pytest.raises(DataError, match="no fold"):
        export_nnunet(cases, tmp_path, 10, "Missing", folds={"specimen_000": 0})


def test_refuses_to_overwrite_without_force(specimens, tmp_path):
    folder = export_nnunet(specimens, tmp_path, 11, "Twice", k=3, file_ending=".nii.gz")
    (folder / "stale.txt").write_text("from an older export")
    with pytest.raises(UsageError, match="force"):
        export_nnunet(specimens, tmp_path, 11, "Twice", k=3, file_ending=".nii.gz")
    assert (folder / "stale.txt").exists()
    with pytest.raises(UsageError, match="stale.txt"):  # --force replaces only bcseg's files
        export_nnunet(specimens, tmp_path, 11, "Twice", k=3, file_ending=".nii.gz", force=True)
    assert (folder / "stale.txt").read_text() == "from an older export"
    (folder / "stale.txt").unlink()
    export_nnunet(specimens, tmp_path, 11, "Twice", k=3, file_ending=".nii.gz", force=True)
    assert (folder / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset011_Twice"]
    with pytest.raises(UsageError, match="id 11"):  # nnU-Net finds datasets by id
        export_nnunet(specimens, tmp_path, 11, "Other", k=3)


@pytest.mark.parametrize("dataset_id, name", [
    (0, "ok"), (1000, "ok"), ("7", "ok"), (True, "ok"), (7, ""), (7, "two words"), (7, "a/b"),
])
def test_rejects_bad_dataset_id_or_name(tmp_path, dataset_id, name):
    with pytest.raises(UsageError) as caught:
        export_nnunet(tmp_path, tmp_path / "raw", dataset_id, name)
    # one line naming the flag at fault, as every usage error does
    assert str(caught.value).startswith("--name: " if name in ("", "two words", "a/b") else "--dataset-id: ")
    assert not (tmp_path / "raw").exists()


def test_bad_data_names_the_file_and_leaves_nothing(specimens, tmp_path):
    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(10, 32, 32))
    bad = data / "masks" / "observer1" / "specimen_001.tif"
    io.write_mask(bad, np.zeros((10, 16, 16), bool))
    out = tmp_path / "raw"
    with pytest.raises(DataError, match="specimen_001"):
        export_nnunet(data, out, 12, "Bad", k=2)
    assert not out.exists()  # neither the dataset, nor its temporary folder, nor raw/
    with pytest.raises(UsageError, match="observer"):
        export_nnunet(specimens, out, 12, "Bad", observer="observer9", k=3)
    with pytest.raises(UsageError, match="cannot read 3D"):
        export_nnunet(specimens, out, 12, "Bad", file_ending=".png", k=3)
    assert not out.exists()


def test_stack_without_spacing_gets_unit_spacing_and_a_warning(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks" / "reader").mkdir(parents=True)
    mask = np.zeros((8, 16, 16), np.uint8)
    mask[2:6, 4:12, 4:12] = 255
    for k, stem in enumerate(("a", "b")):  # plain TIFFs: no ImageJ spacing, no resolution
        # unlike pixels: one stack under two groups is refused as a duplicate
        tifffile.imwrite(data / "images" / f"{stem}.tif", np.full((8, 16, 16), 9 + k, np.uint16))
        tifffile.imwrite(data / "masks" / "reader" / f"{stem}.tif", mask)
    with pytest.warns(UserWarning, match="2 stack"):
        folder = export_nnunet(data, tmp_path / "raw", 13, "NoSpacing", observer="reader", k=2)
    assert _load(folder / "imagesTr" / "NoSpacing_0001.json") == {"spacing": [1.0, 1.0, 1.0]}
    image = tifffile.imread(folder / "imagesTr" / "NoSpacing_0002_0000.tif")
    assert image.dtype == np.uint16 and image.shape == (8, 16, 16)
    assert np.array_equal(tifffile.imread(folder / "labelsTr" / "NoSpacing_0002.tif"), mask // 255)



def test_a_float16_stack_exports_to_nifti(tmp_path):
    """SimpleITK has no float16 pixel type: export-nnunet --file-ending .nii.gz of a
    float16 stack (which check, train and predict read) stopped with 'TypeError: dtype:
    float16 is not supported' (exit 1). It is written as float32, the same values."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks" / "reader").mkdir(parents=True)
    mask = np.zeros((8, 16, 16), np.uint8)
    mask[2:6, 4:12, 4:12] = 255
    rng = np.random.default_rng(0)
    stacks = {stem: rng.random((8, 16, 16)).astype(np.float16) for stem in ("a", "b")}
    for stem, stack in stacks.items():
        tifffile.imwrite(data / "images" / f"{stem}.tif", stack, resolution=(4.0, 4.0))
        tifffile.imwrite(data / "masks" / "reader" / f"{stem}.tif", mask)
    with pytest.warns(UserWarning, match="2 stack"):
        folder = export_nnunet(data, tmp_path / "raw", 15, "Half", observer="reader", k=2,
                               file_ending=".nii.gz")
    case = _load(folder / "bcseg_case_map.json")["cases"]
    written = {entry["id"]: name for name, entry in case.items()}
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"{written['a']}_0000.nii.gz")))
    assert image.dtype == np.float32 and np.array_equal(image, stacks["a"].astype(np.float32))

def test_two_channel_export(two_channel_root, tmp_path):
    folder = export_nnunet(two_channel_root, tmp_path / "raw", 12, "PAUS", k=3)
    ids = ["PAUS_0001", "PAUS_0002", "PAUS_0003"]
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == sorted([f"{i}_{c}.tif" for i in ids for c in ("0000", "0001")]
                            + [f"{i}.json" for i in ids])
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(
        [f"{i}.tif" for i in ids] + [f"{i}.json" for i in ids])
    dataset = _load(folder / "dataset.json")
    assert dataset["channel_names"] == {"0": "us", "1": "pa"}
    assert dataset["overwrite_image_reader_writer"] == "Tiff3DIO" and dataset["numTraining"] == 3
    cases = _load(folder / "bcseg_case_map.json")["cases"]
    for nn_id in ids:
        stem = cases[nn_id]["id"]
        assert list(cases[nn_id]["channels"]) == ["us", "pa"]
        for index, channel in (("0000", "us"), ("0001", "pa")):
            written = tifffile.imread(folder / "imagesTr" / f"{nn_id}_{index}.tif")
            source = tifffile.imread(two_channel_root / "images" / channel / f"{stem}.tif")
            assert written.dtype == source.dtype and np.array_equal(written, source)
        assert np.array_equal(tifffile.imread(folder / "labelsTr" / f"{nn_id}.tif") == 1,
                              _union(two_channel_root, stem))
    # The model's order, given: pa first.
    again = export_nnunet(two_channel_root, tmp_path / "raw", 12, "PAUS", k=3, force=True,
                          channels=["pa", "us"])
    assert _load(again / "dataset.json")["channel_names"] == {"0": "pa", "1": "us"}
    assert np.array_equal(tifffile.imread(again / "imagesTr" / "PAUS_0001_0000.tif"),
                          tifffile.imread(two_channel_root / "images" / "pa" / "specimen_000.tif"))
    with pytest.raises(DataError, match=r"lacks channel\(s\) doppler \(case 'specimen_000', checked before exporting\)"):
        export_nnunet(two_channel_root, tmp_path / "other", 13, "X", k=3, channels=["us", "doppler"])


def test_export_nnunet_cli_writes_channels_in_the_order_asked(tmp_path, two_channel_root):
    from bcseg.cli import main

    raw = tmp_path / "raw"
    assert main(["export-nnunet", str(two_channel_root), str(raw), "--dataset-id", "7", "--name", "PA",
                 "--channels", "pa,us"]) == 0
    dataset = json.loads(next(raw.glob("Dataset007_PA/dataset.json")).read_text())
    assert dataset["channel_names"] == {"0": "pa", "1": "us"}


def test_an_ending_nnunet_cannot_read_is_one_line_before_any_warning(specimens, tmp_path, capsys):
    """The folds' 'only 3 groups for 5 folds' warning came first, then the refusal."""
    from bcseg.cli import main

    code = main(["export-nnunet", str(specimens), str(tmp_path / "raw"), "--dataset-id", "507",
                 "--name", "P", "--file-ending", ".png"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("bcseg: error: --file-ending .png: nnU-Net cannot read 3D images as .png")
    assert not (tmp_path / "raw").exists()


KILLED_EXPORT = """
import sys, time
from bcseg import nnunet
real = nnunet._write_image
written = []

def write_image(*args, **kwargs):  # stop for the kill after two of the stage's images
    real(*args, **kwargs)
    written.append(args[0])
    if len(written) == 2:
        print("now", flush=True)
        time.sleep(120)

nnunet._write_image = write_image
nnunet.export_nnunet(sys.argv[1], sys.argv[2], 13, "Killed", k=3)
"""


def _killed_export(specimens: Path, out: Path) -> Path:
    """Run an export in another process and SIGKILL it while it writes its stage;
    return the stage it leaves."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(specimens), str(out)],
                               stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline() == "now\n"
    process.send_signal(signal.SIGKILL)
    process.wait()
    stage = out / f".Dataset013_Killed{PARTIAL_MARK}{process.pid}"
    assert len(list((stage / "imagesTr").glob("*.tif"))) == 2  # the state a kill leaves
    return stage


def test_the_next_export_deletes_the_stage_a_killed_export_left(specimens, tmp_path):
    """SIGKILL (nothing can clean up after it) left the hidden half-written dataset in
    nnUNet_raw for good; the next export of that dataset deletes it."""
    out = tmp_path / "raw"
    stage = _killed_export(specimens, out)
    folder = export_nnunet(specimens, out, 13, "Killed", k=3)
    assert sorted(p.name for p in out.iterdir()) == ["Dataset013_Killed"]  # no stage, no lock
    assert len(list((folder / "imagesTr").glob("*.tif"))) == 3
    assert not stage.exists()


def test_a_killed_stage_holding_a_file_of_yours_or_a_lookalike_is_kept(specimens, tmp_path):
    out = tmp_path / "raw"
    stage = _killed_export(specimens, out)
    (stage / "notes.txt").write_text("put here after the kill")  # the user's now
    lookalike = out / f".Dataset013_Killed{PARTIAL_MARK}1"  # named like a stage, no record
    lookalike.mkdir()
    (lookalike / "mine.txt").write_text("mine")
    export_nnunet(specimens, out, 13, "Killed", k=3)
    assert (stage / "notes.txt").read_text() == "put here after the kill"
    assert len(list((stage / "imagesTr").glob("*.tif"))) == 2
    assert (lookalike / "mine.txt").read_text() == "mine"


def test_files_that_only_look_like_bcseg_bookkeeping_still_need_force(specimens, tmp_path):
    """A folder holding nothing but bcseg's record counts as empty (a killed export's);
    a user's file named like a lock or a temporary does not, and survives."""
    folder = tmp_path / "Dataset014_Look"
    folder.mkdir()
    (folder / ".draft.bcseg-partial-999999.txt").write_text("my draft")
    (folder / ".keep.bcseg-lock").write_text("")
    with pytest.raises(UsageError, match="already holds a result; pass force=True"):
        export_nnunet(specimens, tmp_path, 14, "Look", k=3)
    assert (folder / ".draft.bcseg-partial-999999.txt").read_text() == "my draft"
    assert (folder / ".keep.bcseg-lock").exists()


def test_ctrl_c_while_the_dataset_moves_in_leaves_no_half_dataset(specimens, tmp_path, monkeypatch):
    """Red team 16: Ctrl-C while the staged files were moved into place left part of the
    dataset (no dataset.json), recorded as finished, which the next export refused."""
    from bcseg import nnunet

    real, moved = nnunet.beat, []

    def interrupted_after_two(path):
        real(path)
        moved.append(path)
        if len(moved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(nnunet, "beat", interrupted_after_two)
    out = tmp_path / "raw"
    with pytest.raises(KeyboardInterrupt):
        export_nnunet(specimens, out, 15, "Cut", k=3)
    assert len(moved) == 2 and not out.exists()  # nothing left, not even raw/
    monkeypatch.setattr(nnunet, "beat", real)
    assert (export_nnunet(specimens, out, 15, "Cut", k=3) / "dataset.json").is_file()


def test_a_full_disk_leaves_no_stage_of_the_export(specimens, tmp_path, monkeypatch):
    """On a full disk the stage's record could not be settled either, and its files were
    kept as 'not written by bcseg' (a hidden, partial copy of the dataset, named wrongly)."""
    import errno
    import warnings

    from bcseg import nnunet, outputs
    from bcseg.errors import DiskFullError

    real_image, real_finish, written = nnunet._write_image, outputs._finish, []

    def write_image(*args, **kwargs):  # the disk fills after two of the stage's images
        if len(written) == 2:
            raise DiskFullError(args[0], "cannot be written: no space left on the device")
        real_image(*args, **kwargs)
        written.append(args[0])

    def finish(folder, *args, **kwargs):  # and no record can be written there either
        if PARTIAL_MARK in Path(folder).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_finish(folder, *args, **kwargs)

    monkeypatch.setattr(nnunet, "_write_image", write_image)
    monkeypatch.setattr(outputs, "_finish", finish)
    out = tmp_path / "raw"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "was not written by bcseg" about its own files
        with pytest.raises(DiskFullError):
            export_nnunet(specimens, out, 16, "Full", k=3)
    assert len(written) == 2
    assert not out.exists() or not [p for p in out.iterdir() if PARTIAL_MARK in p.name]


@pytest.mark.parametrize("force", [False, True])
def test_a_file_named_like_the_dataset_folder_is_refused_and_kept(specimens, tmp_path, force):
    """Red team 16: a raw Python error, and the folder's lock left in nnUNet_raw."""
    out = tmp_path / "raw"
    out.mkdir()
    (out / "Dataset016_X").write_text("my file")
    with pytest.raises(UsageError, match="Dataset016_X: is a file, not a folder"):
        export_nnunet(specimens, out, 16, "X", k=3, force=force)
    assert [p.name for p in out.iterdir()] == ["Dataset016_X"]
    assert (out / "Dataset016_X").read_text() == "my file"


def test_a_byte_identical_image_in_two_groups_is_refused_before_anything_is_written(tmp_path, capsys):
    # case 'c' is a copy of case 'a' under another group: the folds could hold one in
    # nnU-Net's training and the other in its validation, as train and split refuse
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    lines = ["id,image,mask_obs,group"]
    for k, (case, group) in enumerate([("a", "g1"), ("b", "g2"), ("c", "g3"), ("d", "g4")]):
        image = np.full((16, 16), 10 * (k % 2 if case == "c" else k), np.uint8)  # c: a's pixels
        iio.imwrite(data / "img" / f"{case}.png", image)
        iio.imwrite(data / "img" / f"{case}_m.png", mask)
        lines.append(f"{case},img/{case}.png,img/{case}_m.png,{group}")
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert (data / "img" / "a.png").read_bytes() == (data / "img" / "c.png").read_bytes()
    out = tmp_path / "raw"
    with pytest.raises(DataError) as caught:
        export_nnunet(data / "manifest.csv", out, 13, "Dup", k=2)
    assert caught.value.path == str(data / "img" / "c.png") and "a.png" in str(caught.value)
    assert not out.exists()
    from bcseg.cli import main

    code = main(["export-nnunet", str(data / "manifest.csv"), str(out), "--dataset-id", "13",
                 "--name", "Dup", "--k", "2"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "c.png" in err and not out.exists()


@pytest.mark.parametrize("ending", [None, ".png", ".tif"])
def test_2d_images_of_different_pixel_sizes_are_not_exported_where_nnunet_drops_spacing(tmp_path, ending):
    # nnU-Net reads 2D .png and .tif with NaturalImage2DIO, which gives every image the
    # same spacing: images of 0.1 and 0.2 mm pixels would be taken for one scale
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks" / "obs").mkdir(parents=True)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:10, 6:12] = 255
    for k, mm in enumerate((0.1, 0.1, 0.2)):
        io.write_image(data / "images" / f"s{k}.tif", np.full((20, 24), k + 1, np.uint8), (mm, mm))
        io.write_image(data / "masks" / "obs" / f"s{k}.tif", mask, (mm, mm))
    out = tmp_path / "raw"
    with pytest.raises(DataError) as caught:
        export_nnunet(data, out, 14, "Mixed", k=3, file_ending=ending)
    assert caught.value.path == str(data / "images" / "s2.tif") and ".nii.gz" in str(caught.value)
    assert not out.exists()
    folder = export_nnunet(data, out, 14, "Mixed", k=3, file_ending=".nii.gz")  # keeps the spacing
    spacing = sitk.ReadImage(str(folder / "imagesTr" / "Mixed_0003_0000.nii.gz")).GetSpacing()
    assert np.allclose(spacing, (0.2, 0.2))
