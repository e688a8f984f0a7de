"""Multi-channel cases: every layout on real TIFFs, agreement checks, normalisation per channel."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bcseg.cli import main
from bcseg.data import io
from bcseg.data.check import check_dataset, format_report
from bcseg.data.cases import (read_case_channel_arrays, read_case_channels, read_case_image,
                              read_case_masks)
from bcseg.data.dataset import discover
from bcseg.data.manifest import read_manifest, write_manifest
from bcseg.data.intensity import channel_stats, check_methods, normalise, normalise_channels
from bcseg.data.phantom import write_phantom
from bcseg.errors import DataError

SPACING = (1.0, 0.25, 0.25)
US = (np.arange(3 * 16 * 20) % 250).astype(np.uint8).reshape(3, 16, 20)
PA = np.linspace(0.5, 5000.0, US.size, dtype=np.float32).reshape(US.shape)
LESION = np.zeros(US.shape, bool)
LESION[1:3, 4:9, 5:12] = True


def write_masks(root: Path, stems) -> None:
    for stem in stems:
        io.write_mask(root / "masks" / "observer1" / f"{stem}.tif", LESION, SPACING)


def write_hyperstack(path: Path, us, pa, axes="ZCYX", spacing=SPACING) -> Path:
    """An ImageJ hyperstack (ZCYX, as Fiji saves one) or an OME-TIFF (CZYX), with spacing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([us.astype(np.float32), pa], axis=axes.index("C"))
    if axes.startswith("C"):  # ImageJ allows TZCYXS order only
        tifffile.imwrite(path, data, ome=True, metadata={
            "axes": axes, "PhysicalSizeZ": spacing[0], "PhysicalSizeZUnit": "mm",
            "PhysicalSizeY": spacing[1], "PhysicalSizeYUnit": "mm",
            "PhysicalSizeX": spacing[2], "PhysicalSizeXUnit": "mm"})
        return path
    metadata = {"axes": axes, "unit": "mm", "spacing": spacing[0]}
    tifffile.imwrite(path, data, imagej=True, metadata=metadata,
                     resolution=(1 / spacing[-1], 1 / spacing[-2]))
    return path


def assert_two_channels(case, us=US, pa=PA):
    array, spacing, names = read_case_channels(case)
    assert names == ["us", "pa"] and case.channel_names == ["us", "pa"]
    assert array.shape == us.shape + (2,) and array.dtype == np.float32  # channels last
    assert np.array_equal(array[..., 0], us) and np.array_equal(array[..., 1], pa)
    assert spacing == pytest.approx(SPACING[-us.ndim:])
    arrays, _ = read_case_channel_arrays(case)
    assert arrays["us"].dtype == us.dtype  # own dtypes kept for normalisation


# --------------------------------------------------------------------------- layouts

def test_channel_folders(tmp_path):
    for stem in ("S01", "S02"):
        io.write_image(tmp_path / "images" / "us" / f"{stem}.tif", US, SPACING)
        io.write_image(tmp_path / "images" / "pa" / f"{stem}.tif", PA, SPACING)
    write_masks(tmp_path, ["S01", "S02"])
    cases = discover(tmp_path)
    assert [c.id for c in cases] == ["S01", "S02"]
    # Without channels.json the folders are taken in name order; with it, in its order.
    assert cases[0].channel_names == ["pa", "us"]
    (tmp_path / "channels.json").write_text('["us", "pa"]')
    cases = discover(tmp_path)
    assert_two_channels(cases[0])
    # Existing single-image readers see the first channel, unchanged.
    image, spacing = read_case_image(cases[0])
    assert image.dtype == np.uint8 and np.array_equal(image, US)
    assert read_case_masks(cases[0], US.shape)["observer1"].sum() == LESION.sum()


@pytest.mark.parametrize("names", [
    {"channel_names": {"0": "us", "1": "pa"}}, {"0": "us", "1": "pa"}, ["us", "pa"]])
