"""A mask that states another voxel size than its image is refused, by every command
that reads masks beside their image; a mask without spacing takes its image's."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from bcseg.cli import main
from bcseg.data import io

SPACING = (1.0, 0.25, 0.25)
STACK = (np.arange(6 * 24 * 24) % 180 + 40).astype(np.uint8).reshape(6, 24, 24)
LESION = np.zeros(STACK.shape, bool)
LESION[2:4, 8:14, 8:14] = True


def tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def dataset(root, mask_spacing):
    """Two stacks with one observer; case b's mask states ``mask_spacing``."""
    for number, name in enumerate("ab"):  # distinct images: a copy is a problem of its own
        io.write_image(root / "images" / f"{name}.tif", STACK + number, SPACING)
        io.write_mask(root / "masks" / "observer1" / f"{name}.tif", LESION,
                      mask_spacing if name == "b" else SPACING)
    return root / "masks" / "observer1" / "b.tif"


def test_check_lists_a_mask_whose_spacing_differs(tmp_path, capsys):
    culprit = dataset(tmp_path / "d", (1.0, 0.5, 0.5))
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "b.tif" in line]
    assert len(said) == 1, out
    assert str(culprit) in said[0] and "mask spacing 1x0.5x0.5 mm differs from its image's 1x0.25x0.25 mm" in said[0]


@pytest.mark.parametrize("mask_spacing", [None, (1.0, 0.25, 0.25000001)],
                         ids=["mask without spacing", "same spacing to float precision"])
def test_a_mask_without_spacing_or_with_its_images_passes(mask_spacing, tmp_path, capsys):
    dataset(tmp_path / "d", mask_spacing)
    assert main(["check", str(tmp_path / "d")]) == 0, capsys.readouterr()


def refused(capsys, root, argv, culprit, said) -> None:
    """``bcseg ARGV`` exits 3 with one line naming ``culprit`` and ``said``, and changes
    nothing under ``root``."""
    before = tree(root)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1, err
    assert str(culprit) in err[0] and said in err[0]
    assert tree(root) == before


def test_evaluate_refuses_a_prediction_with_another_spacing_before_writing(tmp_path, capsys):
    dataset(tmp_path / "d", SPACING)
    pred = tmp_path / "pred"
    io.write_mask(pred / "a_mask.tif", LESION, SPACING)
    io.write_mask(pred / "b_mask.tif", LESION, (2.0, 0.25, 0.25))  # another stack's z step
    refused(capsys, tmp_path, ["evaluate", "--pred", pred, "--truth", tmp_path / "d", "--out", tmp_path / "ev"],
            pred / "b_mask.tif", "mask spacing 2x0.25x0.25 mm")


@pytest.mark.parametrize("which", ["--tumour", "--specimen"])
def test_margins_refuses_a_mask_with_another_spacing_before_writing(which, tmp_path, capsys):
    image = tmp_path / "S01.tif"
    io.write_image(image, STACK, SPACING)
    good, bad = tmp_path / "good_mask.tif", tmp_path / "bad_mask.tif"
    io.write_mask(good, LESION, SPACING)
    io.write_mask(bad, np.ones_like(LESION) if which == "--specimen" else LESION, (1.0, 0.3, 0.3))
    masks = {"--tumour": bad, "--specimen": good} if which == "--tumour" else {"--tumour": good, "--specimen": bad}
    refused(capsys, tmp_path, ["margins", "--image", image, "--tumour", masks["--tumour"],
                               "--specimen", masks["--specimen"], "--out", tmp_path / "m"],
            bad, "differs from its image's 1x0.25x0.25 mm")


def test_export_nnunet_refuses_a_mask_with_another_spacing_and_leaves_nothing(tmp_path, capsys):
    culprit = dataset(tmp_path / "d", (1.0, 0.25, 0.5))
    refused(capsys, tmp_path, ["export-nnunet", tmp_path / "d", tmp_path / "nn", "--dataset-id", 7,
                               "--name", "X", "--k", 2], culprit, "mask spacing 1x0.25x0.5 mm")


