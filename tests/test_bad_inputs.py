"""Issue 12, input side: bad inputs that used to pass silently or end unclearly.

Each test writes real files in ``tmp_path`` (TIFF, PNG, CSV, tiny real models) and
runs the real command line or the function behind it. Every refusal must be one line
on stderr, ``bcseg: error: <file>: <problem>``, naming the file (or flag) at fault,
with the exit code of :mod:`bcseg.errors`, and must leave no output behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import keras
import numpy as np
import pytest
import tifffile

from bcseg.data import image_rules, io
from bcseg import after_fit, outputs, rundir
from bcseg.atomic import write_text
from bcseg.learn import starting_model, train
from bcseg.cli import main
from bcseg.config import load_config, save_config
from bcseg.errors import BcsegError, DataError, printable
from bcseg.data.manifest import read_manifest
from bcseg.data.intensity import normalise
from bcseg.learn.models import unet
from bcseg.measure.margins import margins_for_files
from test_robustness import (IMAGE, LESION, STACK, TINY_TRAINING, files_under, models,  # noqa: F401
                             one_error_line, run_main)

TINY = TINY_TRAINING.replace("epochs = 50", "epochs = 1")


def predict_argv(tmp: Path, image: Path, model: Path, *extra) -> list:
    return ["predict", image, "--model", model, "--out", tmp / "out", "--no-progress", *extra]


def assert_refused(capsys, argv, code: int, culprit: str, tmp: Path) -> str:
    """Run ``argv``; assert the exit code, one error line naming ``culprit``, no output."""
    before = files_under(tmp / "out")
    got, out, err = run_main(capsys, argv)
    assert got == code, (out, err)
    line = one_error_line(err)
    assert culprit in line, line
    assert files_under(tmp / "out") == before
    return line


def write_cases(root: Path, n: int = 4, shape=IMAGE.shape) -> Path:
    """An images/ + masks/observer1/ dataset of ``n`` distinct 2D cases c0, c1, ..."""
    rng = np.random.default_rng(7)
    for i in range(n):
        io.write_image(root / "images" / f"c{i}.tif", rng.integers(0, 256, shape, dtype=np.uint8))
        io.write_mask(root / "masks" / "observer1" / f"c{i}.tif", LESION)
    return root


# --------------------------------------------------------------------------- float range

def test_float64_beyond_float32_range_is_normalised_not_nan():
    image = IMAGE.astype(np.float64) * 1e300  # every value beyond float32's 3.4e38
    scaled = normalise(image)
    assert scaled.dtype == np.float32 and np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled, normalise(IMAGE.astype(np.float64)), atol=1e-6)


def test_float64_beyond_float32_range_is_segmented_like_its_scaled_copy(tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "huge.tif", IMAGE.astype(np.float64) * 1e300)
    tifffile.imwrite(tmp_path / "in" / "plain.tif", IMAGE.astype(np.float64))
    code, _, err = run_main(capsys, predict_argv(tmp_path, tmp_path / "in", models["2d"], "--save-prob"))
    assert (code, err) == (0, "")
    huge, plain = (tifffile.imread(tmp_path / "out" / f"{n}_prob.tif") for n in ("huge", "plain"))
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge, plain, atol=1e-5)


# --------------------------------------------------------------------------- spacing

def _imagej_stack(z_spacing: float):
    def write(path: Path) -> None:
        tifffile.imwrite(path, STACK, imagej=True, resolution=(10.0, 10.0),
                         metadata={"axes": "ZYX", "unit": "mm", "spacing": z_spacing})
    return write


def _ome_stack(path: Path) -> None:
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.0, "PhysicalSizeY": 100.0, "PhysicalSizeZ": 500.0})


def _zero_resolution(path: Path) -> None:
    tifffile.imwrite(path, STACK, imagej=True, resolution=((0, 1), (10, 1)),
                     metadata={"axes": "ZYX", "unit": "mm", "spacing": 1.0})


BAD_SPACING = {"imagej-zero": _imagej_stack(0.0), "imagej-negative": _imagej_stack(-0.5),
               "imagej-nan": _imagej_stack(float("nan")), "imagej-inf": _imagej_stack(float("inf")),
               "ome-zero": _ome_stack, "resolution-zero": _zero_resolution}


@pytest.mark.parametrize("kind", sorted(BAD_SPACING))
def test_bad_spacing_is_a_problem_for_check_and_refused_by_predict(kind, tmp_path, models, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    stack = root / "images" / "s.tif"
    BAD_SPACING[kind](stack)
    with pytest.raises(DataError, match=r"s\.tif: has unusable spacing .* must be positive, finite"):
        io.read_image(stack)
    code, out, err = run_main(capsys, ["check", root])
    assert code == 3 and "1 problem(s)" in one_error_line(err)
    assert [p for p in out.splitlines() if p.startswith("problem: ")][0].startswith(
        f"problem: {stack}: has unusable spacing")
    assert_refused(capsys, predict_argv(tmp_path, stack, models["2d"]), 3, "s.tif: has unusable", tmp_path)
    io.write_mask(tmp_path / "t_mask.tif", np.zeros(STACK.shape, bool))
    assert_refused(capsys, ["margins", "--image", stack, "--tumour", tmp_path / "t_mask.tif",
                            "--out", tmp_path / "out"], 3, "s.tif: has unusable", tmp_path)


# --------------------------------------------------------------------------- usage

USAGE = [
    (["--threshold", "nan"], "--threshold"), (["--threshold", "1.5"], "--threshold"),
    (["--threshold", "-0.1"], "--threshold"), (["--min-size", "-3"], "--min-size"),
    (["--threshold", "0"], "--threshold"), (["--threshold", "1"], "--threshold"),  # all or nothing
    (["--postprocess", "largest,blur"], "--postprocess"),
    (["--postprocess", "none,fill"], "--postprocess"), (["--postprocess", "fill,fill"], "--postprocess"),
    (["--margins", "--spacing", "0x0.1x0.1"], "--spacing"),
    (["--margins", "--spacing", "nanx0.1x0.1"], "--spacing"),
    (["--margins", "--spacing", "1xinfx0.1"], "--spacing"),
    (["--margins", "--spacing", "0.1x0.1"], "--spacing"),
    (["--force", "--resume"], "--resume"),  # was "force and resume exclude each other", no flag named
]


@pytest.mark.parametrize("extra, flag", USAGE, ids=[" ".join(e) for e, _ in USAGE])
def test_bad_predict_flag_exits_2_in_one_line_before_the_model_loads(extra, flag, tmp_path, capsys):
    iio.imwrite(tmp_path / "scan.png", IMAGE)
    # The model does not exist: a check made after loading would exit 4 instead.
    argv = predict_argv(tmp_path, tmp_path / "scan.png", tmp_path / "absent.keras", *extra)
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    assert stop.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"argument {flag}:" in line and line.endswith("see 'bcseg predict --help'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, flag", [
    (["train", "D", "--out", "R", "--epochs", "0"], "--epochs"),
    (["train", "D", "--out", "R", "--batch-size", "-1"], "--batch-size"),
    (["split", "D", "--out", "s.json", "--k", "1"], "--k"),
    (["export-nnunet", "D", "R", "--dataset-id", "0", "--name", "x"], "--dataset-id"),
    (["margins", "--image", "a.tif", "--tumour", "b.tif", "--out", "R", "--close-mm", "nan"], "--close-mm"),
    # um typed as mm: every margin would be close
    (["margins", "--image", "a.tif", "--tumour", "b.tif", "--out", "R", "--close-mm", "1e6"], "--close-mm"),
    (["phantom", "R", "--n", "0"], "--n"),
    (["predict", "a.png"], "--out"),
    (["train", "D", "--out", "R", "--resume", "--force"], "--force"),  # --force was dropped unsaid
    # one value given twice: argparse kept the last without a word
    (["train", "D", "--out", "R", "--config", "a.toml", "--config", "b.toml"], "--config is given twice"),
    (["predict", "a.png", "--out=R", "--out", "S", "--model", "m"], "--out is given twice"),
    (["predict", "a.png", "--out", "R", "--force", "--force"], "--force is given twice"),
    # an output file named as a folder: Path() dropped the slash and wrote a file "newdir"
    (["split", "D", "--out", "newdir/"], "--out: names a folder"),
    (["split", "D", "--out", "."], "--out: names a folder"),
    (["split", "D", "--out", "nd/."], "--out: names a folder"),  # Path('nd/.') is 'nd'
    (["split", "D", "--out", "nd/.."], "--out: names a folder"),
    (["export-onnx", "R", "--out", "new.onnx/"], "--out: names a folder"),
])
def test_usage_errors_are_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert flag in line and f"see 'bcseg {argv[0]} --help'" in line


# --------------------------------------------------------------------------- the file at fault

def test_three_channel_model_is_a_model_error_naming_the_model(tmp_path, capsys):
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "rgb.keras")
    iio.imwrite(tmp_path / "scan.png", IMAGE)
    line = assert_refused(capsys, predict_argv(tmp_path, tmp_path / "scan.png", tmp_path / "rgb.keras"),
                          4, "rgb.keras: ", tmp_path)
    assert "scan.png" not in line and "3 input channels" in line


@pytest.mark.parametrize("last", ["linear", "nan"])
def test_a_model_that_gives_no_probabilities_is_refused_naming_it(last, tmp_path, capsys):
    """A model ending without its sigmoid (scores from -inf to inf) or with damaged,
    NaN weights was run and thresholded: masks that look plausible, from numbers that
    are no probabilities. Now refused at the first batch, naming the model."""
    inputs = keras.Input((None, None, 1))
    layer = keras.layers.Conv2D(1, 1, activation="linear" if last == "linear" else "sigmoid")
    keras.Model(inputs, layer(inputs)).save(tmp_path / "m.keras")
    if last == "nan":
        model = keras.saving.load_model(tmp_path / "m.keras")
        model.layers[-1].set_weights([np.full((1, 1, 1, 1), np.nan, np.float32), np.zeros(1, np.float32)])
        model.save(tmp_path / "m.keras")
    else:  # the weight that makes a grey image of 0..1 give scores beyond 0..1
        model = keras.saving.load_model(tmp_path / "m.keras")
        model.layers[-1].set_weights([np.full((1, 1, 1, 1), 3.0, np.float32), np.full(1, -1.0, np.float32)])
        model.save(tmp_path / "m.keras")
    iio.imwrite(tmp_path / "scan.png", IMAGE)
    line = assert_refused(capsys, predict_argv(tmp_path, tmp_path / "scan.png", tmp_path / "m.keras"),
                          4, "m.keras: gives values from ", tmp_path)
    assert "not probabilities from 0 to 1" in line and ("nan" in line) == (last == "nan")


@pytest.mark.parametrize("given", ["two --model", "ensemble folder"])
def test_the_member_of_an_ensemble_that_gives_no_probabilities_is_the_one_named(given, tmp_path, capsys):
    """NaN weights in the second member were blamed on the first (the ensemble's first
    file): the user would have replaced the one model that was intact."""
    import json

    inputs = keras.Input((None, None, 1))
    keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)).save(tmp_path / "good.keras")
    model = keras.saving.load_model(tmp_path / "good.keras")
    model.layers[-1].set_weights([np.full((1, 1, 1, 1), np.nan, np.float32), np.zeros(1, np.float32)])
    model.save(tmp_path / "nan.keras")
    if given == "two --model":
        models, culprit = ["--model", tmp_path / "good.keras", "--model", tmp_path / "nan.keras"], "nan.keras"
    else:
        folder = tmp_path / "ens"
        folder.mkdir()
        for name, source in (("member_0.keras", "good.keras"), ("member_1.keras", "nan.keras")):
            (folder / name).write_bytes((tmp_path / source).read_bytes())
        (folder / "inference.json").write_text(json.dumps({
            "threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False,
            "members": [{"path": f"member_{k}.keras", "flips": ["lr"], "ndim": 2, "input_size": None,
                         "patch_size": None} for k in (0, 1)]}))
        models, culprit = ["--model", folder], str(folder / "member_1.keras")
    iio.imwrite(tmp_path / "scan.png", IMAGE)
    argv = ["predict", tmp_path / "scan.png", *models, "--out", tmp_path / "out", "--no-progress"]
    line = assert_refused(capsys, argv, 4, f"{culprit}: gives values from nan", tmp_path)
    assert "good.keras" not in line and "member_0" not in line


@pytest.mark.parametrize("name, content, said", [
    ("notes.png", b"scan of specimen 4, see lab book\n", "is not a PNG image: its content is text"),
    ("page.jpg", b"<html><body>404</body></html>", "is not a JPEG image: its content is text"),
    ("photo.tif", None, "is not a TIFF image: its content is JPEG; rename it to .jpg"),
    ("scan.png", b"GIF89a" + bytes(40), "is not a PNG image: its content is GIF"),
], ids=["text-as-png", "html-as-jpg", "jpeg-as-tif", "gif-as-png"])
def test_content_not_matching_the_suffix_is_named(name, content, said, tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / name
    if content is None:
        iio.imwrite(path, IMAGE, extension=".jpg")
    else:
        path.write_bytes(content)
    line = assert_refused(capsys, predict_argv(tmp_path, path, models["2d"]), 3, f"{name}: {said}", tmp_path)
    assert "SimpleITK" not in line


def test_a_control_character_in_a_file_name_is_escaped(tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "bad\nname\x1b.tif"
    path.write_bytes(b"not a tiff at all")
    # refused for its name (outputs cannot be named after it) before its content is read
    line = assert_refused(capsys, predict_argv(tmp_path, path, models["2d"]), 3,
                          "bad\\nname\\x1b.tif: names its outputs 'bad\\nname\\x1b'", tmp_path)
    assert "\x1b" not in line
    assert str(DataError("a\u202eb.tif", "x\ny")) == "a\\u202eb.tif: x\\ny"
    assert printable("Ø ü (1).tif") == "Ø ü (1).tif"  # letters are not escaped


# --------------------------------------------------------------------------- short pixel data

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, colour: int, depth: int, raw: bytes, interlace: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _rows(array: np.ndarray) -> bytes:
    return b"".join(b"\x00" + row.tobytes() for row in array)  # filter type 0 per row


@pytest.mark.parametrize("name, make", [
    ("grey.png", lambda: _png(40, 32, 0, 8, _rows(IMAGE[:20]))),
    ("rgb.png", lambda: _png(40, 32, 2, 8, _rows(np.stack([IMAGE] * 3, -1)[:31].reshape(31, -1)))),
    ("grey16.png", lambda: _png(40, 32, 0, 16, _rows(IMAGE[:1].astype(">u2")))),
    ("interlaced.png", lambda: _png(40, 32, 0, 8, bytes(600), interlace=1)),
], ids=["grey-20-of-32-rows", "rgb-31-of-32-rows", "16-bit-1-row", "interlaced-short"])
def test_png_with_short_pixel_data_is_refused(name, make, tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / name
    path.write_bytes(make())
    with pytest.raises(DataError, match="is truncated or corrupt: its pixel data holds"):
        io.read_image(path)
    assert_refused(capsys, predict_argv(tmp_path, path, models["2d"]), 3, f"{name}: is truncated", tmp_path)


def _cut_tail(write, keep: float):
    def make(path: Path) -> None:
        write(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return make


@pytest.mark.parametrize("name, make", [
    ("cut.jpg", _cut_tail(lambda p: iio.imwrite(p, IMAGE, extension=".jpg"), 0.7)),
    ("strip.tif", _cut_tail(lambda p: tifffile.imwrite(p, IMAGE), 0.8)),
    ("strips.tif", _cut_tail(lambda p: tifffile.imwrite(p, STACK, photometric="minisblack",
                                                         rowsperstrip=4), 0.9)),
], ids=["jpeg", "tiff-single-strip", "tiff-stack-strips"])
def test_other_short_pixel_data_is_refused(name, make, tmp_path):
    """The same class in JPEG and TIFF strips (refused before this issue too)."""
    make(tmp_path / name)
    for mmap in (False, True):
        with pytest.raises(DataError, match=rf"{name}: .*(truncated|failed to read|corrupt)"):
            io.read_image(tmp_path / name, mmap=mmap)


def test_png_with_full_pixel_data_still_reads(tmp_path):
    path = tmp_path / "full.png"
    path.write_bytes(_png(40, 32, 0, 8, _rows(IMAGE)))
    np.testing.assert_array_equal(io.read_image(path)[0], IMAGE)


# --------------------------------------------------------------------------- declared size

def _tiled_tiff(path: Path, width: int, height: int, tile: int) -> None:
    """A TIFF whose every tile points at the same small deflate-compressed tile."""
    data = zlib.compress(bytes(tile * tile))
    count = -(-width // tile) * -(-height // tile)
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8),
            (262, 3, 1, 1), (277, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile),
            (324, 4, count, None), (325, 4, count, None)]
    ifd_size = 2 + 12 * len(tags) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * count
    data_at = counts_at + 4 * count
    body = struct.pack("<H", len(tags))
    for tag, kind, n, value in tags:
        if tag == 324:
            value = offsets_at
        elif tag == 325:
            value = counts_at
        body += struct.pack("<HHII", tag, kind, n, value) if kind == 4 else \
            struct.pack("<HHIHH", tag, kind, n, value, 0)
    body += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + body + struct.pack(f"<{count}I", *[data_at] * count)
                     + struct.pack(f"<{count}I", *[len(data)] * count) + data)


def test_tiny_tiff_declaring_huge_dimensions_is_refused_before_reading(tmp_path, models, capsys,
                                                                        monkeypatch):
    path = tmp_path / "in" / "bomb.tif"
    path.parent.mkdir()
    _tiled_tiff(path, 16384, 16384, 1024)  # 256 MiB declared, 2 kB on disk
    assert path.stat().st_size < 10_000
    monkeypatch.setenv(image_rules.MAX_IMAGE_ENV, "0.125")  # 128 MiB
    with pytest.raises(DataError, match=r"bomb\.tif: is too large .*0\.25 GiB .*0\.125 GiB limit"
                                        r".*BCSEG_MAX_IMAGE_GB"):
        io.read_image(path)
    assert_refused(capsys, predict_argv(tmp_path, path, models["2d"]), 3, "bomb.tif: is too large", tmp_path)
    monkeypatch.delenv(image_rules.MAX_IMAGE_ENV)
    _tiled_tiff(path, 60000, 60000, 4096)  # 3.4 GiB declared: under the old voxel cap
    monkeypatch.setenv(image_rules.MAX_IMAGE_ENV, "3")
    with pytest.raises(DataError, match="is too large"):
        io.read_image(path)


def test_the_size_limit_is_read_from_the_environment(monkeypatch):
    assert image_rules.max_image_bytes() == 4 * 2**30
    monkeypatch.setenv(image_rules.MAX_IMAGE_ENV, "0.5")
    assert image_rules.max_image_bytes() == 2**29
    monkeypatch.setenv(image_rules.MAX_IMAGE_ENV, "lots")
    with pytest.raises(BcsegError, match="BCSEG_MAX_IMAGE_GB='lots' must be a positive number"):
        image_rules.max_image_bytes()


@pytest.mark.parametrize("command", ["check", "evaluate", "margins", "predict --keep-going"])
def test_a_bad_size_limit_in_the_environment_is_a_setting_error_not_the_files(command, tmp_path, models,
                                                                              capsys, monkeypatch):
    """The variable was read when a file's header was: the TIFF reader wrapped its error
    as the file's ("s0.tif: cannot read TIFF (environment variable ...)", exit 3),
    check listed it once per file, predict --keep-going failed every input in turn."""
    data = write_cases(tmp_path / "data", n=2)
    stack = tmp_path / "s.tif"
    io.write_image(stack, STACK, (0.5, 0.2, 0.2))
    io.write_mask(tmp_path / "s_mask.tif", STACK > STACK.mean())
    monkeypatch.setenv(image_rules.MAX_IMAGE_ENV, "lots")
    out = tmp_path / "out"
    argv = {"check": ["check", data],
            "evaluate": ["evaluate", "--pred", data / "masks" / "observer1", "--truth", data, "--out", out],
            "margins": ["margins", "--image", stack, "--tumour", tmp_path / "s_mask.tif", "--out", out],
            "predict --keep-going": predict_argv(tmp_path, data / "images", models["2d"], "--keep-going")}
    code, _, err = run_main(capsys, argv[command])
    line = one_error_line(err)
    assert code == 4 and line == ("bcseg: error: environment variable BCSEG_MAX_IMAGE_GB='lots' must "
                                  "be a positive number of GiB"), (code, line)
    assert not out.exists()


# --------------------------------------------------------------------------- manifests

def _manifest_dataset(root: Path, text: str, encoding="utf-8") -> Path:
    write_cases(root, n=2)
    (root / "manifest.csv").write_bytes(text.encode(encoding))
    return root / "manifest.csv"


@pytest.mark.parametrize("text, encoding", [
    ("\ufeffid,image,mask_observer1\nc0,images/c0.tif,masks/observer1/c0.tif\n"
     "c1,images/c1.tif,masks/observer1/c1.tif\n", "utf-8"),
    ("id,image,mask_observer1\r\nc0,images/c0.tif,masks/observer1/c0.tif\r\n"
     "c1,images/c1.tif,masks/observer1/c1.tif\r\n", "utf-8"),
], ids=["byte-order-mark", "crlf"])
def test_manifest_from_a_spreadsheet_program_is_read(text, encoding, tmp_path, capsys):
    manifest = _manifest_dataset(tmp_path / "data", text, encoding)
    code, out, err = run_main(capsys, ["check", manifest])
    assert (code, err) == (0, ""), out
    assert out.splitlines()[0].split() == ["cases", "2"]


@pytest.mark.parametrize("text, encoding, said", [
    ("id;image;mask_observer1\nc0;images/c0.tif;masks/observer1/c0.tif\n", "utf-8",
     "manifest is delimited by semicolons, not commas"),
    ("id\timage\nc0\timages/c0.tif\n", "utf-8", "manifest is delimited by tabs, not commas"),
    ("id,image,group\nc0,images/c0.tif,Größe\n", "cp1252", "manifest is not UTF-8 text"),
], ids=["semicolons", "tabs", "cp1252"])
def test_manifest_in_another_dialect_gets_a_clear_line(text, encoding, said, tmp_path, capsys):
    manifest = _manifest_dataset(tmp_path / "data", text, encoding)
    code, _, err = run_main(capsys, ["check", manifest])
    assert code == 3
    assert f"manifest.csv: {said}; save it as 'CSV UTF-8 (comma delimited)'" in one_error_line(err)


def test_a_mask_cell_of_blanks_is_no_mask_as_an_empty_one_is(tmp_path):
    """A spreadsheet's cell holding a space was refused as 'empty path' in a mask column
    (an image_<channel> cell of blanks was already no file)."""
    manifest = _manifest_dataset(tmp_path / "data", "id,image,mask_observer1\n"
                                 "c0,images/c0.tif, \nc1,images/c1.tif,masks/observer1/c1.tif\n")
    cases = read_manifest(manifest)
    assert [c.masks for c in cases] == [{}, {"observer1": (tmp_path / "data/masks/observer1/c1.tif",)}]


def test_a_windows_path_in_a_manifest_is_named_as_one(tmp_path, capsys):
    """'images\\c0.tif', as a manifest made on Windows holds it, was only 'not found'."""
    manifest = _manifest_dataset(tmp_path / "data", "id,image\nc0,images\\c0.tif\nc1,images/c1.tif\n")
    code, out, _ = run_main(capsys, ["check", manifest])  # one row's problem: listed
    assert code == 3
    assert ("manifest.csv: line 2: file 'images\\c0.tif' not found; it is written with '\\' "
            "between folders, as on Windows: write '/'") in out, out


def test_a_manifest_row_with_more_cells_than_columns_is_refused(tmp_path, capsys):
    """An unquoted comma in a value shifted the cells; the extra one was dropped unsaid."""
    manifest = _manifest_dataset(tmp_path / "data", "id,image,mask_observer1,group\n"
                                 "c0,images/c0.tif,masks/observer1/c0.tif,g0\n"
                                 "c1,images/c1.tif,masks/observer1/c1.tif,Smith, J.\n")
    code, _, err = run_main(capsys, ["check", manifest])
    assert code == 3
    assert "manifest.csv: line 3 has 5 cells, more than the 4 columns" in one_error_line(err)
    manifest.write_text("id,image,mask_observer1\nc0,images/c0.tif,masks/observer1/c0.tif,,\n"
                        "c1,images/c1.tif,masks/observer1/c1.tif\n", encoding="utf-8")
    code, _, err = run_main(capsys, ["check", manifest])  # empty trailing cells, as Excel saves
    assert (code, err) == (0, "")


MASK_HINT = " (images are columns image or image_<channel>, masks mask_<observer>)"


@pytest.mark.parametrize("column, said", [
    ("Mask_observer2", " (column names are lower case: rename it 'mask_observer2')"),
    ("Group", " (column names are lower case: rename it 'group')"),
    ("Class", " (column names are lower case: rename it 'class')"),
    ("masks_observer2", MASK_HINT), ("mask-observer2", MASK_HINT),
    ("spacing", " (spacing is read from each image file (or --spacing for predict))"),
    ("mask", " (each observer's masks are a column mask_<observer>)"),
    ("fold", " (folds are given with --folds-file (a CSV of id,fold))"),
])
def test_a_manifest_column_bcseg_does_not_read_is_refused(column, said, tmp_path, capsys):
    """It was dropped unsaid: a second observer vanished from every consensus, 'Group'
    left each row its own group (a warning at most), and check said "problems 0"."""
    manifest = _manifest_dataset(tmp_path / "data", f"id,image,mask_observer1,{column}\n"
                                 "c0,images/c0.tif,masks/observer1/c0.tif,masks/observer1/c0.tif\n"
                                 "c1,images/c1.tif,masks/observer1/c1.tif,masks/observer1/c1.tif\n")
    expected = (f"bcseg: error: {manifest}: manifest has a column '{column}' that bcseg does not "
                f"read{said}; its columns are id, image, image_<channel>, mask_<observer>, group and class")
    code, out, err = run_main(capsys, ["check", manifest])
    assert (code, out) == (3, "") and one_error_line(err) == expected
    assert assert_refused(capsys, ["split", manifest, "--out", tmp_path / "out" / "s.json"], 3,
                          column, tmp_path) == expected
    assert not (tmp_path / "out").exists()


def test_a_manifest_column_of_the_studys_own_is_read_past_and_named(tmp_path, capsys):
    """A study keeps its own columns (notes, ages) in its table: not bcseg's to refuse,
    but named once, so that none is taken for one bcseg reads."""
    manifest = _manifest_dataset(tmp_path / "data", "id,image,mask_observer1,notes,Image ID,Mask drawn by\n"
                                 "c0,images/c0.tif,masks/observer1/c0.tif,fine,61,AB\n"
                                 "c1,images/c1.tif,masks/observer1/c1.tif,blurred,55,CD\n")
    code, out, err = run_main(capsys, ["check", manifest])
    assert code == 0 and err == (f"bcseg: warning: {manifest}: column(s) 'notes', 'Image ID', 'Mask drawn "
                                 "by' are not read by "
                                 "bcseg (its columns are id, image, image_<channel>, mask_<observer>, "
                                 "group and class)\n"), err


def test_a_manifest_with_every_known_column_and_a_blank_one_is_read(tmp_path, capsys):
    """The columns the docs describe, and the blank header cell of a trailing comma."""
    manifest = _manifest_dataset(tmp_path / "data", "id,image,image_us,mask_observer1,group,class,\n"
                                 "c0,images/c0.tif,images/c0.tif,masks/observer1/c0.tif,g0,benign,\n"
                                 "c1,images/c1.tif,images/c1.tif,masks/observer1/c1.tif,g1,benign,\n")
    code, out, err = run_main(capsys, ["check", manifest])
    assert (code, err) == (0, ""), out


# --------------------------------------------------------------------------- duplicates

def _duplicated(root: Path) -> Path:
    write_cases(root, n=4)
    (root / "manifest.csv").write_text(
        "id,image,mask_observer1,group\n"
        + "".join(f"c{i},images/c{i}.tif,masks/observer1/c{i}.tif,g{i}\n" for i in range(4))
        + "again,images/copy.tif,masks/observer1/c1.tif,g9\n", encoding="utf-8")
    (root / "images" / "copy.tif").write_bytes((root / "images" / "c1.tif").read_bytes())
    return root / "manifest.csv"


def test_the_same_image_twice_is_flagged_by_check(tmp_path, capsys):
    manifest = _duplicated(tmp_path / "data")
    code, out, err = run_main(capsys, ["check", manifest])
    assert code == 3 and "1 problem(s)" in one_error_line(err)
    problem = [p for p in out.splitlines() if p.startswith("problem: ")]
    assert len(problem) == 1 and "copy.tif: has the same content as" in problem[0]
    assert "c1.tif" in problem[0]


@pytest.mark.parametrize("command", ["split", "train"])
def test_the_same_image_twice_is_refused_by_split_and_train(command, tmp_path, capsys):
    manifest = _duplicated(tmp_path / "data")
    argv = [command, manifest, "--out", tmp_path / ("s.json" if command == "split" else "run")]
    code, out, err = run_main(capsys, argv)
    assert code == 3 and "copy.tif: has the same content as" in one_error_line(err)
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "run").exists()


def test_a_channel_copied_from_another_specimen_is_flagged_and_refused(tmp_path, capsys):
    """Only each case's first channel was compared: a photoacoustic file copied from
    another specimen's, under another group, passed check and split."""
    from bcseg.data.phantom import write_phantom

    data = tmp_path / "data"
    write_phantom(data, n=3, shape=(8, 32, 32), channels=("us", "pa"))
    us, pa = sorted((data / "images" / "us").iterdir()), sorted((data / "images" / "pa").iterdir())
    (data / "copied_pa.tif").write_bytes(pa[0].read_bytes())
    masks = sorted((data / "masks" / "observer1").iterdir())
    (data / "manifest.csv").write_text(
        "id,image_us,image_pa,mask_observer1,group\n"
        + "".join(f"s{i},{u.relative_to(data)},{p.relative_to(data)},{m.relative_to(data)},g{i}\n"
                  for i, (u, p, m) in enumerate(zip(us[:2], pa[:2], masks[:2])))
        + f"s2,{us[2].relative_to(data)},copied_pa.tif,{masks[2].relative_to(data)},g2\n",
        encoding="utf-8")
    code, out, err = run_main(capsys, ["check", data / "manifest.csv"])
    problems = [p for p in out.splitlines() if p.startswith("problem: ")]
    assert code == 3 and len(problems) == 1, out
    assert f"copied_pa.tif: has the same content as {pa[0]}" in problems[0]
    line = assert_refused(capsys, ["split", data / "manifest.csv", "--out", tmp_path / "s.json"], 3,
                          "copied_pa.tif: has the same content as", tmp_path)
    assert "case 's0', group 'g0'" in line


