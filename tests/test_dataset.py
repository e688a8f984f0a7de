"""Dataset discovery (folder layouts, manifests) on real files, and BUSI when present."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from bcseg.cli import main
from bcseg.data import io
from bcseg.data.cases import Case, read_case_image, read_case_masks
from bcseg.data.dataset import discover
from bcseg.data.manifest import read_manifest, write_manifest
from bcseg.errors import DataError


def square(shape, top, left, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[..., top:top + size, left:left + size] = True
    return mask


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array.astype(np.uint8))
    return path


def write_png_mask(path: Path, mask: np.ndarray) -> Path:
    return write_png(path, mask.astype(np.uint8) * 255)


IMAGE = (np.arange(16 * 24) % 200).astype(np.uint8).reshape(16, 24)


# --------------------------------------------------------------------------- images/ + masks/

def test_images_and_observer_folders_2d(tmp_path):
    for stem in ("a", "b", "c"):
        write_png(tmp_path / "images" / f"{stem}.png", IMAGE)
        write_png_mask(tmp_path / "masks" / "alice" / f"{stem}.png", square((16, 24), 2, 3, 5))
    for stem in ("a", "c"):  # bob did not draw b
        write_png_mask(tmp_path / "masks" / "bob" / f"{stem}.png", square((16, 24), 3, 3, 5))
    cases = discover(tmp_path)
    assert [c.id for c in cases] == ["a", "b", "c"]
    assert [c.group for c in cases] == ["a", "b", "c"]  # one file, one group
    assert cases[0].observers == ["alice", "bob"]
    assert cases[1].observers == ["alice"]
    assert cases[0].masks["bob"] == (tmp_path / "masks" / "bob" / "a.png",)
    assert cases[0].label_class is None
    masks = read_case_masks(cases[0], IMAGE.shape)
    assert masks["alice"].sum() == 25 and masks["bob"].sum() == 25
    assert (masks["alice"] & masks["bob"]).sum() == 20  # offset by one row


def test_images_and_observer_folders_3d_with_spacing(tmp_path):
    stack = np.stack([IMAGE] * 6)
    for stem in ("s1", "s2"):
        io.write_image(tmp_path / "images" / f"{stem}.tif", stack, (1.0, 0.25, 0.3))
        for observer, top in (("observer1", 2), ("observer2", 4)):
            io.write_mask(tmp_path / "masks" / observer / f"{stem}.tif",
                          square(stack.shape, top, 2, 6), (1.0, 0.25, 0.3))
    cases = discover(tmp_path)
    assert [c.id for c in cases] == ["s1", "s2"]
    image, spacing = read_case_image(cases[1])
    assert image.shape == (6, 16, 24) and spacing == pytest.approx((1.0, 0.25, 0.3))
    masks = read_case_masks(cases[1], image.shape)
    assert sorted(masks) == ["observer1", "observer2"]
    assert masks["observer1"].sum() == 6 * 36
    assert (masks["observer1"] & masks["observer2"]).sum() == 6 * 4 * 6


def test_case_spacing_overrides_the_file(tmp_path):
    path = io.write_image(tmp_path / "x.tif", np.stack([IMAGE] * 3), (1.0, 0.25, 0.25))
    case = Case(id="x", image=path, spacing_mm=(2.0, 0.5, 0.5))
    assert read_case_image(case)[1] == (2.0, 0.5, 0.5)
    assert read_case_image(Case(id="x", image=path))[1] == pytest.approx((1.0, 0.25, 0.25))


def test_flat_masks_folder_is_one_observer_called_mask(tmp_path):
    write_png(tmp_path / "images" / "a.png", IMAGE)
    write_png(tmp_path / "images" / "b.png", IMAGE)
    write_png_mask(tmp_path / "masks" / "a.png", square((16, 24), 1, 1, 4))
    cases = discover(tmp_path)
    assert cases[0].masks == {"mask": (tmp_path / "masks" / "a.png",)}
    assert cases[1].masks == {}


@pytest.mark.parametrize("folder", ["observer1", "mask"])
def test_loose_masks_beside_observer_folders_are_refused(folder, tmp_path, capsys):
    """masks/a.png beside masks/observer1/: the loose mask was read as a second observer,
    "mask" (a stray copy counted as a second reader), and beside a folder named "mask"
    it was dropped without a word, replaced by that folder's."""
    write_png(tmp_path / "images" / "a.png", IMAGE)
    write_png_mask(tmp_path / "masks" / "a.png", square((16, 24), 1, 1, 4))
    write_png_mask(tmp_path / "masks" / folder / "a.png", square((16, 24), 2, 2, 4))
    assert main(["check", str(tmp_path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"bcseg: error: {tmp_path / 'masks'}: holds both masks (a.png, ...) "
                             f"and observer folders ({folder})"), err[0]


def test_images_only(tmp_path):
    write_png(tmp_path / "images" / "a.png", IMAGE)
    cases = discover(tmp_path)
    assert len(cases) == 1 and cases[0].masks == {}


def test_awkward_names_spaces_parentheses_non_ascii(tmp_path):
    root = tmp_path / "données (v2) é"
    names = ["Spécimen (1) gauche", "tumeur nº 2", "标本 3"]
    for name in names:
        write_png(root / "images" / f"{name}.png", IMAGE)
        write_png_mask(root / "masks" / "Dr Müller" / f"{name}.png", square((16, 24), 0, 0, 3))
    cases = discover(root)
    assert sorted(c.id for c in cases) == sorted(names)
    for case in cases:
        assert case.observers == ["Dr Müller"]
        assert read_case_masks(case, IMAGE.shape)["Dr Müller"].sum() == 9
        assert read_case_image(case)[0].shape == (16, 24)


def test_two_images_with_one_stem_are_refused(tmp_path):
    write_png(tmp_path / "images" / "a.png", IMAGE)
    io.write_image(tmp_path / "images" / "a.tif", IMAGE)
    with pytest.raises(DataError, match="share the id 'a'"):
        discover(tmp_path)


def test_images_folder_without_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="holds no images") as error:
        discover(tmp_path)
    assert error.value.path == str(tmp_path / "images")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="empty") as error:
        discover(tmp_path)
    assert error.value.path == str(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nowhere")


def test_unknown_layout(tmp_path):
    write_png(tmp_path / "scans" / "a.png", IMAGE)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no known layout") as error:
        discover(tmp_path)
    assert error.value.path == str(tmp_path)
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="expected a folder or a manifest"):
        discover(tmp_path / "data.xlsx")