def test_train_refuses_before_making_its_run_folder(tmp_path, capsys):
    culprit = dataset(tmp_path / "d", (1.0, 0.5, 0.5))
    before = tree(tmp_path)
    code = main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and str(culprit) in err[-1] and "mask spacing" in err[-1], err
    assert tree(tmp_path) == before


def test_margins_accepts_a_mask_that_states_the_spacing_given_in_the_images_place(tmp_path, capsys):
    """The image file's spacing is wrong, --spacing says the right one, and the mask states
    that one: it was refused with "re-save the mask with its image's spacing"."""
    image = tmp_path / "S01.tif"
    io.write_image(image, STACK, SPACING)
    mask = tmp_path / "S01_mask.tif"
    io.write_mask(mask, LESION, (1.0, 0.5, 0.5))
    code = main(["margins", "--image", str(image), "--tumour", str(mask), "--spacing", "1x0.5x0.5",
                 "--out", str(tmp_path / "m")])
    assert code == 0, capsys.readouterr().err


def observers_without_image_spacing(root):
    """Two stacks saved without spacing; observer1's masks state 1x0.25x0.25 mm and
    observer2's mask of b states ``2x0.5x0.5``: drawn on another stack, or calibrated wrong."""
    for number, name in enumerate("ab"):
        io.write_image(root / "images" / f"{name}.tif", STACK + number)
        io.write_mask(root / "masks" / "observer1" / f"{name}.tif", LESION, SPACING)
        io.write_mask(root / "masks" / "observer2" / f"{name}.tif", LESION,
                      (2.0, 0.5, 0.5) if name == "b" else None)
    return root / "masks" / "observer2" / "b.tif"


def test_check_lists_observers_whose_spacings_differ_where_the_image_states_none(tmp_path, capsys):
    """Each mask was compared with its image's spacing only: with none in the image, two
    observers' masks stating 1x0.25x0.25 and 2x0.5x0.5 mm passed, and were united and
    scored as one grid. A mask without spacing still passes beside either."""
    culprit = observers_without_image_spacing(tmp_path / "d")
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if line.startswith("problem:")]
    assert said == [f"problem: {culprit}: mask spacing 2x0.5x0.5 mm differs from that of another mask of "
                    f"its image, {tmp_path / 'd' / 'masks' / 'observer1' / 'b.tif'} (1x0.25x0.25 mm), "
                    "and the image states none; re-save the masks with the image's spacing, or with none"]


def test_train_and_export_refuse_observers_whose_spacings_differ_before_writing(tmp_path, capsys):
    culprit = observers_without_image_spacing(tmp_path / "d")
    refused(capsys, tmp_path, ["export-nnunet", tmp_path / "d", tmp_path / "nn", "--dataset-id", 7,
                               "--name", "X", "--k", 2], culprit, "mask spacing 2x0.5x0.5 mm differs")
    before = tree(tmp_path)
    code = main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and str(culprit) in err[-1] and "mask spacing 2x0.5x0.5 mm differs" in err[-1], err
    assert tree(tmp_path) == before


def test_check_lists_a_mask_stating_another_pixel_size_but_no_slice_spacing(tmp_path, capsys):
    """An ImageJ stack with ``unit=mm`` and resolution tags but no ``spacing=`` reads as
    having no spacing; a mask saved so at half its image's pixel size passed as a mask
    "without spacing" and was measured at its image's."""
    culprit = dataset(tmp_path / "d", SPACING)
    tifffile.imwrite(culprit, LESION.astype(np.uint8) * 255, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "mm"})  # 0.5 mm pixels, z unstated
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "b.tif" in line]
    assert len(said) == 1, out
    assert str(culprit) in said[0] and "0.5x0.5 mm" in said[0] and "1x0.25x0.25 mm" in said[0]