@pytest.mark.parametrize("command", ["split", "train", "train, split last", "export-nnunet"])
def test_a_dataset_of_one_specimen_is_named_in_the_refusal(command, tmp_path, capsys):
    """It said "only 1 specimen/group: cross-validation needs at least 2" without
    saying which dataset, in a script that splits several."""
    from bcseg.data.phantom import write_phantom

    data = tmp_path / "one"
    write_phantom(data, n=1, shape=(8, 32, 32))
    out = tmp_path / "out"
    argv = {"split": ["split", data, "--out", out / "folds.json"],
            "train": ["train", data, "--out", out],
            # "the last 0 form the test set" was a warning, and the run trained with none
            "train, split last": ["train", data, "--out", out, "--config", tmp_path / "last.toml"],
            "export-nnunet": ["export-nnunet", data, out, "--dataset-id", "5", "--name", "One"]}[command]
    (tmp_path / "last.toml").write_text('[train]\nsplit = "last"\n', encoding="utf-8")
    line = assert_refused(capsys, argv, 3, f"{data}: only 1 specimen/group", tmp_path)
    assert line.startswith(f"bcseg: error: {data}: ")
    assert not out.exists()


@pytest.mark.parametrize("flag, value, said", [
    ("--fold", "7", "fold 7 does not exist; folds are 0-"),
    ("--observer", "nosuch", "unknown observer 'nosuch'; choose one of"),
])
def test_a_bad_train_flag_found_in_the_data_names_the_flag(flag, value, said, tmp_path, tiny_config,
                                                           capsys):
    """Both are checked against the dataset, after parsing, and named nothing."""
    data = write_cases(tmp_path / "data")
    argv = ["train", data, "--out", tmp_path / "out", "--config", tiny_config, flag, value]
    line = assert_refused(capsys, argv, 2, said, tmp_path)
    assert line.startswith(f"bcseg: error: {flag}: ")
    assert not (tmp_path / "out").exists()