def test_nnunet_suffixes(tmp_path, names):
    for stem in ("S01", "S02"):
        io.write_image(tmp_path / "images" / f"{stem}_0000.tif", US, SPACING)
        io.write_image(tmp_path / "images" / f"{stem}_0001.tif", PA, SPACING)
    write_masks(tmp_path, ["S01", "S02"])
    (tmp_path / "channels.json").write_text(json.dumps(names))
    cases = discover(tmp_path)
    assert [c.id for c in cases] == ["S01", "S02"]
    assert cases[1].observers == ["observer1"]
    assert_two_channels(cases[1])


def test_manifest_channel_columns(tmp_path):
    for stem in ("S01", "S02"):
        io.write_image(tmp_path / "us" / f"{stem}.tif", US, SPACING)
        io.write_image(tmp_path / "pa" / f"{stem}.tif", PA, SPACING)
    write_masks(tmp_path, ["S01", "S02"])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image_us,image_pa,mask_observer1,group\n"
                        "S01,us/S01.tif,pa/S01.tif,masks/observer1/S01.tif,p1\n"
                        "S02,us/S02.tif,pa/S02.tif,masks/observer1/S02.tif,p1\n")
    cases = discover(tmp_path)
    assert [c.group for c in cases] == ["p1", "p1"]
    assert_two_channels(cases[0])
    # Written back, the channels survive the round trip.
    again = read_manifest(write_manifest(cases, tmp_path / "copy.csv"))
    assert [c.channels for c in again] == [c.channels for c in cases]


@pytest.mark.parametrize("axes", ["ZCYX", "CZYX"])
def test_hyperstack_with_a_channel_axis(tmp_path, axes):
    write_hyperstack(tmp_path / "images" / "S01.tif", US, PA, axes=axes)
    write_masks(tmp_path, ["S01"])
    (tmp_path / "channels.json").write_text('["us", "pa"]')
    (case,) = discover(tmp_path)
    array, spacing, names = read_case_channels(case)
    assert names == ["us", "pa"] and array.shape == (3, 16, 20, 2)
    assert np.array_equal(array[..., 0], US) and np.array_equal(array[..., 1], PA)
    assert spacing == pytest.approx(SPACING)
    assert np.array_equal(read_case_image(case)[0], US)
    # Read as one grey stack, the channels would become slices: refused, naming the file.
    with pytest.raises(DataError, match="2 channels") as error:
        io.read_image(case.image)
    assert error.value.path == str(case.image)