def test_a_mask_stating_its_images_pixel_size_but_no_slice_spacing_passes(tmp_path, capsys):
    culprit = dataset(tmp_path / "d", SPACING)
    tifffile.imwrite(culprit, LESION.astype(np.uint8) * 255, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "unit": "mm"})
    assert main(["check", str(tmp_path / "d")]) == 0, capsys.readouterr()


@pytest.mark.parametrize("unit, per_unit", [("MILLIMETER", 2.0), ("MICROMETER", 0.002)])
def test_a_mask_with_spacing_in_tifffiles_mm_or_um_resolution_unit_is_compared(unit, per_unit,
                                                                              tmp_path, capsys):
    """tifffile writes ResolutionUnit 4 (mm) or 5 (µm) for resolutionunit='MILLIMETER' or
    'MICROMETER'; read as "no unit", a mask so saved at 0.5 mm pixels beside its image's
    0.25 mm passed as a mask without spacing, and was measured at its image's."""
    root = tmp_path / "d"
    for number, name in enumerate("ab"):  # 2D cases at 0.25 mm
        io.write_image(root / "images" / f"{name}.tif", STACK[3] + number, SPACING[1:])
    io.write_mask(root / "masks" / "observer1" / "a.tif", LESION[3], SPACING[1:])
    culprit = root / "masks" / "observer1" / "b.tif"
    tifffile.imwrite(culprit, LESION[3].astype(np.uint8) * 255, resolution=(per_unit, per_unit),
                     resolutionunit=unit)
    assert io.read_spacing(culprit) == pytest.approx((0.5, 0.5))
    assert main(["check", str(root)]) == 3
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "b.tif" in line]
    assert len(said) == 1, out
    assert str(culprit) in said[0] and "mask spacing 0.5x0.5 mm differs from its image's 0.25x0.25 mm" in said[0]


def _image_without_slice_spacing(root):
    """Two stacks whose images state 0.25 mm pixels but no slice spacing (ImageJ ``unit``
    and resolution without ``spacing=``), so that their spacing reads as none."""
    for number, name in enumerate("ab"):
        tifffile.imwrite(root / "images" / f"{name}.tif", STACK + number, imagej=True,
                         resolution=(4.0, 4.0), metadata={"axes": "ZYX", "unit": "mm"})


@pytest.mark.parametrize("mask_spacing", [(1.0, 0.5, 0.5), "plane only"])
def test_check_lists_a_mask_of_another_pixel_size_than_an_image_stating_no_slice_spacing(
        mask_spacing, tmp_path, capsys):
    """The image states 0.25 mm pixels and no slice spacing, so its spacing reads as
    none: a mask stating 0.5 mm pixels (in full, or in-plane only) passed as one beside
    an image "without spacing" and was measured on the image's grid."""
    culprit = dataset(tmp_path / "d", SPACING)
    _image_without_slice_spacing(tmp_path / "d")
    if mask_spacing == "plane only":
        tifffile.imwrite(culprit, LESION.astype(np.uint8) * 255, imagej=True, resolution=(2.0, 2.0),
                         metadata={"axes": "ZYX", "unit": "mm"})
    else:
        io.write_mask(culprit, LESION, mask_spacing)
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "b.tif" in line]
    assert len(said) == 1, out
    assert str(culprit) in said[0] and "mask pixel size 0.5x0.5 mm differs from its image's " \
        "0.25x0.25 mm (the image states no slice spacing)" in said[0], said


def test_a_mask_of_its_images_pixel_size_passes_beside_an_image_stating_no_slice_spacing(
        tmp_path, capsys):
    culprit = dataset(tmp_path / "d", SPACING)  # 1 x 0.25 x 0.25 mm, the image's pixel size
    _image_without_slice_spacing(tmp_path / "d")
    assert main(["check", str(tmp_path / "d")]) == 0, capsys.readouterr()
    io.write_mask(culprit, LESION)  # and a mask stating nothing
    assert main(["check", str(tmp_path / "d")]) == 0, capsys.readouterr()