def test_identical_images_within_one_group_are_not_a_problem(tmp_path, capsys):
    manifest = _duplicated(tmp_path / "data")
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(",g9", ",g1"), encoding="utf-8")
    code, _, err = run_main(capsys, ["check", manifest])
    assert (code, err) == (0, "")


# --------------------------------------------------------------------------- exact shape

@pytest.mark.parametrize("shape, imagej", [((6, 1, 40), False), ((6, 1, 40), True),
                                           ((1, 32, 40), False), ((5, 32, 1), False)],
                         ids=["z-1-x", "z-1-x-imagej", "1-h-w", "z-h-1"])
def test_singleton_axes_keep_the_input_shape(shape, imagej, tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "thin.tif"
    array = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    tifffile.imwrite(path, array, **({"imagej": True, "metadata": {"axes": "ZYX"}} if imagej
                                     else {"photometric": "minisblack"}))
    code, _, err = run_main(capsys, predict_argv(tmp_path, path, models["2d"], "--save-prob"))
    assert (code, err) == (0, "")
    for output in ("thin_mask.tif", "thin_prob.tif"):
        assert tifffile.imread(tmp_path / "out" / output).shape == tifffile.imread(path).shape == shape


# --------------------------------------------------------------------------- margins

def test_tumour_wholly_outside_the_specimen_is_warned_not_inked(tmp_path):
    rng = np.random.default_rng(5)
    volume = rng.integers(0, 20, (12, 48, 48)).astype(np.uint8)  # dark coupling medium
    volume[2:10, 6:30, 6:30] = rng.integers(120, 255, (8, 24, 24))  # bright tissue block
    tumour = np.zeros(volume.shape, bool)
    tumour[4:8, 36:44, 36:44] = True  # in the medium, well away from the tissue
    io.write_image(tmp_path / "s.tif", volume, (0.5, 0.2, 0.2))
    io.write_mask(tmp_path / "s_mask.tif", tumour)
    result = margins_for_files(tmp_path / "s.tif", tmp_path / "s_mask.tif", tmp_path / "out")
    assert any("wholly outside the specimen" in w for w in result["warnings"]), result["warnings"]
    assert not result.get("ink_on_tumour") and math.isnan(result["distance_mm"])


def test_margins_keep_going_skips_2d_images_with_a_warning(tmp_path, models, capsys):
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a_flat.png", IMAGE)
    io.write_image(tmp_path / "in" / "b_stack.tif", np.repeat(IMAGE[None], 6, axis=0), (0.5, 0.2, 0.2))
    code, out, err = run_main(capsys, predict_argv(tmp_path, tmp_path / "in", models["2d"],
                                                   "--margins", "--keep-going"))
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bcseg: warning: ") and "a_flat.png" in lines[0]
    assert "2D image; no margins" in lines[0]
    assert (tmp_path / "out" / "b_stack_margins.csv").is_file()
    assert not (tmp_path / "out" / "a_flat_margins.csv").exists()


# --------------------------------------------------------------------------- links to nothing

def _loop_and_stack(tmp: Path) -> tuple[Path, Path]:
    os.symlink("loop", tmp / "loop")  # a link to itself
    stack = tmp / "s.tif"
    io.write_image(stack, np.repeat(IMAGE[None], 6, axis=0), (0.5, 0.2, 0.2))
    io.write_mask(tmp / "s_mask.tif", np.repeat(LESION[None], 6, axis=0))
    return tmp / "loop", stack


@pytest.mark.parametrize("where", ["--image", "--tumour", "--out"])
def test_a_looping_link_given_to_margins_is_named_not_a_crash(where, tmp_path, capsys):
    """Path.resolve() raises RuntimeError at a looping link (Python 3.11): margins
    ended with exit 1 and "RuntimeError: Symlink loop" before its inputs were read."""
    loop, stack = _loop_and_stack(tmp_path)
    argv = {"--image": stack, "--tumour": tmp_path / "s_mask.tif", "--out": tmp_path / "out"}
    argv[where] = loop
    code, _, err = run_main(capsys, ["margins", *[a for pair in argv.items() for a in pair]])
    line = one_error_line(err)
    assert code in (2, 3) and line.startswith(f"bcseg: error: {loop}: "), line
    assert "loop" in line.split(": ", 2)[2] and "RuntimeError" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "s.tif", "s_mask.tif"]