def test_ome_tiff_with_a_channel_axis_2d(tmp_path):
    path = tmp_path / "images" / "S01.tif"
    path.parent.mkdir(parents=True)
    tifffile.imwrite(path, np.stack([US[0].astype(np.float32), PA[0]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 250.0, "PhysicalSizeY": 250.0})
    (tmp_path / "channels.json").write_text('["us", "pa"]')
    (case,) = discover(tmp_path)
    assert case.id == "S01"
    assert_two_channels(case, US[0].astype(np.float32), PA[0])  # one file, one dtype


def test_single_channel_cases_are_unchanged(tmp_path):
    io.write_image(tmp_path / "images" / "S01.tif", US, SPACING)
    (case,) = discover(tmp_path)
    assert case.channels == () and case.channel_names == ["image"]
    array, spacing, names = read_case_channels(case)
    assert names == ["image"] and array.shape == US.shape + (1,) and array.dtype == np.uint8
    with pytest.raises(DataError, match="has no channel 'us', 'pa'; it has 'image'") as error:
        read_case_channels(case, ["us", "pa"])
    assert error.value.path == str(case.image)


def test_one_named_channel_of_plain_files(tmp_path):
    io.write_image(tmp_path / "images" / "S01.tif", US, SPACING)
    (tmp_path / "channels.json").write_text('["pa"]')
    (case,) = discover(tmp_path)
    array, spacing, names = read_case_channels(case)
    assert names == ["pa"] and array.shape == US.shape + (1,) and np.array_equal(array[..., 0], US)


def test_phantom_with_two_channels_reads_back_in_order(tmp_path):
    write_phantom(tmp_path / "ph", n=1, shape=(8, 32, 32), channels=("us", "pa"))
    (case,) = discover(tmp_path / "ph")
    array, spacing, names = read_case_channels(case)
    assert names == ["us", "pa"] and array.shape == (8, 32, 32, 2)
    assert spacing == pytest.approx(SPACING)


# --------------------------------------------------------------------------- disagreement

def channel_folders(root: Path, pa=PA, pa_spacing=SPACING, stems=("S01", "S02")) -> Path:
    for k, stem in enumerate(stems):  # distinct specimens: no duplicate images to report
        io.write_image(root / "images" / "us" / f"{stem}.tif", np.roll(US, k, axis=-1), SPACING)
    io.write_image(root / "images" / "pa" / "S01.tif", pa, pa_spacing)
    (root / "channels.json").write_text('["us", "pa"]')
    write_masks(root, stems)
    return root


@pytest.mark.parametrize("pa, spacing, message", [
    (PA[:, :8], SPACING, r"channel 'pa' has shape \(3, 8, 20\), but channel 'us' \(S01.tif\) has \(3, 16, 20\)"),
    (PA, (2.0, 0.25, 0.25), "channel 'pa' has spacing 2x0.25x0.25 mm, but another channel"),
])
def test_channels_that_disagree_are_refused_naming_the_file(tmp_path, capsys, pa, spacing, message):
    root = channel_folders(tmp_path / "set", pa=pa, pa_spacing=spacing, stems=("S01",))
    (case,) = discover(root)
    bad = root / "images" / "pa" / "S01.tif"
    with pytest.raises(DataError, match=message) as error:
        read_case_channels(case)
    assert error.value.path == str(bad)
    report = check_dataset(root)
    assert [path for path, _ in report.problems] == [str(bad)]
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    assert f"problem: {bad}: " in out
    assert len(err.strip().splitlines()) == 1 and err.startswith("bcseg: error:")


def test_check_lists_missing_channels_and_reports_each_channels_range(tmp_path):
    root = channel_folders(tmp_path / "set")  # S02 has no PA image
    report = check_dataset(root)
    us_file = root / "images" / "us" / "S02.tif"
    assert report.problems == [(str(us_file), "case 'S02' lacks channel(s) pa")]
    text = format_report(report)
    assert "channel us          2 cases, uint8, range 0 to 249" in text
    assert "channel pa          1 cases, float32, range 0.5 to 5000" in text


def test_bad_channel_files_are_refused_naming_them(tmp_path):
    root = tmp_path / "nn"
    io.write_image(root / "images" / "S01_0000.tif", US, SPACING)
    io.write_image(root / "images" / "S01_0002.tif", PA, SPACING)
    (root / "channels.json").write_text('{"0": "us", "1": "pa"}')
    with pytest.raises(DataError, match="is channel 2, but .* names 2") as error:
        discover(root)
    assert error.value.path == str(root / "images" / "S01_0002.tif")
    for text, message in (("[\"us\", \"us\"]", "twice"), ("{\"0\": \"us\", \"2\": \"pa\"}", "0..1"),
                          ("[us]", "cannot read"), ("[\"u s\"]", "cannot name a channel")):
        (root / "channels.json").write_text(text)
        with pytest.raises(DataError, match=message) as error:
            discover(root)
        assert error.value.path == str(root / "channels.json")
    # A hyperstack with 2 channels where channels.json names 3.
    other = tmp_path / "hyper"
    write_hyperstack(other / "images" / "S01.tif", US, PA)
    (other / "channels.json").write_text('["us", "pa", "ct"]')
    with pytest.raises(DataError, match="has 2 channel") as error:
        discover(other)
    assert error.value.path == str(other / "images" / "S01.tif")


def test_channel_folders_must_match_channels_json(tmp_path):
    root = channel_folders(tmp_path / "set")
    (root / "channels.json").write_text('["us", "ct"]')
    with pytest.raises(DataError, match="names channels us, ct, but images/ holds folders pa, us"):
        discover(root)


# --------------------------------------------------------------------------- normalisation

def test_us_is_divided_by_255_and_pa_log_compressed():
    us = np.array([[0, 51, 255]], np.uint8)
    pa = np.array([[1.0, 10.0, 100.0]], np.float32)
    out = normalise_channels({"us": us, "pa": pa})
    assert out.shape == (1, 3, 2) and out.dtype == np.float32
    assert out[0, :, 0] == pytest.approx([0.0, 0.2, 1.0])
    # 99.5th percentile of [1, 10, 100] is 99.1; 40 dB below it is 0.991 -> 0.
    high = np.percentile(pa, 99.5)
    expected = (np.log10(pa[0]) - np.log10(high / 100)) / 2
    assert out[0, :, 1] == pytest.approx(np.clip(expected, 0, 1), abs=1e-6)


def test_methods_are_configurable_and_checked():
    assert check_methods(None, ["us", "pa"]) == {"us": "auto", "pa": "log"}
    assert check_methods({"pa": "percentile"}, ["us", "pa"]) == {"us": "auto", "pa": "percentile"}
    with pytest.raises(ValueError, match=r"normalisation\[pa\] must be one of"):
        check_methods({"pa": "sqrt"}, ["pa"])
    sixteen = np.array([0, 1000, 65535], np.uint16)
    stats = channel_stats(sixteen, "percentile")
    assert stats.method == "percentile" and normalise(sixteen, stats)[-1] == 1.0
    assert channel_stats(np.zeros(4, np.float32), "log").method == "log"
    assert not normalise(np.zeros(4, np.float32), channel_stats(np.zeros(4, np.float32), "log")).any()


def test_manifest_row_without_any_image(tmp_path):
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "image_us", "image_pa"], ["S01", "", ""]])
    with pytest.raises(DataError, match="line 2: no image in any of image_us, image_pa"):
        read_manifest(manifest)


