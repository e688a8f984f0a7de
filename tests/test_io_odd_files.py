"""Odd but real files: colour spaces, alpha-only drawings, missing codecs, 4D NIfTI,
float32 at the edge of its range and spacing in the wrong unit.

Each file is written here with Pillow, tifffile or SimpleITK; each must read as the
right grey image or be refused in one line that names the file.
"""

from __future__ import annotations

import importlib.util
import math
import re
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from bcseg.cli import main
from bcseg.data import image_rules, intensity, io
from bcseg.data.check import check_dataset
from bcseg.errors import DataError

# A smooth uint8 ramp, 60..177: JPEG keeps it within a few grey levels.
RAMP = (60 + 2 * np.mgrid[:40, :48][0] + np.mgrid[:40, :48][1]).astype(np.uint8)


def refused(call, path, *words: str) -> str:
    """The one-line message of the DataError ``call`` raises; it names ``path`` and ``words``."""
    with pytest.raises(DataError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for word in words:
        assert word in message, message
    return message


# --------------------------------------------------------------------------- colour spaces

def test_cmyk_jpeg_reads_as_its_grey_picture(tmp_path):
    # Pillow stores grey L as C = M = Y = 0, K = 255 - L; read as RGB + alpha it was black.
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(RAMP).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    array, _ = io.read_image(path)
    assert array.dtype == np.uint8 and array.shape == (40, 48)
    assert np.abs(array.astype(int) - RAMP).max() <= 3  # JPEG error only


def test_cmyk_tiff_reads_as_its_grey_picture(tmp_path):
    inks = np.zeros((2, 3, 4), np.uint8)
    inks[0, :, 3] = 255 - np.array([0, 100, 255])  # K alone: grey 0, 100, 255
    inks[1, 0] = (255, 0, 0, 0)  # cyan: RGB (0, 255, 255)
    inks[1, 1] = (0, 0, 0, 51)  # K = 51: grey 204
    inks[1, 2] = (0, 255, 0, 255)  # magenta on full black: black
    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(path, inks, photometric="separated")
    array, _ = io.read_image(path)
    # Cyan: 0.7154 * 255 + 0.0721 * 255 = 200.81 -> 201 (ITU-R 709 luminance).
    assert array.tolist() == [[0, 100, 255], [201, 204, 0]]


def test_ycbcr_tiff_reads_its_luma(tmp_path):
    ycbcr = np.stack([RAMP, np.full_like(RAMP, 90), np.full_like(RAMP, 200)], axis=-1)
    path = tmp_path / "ycbcr.tif"
    tifffile.imwrite(path, ycbcr, photometric="ycbcr", subsampling=(1, 1))
    assert np.array_equal(io.read_image(path)[0], RAMP)  # Y, not 0.21 Y + 0.72 Cb + 0.07 Cr


def test_cielab_tiff_is_refused(tmp_path):
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, np.stack([RAMP] * 3, axis=-1), photometric="cielab")
    refused(lambda: io.read_image(path), path, "CIELAB", "save it as grey or RGB")