@pytest.mark.parametrize("target, said", [("loop", "which loops"), ("nowhere", "which does not exist")])
@pytest.mark.parametrize("argv", [
    lambda link, stack, models: ["predict", stack, "--model", link, "--out", stack.parent / "out"],
    lambda link, stack, models: ["predict", link, "--model", models["3d"], "--out", stack.parent / "out"],
    lambda link, stack, models: ["check", link],
    lambda link, stack, models: ["export-onnx", link],
], ids=["predict --model", "predict input", "check", "export-onnx"])
def test_a_link_to_nothing_is_named_as_a_link_not_as_missing(target, said, argv, tmp_path, models,
                                                               capsys):
    """A dangling link is "not found" to every exists() check, while the user sees its
    name in the folder: the error says it is a link, and to what."""
    _, stack = _loop_and_stack(tmp_path)
    link = tmp_path / "link"
    os.symlink(target, link)
    code, _, err = run_main(capsys, argv(link, stack, models))
    line = one_error_line(err)
    assert code in (3, 4) and line.startswith(f"bcseg: error: {link}: "), line
    assert f"symbolic link to '{target}', {said}" in line or (
        "broken symbolic link, or one that loops" in line), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["loop.tif", "ABSOLUTE"])
def test_a_manifest_path_that_loops_is_said_to_loop(value, tmp_path, capsys):
    """Path.resolve() raised at a looping link, and the manifest reader said it loops;
    with os.path.realpath nothing raises, and it was called "a broken symbolic link"."""
    root = tmp_path / "data"
    write_cases(root, n=2)
    os.symlink("loop.tif", root / "loop.tif")
    value = str(root / "loop.tif") if value == "ABSOLUTE" else value
    (root / "manifest.csv").write_text(f"id,image,mask_observer1\nc0,{value},masks/observer1/c0.tif\n"
                                       "c1,images/c1.tif,masks/observer1/c1.tif\n")
    code, out, _ = run_main(capsys, ["check", root / "manifest.csv"])  # one row's: listed
    assert code == 3 and f"manifest.csv: line 2: '{value}' is a symbolic link that loops" in out, out


def test_an_output_link_to_nothing_is_said_to_be_one_once(tmp_path, models, capsys):
    """The output check already says "is a broken link": the added note repeated it."""
    _, stack = _loop_and_stack(tmp_path)
    os.symlink("nowhere", tmp_path / "out")
    code, _, err = run_main(capsys, ["predict", stack, "--model", models["3d"], "--out", tmp_path / "out"])
    line = one_error_line(err)
    assert code == 2 and line.split(f"{tmp_path / 'out'}: ", 1)[1].count("link") == 1, line


@pytest.mark.parametrize("given", ["predict input", "--model", "a second --model", "--config", "--init",
                                   "ensemble --model", "export-onnx", "train data"])
def test_an_input_named_too_long_for_the_file_system_is_one_line_naming_it(given, tmp_path, models, capsys):
    """Outputs were checked for names the file system cannot hold, inputs not: each
    failed at its first look as 'OSError: [Errno 36] File name too long' (exit 1)."""
    data = write_cases(tmp_path / "data", n=2)
    long = tmp_path / ("a" * 300 + ".keras")
    out = tmp_path / "out"
    argv = {"predict input": ["predict", long, "--model", models["2d"], "--out", out],
            "--model": ["predict", data / "images", "--model", long, "--out", out],
            "a second --model": ["predict", data / "images", "--model", models["2d"], "--model", long,
                                 "--out", out],
            "--config": ["train", data, "--out", out, "--config", long],
            "--init": ["train", data, "--out", out, "--init", long],
            "ensemble --model": ["ensemble", data, "--model", long, "--model", tmp_path, "--out", out],
            "export-onnx": ["export-onnx", long, "--out", tmp_path / "m.onnx"],
            "train data": ["train", long, "--out", out]}[given]
    before = files_under(tmp_path)
    code, _, err = run_main(capsys, argv)
    assert code == 2, err
    assert one_error_line(err).startswith(f"bcseg: error: {long}: is too long a name for the file system")
    assert files_under(tmp_path) == before and not out.exists()


# --------------------------------------------------------------------------- train