# --------------------------------------------------------------------------- with a model

def test_a_case_lacking_a_models_channel_is_refused_naming_its_image(tmp_path):
    root = channel_folders(tmp_path / "set")
    case = [c for c in discover(root) if c.id == "S02"][0]
    with pytest.raises(DataError, match="case 'S02' has no channel 'pa'; it has 'us'") as error:
        read_case_channel_arrays(case, ["us", "pa"])
    assert error.value.path == str(root / "images" / "us" / "S02.tif")


class _CountedReads:
    """An array that records what is read of it, as a memory-mapped stack would page in."""

    def __init__(self, array: np.ndarray):
        self.array, self.reads = array, []
        self.ndim = array.ndim

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


def test_a_channel_blank_only_at_its_start_is_not_read_to_its_end():
    """constant_problem reads past the first slice only when it is constant, and then
    only up to the first slice with another value: it read the whole of a large stack
    whose first slice was blank (a PA acquisition that starts before the laser fires)."""
    from bcseg.data.channels import constant_problem

    stack = np.zeros((200, 8, 8), np.uint8)
    stack[1, 0, 0] = 1
    counted = _CountedReads(stack)
    assert constant_problem("pa", counted) is None
    assert counted.reads == [0, slice(1, 17)]
    stack[-1, 0, 0], stack[1, 0, 0] = 2, 0  # another value in the last slice only: still found
    assert constant_problem("pa", stack) is None
    stack[-1, 0, 0] = 0
    assert "every value is 0" in constant_problem("pa", stack)
    assert "every value is 7" in constant_problem("pa", np.full((4, 4), 7.0))
    assert constant_problem("pa", np.array([[np.nan, np.nan]])) is None  # NaN: no one value