# Colour samples (last axis) that read as the same grey whether interleaved or planar.
PLANAR = {
    "rgb": (np.stack([RAMP, 255 - RAMP, RAMP // 2], axis=-1), {"photometric": "rgb"}),
    "rgba": (np.stack([RAMP, 255 - RAMP, RAMP // 2, np.full_like(RAMP, 255)], axis=-1),
             {"photometric": "rgb", "extrasamples": [2]}),
    "cmyk": (np.stack([RAMP // 3, RAMP // 2, 255 - RAMP, RAMP // 4], axis=-1),
             {"photometric": "separated"}),
    "rgb stack": (np.stack([np.stack([RAMP, 255 - RAMP, RAMP // 2], axis=-1)] * 3),
                  {"photometric": "rgb"}),
}


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("kind", sorted(PLANAR))
def test_a_planar_colour_tiff_reads_as_its_interleaved_copy(kind, mmap, tmp_path):
    """A TIFF storing each colour plane after the other (PlanarConfiguration 2, axes
    SYX) was read as a stack of its R, G, B planes: a 2D photo segmented as 3 slices."""
    pixels, options = PLANAR[kind]
    tifffile.imwrite(tmp_path / "mixed.tif", pixels, **options)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(pixels, -1, -3), planarconfig="separate",
                     metadata=None, **options)  # as other software writes it: no shape noted
    expected, _ = io.read_image(tmp_path / "mixed.tif")
    assert expected.shape == pixels.shape[:-1]
    np.testing.assert_array_equal(io.read_image(tmp_path / "planar.tif", mmap=mmap)[0], expected)
    assert io.stored_geometry(tmp_path / "planar.tif")[0] == expected.shape


@pytest.mark.parametrize("slices", [3, 4])
@pytest.mark.parametrize("writer", ["tifffile", "scikit-image"])
def test_a_stack_of_three_or_four_slices_saved_by_python_tools_stays_a_stack(writer, slices, tmp_path):
    """tifffile, scikit-image and imageio save a (3, H, W) array as planar RGB by default
    (with its shape in their description): read as colour, three slices were mixed into
    one grey image, and a mask of them read as 0/182, passing as binary."""
    stack = np.stack([RAMP, 255 - RAMP, RAMP // 2, RAMP // 3][:slices]).astype(np.uint8)
    path = tmp_path / "stack.tif"
    if writer == "tifffile":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # tifffile's note on this default
            tifffile.imwrite(path, stack)
    else:
        import skimage.io
        skimage.io.imsave(path, stack, check_contrast=False)
    assert tifffile.TiffFile(path).series[0].axes == "SYX"  # planar colour, as stored
    np.testing.assert_array_equal(io.read_image(path)[0], stack)
    np.testing.assert_array_equal(io.read_image(path, mmap=True)[0], stack)
    assert io.stored_geometry(path)[0] == stack.shape


@pytest.mark.parametrize("planes", [3, 4])
def test_a_4d_array_python_tools_saved_as_planar_colour_is_refused_not_mixed(planes, tmp_path):
    """tifffile saves a (Z, 3, H, W) or (Z, 4, H, W) array (slices of 3 or 4 channels)
    as planar RGB(A) pages, as it does a (3, H, W) one: read as colour, each slice's
    channels were mixed into one grey value (the fourth dropped as alpha), where the same
    array of 2 channels is refused as 4D."""
    array = np.stack([np.stack([RAMP, 255 - RAMP, RAMP // 2, RAMP // 3][:planes])] * 5).astype(np.uint8)
    path = tmp_path / "zchw.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tifffile's note on this default
        tifffile.imwrite(path, array)
    assert tifffile.TiffFile(path).series[0].axes == "QSYX"  # planar colour pages, as stored
    for read in (io.read_image, io.stored_geometry, lambda p: io.read_image(p, mmap=True)):
        refused(lambda: read(path), path, f"holds a {array.shape} array", "hyperstack")


@pytest.mark.parametrize("planes", [3, 4])
def test_one_slice_of_planar_colour_channels_is_refused_as_more_slices_are(planes, tmp_path):
    """A (1, 3, H, W) array (one slice of 3 channels) is stored as (Z, 3, H, W) is: the
    check left Z = 1 out, so its channels were still mixed into one grey image, and its
    header said (1, H, W) where the read gave (H, W)."""
    array = np.stack([RAMP, 255 - RAMP, RAMP // 2, RAMP // 3][:planes])[None].astype(np.uint8)
    path = tmp_path / "chw.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tifffile's note on this default
        tifffile.imwrite(path, array)
    assert tifffile.TiffFile(path).series[0].axes == "QSYX"
    for read in (io.read_image, io.stored_geometry, lambda p: io.read_image(p, mmap=True)):
        refused(lambda: read(path), path, f"holds a {array.shape} array", "hyperstack")


def test_a_planar_two_sample_tiff_is_refused_as_the_interleaved_one_is(tmp_path):
    pair = np.stack([RAMP, 255 - RAMP])
    tifffile.imwrite(tmp_path / "two.tif", pair, photometric="minisblack", planarconfig="separate",
                     extrasamples=[0])
    refused(lambda: io.read_image(tmp_path / "two.tif"), tmp_path / "two.tif",
            "has 2 samples per pixel", "which are channels, not slices")


@pytest.mark.parametrize("planar", ["contig", "separate"])
@pytest.mark.parametrize("count", [3, 4])
def test_grey_with_extra_samples_is_refused_not_mixed_as_colour(count, planar, tmp_path):
    # MinIsBlack with 2 or 3 extra samples is channels (or, from tifffile's volumetric
    # writer, slices): read as R, G, B they were mixed into one grey image, silently.
    planes = np.stack([RAMP + 20 * i for i in range(count)])
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, planes if planar == "separate" else np.moveaxis(planes, 0, -1),
                     photometric="minisblack", planarconfig=planar)
    for read in (io.read_image, io.stored_geometry, lambda p: io.read_image(p, mmap=True)):
        refused(lambda: read(path), path, f"has {count} samples per pixel", "channels")


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_grey_with_alpha_tiff_drops_the_alpha(planar, tmp_path):
    pair = np.stack([RAMP, np.full_like(RAMP, 255)])
    path = tmp_path / "grey_alpha.tif"
    tifffile.imwrite(path, pair if planar == "separate" else np.moveaxis(pair, 0, -1),
                     photometric="minisblack", planarconfig=planar, extrasamples=["unassalpha"])
    for mmap in (False, True):
        assert np.array_equal(io.read_image(path, mmap=mmap)[0], RAMP)


@pytest.mark.parametrize("shape", [(6, 1, 3), (6, 1, 4), (1, 5, 3)])
def test_a_singleton_axis_beside_3_or_4_pixels_is_not_taken_for_colour(shape, tmp_path):
    # The last axis of 3 or 4 pixels was taken for colour samples: a ValueError, exit 1.
    array = (10 * np.arange(math.prod(shape))).reshape(shape).astype(np.uint8)
    tifffile.imwrite(tmp_path / "thin.tif", array, photometric="minisblack")
    for mmap in (False, True):
        assert np.array_equal(io.read_image(tmp_path / "thin.tif", mmap=mmap)[0], np.squeeze(array))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 1, 1), (1, 1, 7, 1, 1)])
def test_a_column_of_single_pixels_is_too_small_not_a_crash(shape, tmp_path, capsys):
    # Its one long axis was dropped with the singletons: its pixels did not fit the (1, 1)
    # left (ValueError: cannot reshape, exit 1, naming no file).
    path = tmp_path / "images" / "column.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, np.arange(math.prod(shape), dtype=np.uint8).reshape(shape))
    for mmap in (False, True):
        refused(lambda: io.read_image(path, mmap=mmap), path, "too small to segment")
    assert main(["check", str(tmp_path)]) == 3
    assert "too small to segment" in capsys.readouterr().out


def _with_tag(path, tag_name: str, value: int):
    """``path`` with every value of its first page's ``tag_name`` set to ``value``."""
    import struct

    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[tag_name]
        size, fmt = (2, "<H") if tag.dtype == 3 else (4, "<I")
        for i in range(tag.count):
            start = tag.valueoffset + size * i
            data[start:start + size] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("tag, words", [("StripByteCounts", "hold no bytes"),
                                        ("BitsPerSample", "0-bit")])
def test_a_tiff_declaring_no_pixel_data_is_refused_not_read_black(tag, words, tmp_path):
    # Strips of no bytes read as a black stack (tifffile fills them with zeros), without a
    # word; pixels of 0 bits decoded to nothing: ValueError, cannot reshape, exit 1.
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, (RAMP[None] + np.arange(4, dtype=np.uint8)[:, None, None]))
    _with_tag(path, tag, 0)
    for mmap in (False, True):
        refused(lambda: io.read_image(path, mmap=mmap), path, "corrupt", words)


# --------------------------------------------------------------------------- alpha only

def alpha_drawing(mode: str) -> np.ndarray:
    """Constant colour (black), the drawing in alpha: 255 on rows 10-19, columns 10-24."""
    pixels = np.zeros((40, 48, len(mode)), np.uint8)
    pixels[10:20, 10:25, -1] = 255
    return pixels


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_mask_drawn_in_the_alpha_channel_only_is_refused(tmp_path, mode):
    path = tmp_path / "b0_mask.png"
    Image.fromarray(alpha_drawing(mode), mode).save(path)
    refused(lambda: io.read_mask(path, (40, 48)), path, "alpha", "grey")


def test_tiff_mask_drawn_in_the_alpha_channel_only_is_refused(tmp_path):
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, alpha_drawing("RGBA"), photometric="rgb", extrasamples=[2])
    refused(lambda: io.read_mask(path), path, "alpha")


def test_image_drawn_in_the_alpha_channel_only_is_refused(tmp_path):
    path = tmp_path / "b0.png"
    Image.fromarray(alpha_drawing("RGBA"), "RGBA").save(path)
    refused(lambda: io.read_image(path), path, "alpha")


def test_mask_drawn_in_a_palettes_transparency_only_is_refused(tmp_path):
    """Two black palette entries, one transparent (tRNS): imageio expanded the palette to
    RGB without its transparency, and the mask read as blank."""
    picture = Image.fromarray((alpha_drawing("L")[..., 0] > 0).astype(np.uint8), "P")
    picture.putpalette([0, 0, 0, 0, 0, 0])
    path = tmp_path / "b0_mask.png"
    picture.save(path, transparency=bytes([0, 255]))
    refused(lambda: io.read_mask(path, (40, 48)), path, "alpha", "grey")


def test_a_palette_png_with_transparency_reads_through_its_palette(tmp_path):
    picture = Image.fromarray(RAMP - 60, "P")
    picture.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    picture.save(tmp_path / "p.png", transparency=0)
    assert np.array_equal(io.read_image(tmp_path / "p.png")[0], 255 - (RAMP - 60))


def _palette_png(path: Path, indices: np.ndarray, palette: list[int]) -> Path:
    """An 8-bit palette PNG written chunk by chunk (Pillow will not write an index past
    its palette)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = indices.shape
    rows = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in indices)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes(palette)) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def test_a_palette_png_using_colours_past_its_palette_is_refused(tmp_path):
    """Indices past a short palette's end were read as black without a word (a mask's
    lesion, drawn in index 5 of a 4-colour palette, read as empty)."""
    indices = RAMP % 16
    path = _palette_png(tmp_path / "short.png", indices, [v for i in range(4) for v in (60 * i,) * 3])
    refused(lambda: io.read_image(path), path, "past the end of its 4-entry palette")
    path = _palette_png(tmp_path / "whole.png", indices, [v for i in range(16) for v in (16 * i,) * 3])
    assert np.array_equal(io.read_image(path)[0], 16 * indices)


def test_alpha_is_still_dropped_when_the_colour_holds_the_picture(tmp_path):
    rgba = np.stack([RAMP] * 3 + [alpha_drawing("LA")[..., 1]], axis=-1)
    path = tmp_path / "cut_out.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.array_equal(io.read_image(path)[0], RAMP)


def test_check_lists_a_busi_mask_drawn_in_alpha(tmp_path, capsys):
    root = tmp_path / "busi"
    (root / "benign").mkdir(parents=True)
    Image.fromarray(RAMP).save(root / "benign" / "b0.png")
    mask = root / "benign" / "b0_mask.png"
    Image.fromarray(alpha_drawing("RGBA"), "RGBA").save(mask)
    assert [(path, "alpha" in message) for path, message in check_dataset(root).problems] == [
        (str(mask), True)]
    assert main(["check", str(root)]) == 3
    out = capsys.readouterr().out
    assert re.search(rf"^problem: {re.escape(str(mask))}: .*alpha", out, re.M)


# --------------------------------------------------------------------------- codecs

def with_compression_tag(path, code: int) -> None:
    """An uncompressed TIFF whose Compression tag is changed to ``code`` in place."""
    tifffile.imwrite(path, RAMP)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["Compression"]
        assert tag.value == 1 and tag.count == 1
        offset, byteorder = tag.valueoffset, tif.byteorder
    data = bytearray(path.read_bytes())
    data[offset:offset + 2] = code.to_bytes(2, "little" if byteorder == "<" else "big")
    path.write_bytes(bytes(data))


@pytest.mark.skipif(importlib.util.find_spec("imagecodecs") is not None
                    or importlib.util.find_spec("compression") is not None,
                    reason="a ZSTD decoder is installed")
@pytest.mark.parametrize("code, name", [(50000, "ZSTD"), (5, "LZW")])
@pytest.mark.parametrize("mmap", [False, True])
def test_tiff_with_a_codec_not_installed_names_the_compression(tmp_path, code, name, mmap):
    path = tmp_path / f"{name}.tif"
    with_compression_tag(path, code)
    refused(lambda: io.read_image(path, mmap=mmap), path,
            f"{name} (TIFF code {code})", "uncompressed", "imagecodecs")


def test_tiff_with_an_unknown_compression_code(tmp_path):
    path = tmp_path / "odd.tif"
    with_compression_tag(path, 12345)
    refused(lambda: io.read_image(path), path, "code 12345, unknown to tifffile", "uncompressed")


# --------------------------------------------------------------------------- NIfTI

def test_4d_nifti_says_how_many_dimensions_it_has(tmp_path):
    path = tmp_path / "series.nii.gz"
    image = sitk.GetImageFromArray(np.zeros((2, 3, 20, 30), np.int16), isVector=False)
    sitk.WriteImage(image, str(path))
    message = refused(lambda: io.read_image(path), path,
                      "has 4 dimensions (shape (2, 3, 20, 30))", "2D images and 3D stacks")
    assert "more than one channel" not in message


def test_vector_nifti_says_how_many_values_per_voxel(tmp_path):
    path = tmp_path / "colour.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 3), np.uint8), isVector=True), str(path))
    refused(lambda: io.read_image(path), path, "has 3 values per voxel (shape (20, 30),")


# --------------------------------------------------------------------------- float32 range

def normalised(path, mmap: bool) -> np.ndarray:
    """read_image then normalise, with any numpy warning (overflow) an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array, _ = io.read_image(path, mmap=mmap)
        return intensity.normalise(array, intensity.intensity_stats(array))


@pytest.mark.parametrize("mmap", [False, True])
def test_float32_spanning_more_than_float32_normalises_to_finite_values(tmp_path, mmap):
    image = np.full((20, 30), 3e38, np.float32)
    image[:10] = -3e38  # the span, 6e38, is beyond float32's 3.4e38
    image[5, 5] = 0.0
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, image)
    out = normalised(path, mmap)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # Percentiles -3e38 and 3e38: -3e38 -> 0, 0 -> 0.5, 3e38 -> 1.
    assert out[0, 0] == 0.0 and out[5, 5] == pytest.approx(0.5) and out[19, 29] == 1.0


def test_float32_percentile_between_far_apart_values_is_finite(tmp_path):
    # Sorted -3e38, 3e38, 3e38, 3e38: the 0.5th percentile lies 0.015 of the way from
    # the first to the second, -3e38 + 0.015 * 6e38 = -2.91e38 (float32 gave inf).
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, np.array([[-3e38, 3e38], [3e38, 3e38]], np.float32))
    stats = intensity.intensity_stats(io.read_image(path)[0])
    assert stats.low == pytest.approx(-2.91e38, rel=1e-6)
    assert stats.high == pytest.approx(3e38, rel=1e-6)
    assert normalised(path, False).tolist() == [[0.0, 1.0], [1.0, 1.0]]


# --------------------------------------------------------------------------- spacing

@pytest.mark.parametrize("spacing, ok", [
    ((1e-4, 100.0), True), ((0.25, 0.25), True),  # the bounds and an ordinary pixel
    ((0.25, 9e-5), False), ((1e-12, 1e-6), False), ((100.5, 0.2), False), ((1e5, 1e5), False),
])
def test_spacing_range(spacing, ok):
    assert (image_rules.spacing_problem(spacing, 2) is None) is ok


def imagej_tiff(path, image, unit: str, pixel: float, z: float | None = None) -> None:
    """An ImageJ TIFF whose pixels are ``pixel`` ``unit`` wide (and ``z`` apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"unit": unit, "axes": "ZYX" if image.ndim == 3 else "YX"}
    if z is not None:
        metadata["spacing"] = z
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / pixel, 1 / pixel), metadata=metadata)


def test_spacing_in_nanometres_is_refused(tmp_path):
    path = tmp_path / "nm.tif"
    imagej_tiff(path, RAMP, "nm", 1.0)  # 1 nm = 1e-6 mm
    assert image_rules.spacing_problem((1e-6, 1e-6)) is not None
    refused(lambda: io.read_image(path), path, "1e-06 x 1e-06 mm", "between 0.0001 and 100 mm")
    refused(lambda: io.read_spacing(path), path, "1e-06 x 1e-06 mm")


def test_nanometres_labelled_as_mm_is_refused(tmp_path):
    path = tmp_path / "mm.tif"
    imagej_tiff(path, np.stack([RAMP] * 3), "mm", 1e5, z=2e5)  # 100 µm written in nm
    refused(lambda: io.read_image(path), path, "200000 x 100000 x 100000 mm")
    refused(lambda: io.stored_geometry(path), path, "100000 mm")



def test_spacing_that_is_no_number_is_refused_naming_the_field(tmp_path):
    """An ImageJ 'spacing=abc' or an OME PhysicalSizeX="abc" was refused as 'cannot read
    TIFF (could not convert string to float: 'abc')', naming no field to correct."""
    stack = np.zeros((3, 8, 8), np.uint8)
    imagej = tmp_path / "ij.tif"
    tifffile.imwrite(imagej, stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": "abc", "unit": "mm", "axes": "ZYX"})
    for look in (io.read_image, io.stored_geometry, io.read_spacing):
        refused(lambda: look(imagej), imagej, "its ImageJ spacing 'abc' is no number",
                "Image > Properties")
    ome = tmp_path / "ome.tif"
    tifffile.imwrite(ome, stack, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": "abc",
                                                     "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.0})
    refused(lambda: io.read_image(ome), ome, "its OME PhysicalSizeX 'abc' is no number")

def test_check_lists_implausible_spacing_as_it_does_zero(tmp_path, capsys):
    root = tmp_path / "study"
    stack = np.stack([RAMP] * 3)
    lesion = np.zeros(stack.shape, bool)
    lesion[1, 10:20, 10:20] = True
    for name, pixel in (("good", 0.2), ("nano", 2e-5)):  # 2e-5 mm = 20 nm
        imagej_tiff(root / "images" / f"{name}.tif", stack, "mm", pixel, z=1.0)
        io.write_mask(root / "masks" / "observer1" / f"{name}.tif", lesion, (1.0, 0.2, 0.2))
    bad = root / "images" / "nano.tif"
    problems = check_dataset(root).problems
    assert [(path, "1 x 2e-05 x 2e-05 mm" in message) for path, message in problems] == [
        (str(bad), True)]
    assert main(["check", str(root)]) == 3
    assert f"problem: {bad}: has unusable spacing" in capsys.readouterr().out


def _png_16bit_rgb(path, rgb: np.ndarray) -> None:
    """A 16-bit RGB, RGBA or grey + alpha PNG (by the last axis) written by hand (Pillow
    cannot write one): filter 0 on each row."""
    import struct
    import zlib

    height, width, channels = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_a_16_bit_colour_png_is_read_at_8_bits_with_a_warning(tmp_path):
    """Pillow reads 16-bit RGB at 8 bits per channel; bcseg says so instead of silently
    dropping the low byte (257 -> 1, 8257 -> 32)."""
    grey = (np.arange(8, dtype=np.uint16) * 8000 + 257)[None, :].repeat(4, axis=0)
    _png_16bit_rgb(tmp_path / "deep.png", np.stack([grey] * 3, axis=-1))
    with pytest.warns(UserWarning, match=r"deep.png: is a 16-bit colour PNG, read at 8 bits"):
        image, _ = io.read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and list(image[0, :3]) == [1, 32, 63]


def test_a_16_bit_grey_and_alpha_png_warns_as_16_bit_colour_does(tmp_path):
    """Pillow reads 16-bit grey + alpha at 8 bits too: the low byte went without a word."""
    grey = (np.arange(8, dtype=np.uint16) * 8000 + 257)[None, :].repeat(4, axis=0)
    _png_16bit_rgb(tmp_path / "deep.png", np.stack([grey, np.full_like(grey, 65535)], axis=-1))
    with pytest.warns(UserWarning, match=r"deep.png: is a 16-bit grey \+ alpha PNG, read at 8 bits"):
        image, _ = io.read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and list(image[0, :3]) == [1, 32, 63]


# --------------------------------------------------------------------------- grey as the TIFF means it

GREY_RAMP = np.arange(0, 256, 16, dtype=np.uint8).reshape(4, 4)


def test_a_grey_palette_tiff_is_read_through_its_palette(tmp_path):
    """The palette's indices were read as the image: a reversed grey palette came out as
    its negative. What a viewer shows (PIL renders through the palette) is what is read."""
    from PIL import Image

    reversed_greys = np.stack([np.arange(255, -1, -1, dtype=np.uint16) * 257] * 3)
    tifffile.imwrite(tmp_path / "p.tif", GREY_RAMP, photometric="palette", colormap=reversed_greys)
    image, _ = io.read_image(tmp_path / "p.tif")
    shown = np.asarray(Image.open(tmp_path / "p.tif").convert("L"))
    np.testing.assert_array_equal(image, shown)
    np.testing.assert_array_equal(image, 255 - GREY_RAMP)


@pytest.mark.parametrize("kind, problem", [
    ("miniswhite", "stores an inverted grey scale (MinIsWhite"),
    ("colour palette", "is a colour palette (indexed colour) image")])
def test_a_tiff_whose_values_are_not_its_greys_is_refused(kind, problem, tmp_path):
    """MinIsWhite and colour palettes were read as raw values: an inverted or false image."""
    path = tmp_path / "odd.tif"
    if kind == "miniswhite":
        tifffile.imwrite(path, GREY_RAMP, photometric="miniswhite")
    else:
        colours = np.stack([np.arange(256, dtype=np.uint16) * 257, np.zeros(256, np.uint16),
                            np.arange(255, -1, -1, dtype=np.uint16) * 257])
        tifffile.imwrite(path, GREY_RAMP, photometric="palette", colormap=colours)
    with pytest.raises(DataError, match=re.escape(problem)):
        io.read_image(path)


def test_an_imagej_stack_cut_short_is_refused_not_read_as_one_slice(tmp_path):
    """Fiji writes big stacks as one page with the rest after it; cut short, tifffile read
    the first image alone, and predict wrote a 2D mask for a 6-slice stack."""
    stack = np.random.default_rng(0).integers(0, 255, (6, 16, 16), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    np.testing.assert_array_equal(io.read_image(tmp_path / "ij.tif")[0], stack)  # whole: read whole
    data = (tmp_path / "ij.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:-600])
    with pytest.raises(DataError, match="its ImageJ description declares 6 images, the file holds 1"):
        io.read_image(tmp_path / "cut.tif")


def _ome_declaring(path, stack: np.ndarray, declared: int) -> None:
    """An OME-TIFF of ``stack`` whose OME-XML says SizeZ is ``declared`` (as a tool that
    removed or lost slices leaves it)."""
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 250.0,
                                                      "PhysicalSizeY": 250.0, "PhysicalSizeZ": 1000.0})
    data = path.read_bytes()
    said = f'SizeZ="{len(stack)}"'.encode()
    assert data.count(said) == 1
    path.write_bytes(data.replace(said, f'SizeZ="{declared}"'.encode()))


@pytest.mark.parametrize("declared, said", [
    (8, "its OME metadata declares 8 images (shape (8, 16, 16), axes ZYX), the file holds 4"),
    (2, "holds 4 pages, but its OME metadata (SizeZ, SizeC, SizeT) accounts for 2")],
    ids=["more slices than pages", "fewer slices than pages"])
def test_an_ome_stack_whose_xml_miscounts_its_slices_is_refused(declared, said, tmp_path, capsys):
    """tifffile trusts SizeZ: declared 8 for 4 pages, the stack read as 8 slices, 4 of
    them zeros; declared 2, as its first 2. Either way the image's shape was wrong without
    a word, and check blamed its (right) mask for a shape mismatch."""
    stack = np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    lesion = np.zeros(stack.shape, np.uint8)
    lesion[1:3, 4:10, 4:10] = 255
    image = tmp_path / "d" / "images" / "S01.tif"
    image.parent.mkdir(parents=True)
    _ome_declaring(image, stack, declared)
    io.write_mask(tmp_path / "d" / "masks" / "observer1" / "S01.tif", lesion, (1.0, 0.25, 0.25))
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    said_lines = [line for line in (out.out + out.err).splitlines() if "S01.tif" in line]
    assert len(said_lines) == 1, out
    assert str(image) in said_lines[0] and said in said_lines[0], said_lines[0]
    _ome_declaring(image, stack, len(stack))  # the same file with the right count reads whole
    np.testing.assert_array_equal(io.read_image(image)[0], stack)


# --------------------------------------------------------------------------- pages written one by one

REVERSED_GREYS = np.stack([np.arange(255, -1, -1, dtype=np.uint16) * 257] * 3)


def _pages(path, *pages):
    """One series per page, as a tool appending slices one by one writes them."""
    with tifffile.TiffWriter(path) as tif:
        for array, options in pages:
            tif.write(array, **options)
    return path


@pytest.mark.parametrize("second, said", [
    ((GREY_RAMP.astype(np.uint16) * 200, {}), "page 2's pixel type (uint16) differs from page 1's (uint8)"),
    ((GREY_RAMP, {"photometric": "miniswhite"}), "(MINISWHITE) differs from page 1's (MINISBLACK)"),
    ((GREY_RAMP, {"photometric": "palette", "colormap": REVERSED_GREYS}),
     "(PALETTE) differs from page 1's (MINISBLACK)")],
    ids=["uint16 after uint8", "miniswhite after minisblack", "palette after plain"])
def test_a_stack_of_unlike_pages_is_refused(second, said, tmp_path):
    """Only page 1's Photometric and palette were applied, and dtypes were merged: a
    palette page inverted the plain one after it, a MinIsWhite page passed as normal
    grey, and 8-bit slices turned near black beside 16-bit ones."""
    like = _pages(tmp_path / "like.tif", (GREY_RAMP, {}), (255 - GREY_RAMP, {}))
    np.testing.assert_array_equal(io.read_image(like)[0], np.stack([GREY_RAMP, 255 - GREY_RAMP]))
    path = _pages(tmp_path / "unlike.tif", (GREY_RAMP, {"photometric": "minisblack"}), second)
    for look in (io.read_image, io.stored_geometry):
        refused(lambda: look(path), path, "holds pages of different kinds", said,
                "save the stack with all its slices alike")


def test_a_palette_stack_whose_pages_have_other_palettes_is_refused(tmp_path):
    """tifffile groups pages by type and Photometric, not by palette: page 1's palette
    was applied to every page."""
    pages = [Image.fromarray(GREY_RAMP, mode="L").convert("P") for _ in range(2)]
    pages[1].putpalette([v for g in range(255, -1, -1) for v in (g, g, g)])
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    assert tifffile.TiffFile(tmp_path / "p.tif").series[0].shape == (2, 4, 4)
    refused(lambda: io.read_image(tmp_path / "p.tif"), tmp_path / "p.tif", "page 2's palette differs")


def _marked(path, subfiletype):
    """Mark page 2 with ``subfiletype`` (tifffile writes no transparency mask itself)."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[1].tags["NewSubfileType"].overwrite(subfiletype)
    return path


@pytest.mark.parametrize("extra", [
    GREY_RAMP > 100,                                     # an editor's 1-bit transparency mask
    (GREY_RAMP > 100).astype(np.uint8) * 255,            # the same, 8-bit
    np.stack([GREY_RAMP] * 3, axis=-1)],                 # one of another kind than the image
    ids=["bool", "uint8", "rgb"])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_transparency_mask_page_is_not_a_slice(extra, mmap, tmp_path):
    """A TIFF whose second page is a transparency mask (NewSubfileType 4): an 8-bit one
    was read as the image's second slice (a 2D image became a 2-slice stack), others
    were refused as a stack of unlike pages or as two series. The mask is not image data."""
    path = _marked(_pages(tmp_path / "masked.tif", (GREY_RAMP, {}), (extra, {"subfiletype": 1})), 4)
    array, _ = io.read_image(path, mmap=mmap)
    np.testing.assert_array_equal(array, GREY_RAMP)
    assert io.stored_geometry(path)[0] == GREY_RAMP.shape


def test_a_thumbnail_page_is_not_a_slice(tmp_path):
    """A reduced-resolution copy (NewSubfileType 1) after a stack, as scanners save a
    preview: the stack is read, the thumbnail left out."""
    stack = np.stack([GREY_RAMP, 255 - GREY_RAMP, GREY_RAMP // 2])
    path = _pages(tmp_path / "thumb.tif", (stack, {"photometric": "minisblack"}),
                  (GREY_RAMP[::2, ::2], {"subfiletype": 1}))
    np.testing.assert_array_equal(io.read_image(path)[0], stack)
    same = _pages(tmp_path / "same.tif", (GREY_RAMP, {}), (255 - GREY_RAMP, {"subfiletype": 1}))
    np.testing.assert_array_equal(io.read_image(same)[0], GREY_RAMP)


def test_a_thumbnail_page_first_lends_the_image_none_of_its_tags(tmp_path, capsys):
    """A preview (NewSubfileType 1) saved before the image: its tags were read as the
    image's. A half-size preview at half the resolution made a 1 mm image 2 mm a pixel
    (check then blamed the mask stating 1 mm), and a MinIsWhite image behind a plain
    preview was read as raw values, not refused as a MinIsWhite image alone is."""
    picture = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    lesion = np.zeros(picture.shape, bool)
    lesion[4:10, 4:10] = True
    (tmp_path / "d" / "images").mkdir(parents=True)
    image = _pages(tmp_path / "d" / "images" / "S01.tif",
                   (picture[::2, ::2], {"subfiletype": 1, "resolution": (5.0, 5.0), "resolutionunit": 3}),
                   (picture, {"resolution": (10.0, 10.0), "resolutionunit": 3}))
    assert io.read_image(image)[1] == (1.0, 1.0)
    io.write_mask(tmp_path / "d" / "masks" / "observer1" / "S01.tif", lesion, (1.0, 1.0))
    assert main(["check", str(tmp_path / "d")]) == 0, capsys.readouterr()
    path = _pages(tmp_path / "negative.tif", (GREY_RAMP[::2, ::2], {"subfiletype": 1}),
                  (GREY_RAMP, {"photometric": "miniswhite"}))
    refused(lambda: io.read_image(path), path, "MinIsWhite")


def test_an_ome_tiff_of_two_images_is_refused_not_stacked(tmp_path):
    """Two OME Images (two fields of view) were segmented as a 2-slice stack."""
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(GREY_RAMP)
        tif.write(255 - GREY_RAMP)
    refused(lambda: io.read_image(path), path, "holds 2 separate OME images", "its own file")


def test_the_advice_for_two_ome_images_writes_a_stack_that_is_read(tmp_path):
    """The refusal says how to save the slices as one stack. Its call, without axes, made
    tifffile write the first axis as channels (OME axes CYX), which bcseg then refused
    as an image of two channels: following the advice led to another refusal."""
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(GREY_RAMP)
        tif.write(255 - GREY_RAMP)
    message = refused(lambda: io.read_image(path), path, "holds 2 separate OME images")
    call = message[message.index("tifffile.imwrite("):-1]  # the last ')' closes the aside
    stack = np.random.default_rng(0).integers(0, 255, (2, 16, 20), dtype=np.uint8)
    eval(call, {"tifffile": tifffile, "path": tmp_path / "one.ome.tif", "stack": stack})
    np.testing.assert_array_equal(io.read_image(tmp_path / "one.ome.tif")[0], stack)


def test_an_imagej_file_with_more_pages_than_declared_is_refused(tmp_path):
    """ImageJ's description says 3 images, 5 pages follow (appended by another tool):
    tifffile read the 3 and dropped the rest silently."""
    stack = np.random.default_rng(0).integers(0, 255, (5, 8, 8), dtype=np.uint8)
    path = tmp_path / "more.tif"
    tifffile.imwrite(path, stack, description="ImageJ=1.11a\nimages=3\nslices=3\n", metadata=None)
    assert tifffile.TiffFile(path).series[0].shape == (3, 8, 8)
    refused(lambda: io.read_image(path), path, "holds 5 pages, but its ImageJ description declares 3")



@pytest.mark.parametrize("shape", [(5, 8, 8, 3), (1000, 1000)])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_stack_whose_tifffile_description_gives_another_shape_is_refused(shape, mmap, tmp_path):
    """A 5-page stack whose description (tifffile's JSON shape) gives another shape, as a
    tool keeping the description of the file it edited writes: tifffile logged a warning
    and read page 1 alone, so the stack was segmented as one slice without a word."""
    stack = np.random.default_rng(0).integers(0, 255, (5, 8, 8), dtype=np.uint8)
    path = tmp_path / "shaped.tif"
    tifffile.imwrite(path, stack, description='{"shape": %s}' % list(shape), metadata=None)
    refused(lambda: io.read_image(path, mmap=mmap), path,
            "holds 5 pages, but the shape its description gives accounts for 1")
    refused(lambda: io.stored_geometry(path), path, "holds 5 pages")


# --------------------------------------------------------------------------- orientation tags

def _oriented(path, orientation: int):
    """RAMP saved with an EXIF (JPEG, PNG eXIf) or TIFF Orientation tag."""
    if path.suffix == ".tif":
        tifffile.imwrite(path, RAMP, extratags=[(274, "H", 1, orientation, False)])
    else:
        picture = Image.fromarray(RAMP)
        exif = picture.getexif()
        exif[0x0112] = orientation
        picture.save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize("name", ["photo.jpg", "shot.png", "scan.tif"])
@pytest.mark.parametrize("orientation, shown", [(3, "rotated 180°"), (2, "mirrored left-right"),
                                                (6, "rotated 90° clockwise")])
def test_a_picture_viewers_turn_or_mirror_is_refused(name, orientation, shown, tmp_path):
    """Phones save JPEGs as the sensor read them and say 'turn me' in EXIF; viewers turn
    them, bcseg read them as stored: a mask drawn on the shown picture marked the
    mirrored place (a 180° turn keeps the shape, so no check caught it)."""
    path = _oriented(tmp_path / name, orientation)
    for look in (io.read_image, io.stored_geometry):
        refused(lambda: look(path), path, f"has Orientation {orientation} in its metadata",
                f"viewers show it {shown}", "save it with the rotation applied")


@pytest.mark.parametrize("name", ["photo.jpg", "shot.png", "scan.tif"])
def test_a_picture_shown_as_stored_is_read(name, tmp_path):
    path = _oriented(tmp_path / name, 1)
    assert np.abs(io.read_image(path)[0].astype(int) - RAMP).max() <= 3  # JPEG error only


# --------------------------------------------------------------------------- several frames

def _frames(count: int) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("name", ["loop.png", "loop_mask.png"])
def test_an_animated_png_is_refused_not_read_as_a_stack(name, tmp_path):
    """An APNG (a cine loop: frames in time, without spacing) was read as a (3, H, W)
    stack and segmented by a 3D model; a 2-frame APNG mask read as (2, H, W)."""
    frames = _frames(3)
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100)
    for look in (io.read_image, io.stored_geometry):
        refused(lambda: look(tmp_path / name), tmp_path / name, "is an animated PNG of 3 frames",
                "a PNG is read as one 2D image")


def test_an_mpo_jpeg_reads_as_its_first_picture(tmp_path):
    """An MPO (a JPEG with stereo or preview frames after it) is the picture viewers show."""
    frames = _frames(2)
    frames[0].save(tmp_path / "mpo.jpg", format="MPO", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "mpo.jpg").n_frames == 2
    image, _ = io.read_image(tmp_path / "mpo.jpg")
    assert image.shape == (32, 40)
    assert np.abs(image.astype(int) - np.asarray(frames[0], int)).mean() < 8  # JPEG error only


def _time_series(path, writer: str):
    """Three frames of a 2D image in time (axes TYX), as Fiji, OME or tifffile label them."""
    frames = np.stack([np.asarray(f) for f in _frames(3)])
    if writer == "imagej":
        tifffile.imwrite(path, frames, imagej=True, resolution=(10, 10),
                         metadata={"axes": "TYX", "unit": "mm", "spacing": 2.0, "finterval": 0.1})
    elif writer == "ome":
        tifffile.imwrite(path, frames, ome=True, metadata={"axes": "TYX", "PhysicalSizeX": 100,
                                                           "PhysicalSizeY": 100})
    else:
        tifffile.imwrite(path, frames, photometric="minisblack", metadata={"axes": "TYX"})
    return path


@pytest.mark.parametrize("writer", ["imagej", "ome", "tifffile"])
def test_a_tiff_time_series_is_refused_not_read_as_a_stack(writer, tmp_path):
    """A TIFF whose frames are points in time (a cine loop Fiji saved with frames=3) was
    read as a (3, H, W) stack of slices, as an animated PNG once was, and an ImageJ one
    had its slice spacing put on the time axis."""
    path = _time_series(tmp_path / "loop.tif", writer)
    assert tifffile.TiffFile(path).series[0].axes == "TYX"
    for look in (io.read_image, io.stored_geometry, io.read_spacing):
        refused(lambda: look(path), path, "has 3 time points", "not slices")


def test_a_hyperstack_of_channels_in_time_is_refused_not_read_as_a_stack(tmp_path):
    """Channels over time (TCYX) read as channels of a 3D stack of its frames."""
    frames = np.stack([np.asarray(f) for f in _frames(6)]).reshape(3, 2, 32, 40)
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TCYX"})
    refused(lambda: io.read_channels(path), path, "has 3 time points", "not slices")


def test_one_time_point_is_no_time_series(tmp_path):
    path = tmp_path / "one.tif"
    frames = np.stack([np.asarray(f) for f in _frames(3)])
    tifffile.imwrite(path, frames[None], imagej=True, metadata={"axes": "TZYX"})
    np.testing.assert_array_equal(io.read_image(path)[0], frames)


# --------------------------------------------------------------------------- files with channels

TWO_CHANNELS = np.stack([RAMP, 255 - RAMP])  # (C, H, W)


def test_colour_channels_read_as_grey_not_as_a_third_axis(tmp_path):
    """An OME-TIFF of RGB channels (axes CYXS) read as channels of a (H, W, 3) stack: its
    colour samples became a spatial axis 3 pixels wide."""
    colour = np.stack([TWO_CHANNELS, TWO_CHANNELS // 2, TWO_CHANNELS // 3], axis=-1)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, colour, ome=True, photometric="rgb", metadata={"axes": "CYXS"})
    grey = np.rint(colour.astype(float) @ [0.2125, 0.7154, 0.0721]).astype(np.uint8)  # Rec. 709
    array, _ = io.read_channels(path)
    np.testing.assert_array_equal(array, np.moveaxis(grey, 0, -1))


def test_a_palette_of_greys_is_applied_to_channels(tmp_path):
    """The channels of a palette file were read as its indices, not its greys."""
    path = tmp_path / "inverted.tif"
    inverted = np.stack([np.arange(256)[::-1] * 257] * 3).astype(np.uint16)
    tifffile.imwrite(path, TWO_CHANNELS, photometric="palette", colormap=inverted,
                     metadata={"axes": "CYX"})
    np.testing.assert_array_equal(io.read_channels(path)[0], np.moveaxis(255 - TWO_CHANNELS, 0, -1))


@pytest.mark.parametrize("odd, words", [
    ({"photometric": "miniswhite"}, "stores an inverted grey scale (MinIsWhite"),
    ({"extratags": [(274, "H", 1, 3, False)]}, "has Orientation 3 in its metadata"),
])
def test_channels_are_refused_where_read_image_refuses_the_file(odd, words, tmp_path):
    """A hyperstack with an inverting LUT or an Orientation tag was read as stored by
    read_channels, where read_image refuses it."""
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, TWO_CHANNELS, imagej=True, metadata={"axes": "CYX"}, **odd)
    refused(lambda: io.read_channels(path), path, words)


# --------------------------------------------------------------------------- 1-bit images

BILEVEL = np.zeros((32, 40), bool)
BILEVEL[8:24, 10:30] = True


@pytest.mark.parametrize("name", ["scan.png", "scan.tif"])
def test_a_1_bit_image_reads_as_black_and_white(name, tmp_path):
    """A 1-bit picture's white is its full scale: read as uint8 0 and 1, it was
    normalised as 8-bit (divided by 255) into black and 1/255 grey."""
    path = tmp_path / name
    if name.endswith(".png"):
        Image.fromarray(BILEVEL).save(path)
        assert Image.open(path).mode == "1"
    else:
        tifffile.imwrite(path, BILEVEL, photometric="minisblack")
    image, _ = io.read_image(path)
    np.testing.assert_array_equal(image, BILEVEL.astype(np.uint8) * 255)
    np.testing.assert_array_equal(intensity.normalise(image), BILEVEL.astype(np.float32))
    np.testing.assert_array_equal(io.read_mask(path), BILEVEL)


# --------------------------------------------------------------------------- bool masks saved by tifffile

LESION_2D = np.zeros((32, 40), bool)
LESION_2D[5:10, 5:20] = True


@pytest.mark.parametrize("mask", [LESION_2D, np.stack([LESION_2D] * 3)], ids=["2d", "3d"])
def test_a_bool_mask_saved_with_tifffile_reads_as_saved(mask, tmp_path):
    """tifffile.imwrite(path, bool_mask) stores 1-bit MinIsWhite (True as 1) and reads it
    back so; bcseg refused it with advice about Fiji's inverting LUT."""
    tifffile.imwrite(tmp_path / "m.tif", mask)
    assert tifffile.TiffFile(tmp_path / "m.tif").pages.first.photometric == 0  # MINISWHITE
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.tif", expected_shape=mask.shape), mask)


def test_a_1_bit_miniswhite_tiff_from_elsewhere_is_refused_with_fitting_advice(tmp_path):
    """Without tifffile's shape description nothing says which way its values are meant;
    the advice is about bits, not about an ImageJ LUT."""
    tifffile.imwrite(tmp_path / "m.tif", LESION_2D, metadata=None)
    message = refused(lambda: io.read_mask(tmp_path / "m.tif"), tmp_path / "m.tif",
                      "stores a 1-bit image as MinIsWhite", "save a mask as 8-bit grey, 0 and 255")
    assert "LUT" not in message


def _imagej_pages(path, pages) -> None:
    """An ImageJ stack whose pages are written one by one (as a tool that replaced a slice
    leaves it), under one ImageJ description naming them all."""
    description = f"ImageJ=1.54f\nimages={len(pages)}\nslices={len(pages)}\nloop=false\n"
    with tifffile.TiffWriter(path) as tif:
        for number, page in enumerate(pages):
            tif.write(page, description=description if number == 0 else None, metadata=None,
                      contiguous=False)


def test_an_imagej_stack_with_a_page_of_another_pixel_type_is_refused(tmp_path, capsys):
    """tifffile reads an ImageJ stack's pages with the first page's pixel type: a 16-bit
    second slice in an 8-bit stack was decoded as 8-bit, its first half of bytes taken
    for the slice, and check passed the case."""
    stack = np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    lesion = np.zeros(stack.shape, bool)
    lesion[1:3, 4:10, 4:10] = True
    image = tmp_path / "d" / "images" / "S01.tif"
    image.parent.mkdir(parents=True)
    _imagej_pages(image, [stack[0], stack[1].astype(np.uint16) * 257, stack[2], stack[3]])
    io.write_mask(tmp_path / "d" / "masks" / "observer1" / "S01.tif", lesion)
    assert main(["check", str(tmp_path / "d")]) == 3
    out = capsys.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "S01.tif" in line]
    assert len(said) == 1, out
    assert str(image) in said[0] and "page 2's pixel type (uint16) differs from page 1's (uint8)" in said[0]
    _imagej_pages(image, list(stack))  # pages alike, written one by one: read as they are
    np.testing.assert_array_equal(io.read_image(image)[0], stack)


@pytest.mark.parametrize("odd", [1, 3])
def test_an_imagej_stack_with_a_page_of_another_size_says_so(odd, tmp_path):
    """A slice of another size in an ImageJ stack: tifffile refuses to build the series
    ("incompatible keyframe"), and every reader passed its words on, which named neither
    the page's fault nor a cure."""
    stack = np.random.default_rng(1).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    pages = list(stack)
    pages[odd] = np.zeros((20, 20), np.uint8)
    image = tmp_path / "S01.tif"
    _imagej_pages(image, pages)
    for call in (io.read_image, io.stored_geometry, io.read_spacing, io.channel_header):
        refused(lambda: call(image), image, "holds a page of another size or kind than the "
                "stack's first", "save the stack with all its slices alike")


@pytest.mark.parametrize("pages", [1, 3])
def test_a_tiff_whose_pages_loop_back_is_named_corrupt_not_cut_short(tmp_path, pages):
    """The last page's link to a next page pointed back at the first: tifffile stops at a
    page it has seen, and bcseg said the file 'ends before its last page', so the user
    looked for a short copy of a file that was whole."""
    import struct

    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as writer:
        for _ in range(pages):  # one IFD per slice
            writer.write(np.zeros((16, 16), np.uint8), contiguous=False)
    with tifffile.TiffFile(path) as tif:
        offsets, fmt = [page.offset for page in tif.pages], tif.tiff
    assert len(offsets) == pages
    data = bytearray(path.read_bytes())
    tags = struct.unpack_from(fmt.tagnoformat, data, offsets[-1])[0]
    struct.pack_into(fmt.offsetformat, data, offsets[-1] + fmt.tagnosize + tags * fmt.tagsize,
                     offsets[0])
    path.write_bytes(bytes(data))
    message = refused(lambda: io.read_image(path), path, "is corrupt",
                      f"its chain of pages loops back to an earlier page (offset {offsets[0]}) "
                      f"after {pages} page(s)")
    assert "ends" not in message


def test_a_scanimage_file_whose_last_frame_tifffile_leaves_out_is_not_called_corrupt(tmp_path):
    """tifffile counts an old ScanImage file's frames from the file size and leaves out the
    last when the file ends right after its data: the whole file was refused as corrupt or
    truncated. It is still refused (a slice would be lost), saying what happened."""
    path = tmp_path / "si.tif"
    with tifffile.TiffWriter(path) as writer:
        for i in range(6):
            writer.write(np.zeros((32, 32), np.uint8), metadata=None,
                         description=f"state.configPath = '' frame {i}")
    with tifffile.TiffFile(path) as tif:
        listed = len(tif.pages)
    if listed == 6:
        pytest.skip("this tifffile reads every frame of the file")
    message = refused(lambda: io.read_image(path), path,
                      f"holds 6 pages, of which only {listed} could be read as its image")
    assert "corrupt" not in message and "truncated" not in message