@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


def _folds(root: Path, bad_case: str) -> Path:
    """A fold file putting ``bad_case`` alone in the test fold 0."""
    path = root.parent / "folds.csv"
    ids = sorted(io.file_stem(p) for p in (root / "images").iterdir())
    path.write_text("id,fold\n" + "".join(f"{i},{0 if i == bad_case else 1}\n" for i in ids))
    return path


def test_bad_mask_in_the_test_fold_is_found_before_the_first_epoch(tmp_path, tiny_config, capsys):
    root = write_cases(tmp_path / "data", n=5)
    labels = LESION.astype(np.uint8)
    labels[10:14] *= 2  # values 0, 1, 2
    tifffile.imwrite(root / "masks" / "observer1" / "c3.tif", labels, photometric="minisblack")
    argv = ["train", root, "--out", tmp_path / "run", "--config", tiny_config,
            "--folds-file", _folds(root, "c3")]
    code, out, err = run_main(capsys, argv)
    assert code == 3, (out, err)
    line = one_error_line(err)
    assert "observer1/c3.tif: mask is not binary" in line and "case 'c3', checked before training" in line
    assert "epoch" not in out and not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, size, why", [
    (["--model", "unet3d"], 32, "is a 2D model; this run trains a 3D one"),
    ([], 48, "takes sizes that are multiples of 32"),  # depth 4, stride-2 stem
])
def test_init_busi_that_cannot_train_the_run_is_refused_before_the_run_folder(tmp_path, capsys, phantom_root,
                                                                              extra, size, why):
    """--init busi skipped the checks a user's --init file gets: a 3D run, or a size the
    bundled model's levels do not divide, failed in the first batch with a raw ValueError
    (exit 1) and left the run folder behind."""
    from bcseg.pretrained import pretrained_path

    config = tmp_path / "tiny.toml"  # phantom stacks: a 3D run reads them as they are
    config.write_text(TINY.replace("size = 32", f"size = {size}"), encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", phantom_root, "--out", out, "--config", config, "--init", "busi",
                                     *extra])
    line = one_error_line(err)
    assert code == 4 and line.startswith(f"bcseg: error: {pretrained_path()}: {why}"), (code, err)
    assert not out.exists()


def _run_dir(tmp_path: Path, tiny_config: Path, **changes) -> Path:
    """A run directory as ``train`` starts it: its config.toml, written in train's claim
    (so that --resume knows it as the run's; no training needed)."""
    run = tmp_path / "run"
    with outputs.claim(run, "train"):
        save_config(load_config(tiny_config, changes), run / "config.toml")
    return run


@pytest.mark.parametrize("extra, key", [
    (["--observer", "observer2"], "data.observer"), (["--epochs", "7"], "train.epochs"),
    (["--batch-size", "2"], "train.batch_size"), (["--config", "other"], "model.depth"),
    (["--mixed-precision"], "train.mixed_precision"),
], ids=["observer", "epochs", "batch-size", "config", "mixed-precision"])
def test_resume_with_other_settings_is_refused(extra, key, tmp_path, tiny_config, capsys):
    root = write_cases(tmp_path / "data", n=5)
    run = _run_dir(tmp_path, tiny_config)
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace("depth = 2", "depth = 3"), encoding="utf-8")
    extra = [str(other) if e == "other" else e for e in extra]
    before = files_under(run)
    code, out, err = run_main(capsys, ["train", root, "--out", run, "--resume", *extra])
    assert code == 2, (out, err)
    line = one_error_line(err)
    assert f"config.toml: the run was started with {key} = " in line and "keeps its settings" in line
    assert files_under(run) == before


def _started_from(run: Path, model: Path) -> None:
    """The record train writes of the --init model a run started from."""
    with outputs.claim(run, "train"):
        (run / rundir.INIT_FILE).write_text(json.dumps(
            {"init": str(model), "weights": rundir.weights_digest(model)}), encoding="utf-8")


def _tiny_model(path: Path, seed: int) -> Path:
    keras.utils.set_random_seed(seed)
    unet(ndim=2, base_filters=2, depth=2).save(path)
    return path


def test_resume_starts_from_the_model_the_run_began_with(tmp_path, tiny_config, capsys):
    """--init was not recorded: `--folds all --init busi` resumed without --init trained
    its later folds from scratch, and with another --init from another model."""
    root = write_cases(tmp_path / "data", n=5)
    first, other = _tiny_model(tmp_path / "a.keras", 0), _tiny_model(tmp_path / "b.keras", 1)
    run = _run_dir(tmp_path, tiny_config)
    _started_from(run, first)
    cfg = load_config(run / "config.toml")
    assert starting_model.started_from(run, None, True, cfg, None)[0] == first  # its later folds start there
    before = files_under(run)
    code, out, err = run_main(capsys, ["train", root, "--out", run, "--resume", "--init", other])
    line = one_error_line(err)
    assert code == 2 and f"--init: {other} is not the model the run started from ({first}" in line
    other.replace(first)  # the model changed on the disk since
    code, out, err = run_main(capsys, ["train", root, "--out", run, "--resume"])
    assert code == 2 and f"{run / rundir.INIT_FILE}: {first} is not the model" in one_error_line(err)
    assert files_under(run) == before


def test_resume_with_init_of_a_run_begun_without_one_is_refused(tmp_path, tiny_config, capsys):
    root = write_cases(tmp_path / "data", n=5)
    run = _run_dir(tmp_path, tiny_config)
    before = files_under(run)
    code, out, err = run_main(capsys, ["train", root, "--out", run, "--resume", "--init",
                                       _tiny_model(tmp_path / "a.keras", 0)])
    assert code == 2 and "--init: " in one_error_line(err) and "records no model it started from" in err
    assert files_under(run) == before


def test_resume_with_the_same_settings_is_accepted(tmp_path, tiny_config):
    saved = load_config(tiny_config, {"data": {"observer": "observer1"}})
    train._refuse_changed_settings(saved, tiny_config, {"data": {"observer": "observer1"},
                                                        "model": {}, "train": {}}, False, tmp_path)


def test_corrupt_state_json_on_resume_names_it(tmp_path, tiny_config, capsys):
    root = write_cases(tmp_path / "data", n=5)
    run = _run_dir(tmp_path, tiny_config)
    with outputs.claim(run, "train"):  # bcseg wrote it so (a write cut short, an old version)
        write_text(run / "state.json", '{"epoch": 3, "checkp')
    code, out, err = run_main(capsys, ["train", root, "--out", run, "--resume"])
    assert code == 4, (out, err)
    assert "state.json: is corrupt" in one_error_line(err)
    (run / "state.json").write_text('{"epoch": 3, "check', encoding="utf-8")  # damaged since
    code, out, err = run_main(capsys, ["train", root, "--out", run, "--resume"])
    assert code == 2, (out, err)
    assert "state.json: was not written by bcseg, or was changed after it was" in one_error_line(err)


def test_init_with_an_unsafe_model_is_a_model_error_before_the_run_folder(tmp_path, tiny_config,
                                                                          models, capsys):
    root = write_cases(tmp_path / "data", n=5)
    code, out, err = run_main(capsys, ["train", root, "--out", tmp_path / "run", "--config", tiny_config,
                                       "--init", models["lambda"]])
    assert code == 4, (out, err)
    line = one_error_line(err)
    assert "lambda.keras: " in line and "safe_mode" not in line
    assert not (tmp_path / "run").exists()


def _not_a_segmenter(kind: str) -> keras.Model:
    """A small model that loads safely but does not map a training sample to one
    probability per pixel of its size."""
    if kind == "divisor 64":  # a U-Net six levels deep: the run's squares are no multiple of 64
        return unet(ndim=2, base_filters=2, depth=6)
    fixed = (64, 64, 1) if kind == "fixed size" else (None, None, 1)
    inputs = keras.Input(fixed)
    x = keras.layers.Conv2D(4, 3, padding="same", strides=2 if kind == "half size" else 1)(inputs)
    channels, activation = (3, "softmax") if kind == "three channels" else (1, "sigmoid")
    return keras.Model(inputs, keras.layers.Conv2D(channels, 1, activation=None if kind == "no sigmoid"
                                                   else activation)(x))


