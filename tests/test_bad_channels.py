"""Bad multi-channel inputs, one test per class: each is refused (or listed by ``check``)
in one line naming the file at fault, with exit 3, and leaves nothing behind.

Every dataset is real tiny TIFFs in ``tmp_path``; the commands run through the real
command line. The classes are those of the red-team of issue 12 (channels).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bcseg.cli import main
from bcseg.data import io
from bcseg.data.dataset import discover
from bcseg.errors import DataError
from test_channels import LESION, PA, SPACING, US, write_hyperstack


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def masks(root: Path, stems=("S01", "S02")) -> None:
    for stem in stems:
        io.write_mask(root / "masks" / "observer1" / f"{stem}.tif", LESION, SPACING)


def folders(root: Path, names=("us", "pa"), pa=PA, channels_json: str | bytes | None = '["us", "pa"]'):
    for k, stem in enumerate(("S01", "S02")):
        io.write_image(root / "images" / names[0] / f"{stem}.tif", np.roll(US, k, -1), SPACING)
        if pa.dtype == np.float64:  # ImageJ TIFFs hold no float64
            (root / "images" / names[1]).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "images" / names[1] / f"{stem}.tif", np.roll(pa, k, -1),
                             photometric="minisblack")
        else:
            io.write_image(root / "images" / names[1] / f"{stem}.tif", np.roll(pa, k, -1), SPACING)
    if channels_json is not None:
        data = channels_json if isinstance(channels_json, bytes) else channels_json.encode()
        (root / "channels.json").write_bytes(data)
    masks(root)


def hyperstacks(root: Path, names='["us", "pa"]') -> None:
    for k, stem in enumerate(("S01", "S02")):
        write_hyperstack(root / "images" / f"{stem}.tif", np.roll(US, k, -1), np.roll(PA, k, -1))
    (root / "channels.json").write_text(names)
    masks(root)


def suffixed(root: Path) -> None:
    for k, stem in enumerate(("S01", "S02")):
        io.write_image(root / "images" / f"{stem}_0000.tif", np.roll(US, k, -1), SPACING)
        io.write_image(root / "images" / f"{stem}_0001.tif", np.roll(PA, k, -1), SPACING)
    (root / "channels.json").write_text('["us", "pa"]')
    masks(root)


def manifest(root: Path, header: str) -> None:
    folders(root, channels_json=None)
    rows = [f"S0{i},images/us/S0{i}.tif,images/pa/S0{i}.tif,masks/observer1/S0{i}.tif,S0{i}" for i in (1, 2)]
    (root / "manifest.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def _three_folders(root: Path) -> None:
    """Channel folders us, pa and a third, oxy (a copy of pa's files)."""
    folders(root, channels_json='["us", "pa", "oxy"]')
    for stem in ("S01", "S02"):
        io.write_image(root / "images" / "oxy" / f"{stem}.tif", *io.read_image(root / "images" / "pa" / f"{stem}.tif"))


def _then(build, change):
    def make(root):
        build(root)
        change(root)
    return make


BAD = {  # name: (build the dataset in root, the file the error must name, relative to root)
    "channels.json with a repeated key": (
        lambda r: folders(r, channels_json='{"0": "pa", "1": "us", "0": "us", "1": "pa"}'),
        "channels.json"),
    "channels.json a folder": (
        _then(lambda r: folders(r, channels_json=None), lambda r: (r / "channels.json").mkdir()),
        "channels.json"),
    "channel name with a newline": (
        lambda r: hyperstacks(r, '["us\\n", "pa"]'), "channels.json"),
    "channel folder with a newline": (
        lambda r: folders(r, names=("us", "pa\n"), channels_json=None), "images/pa\n"),
    "channel names differing in case only": (
        lambda r: folders(r, names=("us", "US"), channels_json=None), "images"),
    "channel name too long for file names": (
        lambda r: folders(r, names=("us", "p" * 200), channels_json=None), "images/" + "p" * 200),
    "loose images beside channel folders": (
        _then(lambda r: folders(r, channels_json=None),
              lambda r: io.write_image(r / "images" / "S01.tif", US, SPACING)), "images"),
    "a _0000 layout with an unsuffixed file": (
        _then(suffixed, lambda r: io.write_image(r / "images" / "notes.tif", US, SPACING)),
        "images/notes.tif"),
    "zero-byte hyperstack": (
        _then(hyperstacks, lambda r: (r / "images" / "S01.tif").write_bytes(b"")), "images/S01.tif"),
    "hyperstack cut short": (  # read as its first page: "has 1 channel(s)", no word of the cut
        _then(hyperstacks, lambda r: (r / "images" / "S02.tif").write_bytes(
            (r / "images" / "S02.tif").read_bytes()[:-3000])), "images/S02.tif"),
    "symlink loop in a channel folder": (
        _then(folders, lambda r: os.symlink("loop.tif", r / "images" / "us" / "loop.tif")),
        "images/us/loop.tif"),
    "one file given as two channels in a manifest": (
        _then(lambda r: manifest(r, "id,image_us,image_pa,mask_observer1,group"),
              lambda r: (r / "manifest.csv").write_text(
                  "id,image_us,image_pa,mask_observer1,group\n"
                  "S01,images/us/S01.tif,images/us/S01.tif,masks/observer1/S01.tif,S01\n")),
        "manifest.csv"),
    "a channel folder's file a link to another channel's": (
        _then(folders, lambda r: ((r / "images" / "pa" / "S02.tif").unlink(),
                                  os.symlink("../us/S02.tif", r / "images" / "pa" / "S02.tif"))),
        "images/pa/S02.tif"),
    "a _0000 file a link to another channel's": (
        _then(suffixed, lambda r: ((r / "images" / "S02_0001.tif").unlink(),
                                   os.symlink("S02_0000.tif", r / "images" / "S02_0001.tif"))),
        "images/S02_0001.tif"),
    "the middle of three channels a link to the first": (  # named: the link, not the last channel
        _then(_three_folders, lambda r: ((r / "images" / "pa" / "S02.tif").unlink(),
                                         os.symlink("../us/S02.tif", r / "images" / "pa" / "S02.tif"))),
        "images/pa/S02.tif"),
    "OME channel names in another order than channels.json": (
        _then(lambda r: hyperstacks(r, '["pa", "us"]'),
              lambda r: _ome_named(r / "images" / "S02.tif", ["US", "PA"])), "images/S02.tif"),
    "manifest with a repeated channel column": (
        lambda r: manifest(r, "id,image_us,image_us,mask_observer1,group"), "manifest.csv"),
    "manifest channel columns differing in case": (
        lambda r: manifest(r, "id,image_us,image_US,mask_observer1,group"), "manifest.csv"),
    "manifest image that is none of its channels": (  # the us file as image, beside image_pa alone
        lambda r: manifest(r, "id,image,image_pa,mask_observer1,group"), "manifest.csv"),
    "manifest path that loops": (
        _then(lambda r: manifest(r, "id,image_us,image_pa,mask_observer1,group"),
              lambda r: (os.symlink("loop.tif", r / "loop.tif"), (r / "manifest.csv").write_text(
                  "id,image_us,image_pa,mask_observer1,group\n"
                  "S01,loop.tif,images/pa/S01.tif,masks/observer1/S01.tif,S01\n"))),
        "manifest.csv"),
}


def _ome_named(path: Path, names: list[str]) -> None:
    """Rewrite the hyperstack at ``path`` as an OME-TIFF that names its channels."""
    data = tifffile.imread(path)  # (Z, C, Y, X)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": names}})


SAID = {"zero-byte hyperstack": "is empty (0 bytes)",  # not "has 1 channel(s)"
        "hyperstack cut short": "is truncated or corrupt",
        "OME channel names in another order than channels.json": "channel 'pa' is number 2 in the file",
        "one file given as two channels in a manifest": "line 2: channels 'us' and 'pa' are one file",
        "a channel folder's file a link to another channel's": "channels 'us' and 'pa' are one file",
        "a _0000 file a link to another channel's": "channels 'us' and 'pa' are one file",
        "the middle of three channels a link to the first": "channels 'us' and 'pa' are one file",
        "manifest image that is none of its channels": "line 2: image 'S01.tif' is none of the case's"}


# Problems of one file (or one manifest row), not of the layout: check lists them among
# the others, one line each, where the other commands refuse at the first.
ONE_FILE = {"zero-byte hyperstack", "hyperstack cut short", "symlink loop in a channel folder",
            "one file given as two channels in a manifest", "a channel folder's file a link to another channel's",
            "a _0000 file a link to another channel's", "the middle of three channels a link to the first",
            "OME channel names in another order than channels.json", "a _0000 layout with an unsuffixed file",
            "manifest image that is none of its channels", "manifest path that loops"}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_channel_layout_is_one_line_naming_the_file(kind, tmp_path, capsys):
    build, culprit = BAD[kind]
    root = tmp_path / "data"
    root.mkdir()
    build(root)
    before = tree(tmp_path)
    for argv in (["check", root], ["export-nnunet", root, tmp_path / "nn", "--dataset-id", 7,
                                   "--name", "X", "--k", 2]):
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 3 and len(lines) == 1, err
        if argv[0] == "check" and kind in ONE_FILE:
            listed = [line for line in out.splitlines() if line.startswith("problem: ")]
            # a manifest's rows are each listed (both rows of "image that is none of its channels")
            assert lines[0] == f"bcseg: error: {root}: {len(listed)} problem(s) found, listed above", err
            assert listed and listed[0].startswith(f"problem: {io_printable(root / culprit)}: "), out
            assert SAID.get(kind, "") in listed[0]
            continue
        assert lines[0].startswith(f"bcseg: error: {io_printable(root / culprit)}: "), err
        assert SAID.get(kind, "") in lines[0]
    assert tree(tmp_path) == before


def io_printable(path: Path) -> str:
    from bcseg.errors import printable
    return printable(str(path))


# --------------------------------------------------------------------------- listed by check

def _constant(root):
    folders(root, pa=np.full_like(PA, 7.0))


def _pa_with_no_positive_value(root):
    # a bipolar reconstruction saved with its sign flipped: all at or below 0, not constant
    folders(root, pa=-PA)


def _sparse_pa(root, name="pa"):
    # vessels in 0.1% of the voxels, a background of zeros: both percentiles are 0
    sparse = np.zeros_like(PA)
    sparse[1, 8, 10] = 4000.0
    folders(root, names=("us", name), pa=sparse, channels_json=f'["us", "{name}"]')


def _sparse_unknown_name(root):
    _sparse_pa(root, "oa")  # optoacoustic: a name bcseg does not know, scaled by "auto"


def _mask_with_channels(root):
    folders(root)
    write_hyperstack(root / "masks" / "observer1" / "S01.tif", LESION.astype(np.uint8) * 255,
                     LESION.astype(np.float32))


def _interleaved(root):
    (root / "images").mkdir(parents=True)
    for k, stem in enumerate(("S01", "S02")):
        tifffile.imwrite(root / "images" / f"{stem}.tif", np.stack([US[k], US[k]], -1),
                         photometric="minisblack", planarconfig="contig", extrasamples=[0])
        io.write_mask(root / "masks" / "observer1" / f"{stem}.tif", LESION[1], SPACING[1:])


def _hyperstack_spacing_out_of_range(root):
    hyperstacks(root)  # S02's spacing read as 1e-7 mm, where a plain stack's is refused
    write_hyperstack(root / "images" / "S02.tif", US, PA, spacing=(1e-7,) + SPACING[1:])


LISTED = {  # name: (build, the file named, what the problem says)
    "hyperstack with a spacing out of range": (_hyperstack_spacing_out_of_range, "images/S02.tif",
                                               "has unusable spacing 1e-07 x 0.25 x 0.25 mm"),
    "constant PA channel": (_constant, "images/pa/S01.tif", "channel 'pa' is constant"),
    "PA channel with no value above 0": (_pa_with_no_positive_value, "images/pa/S01.tif",
                                         "channel 'pa' has no value above 0"),
    "sparse channel scaled between percentiles": (_sparse_unknown_name, "images/oa/S01.tif",
                                                   "channel 'oa' holds one value (0) in over 99% of its voxels"),
    "mask with two channels": (_mask_with_channels, "masks/observer1/S01.tif", "is a mask with 2 channels"),
    "two samples per pixel": (_interleaved, "images/S01.tif", "has 2 samples per pixel"),
}


@pytest.mark.parametrize("kind", sorted(LISTED))
def test_check_lists_a_bad_channel_file_by_name(kind, tmp_path, capsys):
    build, culprit, said = LISTED[kind]
    root = tmp_path / "data"
    root.mkdir()
    build(root)
    before = tree(tmp_path)
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    assert f"problem: {root / culprit}: {said}" in out
    assert len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before


@pytest.mark.parametrize("names", [["US", "PA"], ["Channel 1", "Channel 2"]])
def test_ome_channel_names_in_channels_json_order_or_unrelated_are_read(names, tmp_path, capsys):
    """Only a conflict refuses: the same names in the same order (any case), or a
    scanner's generic names, are read by channels.json."""
    root = tmp_path / "data"
    hyperstacks(root)
    for stem in ("S01", "S02"):
        _ome_named(root / "images" / f"{stem}.tif", names)
    assert main(["check", str(root)]) == 0, capsys.readouterr()
    assert [c.channel_names for c in discover(root)] == [["us", "pa"]] * 2


def test_channels_json_with_a_byte_order_mark_is_read(tmp_path, capsys):
    root = tmp_path / "data"
    folders(root, channels_json='\ufeff["us", "pa"]')
    assert main(["check", str(root)]) == 0, capsys.readouterr()


def test_export_refuses_float64_beyond_float32_naming_the_channel(tmp_path, capsys):
    """nnU-Net reads images as float32: 1e300 would become inf in its training data."""
    root = tmp_path / "data"
    folders(root, pa=PA.astype(np.float64) * 1e300)
    before = tree(tmp_path)
    code = main(["export-nnunet", str(root), str(tmp_path / "nn"), "--dataset-id", "7", "--name", "X",
                 "--k", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(lines) == 1
    assert lines[0].startswith(f"bcseg: error: {root / 'images' / 'pa' / 'S01.tif'}: holds values")
    assert tree(tmp_path) == before


def test_a_channel_left_out_by_channels_does_not_refuse_the_cases(tmp_path, capsys):
    """--channels us leaves a constant (or otherwise unusable) pa channel unread: train and
    export-nnunet refused the cases for it, telling the user to leave out what they had."""
    from bcseg.data.check import refuse_bad_cases
    from bcseg.data.dataset import discover

    root = tmp_path / "data"
    root.mkdir()
    _constant(root)
    refuse_bad_cases(discover(root), ["us"], "training")  # no DataError for pa
    nn = tmp_path / "nn"
    assert main(["export-nnunet", str(root), str(nn), "--dataset-id", "8", "--name", "X",
                 "--k", "2", "--channels", "us"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (nn / "Dataset008_X" / "imagesTr").glob("*.tif")) == [
        "X_0001_0000.tif", "X_0002_0000.tif"]
    with pytest.raises(Exception, match="channel 'pa' is constant"):  # still refused when used
        refuse_bad_cases(discover(root), ["us", "pa"], "training")


def test_a_case_whose_first_channel_has_no_spacing_is_measured_in_mm(tmp_path):
    """Training and prediction take the spacing the channels agree on; evaluate read
    the first channel's alone, so a us saved without spacing beside a pa with it gave
    distances and volumes in voxels for the same case."""
    from bcseg.data.cases import read_case_image

    folders(tmp_path)
    for stem in ("S01", "S02"):  # the us channel again, without its spacing
        tifffile.imwrite(tmp_path / "images" / "us" / f"{stem}.tif",
                         tifffile.imread(tmp_path / "images" / "us" / f"{stem}.tif"),
                         photometric="minisblack")
    case = discover(tmp_path)[0]
    assert io.read_image(case.image)[1] is None  # the first channel's file holds none
    _, spacing = read_case_image(case)
    assert spacing == pytest.approx(SPACING)


def test_a_hyperstack_with_a_spacing_out_of_range_is_refused_as_a_plain_stack_is(tmp_path):
    """Read from a C axis, a spacing of 1e-7 mm (nm labelled mm) was taken as it was,
    and written into the masks predict made; the same stack without channels is refused."""
    from bcseg.data.cases import read_case_channels, read_case_image
    from bcseg.errors import DataError

    root = tmp_path / "data"
    _hyperstack_spacing_out_of_range(root)
    case = discover(root)[1]
    for read in (read_case_channels, read_case_image):
        with pytest.raises(DataError, match="unusable spacing 1e-07") as error:
            read(case)
        assert error.value.path == str(root / "images" / "S02.tif")


def test_a_pa_channel_with_no_value_above_0_is_refused_where_it_is_log_normalised(tmp_path, capsys):
    """Log normalisation (pa's default) maps every value at or below 0 to 0: such a PA
    channel was trained on and segmented with as a blank image, unrefused. Where the
    recipe or model normalises it otherwise (percentile), it holds an image."""
    from bcseg.data.check import refuse_bad_cases
    from test_channels_train import _named_model

    root = tmp_path / "data"
    root.mkdir()
    _pa_with_no_positive_value(root)
    cases = discover(root)
    with pytest.raises(Exception, match="channel 'pa' has no value above 0"):
        refuse_bad_cases(cases, ["us", "pa"], "training", {"us": "auto", "pa": "log"})
    refuse_bad_cases(cases, ["us", "pa"], "training", {"us": "auto", "pa": "percentile"})

    logged = _named_model(tmp_path / "log.keras", 2, ("us", "pa"))
    from bcseg import rundir
    rundir.embed_settings(logged, rundir.InferenceSettings(
        ndim=2, input_size=32, channels=2, channel_names=("us", "pa"),
        normalisation={"us": "auto", "pa": "log"}))
    before = tree(tmp_path)
    code = main(["predict", str(root), "--model", str(logged), "--out", str(tmp_path / "pred"),
                 "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(lines) == 1, lines
    assert str(root / "images" / "pa" / "S01.tif") in lines[0] and "no value above 0" in lines[0]
    assert tree(tmp_path) == before
    # _named_model's own settings normalise pa by "auto" (percentile): segmented
    plain = _named_model(tmp_path / "auto.keras", 2, ("us", "pa"))
    assert main(["predict", str(root), "--model", str(plain), "--out", str(tmp_path / "pred2"),
                 "--no-progress"]) == 0


def test_a_sparse_channel_is_refused_where_its_percentiles_would_blank_it(tmp_path, capsys):
    """A channel of one value in over 99% of its voxels (vessels in a photoacoustic image
    of zeros) has its 0.5th and 99.5th percentiles equal, so the linear (percentile, or
    auto) normalisation maps all of it to 0: trained on and segmented with as a blank
    channel, as a constant one would be, without a word. Log normalisation keeps it."""
    from bcseg.data.check import refuse_bad_cases
    from test_channels_train import _named_model

    root = tmp_path / "data"
    root.mkdir()
    _sparse_pa(root)
    cases = discover(root)
    with pytest.raises(Exception, match=r"channel 'pa' holds one value \(0\) in over 99% of its voxels"):
        refuse_bad_cases(cases, ["us", "pa"], "training", {"us": "auto", "pa": "percentile"})
    refuse_bad_cases(cases, ["us", "pa"], "training", {"us": "auto", "pa": "log"})

    plain = _named_model(tmp_path / "auto.keras", 2, ("us", "pa"))  # pa by "auto" (percentile)
    before = tree(tmp_path)
    code = main(["predict", str(root), "--model", str(plain), "--out", str(tmp_path / "pred"),
                 "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"bcseg: error: {root / 'images' / 'pa' / 'S01.tif'}: channel 'pa' holds "
                               "one value (0) in over 99% of its voxels, so its auto normalisation")
    assert tree(tmp_path) == before
    # nnU-Net normalises the channels itself: export-nnunet refuses only a constant one
    assert main(["export-nnunet", str(root), str(tmp_path / "nn"), "--dataset-id", "7", "--name", "X",
                 "--k", "2"]) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------- every file listed

def _three_hyperstacks(root: Path) -> None:
    """S01 good; S02 with three channels where channels.json names two; S03 cut short."""
    for k, stem in enumerate(("S01", "S02", "S03")):
        write_hyperstack(root / "images" / f"{stem}.tif", np.roll(US, k, -1), np.roll(PA, k, -1))
    masks(root, ("S01", "S02", "S03"))
    (root / "channels.json").write_text('["us", "pa"]')
    data = tifffile.imread(root / "images" / "S02.tif")  # (Z, C, Y, X)
    tifffile.imwrite(root / "images" / "S02.tif", np.concatenate([data, data[:, :1]], axis=1),
                     imagej=True, metadata={"axes": "ZCYX"})
    cut = root / "images" / "S03.tif"
    cut.write_bytes(cut.read_bytes()[:-3000])


def test_check_lists_every_bad_hyperstack_and_checks_the_rest(tmp_path, capsys):
    """A hyperstack's damaged header or wrong channel count is that file's problem, not
    the layout's: check stopped at the first such file, as if the dataset were unreadable,
    and named none of the others. It lists each (and no mask of theirs as an orphan) and
    checks the good case; the other commands refuse at the first, writing nothing."""
    root = tmp_path / "data"
    _three_hyperstacks(root)
    before = tree(tmp_path)
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    listed = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert listed[0].startswith(f"problem: {root / 'images' / 'S02.tif'}: has 3 channel(s), but "), out
    assert listed[1].startswith(f"problem: {root / 'images' / 'S03.tif'}: "), out
    assert "truncated or corrupt" in listed[1]
    assert len(listed) == 2, out  # masks/observer1/S02.tif and S03.tif are no orphans
    assert re.search(r"^cases\s+1$", out, re.M) and re.search(r"^channel us\s+1 cases", out, re.M)
    assert err.strip() == f"bcseg: error: {root}: 2 problem(s) found, listed above"
    code = main(["export-nnunet", str(root), str(tmp_path / "nn"), "--dataset-id", "7",
                 "--name", "X", "--k", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(lines) == 1
    assert lines[0].startswith(f"bcseg: error: {root / 'images' / 'S02.tif'}: has 3 channel(s)")
    with pytest.raises(DataError, match="has 3 channel"):
        discover(root)
    assert tree(tmp_path) == before


def test_check_lists_every_bad_file_of_a_channel_layout(tmp_path, capsys):
    """The same for the other files discovery judges alone: two loose files in a _0000
    layout, a channel file that is a link to another's, two files of one channel, broken
    links among the images and the masks. Each is one line; the good case is checked."""
    root = tmp_path / "data"
    for k, stem in enumerate(("S01", "S02", "S03")):
        io.write_image(root / "images" / f"{stem}_0000.tif", np.roll(US, k, -1), SPACING)
        io.write_image(root / "images" / f"{stem}_0001.tif", np.roll(PA, k, -1), SPACING)
    masks(root, ("S01", "S02", "S03"))
    (root / "channels.json").write_text('["us", "pa"]')
    for name in ("notes.tif", "scan.tif"):
        io.write_image(root / "images" / name, US, SPACING)
    (root / "images" / "S02_0001.tif").unlink()
    os.symlink("S02_0000.tif", root / "images" / "S02_0001.tif")
    io.write_image(root / "images" / "S03_0001.nii.gz", PA, SPACING)
    os.symlink("gone.tif", root / "masks" / "observer1" / "S04.tif")
    os.symlink("gone.tif", root / "images" / "S05_0000.tif")  # listed once, not also as a folder
    before = tree(tmp_path)
    assert main(["check", str(root)]) == 3
    out, err = capsys.readouterr()
    listed = sorted(line for line in out.splitlines() if line.startswith("problem: "))
    want = sorted([f"problem: {root / 'images' / 'notes.tif'}: has no channel suffix",
                   f"problem: {root / 'images' / 'scan.tif'}: has no channel suffix",
                   f"problem: {root / 'images' / 'S02_0001.tif'}: channels 'us' and 'pa' are one file",
                   f"problem: {root / 'images'}: holds two files for one case, S03_0001.nii.gz and S03_0001.tif",
                   f"problem: {root / 'masks' / 'observer1' / 'S04.tif'}: ",
                   f"problem: {root / 'images' / 'S05_0000.tif'}: is a broken symbolic link"])
    assert len(listed) == len(want), out
    for line, start in zip(listed, want):
        assert line.startswith(start), (line, start)
    assert re.search(r"^cases\s+2$", out, re.M), out
    assert err.strip() == f"bcseg: error: {root}: 6 problem(s) found, listed above"
    assert tree(tmp_path) == before


def test_a_hyperstack_in_a_manifest_cell_is_told_to_split_its_channels(tmp_path, capsys):
    """A manifest's image_<channel> cell naming a two-channel hyperstack was told to
    "name its channels in channels.json", which no manifest reads: a cell is one channel."""
    root = tmp_path / "data"
    hyperstacks(root)
    (root / "manifest.csv").write_text(
        "id,image_us,mask_observer1,group\n"
        + "".join(f"{s},images/{s}.tif,masks/observer1/{s}.tif,{s}\n" for s in ("S01", "S02")))
    before = tree(tmp_path)
    assert main(["check", str(root)]) == 3
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(listed) == 2, out
    assert listed[0].startswith(f"problem: {root / 'images' / 'S01.tif'}: has 2 channels"), out
    assert "a manifest's image or image_<channel> cell" in listed[0]
    assert "save each channel as its own file" in listed[0]
    assert "(name its channels in channels.json)" not in out
    assert tree(tmp_path) == before
