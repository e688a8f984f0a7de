"""A NIfTI mask placed elsewhere in space than its NIfTI image (other axis directions,
or another origin) is refused: same shape and spacing, but the wrong voxels."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from bcseg.cli import main
from bcseg.data import io
from bcseg.errors import DataError

SPACING = (1.0, 0.25, 0.25)  # z, y, x
STACK = (np.arange(6 * 24 * 24) % 180 + 40).astype(np.uint8).reshape(6, 24, 24)
LESION = np.zeros(STACK.shape, np.uint8)
LESION[2:4, 8:14, 3:9] = 1  # off centre in x: a left-right flip moves it
FLIP_X = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def write_nifti(path, array, origin=(0.0, 0.0, 0.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPACING)))
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def dataset(root, **mask_frame):
    """Two NIfTI stacks with one observer; case b's mask is written with ``mask_frame``."""
    for number, name in enumerate("ab"):
        write_nifti(root / "images" / f"{name}.nii.gz", STACK + number)
        write_nifti(root / "masks" / "observer1" / f"{name}.nii.gz", LESION,
                    **(mask_frame if name == "b" else {}))
    return root / "masks" / "observer1" / "b.nii.gz"


CASES = {"flipped left-right": ({"direction": FLIP_X}, "axes point elsewhere"),
         "shifted by two slices": ({"origin": (0.0, 0.0, 2.0)}, "origin (0, 0, 2) mm differs")}


@pytest.mark.parametrize("frame, said", CASES.values(), ids=CASES.keys())
def test_check_names_a_mask_placed_elsewhere_than_its_image(frame, said, tmp_path, capsys):
    culprit = dataset(tmp_path / "d", **frame)
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "b.nii.gz" in line]
    assert len(lines) == 1 and str(culprit) in lines[0] and said in lines[0], out


def test_the_same_frame_to_float_precision_passes(tmp_path, capsys):
    dataset(tmp_path / "d", origin=(0.0, 0.0, 1e-6))
    assert main(["check", str(tmp_path / "d")]) == 0, capsys.readouterr()


def test_a_frame_that_image_and_mask_share_passes(tmp_path, capsys):
    root = tmp_path / "d"
    for number, name in enumerate("ab"):  # both files flipped and moved alike: they agree
        write_nifti(root / "images" / f"{name}.nii.gz", STACK + number, (5.0, 1.0, -3.0), FLIP_X)
        write_nifti(root / "masks" / "observer1" / f"{name}.nii.gz", LESION, (5.0, 1.0, -3.0), FLIP_X)
    assert main(["check", str(root)]) == 0, capsys.readouterr()


def test_train_refuses_it_before_writing_anything(tmp_path, capsys):
    culprit = dataset(tmp_path / "d", direction=FLIP_X)
    before = tree(tmp_path)
    code = main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and str(culprit) in err[0], err
    assert tree(tmp_path) == before


def test_margins_refuses_a_tumour_mask_placed_elsewhere(tmp_path, capsys):
    image = write_nifti(tmp_path / "S01.nii.gz", STACK)
    tumour = write_nifti(tmp_path / "S01_tumour.nii.gz", LESION, direction=FLIP_X)
    before = tree(tmp_path)
    code = main(["margins", "--image", str(image), "--tumour", str(tumour), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and str(tumour) in err[0] and "axes point elsewhere" in err[0], err
    assert tree(tmp_path) == before


def test_a_tiff_mask_beside_a_nifti_image_is_not_checked(tmp_path):
    image = write_nifti(tmp_path / "a.nii.gz", STACK, direction=FLIP_X)
    mask = io.write_mask(tmp_path / "a_mask.tif", LESION, SPACING)  # TIFF places nothing in space
    assert io.read_mask(mask, STACK.shape, (SPACING,), image=image).sum() == LESION.sum()


def test_a_2d_mask_of_a_one_slice_stack_is_compared_in_plane(tmp_path):
    """A one-slice stack at z = 35.2 mm and its mask saved 2D (squeezed, as nibabel users
    do) share the in-plane axes; the missing z was taken as 0 and the pair refused."""
    image = write_nifti(tmp_path / "one.nii.gz", STACK[:1], origin=(1.5, -2.0, 35.2))
    mask = sitk.GetImageFromArray(LESION[2])
    mask.SetSpacing(tuple(reversed(SPACING[1:])))
    mask.SetOrigin((1.5, -2.0))
    sitk.WriteImage(mask, str(tmp_path / "one_mask.nii.gz"))
    assert io.read_mask(tmp_path / "one_mask.nii.gz", STACK.shape[1:], image=image).sum() == LESION[2].sum()


def test_nnunet_predictions_of_an_exported_nifti_dataset_lie_on_the_source_images(tmp_path):
    """export-nnunet wrote NIfTI with origin 0 and identity axes; nnU-Net copies that into
    its predictions, which bcseg then refused as placed elsewhere than the images."""
    from bcseg.nnunet import export_nnunet

    data = tmp_path / "d"
    dataset(data)
    for path in sorted((data / "images").iterdir()):  # the source lies flipped and moved
        write_nifti(path, io.read_image(path)[0], (5.0, 1.0, -3.0), FLIP_X)
    for path in sorted((data / "masks" / "observer1").iterdir()):
        write_nifti(path, LESION, (5.0, 1.0, -3.0), FLIP_X)
    folder = export_nnunet(data, tmp_path / "raw", 21, "Frame", k=2, file_ending=".nii.gz")
    exported = sorted((folder / "labelsTr").glob("*.nii.gz"))
    assert exported
    cases = json.loads((folder / "bcseg_case_map.json").read_text())["cases"]
    for label in exported:  # what nnU-Net's prediction of the case would carry
        source = cases[label.name[:-len(".nii.gz")]]["image"]
        assert io.read_mask(label, STACK.shape, image=source).sum() == LESION.sum()


@pytest.mark.parametrize("frame, said", CASES.values(), ids=CASES.keys())
def test_a_nifti_channel_placed_elsewhere_than_the_first_channel_is_refused(frame, said, tmp_path,
                                                                           capsys):
    """Channels are co-registered voxel by voxel. A PA channel saved flipped left-right
    (or shifted) against its US channel has the same shape and spacing, and was stacked
    beside it as it was: the model read a mirrored photoacoustic image."""
    from bcseg.data.cases import read_case_channels
    from bcseg.data.dataset import discover

    root = tmp_path / "d"
    for number, name in enumerate("ab"):
        write_nifti(root / "images" / "us" / f"{name}.nii.gz", STACK + number)
        write_nifti(root / "images" / "pa" / f"{name}.nii.gz", STACK[:, :, ::-1] + number,
                    **(frame if name == "b" else {}))
        write_nifti(root / "masks" / "observer1" / f"{name}.nii.gz", LESION)
    (root / "channels.json").write_text('["us", "pa"]')
    culprit = root / "images" / "pa" / "b.nii.gz"
    with pytest.raises(DataError, match=re.escape(said)) as error:
        read_case_channels(discover(root)[1])
    assert error.value.path == str(culprit)
    read_case_channels(discover(root)[0])  # the same frame passes
    assert main(["check", str(root)]) == 3
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "b.nii.gz" in line]
    assert len(lines) == 1 and str(culprit) in lines[0] and said in lines[0], out