@pytest.mark.parametrize("kind, said", [
    ("fixed size", "takes inputs of spatial size (64, 64)"),
    ("three channels", "expects one probability channel"),
    ("half size", "expects one probability channel"),
    ("no sigmoid", "not probabilities from 0 to 1"),
    ("divisor 64", "takes sizes that are multiples of 64"),
])
def test_init_with_a_model_that_is_no_segmenter_is_refused_before_the_run_folder(kind, said, tmp_path,
                                                                                   tiny_config, capsys):
    """Such a model loaded fine, then failed in the first epoch (ValueError, exit 1) or,
    without its sigmoid, at tuning after the whole run, leaving the run folder behind."""
    root = write_cases(tmp_path / "data", n=5)
    keras.utils.set_random_seed(0)
    model = tmp_path / "other.keras"
    _not_a_segmenter(kind).save(model)
    code, out, err = run_main(capsys, ["train", root, "--out", tmp_path / "run", "--config", tiny_config,
                                       "--init", model])
    assert code == 4, (out, err)
    line = one_error_line(err)
    assert f"{model}: " in line and said in line, line
    assert "epoch" not in out and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A finished 2-epoch tiny run: (dataset, run directory, config)."""
    tmp = tmp_path_factory.mktemp("trained")
    root = write_cases(tmp / "data", n=5)
    config = tmp / "tiny.toml"
    config.write_text(TINY.replace("epochs = 1", "epochs = 2"), encoding="utf-8")
    after_fit.train_and_evaluate(root, tmp / "run", config=config)  # fit, tune, test: a finished run
    return root, tmp / "run", config


def _copy_run(run: Path, to: Path) -> Path:
    import shutil
    shutil.copytree(run, to)
    return to


def test_missing_checkpoint_resumes_from_model_last(trained, tmp_path, capsys):
    root, run, _ = trained
    copy = _copy_run(run, tmp_path / "run")
    for name in ("inference.json",):  # as if killed before the run was tested
        (copy / name).unlink()
    state = json.loads((copy / "state.json").read_text(encoding="utf-8"))
    (copy / state["checkpoint"]).unlink()
    code, out, err = run_main(capsys, ["train", root, "--out", copy, "--resume"])
    assert code == 0, (out, err)
    assert f"bcseg: warning: {copy / state['checkpoint']} is missing; resuming from " \
        "model_last.keras" in err.splitlines()
    assert "error" not in err
    assert (copy / "inference.json").is_file()


@pytest.mark.parametrize("change", ["case deleted", "case added", "validation image replaced"])
def test_resume_refuses_a_dataset_changed_since_the_run_started(change, trained, tmp_path, capsys):
    """Red team 16: --resume went on after a case was deleted or an image replaced (one
    model of two datasets, without a word); a case added crashed with KeyError."""
    import shutil

    root, run, _ = trained
    data = tmp_path / "data"
    shutil.copytree(root, data)
    copy = _copy_run(run, tmp_path / "run")
    (copy / "inference.json").unlink()  # as if killed before the run was tested
    validation = json.loads((copy / "fold.json").read_text(encoding="utf-8"))["validation"][0]
    if change == "case deleted":
        culprit, said = data, "case 'c4' is gone since; 1 gone, 0 new"
        for folder in ("images", "masks/observer1"):
            (data / folder / "c4.tif").unlink()
    elif change == "case added":
        culprit, said = data, "case 'c9' is new since; 0 gone, 1 new"
        io.write_image(data / "images" / "c9.tif", np.full(IMAGE.shape, 77, np.uint8))
        io.write_mask(data / "masks" / "observer1" / "c9.tif", LESION)
    else:
        culprit, said = data / "images" / f"{validation}.tif", f"case '{validation}' changed since the run started"
        io.write_image(culprit, np.full(IMAGE.shape, 99, np.uint8))
    before = files_under(copy)
    code, _, err = run_main(capsys, ["train", data, "--out", copy, "--resume"])
    assert code == 3 and str(culprit) in one_error_line(err) and said in err, err
    assert files_under(copy) == before


def _send_sigterm_once(method):
    sent = {"done": False}

    def wrapper(*args, **kwargs):
        if not sent["done"]:
            sent["done"] = True
            # To this (the main) thread, handled at once: os.kill may hand a process's
            # signal to one of TensorFlow's threads, and Python then runs the handler
            # only whenever the main thread next looks, wherever that is.
            signal.raise_signal(signal.SIGTERM)
        return method(*args, **kwargs)
    return wrapper


def test_sigterm_during_the_last_epochs_validation_saves_that_epoch(tmp_path, tiny_config, capsys,
                                                                    monkeypatch):
    """The training batches were all done: the epoch is complete and must be kept."""
    root = write_cases(tmp_path / "data", n=5)
    monkeypatch.setattr(keras.Model, "evaluate", _send_sigterm_once(keras.Model.evaluate))
    code, out, err = run_main(capsys, ["train", root, "--out", tmp_path / "run", "--config", tiny_config])
    assert code == 130, (out, err)
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "stopped after epoch 1" in said[0] and "epoch 1 is saved" in said[0]
    state = json.loads((tmp_path / "run" / "state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 1 and (tmp_path / "run" / state["checkpoint"]).is_file()


def test_sigterm_after_the_last_epoch_is_not_swallowed(trained, tmp_path, capsys, monkeypatch):
    root, run, _ = trained
    copy = _copy_run(run, tmp_path / "run")
    (copy / "inference.json").unlink()  # resume: no epoch left, straight to testing

    class Killed(Exception):
        pass

    def die(signum, frame):  # what SIGTERM would do if bcseg left it to the default
        raise Killed()

    previous = signal.signal(signal.SIGTERM, die)
    try:
        monkeypatch.setattr(after_fit, "tune_inference", _send_sigterm_once(after_fit.tune_inference))
        code, out, err = run_main(capsys, ["train", root, "--out", copy, "--resume"])
        assert signal.getsignal(signal.SIGTERM) is die  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130, (out, err)
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "epochs 1-2 are saved" in said[0] and "--resume" in said[0]
    assert not (copy / "inference.json").exists()


def _sigterm_in_a_finaliser_once(method):
    """Sends SIGTERM from inside a ``__del__``, where Python prints and drops whatever the
    handler raises ("Exception ignored in ..."): a Ctrl-C that lands while the garbage
    collector runs a finaliser, as it did once in 20 tries during the tested-run step."""
    sent = {"done": False}

    class Finalised:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # its handler runs here, inside __del__

    def wrapper(*args, **kwargs):
        if not sent["done"]:
            sent["done"] = True
            Finalised()
        return method(*args, **kwargs)
    return wrapper


def test_sigterm_lost_in_a_finaliser_still_stops_the_run(trained, tmp_path, capsys, monkeypatch):
    """The run finished as if no signal had come (exit 0); it stops once the fold is tested."""
    root, run, _ = trained
    copy = _copy_run(run, tmp_path / "run")
    (copy / "inference.json").unlink()  # resume: no epoch left, straight to testing
    monkeypatch.setattr(after_fit, "tune_inference", _sigterm_in_a_finaliser_once(after_fit.tune_inference))
    code, out, err = run_main(capsys, ["train", root, "--out", copy, "--resume"])
    assert code == 130, (out, err)
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "stopped after fold 0 was tested" in said[0] and "--resume" in said[0], err
    assert (copy / "inference.json").is_file()  # the fold was tested: nothing of it is lost
    code, out, err = run_main(capsys, ["train", root, "--out", copy, "--resume"])
    assert code == 0 and "fold 0 already finished" in out + err, (out, err)


# --------------------------------------------------------------------------- a folder where a file is expected

@pytest.mark.parametrize("where", ["images/c2.tif", "masks/observer1/c1.tif", "masks/c9.tif"])
def test_a_folder_named_like_an_image_is_refused_not_skipped(where, tmp_path, capsys):
    """It was skipped: train ran on the other cases without a word, and check blamed
    the case's image for a missing mask."""
    root = write_cases(tmp_path / "data", n=4)
    folder = root / where
    if folder.exists():
        folder.unlink()
    folder.mkdir()
    (folder / "notes.txt").write_text("a folder, not an image")
    code, out, err = run_main(capsys, ["train", root, "--out", tmp_path / "run", "--config", tiny_toml(tmp_path)])
    assert code == 3, (out, err)
    assert f"{folder}: is a folder, expected an image file" in one_error_line(err)
    assert not (tmp_path / "run").exists()
    code, out, err = run_main(capsys, ["check", root])
    assert code == 3 and f"{folder}: is a folder" in out + err


def test_predict_refuses_a_folder_named_like_an_image_among_its_inputs(tmp_path, models, capsys):
    inputs = tmp_path / "in"
    io.write_image(inputs / "a.tif", IMAGE)
    (inputs / "b.tif").mkdir()
    assert_refused(capsys, predict_argv(tmp_path, inputs, models["2d"]), 3, f"{inputs / 'b.tif'}: is a folder",
                   tmp_path)


def _special(path: Path, kind: str) -> None:
    """A named pipe, or a link to a device that reads without end, where an image goes."""
    if path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "pipe":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


SAID_SPECIAL = {"pipe": "is a named pipe (FIFO), expected an image file",
                "device": "is a device, expected an image file"}


@pytest.mark.parametrize("kind", sorted(SAID_SPECIAL))
@pytest.mark.parametrize("where", ["images/c2.tif", "masks/observer1/c1.tif"])
def test_a_pipe_or_device_named_like_an_image_is_refused_not_skipped(where, kind, tmp_path, capsys):
    """check said "problems 0" and the case was silently missing from every command."""
    root = write_cases(tmp_path / "data", n=4)
    _special(root / where, kind)
    code, out, err = run_main(capsys, ["check", root])
    assert code == 3 and f"{root / where}: {SAID_SPECIAL[kind]}" in out + err, (out, err)


@pytest.mark.parametrize("kind", sorted(SAID_SPECIAL))
def test_predict_refuses_a_pipe_or_device_among_its_inputs(kind, tmp_path, models, capsys):
    inputs = tmp_path / "in"
    io.write_image(inputs / "a.tif", IMAGE)
    _special(inputs / "b.tif", kind)
    said = f"{inputs / 'b.tif'}: {SAID_SPECIAL[kind]}"
    assert_refused(capsys, predict_argv(tmp_path, inputs, models["2d"]), 3, said, tmp_path)
    # named directly, it was "is empty (0 bytes)"; reading the pipe would wait forever
    argv = predict_argv(tmp_path, inputs / "b.tif", models["2d"])
    assert_refused(capsys, argv, 3, said, tmp_path)


@contextmanager
def pipe_that_cannot_hang(path: Path):
    """A named pipe at ``path`` whose reader gets end-of-file rather than waiting forever,
    so that a command that opens it fails the test instead of hanging the suite."""
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: open(path, "wb").close(), daemon=True)
    writer.start()
    try:
        yield path
    finally:
        if writer.is_alive():  # nobody opened the pipe: release the writer
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)


@pytest.mark.parametrize("command", ["check", "split", "train"])
def test_a_pipe_given_as_a_csv_is_refused_by_name_not_read(command, tmp_path, capsys):
    """--folds-file fifo.csv waited forever in split and train; a manifest given as a pipe
    died with a generic NotADirectoryError (exit 1)."""
    root = write_cases(tmp_path / "data", n=4)
    out = tmp_path / "out"
    with pipe_that_cannot_hang(tmp_path / "fifo.csv") as fifo:
        argv = {"check": ["check", fifo],
                "split": ["split", root, "--out", out / "splits.json", "--folds-file", fifo],
                "train": ["train", root, "--out", out, "--config", tiny_toml(tmp_path), "--folds-file", fifo]}
        line = assert_refused(capsys, argv[command], 3, f"{fifo}: is a named pipe (FIFO), expected a CSV file",
                              tmp_path)
    assert line == f"bcseg: error: {fifo}: is a named pipe (FIFO), expected a CSV file"
    assert not out.exists()


def test_a_device_given_as_a_dataset_is_refused_by_name(tmp_path, capsys):
    code, out, err = run_main(capsys, ["check", "/dev/null"])
    assert code == 3, (out, err)
    assert one_error_line(err) == "bcseg: error: /dev/null: is a device, expected a folder or a manifest .csv file"


def test_a_pipe_given_as_the_model_is_named_a_pipe(tmp_path, capsys):
    """It was called "a folder"."""
    io.write_image(tmp_path / "scan.tif", IMAGE)
    with pipe_that_cannot_hang(tmp_path / "fifo.keras") as fifo:
        assert_refused(capsys, predict_argv(tmp_path, tmp_path / "scan.tif", fifo), 4,
                       f"{fifo}: is a named pipe (FIFO), expected a .keras file", tmp_path)