# --------------------------------------------------------------------------- BUSI-like layout

def test_busi_layout_merges_mask_files_and_reads_groups(tmp_path):
    root = tmp_path / "busi"
    write_png(root / "benign" / "benign (1).png", IMAGE)
    write_png_mask(root / "benign" / "benign (1)_mask.png", square((16, 24), 0, 0, 4))
    write_png_mask(root / "benign" / "benign (1)_mask_1.png", square((16, 24), 10, 10, 3))
    write_png(root / "benign" / "benign (2).png", IMAGE)
    write_png_mask(root / "benign" / "benign (2)_mask.png", square((16, 24), 5, 5, 2))
    write_png(root / "normal" / "normal (1).png", IMAGE)
    write_png_mask(root / "normal" / "normal (1)_mask.png", np.zeros((16, 24), bool))
    (root / "folds.csv").write_text(
        "image,class,group,fold\n"
        "benign/benign (1).png,benign,7,0\n"
        "benign/benign (2).png,benign,7,0\n"
        "normal/normal (1).png,normal,3,1\n", encoding="utf-8")
    cases = {c.id: c for c in discover(root)}
    assert sorted(cases) == ["benign (1)", "benign (2)", "normal (1)"]
    assert cases["benign (1)"].group == cases["benign (2)"].group == "g7"
    assert cases["normal (1)"].group == "g3" and cases["normal (1)"].label_class == "normal"
    assert len(cases["benign (1)"].masks["reference"]) == 2
    merged = read_case_masks(cases["benign (1)"])["reference"]
    assert merged.sum() == 16 + 9
    assert not read_case_masks(cases["normal (1)"])["reference"].any()


# --------------------------------------------------------------------------- manifest

def make_manifest_files(root: Path) -> None:
    write_png(root / "img" / "p1 left.png", IMAGE)
    write_png(root / "img" / "p1 right.png", IMAGE)
    write_png(root / "img" / "p2.png", IMAGE)
    write_png_mask(root / "seg" / "ann" / "p1 left.png", square((16, 24), 0, 0, 4))
    write_png_mask(root / "seg" / "ann" / "p1 left b.png", square((16, 24), 2, 2, 4))
    write_png_mask(root / "seg" / "ben" / "p1 left.png", square((16, 24), 1, 1, 4))
    write_png_mask(root / "seg" / "ann" / "p2.png", square((16, 24), 8, 8, 2))


MANIFEST = (
    "id,image,mask_ann,mask_ben,group,class\n"
    "L,img/p1 left.png,seg/ann/p1 left.png; seg/ann/p1 left b.png,seg/ben/p1 left.png,patient1,benign\n"
    "R,img/p1 right.png,,,patient1,benign\n"
    "P2,img/p2.png,seg/ann/p2.png,,,\n"
)


