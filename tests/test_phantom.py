"""The synthetic specimen phantom, read back from the files it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from bcseg.data import io
from bcseg.errors import UsageError
from bcseg.data.phantom import make_specimen, write_phantom

from conftest import PHANTOM_N, PHANTOM_SHAPE

NAMES = [f"specimen_{k:03d}.tif" for k in range(PHANTOM_N)]
FOLDERS = ["images", "masks/observer1", "masks/observer2", "truth/tumour", "truth/tissue"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def test_layout_shapes_dtypes_and_spacing(phantom_root):
    for folder in FOLDERS:
        assert sorted(p.name for p in (phantom_root / folder).iterdir()) == NAMES
    for name in NAMES:
        image = tifffile.imread(phantom_root / "images" / name)
        assert image.shape == PHANTOM_SHAPE and image.dtype == np.uint8
        assert image.max() > 100  # bright tissue, not a blank stack
        for folder in FOLDERS:
            path = phantom_root / folder / name
            assert io.read_spacing(path) == pytest.approx((1.0, 0.25, 0.25))
            if folder != "images":
                mask = tifffile.imread(path)
                assert mask.shape == PHANTOM_SHAPE and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}
    assert not list(phantom_root.rglob("*partial*"))


def test_same_seed_same_bytes_and_specimen_k_whatever_n(tmp_path, phantom_root):
    # n=2 with seed 0 must reproduce the first two specimens of the n=4 session phantom.
    write_phantom(tmp_path / "two", n=2, shape=PHANTOM_SHAPE, truth=True)
    small = all_bytes(tmp_path / "two")
    full = all_bytes(phantom_root)
    assert len(small) == 2 * len(FOLDERS)
    assert all(full[key] == data for key, data in small.items())


def test_different_seed_gives_different_specimens(tmp_path, phantom_root):
    write_phantom(tmp_path / "seed1", n=1, shape=PHANTOM_SHAPE, seed=1)
    other = tifffile.imread(tmp_path / "seed1" / "images" / NAMES[0])
    first = tifffile.imread(phantom_root / "images" / NAMES[0])
    assert other.shape == first.shape and not np.array_equal(other, first)
    # Specimens of one phantom differ from each other, too.
    second = tifffile.imread(phantom_root / "images" / NAMES[1])
    assert not np.array_equal(first, second)


def test_some_slices_miss_the_tumour(phantom_root):
    for name in NAMES:
        tumour = io.read_mask(phantom_root / "truth" / "tumour" / name)
        per_slice = tumour.sum(axis=(1, 2))
        assert (per_slice == 0).any() and (per_slice > 0).any(), per_slice
        for observer in ("observer1", "observer2"):
            drawn = io.read_mask(phantom_root / "masks" / observer / name)
            assert (drawn.sum(axis=(1, 2)) == 0).any()
            assert drawn.any()


def test_tumour_is_darker_than_the_tissue_around_it(phantom_root):
    for name in NAMES:
        image = tifffile.imread(phantom_root / "images" / name).astype(float)
        tumour = io.read_mask(phantom_root / "truth" / "tumour" / name)
        tissue = io.read_mask(phantom_root / "truth" / "tissue" / name)
        assert tumour.any() and not (tumour & ~tissue).any()  # tumour lies in tissue
        ring = ndimage.binary_dilation(tumour, iterations=3) & tissue & ~tumour
        assert image[tumour].mean() < 0.6 * image[ring].mean()
        assert image[tumour].mean() < 0.6 * image[tissue & ~tumour].mean()


def test_observers_differ_but_agree(phantom_root):
    for name in NAMES:  # small 12x48x48 stacks: they differ
        one = io.read_mask(phantom_root / "masks" / "observer1" / name)
        two = io.read_mask(phantom_root / "masks" / "observer2" / name)
        assert not np.array_equal(one, two)
        assert dice(one, two) > 0.5


def test_observers_agree_with_dice_between_0_7_and_0_97(tmp_path):
    # At the default size (24x128x128) the disagreement is a few voxels at the border.
    write_phantom(tmp_path / "full", n=3)
    for name in NAMES[:3]:
        one = io.read_mask(tmp_path / "full" / "masks" / "observer1" / name)
        two = io.read_mask(tmp_path / "full" / "masks" / "observer2" / name)
        assert 0.7 < dice(one, two) < 0.97, name


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "phantom"
    write_phantom(out, n=1, shape=(12, 32, 32))
    before = all_bytes(out)
    with pytest.raises(UsageError, match="already holds a result; pass force=True") as error:
        write_phantom(out, n=1, shape=(12, 32, 32), seed=5)
    assert error.value.path == str(out)
    assert all_bytes(out) == before
    write_phantom(out, n=1, shape=(12, 32, 32), seed=5, force=True)
    assert all_bytes(out) != before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(write_phantom(empty, n=1, shape=(12, 32, 32))) == 1  # an empty folder is fine


@pytest.mark.parametrize("shape", [(8, 32, 32), (10, 40, 40), (12, 48, 48)])
def test_thin_stacks_have_a_tumour(shape):
    for seed in range(3):
        specimen = make_specimen(shape, seed=seed)
        assert specimen["image"].shape == shape
        assert specimen["tumour"].any()


def test_make_specimen_checks_its_shape():
    with pytest.raises(ValueError, match="every size >= 8"):
        make_specimen((7, 32, 32))
    with pytest.raises(ValueError, match=r"\(Z, H, W\)"):
        make_specimen((32, 32))
    with pytest.raises(ValueError, match="n must be at least 1"):
        write_phantom("unused", n=0)


# --------------------------------------------------------------------------- absurd requests

@pytest.mark.parametrize("argv, said", [
    (["--shape", "8", "40000", "40000"], "--shape: must have every size at most 4096"),
    (["--shape", "4096", "4096", "4096"], "a phantom may have"),  # each size allowed, not all
    (["--n", "10001", "--shape", "8", "8", "8"], "--n: must be at most 10000 specimens"),
], ids=["size", "voxels", "count"])
def test_an_absurd_phantom_is_refused_naming_the_flag_before_the_folder(argv, said, tmp_path, capsys):
    """--shape 8 40000 40000 was a raw MemoryError (exit 1): the stack is generated as
    float64 fields, about 100-160 bytes per voxel."""
    from bcseg.cli import main

    out = tmp_path / "phantom"
    capsys.readouterr()
    code = main(["phantom", str(out), *argv])
    lines = capsys.readouterr().err.splitlines()
    assert code == UsageError.exit_code and len(lines) == 1, lines
    assert lines[0].startswith("bcseg: error: --") and said in lines[0] and "Error" not in lines[0]
    assert not out.exists()


def test_the_largest_phantom_request_passes_the_check():
    from bcseg.data.phantom import MAX_VOXELS, shape_problem

    assert shape_problem((8, 4096, 4096)) is None and 8 * 4096 * 4096 == MAX_VOXELS
    assert "at most 4096" in shape_problem((8, 8, 4097))
    with pytest.raises(ValueError, match="shape .* voxels"):
        make_specimen((4096, 4096, 4096))


@pytest.mark.parametrize("keywords, said", [
    ({"spacing_mm": (1.0, 0.25)}, "spacing_mm"),  # was NumPy's 'operands could not be broadcast'
    ({"spacing_mm": (0.0, 0.25, 0.25)}, "spacing_mm"),  # was refused after a specimen was made
    ({"shape": (8.5, 16, 16)}, "shape"),  # was cut to 8 without a word
    ({"seed": -1}, "seed"),  # was NumPy's 'expected non-negative integer', naming nothing
    ({"seed": 1.5}, "seed"),
    ({"n": 1.5}, "n"),  # was "'float' object cannot be interpreted as an integer"
    ({"n": "2"}, "n"),
], ids=["spacing-length", "spacing-zero", "shape-fraction", "seed-negative", "seed-fraction",
        "n-fraction", "n-text"])
def test_write_phantom_refuses_a_bad_value_naming_it_before_the_folder(tmp_path, keywords, said):
    out = tmp_path / "phantom"
    with pytest.raises(ValueError, match=rf"^{said} ") as caught:
        write_phantom(out, **{"n": 1, "shape": (8, 16, 16), **keywords})
    assert "\n" not in str(caught.value)
    assert not out.exists()


def test_no_artefacts_without_the_realistic_phantom_is_refused(tmp_path, capsys):
    """--no-artefacts acts on the realistic phantom alone: with the default (easy) it
    was dropped without a word, and the phantom written as if it had not been given."""
    from bcseg.cli import main

    out = tmp_path / "phantom"
    capsys.readouterr()
    code = main(["phantom", str(out), "--n", "1", "--shape", "8", "16", "16", "--no-artefacts"])
    lines = capsys.readouterr().err.splitlines()
    assert code == UsageError.exit_code and len(lines) == 1, lines
    assert "--no-artefacts" in lines[0] and "--difficulty realistic" in lines[0]
    assert not out.exists()