def write_busi(root: Path) -> Path:
    """BUSI's layout: benign (1) and benign (2) near-duplicates grouped by folds.csv."""
    rng = np.random.default_rng(3)
    (root / "benign").mkdir(parents=True)
    for k in (1, 2, 3, 4):
        iio.imwrite(root / "benign" / f"benign ({k}).png", rng.integers(0, 256, IMAGE.shape, dtype=np.uint8))
        iio.imwrite(root / "benign" / f"benign ({k})_mask.png", LESION.astype(np.uint8) * 255)
    (root / "folds.csv").write_text("image,class,group,fold\n" + "".join(
        f"benign/benign ({k}).png,benign,{k // 3},{k // 3}\n" for k in (1, 2, 3, 4)), encoding="utf-8")
    return root


def _spoil_folds_csv(folds: Path, how: str) -> str:
    """Make ``folds`` unusable in the way ``how`` names; return what the refusal says."""
    if how == "header only":
        folds.write_text("image,class,group,fold\n", encoding="utf-8")
        return "folds.csv has no rows"
    if how == "Group":
        folds.write_text(folds.read_text(encoding="utf-8").replace("group", "Group"), encoding="utf-8")
        return "folds.csv lacks column 'group' (it has 'Group'; rename it 'group')"
    if how == "no image":
        folds.write_text(folds.read_text(encoding="utf-8").replace("image,", "file,"), encoding="utf-8")
        return "folds.csv lacks column 'image'"
    if how == "blank group":  # every blank group would be one group, "g"
        folds.write_text(folds.read_text(encoding="utf-8").replace(",benign,1,", ",benign,,"), encoding="utf-8")
        return "line 4: no group"
    if how == "image twice":  # the last row would win, silently; blank and cleared rows
        with folds.open("a", encoding="utf-8") as handle:  # are no rows, but count as lines
            handle.write(",,,\n\nbenign/benign (1).png,benign,7,0\n")
        return "line 8: names image 'benign (1)' again, in group 7 after group 0"
    folds.unlink()
    if how == "broken link":
        folds.symlink_to("/mnt/not-mounted/folds.csv")
        return "is a broken symbolic link"
    if how == "folder":
        folds.mkdir()
        return "is a folder, expected a CSV file"
    os.mkfifo(folds)
    return "is a named pipe (FIFO), expected a CSV file"


@pytest.mark.parametrize("how", ["broken link", "pipe", "folder", "Group", "no image", "header only",
                                 "blank group", "image twice"])
def test_an_unusable_busi_folds_csv_is_refused_not_ignored(how, tmp_path, capsys):
    """It was ignored: every image became its own group, and near-duplicates that BUSI's
    folds.csv groups could land in both training and test folds (split, check exit 0)."""
    root = write_busi(tmp_path / "busi")
    code, _, err = run_main(capsys, ["split", root, "--out", tmp_path / "good.json", "--k", "2"])
    assert code == 0, err
    groups = json.loads((tmp_path / "good.json").read_text(encoding="utf-8"))["groups"]
    assert groups["benign (1)"] == groups["benign (2)"]
    folds = root / "folds.csv"
    said = _spoil_folds_csv(folds, how)
    out = tmp_path / "out" / "splits.json"
    line = assert_refused(capsys, ["split", root, "--out", out, "--k", "2"], 3, said, tmp_path)
    assert line.startswith(f"bcseg: error: {folds}: ")
    assert not out.parent.exists()
    code, out_text, err = run_main(capsys, ["check", root])
    assert code == 3 and one_error_line(err).startswith(f"bcseg: error: {folds}: ") and said in err
    assert out_text == ""


def test_a_busi_layout_without_folds_csv_keeps_each_image_its_own_group(tmp_path, capsys):
    root = write_busi(tmp_path / "busi")
    (root / "folds.csv").unlink()
    code, _, err = run_main(capsys, ["split", root, "--out", tmp_path / "s.json", "--k", "2"])
    assert code == 0, err
    groups = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["groups"]
    assert len(set(groups.values())) == 4


def test_a_busi_folds_csv_that_leaves_an_image_out_is_refused(tmp_path, capsys):
    """An image folds.csv does not list became a group of its own without a word, free to
    land in another fold than its near-duplicate (a file renamed after the download)."""
    root = write_busi(tmp_path / "busi")
    (root / "benign" / "benign (2).png").rename(root / "benign" / "benign (2b).png")
    (root / "benign" / "benign (2)_mask.png").rename(root / "benign" / "benign (2b)_mask.png")
    out = tmp_path / "out" / "splits.json"
    line = assert_refused(capsys, ["split", root, "--out", out, "--k", "2"], 3,
                          "lists no row for 1 image(s) of the class folders: benign/benign (2b).png",
                          tmp_path)
    assert line.startswith(f"bcseg: error: {root / 'folds.csv'}: ")
    assert not out.parent.exists()


def _two_files_of_one_stem(root: Path, layout: str) -> tuple[Path, Path]:
    """A dataset in ``layout`` with a second file (``.nii.gz``) beside one of its files;
    returns the folder holding both and the first of them."""
    rng = np.random.default_rng(5)
    if layout == "channel folders":
        for i in range(3):
            for channel in ("us", "pa"):
                io.write_image(root / "images" / channel / f"s{i}.tif", rng.integers(0, 256, IMAGE.shape, dtype=np.uint8))
            io.write_mask(root / "masks" / "observer1" / f"s{i}.tif", LESION)
        first = root / "images" / "pa" / "s0.tif"
    elif layout == "nnU-Net suffixes":
        for i in range(3):
            for index in (0, 1):
                io.write_image(root / "images" / f"s{i}_000{index}.tif",
                               rng.integers(0, 256, IMAGE.shape, dtype=np.uint8))
            io.write_mask(root / "masks" / "observer1" / f"s{i}.tif", LESION)
        (root / "channels.json").write_text('["us", "pa"]\n', encoding="utf-8")
        first = root / "images" / "s0_0001.tif"
    else:  # an observer folder, or masks/ holding the masks directly
        write_cases(root, n=3)
        first = root / "masks" / "observer1" / "c0.tif"
        if layout == "loose masks":
            shutil.rmtree(root / "masks")
            for i in range(3):
                io.write_mask(root / "masks" / f"c{i}.tif", LESION)
            first = root / "masks" / "c0.tif"
    other = first.with_name(first.name.replace(".tif", ".nii.gz"))
    (io.write_mask if "masks" in first.parts else io.write_image)(
        other, np.zeros(IMAGE.shape, bool) if "masks" in first.parts else IMAGE)
    return first.parent, first


@pytest.mark.parametrize("layout", ["channel folders", "nnU-Net suffixes", "observer folder", "loose masks"])
def test_two_files_of_one_stem_are_refused_not_one_dropped(layout, tmp_path, capsys):
    """images/pa/s0.tif beside s0.nii.gz: one was silently dropped (check said "problems
    0"), and a second mask was called "a mask with no image of the same name"."""
    folder, first = _two_files_of_one_stem(tmp_path / "data", layout)
    other = first.with_name(first.name.replace(".tif", ".nii.gz"))
    expected = (f"bcseg: error: {folder}: holds two files for one case, {other.name} and "
                f"{first.name}; keep one (the other would be ignored)")
    code, out, err = run_main(capsys, ["check", tmp_path / "data"])  # listed, the rest checked
    assert code == 3 and one_error_line(err) == f"bcseg: error: {tmp_path / 'data'}: 1 problem(s) found, listed above"
    assert [line for line in out.splitlines() if line.startswith("problem: ")] == [
        "problem: " + expected[len("bcseg: error: "):]], out
    assert assert_refused(capsys, ["split", tmp_path / "data", "--out", tmp_path / "out" / "s.json"], 3,
                          str(folder), tmp_path) == expected
    assert not (tmp_path / "out").exists()
    other.unlink()
    code, out, err = run_main(capsys, ["check", tmp_path / "data"])
    assert (code, err) == (0, ""), out


def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- names that cannot name outputs

@pytest.mark.parametrize("name, in_folder", [("new\nline.tif", False), ("tab\tx.tif", True),
                                             ("..tif", False), (".hidden.tif", False)])
def test_predict_refuses_an_image_whose_name_cannot_name_its_outputs(name, in_folder, tmp_path,
                                                                     models, capsys):
    """Such ids are refused in datasets; predict wrote 'new\\nline_mask.tif' and '._mask.tif'."""
    image = tmp_path / "in" / name
    io.write_image(image, IMAGE)
    line = assert_refused(capsys, predict_argv(tmp_path, image.parent if in_folder else image, models["2d"]),
                          3, "rename the file", tmp_path)
    assert printable(str(image)) in line
    assert not (tmp_path / "out").exists()


def test_a_runs_predictions_are_not_images_to_segment(trained, tmp_path, capsys):
    """predict RUN/predictions segmented the run's masks and probability maps as cases
    (writing specimen_mask_mask.tif): they are recorded in the run's folder, not their own."""
    _, run, _ = trained
    predictions = run / "predictions"
    assert any(predictions.glob("*_mask.tif"))
    line = assert_refused(capsys, predict_argv(tmp_path, predictions, run / "model_best.keras"), 3,
                          str(predictions), tmp_path)
    assert "holds only bcseg's outputs" in line
    image = tmp_path / "mixed" / "new_case.tif"  # a real image beside them is segmented, alone
    io.write_image(image, IMAGE)
    for mask in list(predictions.glob("*_mask.tif"))[:1]:
        (tmp_path / "mixed" / mask.name).write_bytes(mask.read_bytes())  # a copy is the user's: an input
    code, out, err = run_main(capsys, ["predict", image.parent, "--model", run / "model_best.keras",
                                       "--out", tmp_path / "out2", "--no-progress"])
    assert code == 0, err
    assert (tmp_path / "out2" / "new_case_mask.tif").is_file()


def test_a_channel_named_twice_in_margins_names_the_flag(tmp_path, capsys):
    code, out, err = run_main(capsys, ["margins", "--image", "us=a.tif", "--image", "us=b.tif",
                                       "--tumour", "t.tif", "--out", tmp_path / "m"])
    assert code == 2, (out, err)
    assert one_error_line(err).startswith("bcseg: error: --image: names channel 'us' twice")
    assert not (tmp_path / "m").exists()