def test_manifest_columns_groups_and_classes(tmp_path):
    make_manifest_files(tmp_path)
    path = tmp_path / "list.csv"
    path.write_text(MANIFEST, encoding="utf-8")
    cases = read_manifest(path)
    assert [c.id for c in cases] == ["L", "R", "P2"]
    left, right, other = cases
    assert left.group == right.group == "patient1"
    assert other.group == "P2"  # empty group: the case is its own group
    assert left.label_class == "benign" and other.label_class is None
    assert left.observers == ["ann", "ben"] and right.masks == {} and other.observers == ["ann"]
    assert left.image == tmp_path / "img" / "p1 left.png"
    # Two files for observer 'ann' are OR-merged: 4x4 squares at (0,0) and (2,2).
    masks = read_case_masks(left, IMAGE.shape)
    assert masks["ann"].sum() == 16 + 16 - 4
    assert masks["ben"].sum() == 16
    # discover() finds a manifest given as a file or as manifest.csv in a folder.
    assert [c.id for c in discover(path)] == ["L", "R", "P2"]
    (tmp_path / "manifest.csv").write_text(MANIFEST, encoding="utf-8")
    assert [c.id for c in discover(tmp_path)] == ["L", "R", "P2"]


def test_manifest_round_trip(tmp_path):
    make_manifest_files(tmp_path)
    (tmp_path / "in.csv").write_text(MANIFEST, encoding="utf-8")
    cases = read_manifest(tmp_path / "in.csv")
    out = write_manifest(cases, tmp_path / "out.csv")
    again = read_manifest(out)
    assert again == cases


def test_manifest_path_escaping_its_folder(tmp_path):
    write_png(tmp_path / "outside.png", IMAGE)
    inner = tmp_path / "study"
    inner.mkdir()
    manifest = inner / "manifest.csv"
    manifest.write_text("id,image\na,../outside.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: '\.\./outside\.png' points outside") as error:
        read_manifest(manifest)
    assert error.value.path == str(manifest)
    # The same file by absolute path is allowed.
    manifest.write_text(f"id,image\na,{tmp_path / 'outside.png'}\n", encoding="utf-8")
    assert read_manifest(manifest)[0].image == tmp_path / "outside.png"


def test_manifest_missing_file(tmp_path):
    write_png(tmp_path / "a.png", IMAGE)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,mask_x\na,a.png,masks/a.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: file 'masks/a.png' not found") as error:
        read_manifest(manifest)
    assert error.value.path == str(manifest)


@pytest.mark.parametrize("text, message", [
    ("image,group\na.png,g\n", "lacks column"),
    ("id,image\n", "no rows"),
    ("id,image\n,a.png\n", "empty id"),
    ("id,image\na,\n", "empty path"),
    ("id,image\na,a.png\na,a.png\n", "share the id 'a'"),
    # one output file on macOS and Windows: A_mask.tif and a_mask.tif
    ("id,image\nA,a.png\na,a.png\n", "ids that differ only in letter case or Unicode form, 'A' and 'a'"),
    # one file on macOS: "café" as one code point and as "e" + a combining accent
    ("id,image\ncaf\u00e9,a.png\ncafe\u0301,a.png\n",
     r"differ only in letter case or Unicode form, 'caf\\xe9' and 'cafe\\u0301'"),
    # an observer called '': its scores read as rows of no reference, and --observer cannot name it
    ("id,image,mask_\na,a.png,a.png\n", "a column 'mask_' that names no observer"),
])
def test_manifest_malformed(tmp_path, text, message):
    write_png(tmp_path / "a.png", IMAGE)
    manifest = tmp_path / "m.csv"
    manifest.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        read_manifest(manifest)
    assert error.value.path == str(manifest)


def test_read_case_masks_or_merges_and_checks_shapes(tmp_path):
    a = write_png_mask(tmp_path / "a.png", square((16, 24), 0, 0, 3))
    b = write_png_mask(tmp_path / "b.png", square((16, 24), 10, 20, 4))
    c = write_png_mask(tmp_path / "c.png", square((16, 24), 1, 1, 3))
    case = Case(id="x", image=tmp_path / "img.png", masks={"obs": (a, b, c)})
    merged = read_case_masks(case)["obs"]
    assert merged.dtype == bool and merged.shape == (16, 24)
    assert merged.sum() == 9 + 16 + 9 - 4
    assert np.array_equal(merged, square((16, 24), 0, 0, 3) | square((16, 24), 10, 20, 4)
                          | square((16, 24), 1, 1, 3))
    wrong = write_png_mask(tmp_path / "wrong.png", np.zeros((8, 24), bool))
    with pytest.raises(DataError, match="differs from its image shape") as error:
        read_case_masks(Case(id="x", image=a, masks={"obs": (a, wrong)}))
    assert error.value.path == str(wrong)