def test_an_inference_json_that_is_not_a_file_is_refused_not_ignored(trained, tmp_path, capsys):
    """A folder named inference.json was skipped and the model's own settings used unsaid."""
    root, run, _ = trained
    copy = _copy_run(run, tmp_path / "run")
    (copy / "inference.json").unlink()
    (copy / "inference.json").mkdir()
    image = next((root / "images").iterdir())
    assert_refused(capsys, predict_argv(tmp_path, image, copy), 4, f"{copy / 'inference.json'}: is not a file",
                   tmp_path)


@pytest.mark.parametrize("where", ["masks/observer2", "manifest.csv", "masks", "images/pa"])
def test_a_broken_link_in_the_layout_is_refused_not_skipped(where, tmp_path, capsys):
    """A broken link as an observer folder (a disk not mounted) dropped that observer
    from every case, and check said "problems 0"; as manifest.csv, the images/ layout
    was read in its place."""
    root = write_cases(tmp_path / "data", n=4)
    link = root / where
    if where == "masks":
        shutil.rmtree(link)
    link.symlink_to(tmp_path / "not-mounted" / where)
    code, out, err = run_main(capsys, ["check", root])
    assert code == 3 and f"{link}: is a broken symbolic link" in out + err, (out, err)


@pytest.mark.parametrize("where, kind", [("masks", "file"), ("masks", "pipe"),
                                         ("images", "file")])
def test_a_file_in_place_of_images_or_masks_is_refused_by_name(where, kind, tmp_path, capsys):
    """A file named masks beside images/ read as a dataset of images alone ("problems
    0"), every observer dropped without a word; a file named images beside masks/ was
    "no known layout", naming the dataset rather than the file."""
    root = write_cases(tmp_path / "data", n=4)
    shutil.rmtree(root / where)
    if kind == "file":
        (root / where).write_text("not a folder\n")
    else:
        os.mkfifo(root / where)
    for command in (["check", root], ["split", root, "--out", tmp_path / "s.json"]):
        code, out, err = run_main(capsys, command)
        message = f"{root / where}: is a {'file' if kind == 'file' else 'named pipe (FIFO)'}, "
        assert code == 3 and message in err and len(err.splitlines()) == 1, (out, err)
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("column", ["image", "mask_observer1"])
def test_a_manifest_path_holding_a_nul_is_refused_naming_the_line(column, tmp_path, capsys):
    """A NUL in a manifest's path (a binary file saved as CSV, a cell pasted from one)
    reached os.path.realpath: 'ValueError: embedded null byte', exit 1, naming no file."""
    root = write_cases(tmp_path / "data", n=4)
    rows = ["id,image,mask_observer1,group"] + [
        f"c{i},images/c{i}.tif,masks/observer1/c{i}.tif,g{i}" for i in range(4)]
    cells = rows[2].split(",")
    cells[1 if column == "image" else 2] += "\0"
    rows[2] = ",".join(cells)
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    for command in (["check", root], ["split", root, "--out", tmp_path / "s.json"]):
        code, out, err = run_main(capsys, command)
        assert code == 3 and "manifest.csv: line 3: path" in out + err, (out, err)
        assert "holds a NUL character" in out + err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.json").exists()


LATIN1 = os.fsdecode(b"sp\xe9cimen")  # 'spécimen' in Latin-1, from an old disk: no UTF-8


@pytest.mark.parametrize("command", ["predict --margins", "margins", "check", "observer"])
def test_a_name_that_is_not_utf8_is_refused_in_one_line(command, tmp_path, models, capsys):
    """A file named in another encoding reached the UTF-8 tables: 'predict --margins' wrote
    its mask, then failed writing margins.csv (UnicodeEncodeError, exit 1), as 'margins'
    did; its id (and an observer's name) heads rows and columns of evaluate's tables."""
    root = write_cases(tmp_path / "data", n=4, shape=STACK.shape)
    for folder in (root / "images", root / "masks" / "observer1"):
        os.rename(folder / "c0.tif", folder / f"{LATIN1}.tif")
    image, mask = root / "images" / f"{LATIN1}.tif", root / "masks" / "observer1" / f"{LATIN1}.tif"
    io.write_mask(mask, np.pad(np.ones((2, 4, 4), np.uint8), [(1, STACK.shape[0] - 3)] + [(
        4, n - 8) for n in STACK.shape[1:]]))
    out = tmp_path / "out"
    argv, culprit = {
        "predict --margins": (predict_argv(tmp_path, image, models["3d"], "--margins",
                                           "--spacing", "1x0.1x0.1"), image),
        "margins": (["margins", "--image", image, "--tumour", mask, "--spacing", "1x0.1x0.1",
                     "--out", out], image),
        "check": (["split", root, "--out", tmp_path / "s.json"], image),
        "observer": (["split", root, "--out", tmp_path / "s.json"], None)}[command]
    if command == "observer":
        os.rename(root / "images" / f"{LATIN1}.tif", root / "images" / "c0.tif")
        os.rename(root / "masks" / "observer1", root / "masks" / LATIN1)
        culprit = root / "masks" / LATIN1
    code, out_text, err = run_main(capsys, argv)
    assert code == 3 and len(err.splitlines()) == 1, err
    assert err.startswith(f"bcseg: error: {printable(str(culprit))}: ") and "not UTF-8" in err, err
    assert not out.exists() and not (tmp_path / "s.json").exists()


def test_an_evaluation_into_a_folder_named_in_another_encoding_gets_its_report(tmp_path, capsys):
    """The report shows its folder's name: one not in UTF-8 failed the page after the
    evaluation was written (UnicodeEncodeError, exit 1)."""
    root = write_cases(tmp_path / "data", n=4)
    for i in range(4):
        io.write_mask(tmp_path / "pred" / f"c{i}_mask.tif", LESION)
    out = tmp_path / LATIN1
    code, _, err = run_main(capsys, ["evaluate", "--pred", tmp_path / "pred", "--truth", root,
                                     "--out", out])
    assert code == 0, err
    assert "sp\\udce9cimen" in (out / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- damaged past the header

def damaged_past_its_header(path: Path, stack: np.ndarray = STACK) -> Path:
    """A deflate-compressed TIFF whose header and every page's entry are sound but whose
    last page's compressed data is garbage: only decoding the pixels finds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, stack, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[len(tif.pages) - 1]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)
    return path


def test_predict_refuses_a_later_input_damaged_past_its_header_before_any_mask(tmp_path, models, capsys):
    """Headers were checked up front, pixels only when each input's turn came: the first
    stack's mask was written, then the damaged second one stopped the run."""
    io.write_image(tmp_path / "in" / "a.tif", STACK)
    damaged_past_its_header(tmp_path / "in" / "b.tif")
    assert_refused(capsys, predict_argv(tmp_path, tmp_path / "in", models["3d"]), 3, "b.tif", tmp_path)
    assert not (tmp_path / "out").exists()


def test_export_nnunet_refuses_a_damaged_image_in_one_line(tmp_path, capsys):
    """The folds' warning ('only 2 groups for 5 folds') came first, the error about the
    damaged image after it: two lines, where bad input gets one."""
    data = write_cases(tmp_path / "data", n=2, shape=STACK.shape[1:])
    io.write_mask(data / "masks" / "observer1" / "c1.tif", LESION)
    damaged_past_its_header(data / "images" / "c1.tif", STACK[:1])
    got, _, err = run_main(capsys, ["export-nnunet", data, tmp_path / "out", "--dataset-id", "5", "--name", "T"])
    assert got != 0
    assert "c1.tif" in one_error_line(err) and "warning" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("odd", ["a 3D case among 2D ones", "2D float pixels for PNG"])
def test_export_nnunet_refuses_what_writing_would_in_one_line(odd, tmp_path, capsys):
    """Cases nnU-Net's format cannot hold together (2D and 3D mixed; floats in a PNG
    dataset) were found while writing, after the folds' warning: two lines."""
    data = write_cases(tmp_path / "data", n=3)
    if odd == "a 3D case among 2D ones":
        io.write_image(data / "images" / "c2.tif", STACK)
        io.write_mask(data / "masks" / "observer1" / "c2.tif", np.zeros(STACK.shape, bool))
    else:
        io.write_image(data / "images" / "c2.tif", IMAGE.astype(np.float32) / 7)
    got, _, err = run_main(capsys, ["export-nnunet", data, tmp_path / "out", "--dataset-id", "5", "--name", "T"])
    assert got == 3
    assert "c2.tif" in one_error_line(err) and "warning" not in err
    assert not (tmp_path / "out").exists()


def test_a_run_stopped_after_a_skipped_drawing_draws_its_curves_once_more(tmp_path, tiny_config,
                                                                           monkeypatch):
    """The curves are redrawn at most every CURVES_EVERY_S seconds; a run stopped later
    is drawn once more (final), so its figures show every saved epoch."""
    from bcseg.learn import train
    from bcseg.learn.train import Interrupted

    root = write_cases(tmp_path / "data", n=5)
    calls = []
    sent = {"evaluations": 0}
    evaluate = keras.Model.evaluate

    def sigterm_in_the_second_validation(*args, **kwargs):
        sent["evaluations"] += 1
        if sent["evaluations"] == 2:
            signal.raise_signal(signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(keras.Model, "evaluate", sigterm_in_the_second_validation)
    with pytest.raises(Interrupted, match="stopped after epoch 2"):
        train.train(root, tmp_path / "run", config=tiny_config, overrides={"train": {"epochs": 3}},
                    plot=lambda out, final=False: calls.append(final))
    assert calls == [False, False, True]  # after epochs 1 and 2, then the stop


def test_the_curves_are_redrawn_at_most_every_so_often_and_when_final(tmp_path):
    from bcseg.after_fit import curves_drawer

    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n1,0.9,0.8\n", encoding="utf-8")
    draw = curves_drawer(every_s=3600)
    draw(tmp_path)  # the first epoch is always drawn
    first = (tmp_path / "loss.png").read_bytes()
    with open(history, "a", encoding="utf-8") as handle:
        handle.write("2,0.5,0.6\n")
    draw(tmp_path)  # within the interval: not redrawn
    assert (tmp_path / "loss.png").read_bytes() == first
    draw(tmp_path, final=True)
    assert (tmp_path / "loss.png").read_bytes() != first
    every = curves_drawer(every_s=0)
    (tmp_path / "loss.png").unlink()
    every(tmp_path)
    assert (tmp_path / "loss.png").is_file()