# --------------------------------------------------------------------------- BUSI

@pytest.fixture(scope="module")
def busi_cases(busi_root):
    return discover(busi_root)


@pytest.fixture(scope="module")
def busi_masks(busi_cases):
    """Every BUSI mask, read once, checked against its image's shape (from the PNG header)."""
    masks = {}
    for case in busi_cases:
        with Image.open(case.image) as image:
            shape = (image.height, image.width)
        masks[case.id] = read_case_masks(case, shape).get("reference")
    return masks


def test_busi_counts_classes_and_groups(busi_root, busi_cases):
    assert len(busi_cases) == 780
    assert Counter(c.label_class for c in busi_cases) == {"benign": 437, "malignant": 210, "normal": 133}
    assert len({c.group for c in busi_cases}) == 606
    with open(busi_root / "folds.csv", newline="", encoding="utf-8") as handle:
        rows = {io.file_stem(r["image"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 780
    for case in busi_cases:
        assert case.group == f"g{rows[case.id]['group']}"
        assert case.label_class == rows[case.id]["class"]
        assert case.observers == ["reference"]


def test_busi_masks_lesions_and_normals(busi_cases, busi_masks):
    lesion = {cid for cid, mask in busi_masks.items() if mask is not None and mask.any()}
    assert len(lesion) == 647
    by_class = {c.id: c.label_class for c in busi_cases}
    assert {by_class[cid] for cid in lesion} == {"benign", "malignant"}
    normals = [cid for cid, cls in by_class.items() if cls == "normal"]
    assert len(normals) == 133
    assert all(busi_masks[cid] is not None and not busi_masks[cid].any() for cid in normals)


def test_busi_several_mask_files_are_or_merged(busi_cases, busi_masks):
    several = sorted((c for c in busi_cases if len(c.masks["reference"]) > 1), key=lambda c: c.id)
    assert len(several) == 17
    case = several[0]
    files = case.masks["reference"]
    assert all(io.file_stem(f).startswith(case.id + "_mask") for f in files)
    separate = [np.asarray(iio.imread(f)) != 0 for f in files]
    expected = np.logical_or.reduce(separate)
    assert np.array_equal(busi_masks[case.id], expected)
    assert expected.sum() > max(s.sum() for s in separate)  # the union adds pixels


@pytest.mark.parametrize("written", ["benign (N).png", "./benign/benign (N).png", "benign\\benign (N).png"])
def test_busi_groups_match_images_however_the_path_is_written(written, tmp_path):
    """A folds.csv whose 'image' was not exactly class/NAME.png matched no image, and every
    image silently became a group of its own: near-duplicates could land in train and test."""
    root = tmp_path / "busi"
    rows = ["image,class,group,fold"]
    for k in (1, 2, 3, 4):
        write_png(root / "benign" / f"benign ({k}).png", IMAGE)
        write_png_mask(root / "benign" / f"benign ({k})_mask.png", square((16, 24), k, k, 2))
        rows.append(f"{written.replace('N', str(k))},benign,{k // 3},{k // 3}")
    (root / "folds.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cases = {c.id: c for c in discover(root)}
    assert cases["benign (1)"].group == cases["benign (2)"].group == "g0"
    assert cases["benign (3)"].group == cases["benign (4)"].group == "g1"


def test_busi_folds_csv_naming_none_of_the_images_is_refused(tmp_path):
    root = tmp_path / "busi"
    write_png(root / "benign" / "benign (1).png", IMAGE)
    write_png_mask(root / "benign" / "benign (1)_mask.png", square((16, 24), 0, 0, 4))
    (root / "folds.csv").write_text("image,class,group,fold\nbenign/other (9).png,benign,0,0\n",
                                    encoding="utf-8")
    with pytest.raises(DataError, match="names none of the images in the class folders"):
        discover(root)


def test_a_mask_named_in_another_unicode_form_pairs_with_its_image(tmp_path):
    """images/café.tif typed as one code point and masks/observer1/café.tif as 'e' plus an
    accent (as macOS stores names) were one name but no pair: the image had no mask and
    the mask was an orphan."""
    import unicodedata

    from bcseg.data import io
    from bcseg.data.check import orphan_masks

    root = tmp_path / "data"
    stack = np.zeros((4, 16, 24), np.uint8)
    io.write_image(root / "images" / (unicodedata.normalize("NFC", "café") + ".tif"), stack)
    io.write_mask(root / "masks" / "observer1" / (unicodedata.normalize("NFD", "café") + ".tif"),
                  np.ones((4, 16, 24), bool))
    cases = discover(root)
    assert len(cases) == 1 and "observer1" in cases[0].masks
    assert orphan_masks(root, cases) == []
