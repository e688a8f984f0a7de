"""Readers and writers on real files written here, checked against hand-computed values."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from bcseg.data import io
from bcseg.errors import DataError, UsageError

# A 5-slice stack of 20x30 with every pixel distinct within a slice (mod 251).
STACK = (np.arange(5 * 20 * 30) % 251).astype(np.uint8).reshape(5, 20, 30)
SPACING = (1.5, 0.2, 0.25)  # z, y, x in mm


def smooth_image(shape=(40, 60)) -> np.ndarray:
    """A smooth uint8 ramp (JPEG keeps it close)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    return (60 + 2 * y + x).astype(np.uint8)


# --------------------------------------------------------------------------- 2D readers

def test_png_grey_reads_exactly(tmp_path):
    path = tmp_path / "grey.png"
    iio.imwrite(path, STACK[0])
    array, spacing = io.read_image(path)
    assert array.dtype == np.uint8 and array.shape == (20, 30)
    assert np.array_equal(array, STACK[0])
    assert spacing is None and io.read_spacing(path) is None


def test_png_rgb_with_identical_channels_gives_the_channel(tmp_path):
    path = tmp_path / "rgb_grey.png"
    iio.imwrite(path, np.stack([STACK[1]] * 3, axis=-1))
    array, _ = io.read_image(path)
    assert array.dtype == np.uint8
    assert np.array_equal(array, STACK[1])  # exactly, no rounding through weights


def test_png_rgb_colour_becomes_rec709_luminance(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                    [[255, 255, 255], [100, 150, 200], [0, 0, 0]]], np.uint8)
    path = tmp_path / "colour.png"
    iio.imwrite(path, rgb)
    array, _ = io.read_image(path)
    # 0.2125 R + 0.7154 G + 0.0721 B, rounded: 54.19, 182.43, 18.39 / 255, 142.98, 0
    assert array.dtype == np.uint8
    assert array.tolist() == [[54, 182, 18], [255, 143, 0]]


def test_png_rgba_and_grey_alpha_drop_the_alpha(tmp_path):
    alpha = np.full((20, 30), 128, np.uint8)
    rgba = tmp_path / "rgba.png"
    iio.imwrite(rgba, np.stack([STACK[2]] * 3 + [alpha], axis=-1))
    assert np.array_equal(io.read_image(rgba)[0], STACK[2])
    # Grey + alpha (as GIMP exports) is one 2D image, not a stack of 20 slices.
    grey_alpha = tmp_path / "la.png"
    iio.imwrite(grey_alpha, np.stack([STACK[2], alpha], axis=-1))
    array, _ = io.read_image(grey_alpha)
    assert array.shape == (20, 30)
    assert np.array_equal(array, STACK[2])


def test_png_16_bit_keeps_its_values(tmp_path):
    image = (np.arange(20 * 30, dtype=np.uint16) * 109).reshape(20, 30)  # up to 65291
    path = tmp_path / "deep.png"
    iio.imwrite(path, image)
    array, _ = io.read_image(path)
    assert array.dtype == np.uint16
    assert np.array_equal(array, image)
    assert array.max() == 599 * 109


def test_jpeg_reads_close_to_what_was_written(tmp_path):
    image = smooth_image()
    path = tmp_path / "frame.jpg"
    iio.imwrite(path, image, quality=95)
    array, spacing = io.read_image(path)
    assert array.shape == (40, 60) and array.dtype == np.uint8 and spacing is None
    assert np.abs(array.astype(int) - image).max() <= 4  # lossy, but only just


def test_tiff_2d_and_3d_stack(tmp_path):
    flat = tmp_path / "flat.tif"
    image16 = STACK[0].astype(np.uint16) * 257
    tifffile.imwrite(flat, image16)
    array, spacing = io.read_image(flat)
    assert array.dtype == np.uint16 and np.array_equal(array, image16)
    assert spacing is None  # tifffile writes resolution 1/1 with no unit

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, STACK, photometric="minisblack")
    array, spacing = io.read_image(stack)
    assert array.shape == (5, 20, 30) and np.array_equal(array, STACK)
    assert spacing is None


def test_tiff_rgb_2d_becomes_grey(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.stack([STACK[3]] * 3, axis=-1), photometric="rgb")
    array, _ = io.read_image(path)
    assert array.shape == (20, 30) and np.array_equal(array, STACK[3])


@pytest.mark.parametrize("shape, axes", [((5, 1, 20, 30), "ZCYX"), ((1, 5, 1, 20, 30), "TZCYX")])
def test_imagej_hyperstack_with_singleton_axes_is_squeezed(tmp_path, shape, axes):
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, STACK.reshape(shape), imagej=True, metadata={"axes": axes})
    array, _ = io.read_image(path)
    assert array.shape == (5, 20, 30)
    assert np.array_equal(array, STACK)


# --------------------------------------------------------------------------- spacing

def test_ome_tiff_spacing_in_micrometres_becomes_mm(tmp_path):
    path = tmp_path / "stack.ome.tif"
    # OME's default unit is µm: 1500 µm slices, 200 µm rows, 250 µm columns.
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 1500.0, "PhysicalSizeY": 200.0, "PhysicalSizeX": 250.0})
    assert io.read_spacing(path) == pytest.approx(SPACING)
    array, spacing = io.read_image(path)
    assert array.shape == (5, 20, 30) and spacing == pytest.approx(SPACING)


def test_ome_tiff_spacing_with_explicit_mm_unit(tmp_path):
    path = tmp_path / "mm.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "mm",
        "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "mm",
        "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "mm"})
    assert io.read_spacing(path) == pytest.approx(SPACING)


def test_ome_tiff_spacing_in_single_quotes_is_read(tmp_path):
    """XML lets attributes be quoted with ' and spaced around '=': such an OME header
    (another writer's) read as no spacing at all, its mm units unseen."""
    import re

    path = tmp_path / "quoted.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "mm",
        "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "mm",
        "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "mm"})
    with tifffile.TiffFile(path, mode="r+b") as tif:
        xml = tif.pages.first.description
        quoted = re.sub(r'(PhysicalSize[XYZ](?:Unit)?)="([^"]*)"', r"\1 = '\2'", xml)
        assert quoted != xml
        tif.pages.first.tags["ImageDescription"].overwrite(quoted)
    assert io.read_spacing(path) == pytest.approx(SPACING)


@pytest.mark.parametrize("unit, per_unit, z", [
    ("micron", 1e-3, 1500.0),       # Fiji's "micron"
    ("\\u00B5m", 1e-3, 1500.0),     # Fiji's escaped µm
    ("mm", 1.0, 1.5),
    # Other spellings of the same lengths were read as no spacing at all:
    ("micrometre", 1e-3, 1500.0),   # British
    ("\\u03BCm", 1e-3, 1500.0),     # the Greek letter mu, not the micro sign
    ("Microns", 1e-3, 1500.0),
    ("millimetres", 1.0, 1.5),
    ("centimetre", 10.0, 0.15),
])
def test_imagej_spacing_and_unit(tmp_path, unit, per_unit, z):
    path = tmp_path / f"ij_{len(unit)}.tif"
    # ImageJ resolution is pixels per unit: x 0.25 mm, y 0.2 mm.
    resolution = (per_unit / 0.25, per_unit / 0.2)
    tifffile.imwrite(path, STACK, imagej=True, resolution=resolution,
                     metadata={"axes": "ZYX", "spacing": z, "unit": unit})
    assert io.read_spacing(path) == pytest.approx(SPACING)
    assert io.read_image(path)[1] == pytest.approx(SPACING)


@pytest.mark.parametrize("extra, resolution, z", [
    ({"zunit": "mm"}, (1e-3 / 0.25, 1e-3 / 0.2), 1.5),     # micron pixels, mm slices
    ({"yunit": "mm"}, (1e-3 / 0.25, 1.0 / 0.2), 1500.0),    # y in mm, x in micron
    ({"yunit": "mm", "zunit": "cm"}, (1e-3 / 0.25, 1.0 / 0.2), 0.15),
])
def test_imagej_units_of_their_own_for_y_and_z_are_read(tmp_path, extra, resolution, z):
    """ImageJ writes yunit= and zunit= where y or z has another unit than x (unit=).
    Read in x's unit, 1.5 mm slices beside micron pixels were 1.5 µm: inside the plausible
    range, so every volume and margin was 1000 times too small, without a word."""
    path = tmp_path / "units.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=resolution,
                     metadata={"axes": "ZYX", "spacing": z, "unit": "micron", **extra})
    for look in (io.read_spacing, lambda p: io.read_image(p)[1], lambda p: io.stored_geometry(p)[1]):
        assert look(path) == pytest.approx(SPACING)


@pytest.mark.parametrize("unit", ["pixel", "pixels", ""])
def test_imagej_in_pixels_has_no_spacing(tmp_path, unit):
    path = tmp_path / "pixels.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(4, 5),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": unit})
    assert io.read_spacing(path) is None


@pytest.mark.parametrize("writer", ["imagej", "ome"])
def test_a_length_unit_bcseg_does_not_know_is_refused_not_dropped(tmp_path, writer):
    """A spacing in a unit missing from bcseg's table read as no spacing: a mask stating
    another voxel size passed, and check said 'unknown'."""
    path = tmp_path / "mil.tif"
    if writer == "imagej":
        tifffile.imwrite(path, STACK, imagej=True, resolution=(4, 5),
                         metadata={"axes": "ZYX", "spacing": 2.0, "unit": "mil"})
    else:
        tifffile.imwrite(path, STACK, ome=True, metadata={
            "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "mil",
            "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "mil",
            "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "mil"})
    for look in (io.read_spacing, io.read_image, io.stored_geometry):
        with pytest.raises(DataError, match=r"^.*mil\.tif: states its spacing in the unit 'mil', "
                           "which bcseg does not know"):
            look(path)


def test_imagej_without_unit_has_no_spacing(tmp_path):
    path = tmp_path / "pixels.tif"
    tifffile.imwrite(path, STACK, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    assert io.read_spacing(path) is None


def test_resolution_tags_in_centimetres(tmp_path):
    path = tmp_path / "cm.tif"
    # 40 px/cm across (0.25 mm), 50 px/cm down (0.2 mm).
    tifffile.imwrite(path, STACK[0], resolution=(40, 50), resolutionunit="CENTIMETER")
    assert io.read_spacing(path) == pytest.approx((0.2, 0.25))


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_default_editor_dpi_is_ignored(tmp_path, dpi):
    path = tmp_path / f"dpi{dpi}.tif"
    tifffile.imwrite(path, STACK[0], resolution=(dpi, dpi), resolutionunit="INCH")
    assert io.read_spacing(path) is None


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_default_editor_dpi_stated_in_centimetres_is_ignored(tmp_path, dpi):
    """An editor working in metric units (GIMP in mm) saves its 72 ppi default as 28.3465
    pixels per cm, rounded to a rational: read as 0.3528 mm pixels, a mask saved so was
    refused beside its image's real spacing."""
    path = tmp_path / f"dpcm{dpi}.tif"
    per_cm = (round(dpi / 2.54 * 10000), 10000)
    tifffile.imwrite(path, STACK[0], resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    assert io.read_spacing(path) is None
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, STACK[0], imagej=True, resolution=(4, 5), metadata={"unit": "mm"})
    mask = (STACK[0] > 100).astype(np.uint8) * 255
    tifffile.imwrite(path, mask, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    np.testing.assert_array_equal(
        io.read_mask(path, STACK[0].shape, spacings=[io.read_spacing(image)]), mask > 0)


def test_real_inch_resolution_is_converted(tmp_path):
    path = tmp_path / "dpi254.tif"
    # 254 px/inch across = 0.1 mm; 127 px/inch down = 0.2 mm.
    tifffile.imwrite(path, STACK[0], resolution=(254, 127), resolutionunit="INCH")
    assert io.read_spacing(path) == pytest.approx((0.2, 0.1))


def test_png_and_jpeg_have_no_spacing(tmp_path):
    path = tmp_path / "a.png"
    iio.imwrite(path, STACK[0])
    assert io.read_spacing(path) is None


# --------------------------------------------------------------------------- NIfTI

def test_nifti_round_trip_3d_and_2d(tmp_path):
    path = io.write_image(tmp_path / "vol.nii.gz", STACK, SPACING)
    array, spacing = io.read_image(path)
    assert array.dtype == np.uint8 and np.array_equal(array, STACK)
    assert spacing == SPACING  # rounded past NIfTI's float32 noise
    assert io.read_spacing(path) == SPACING

    flat = io.write_image(tmp_path / "flat.nii", STACK[0], (0.2, 0.25))
    array, spacing = io.read_image(flat)
    assert array.shape == (20, 30) and np.array_equal(array, STACK[0])
    assert spacing == (0.2, 0.25)


def test_nifti_mask_is_0_and_1(tmp_path):
    mask = STACK > 120
    path = io.write_mask(tmp_path / "mask.nii.gz", mask, SPACING)
    array, spacing = io.read_image(path)
    assert set(np.unique(array)) == {0, 1}
    assert np.array_equal(io.read_mask(path), mask)
    assert spacing == SPACING


# --------------------------------------------------------------------------- memory-mapping

def test_open_volume_memory_maps_an_uncompressed_tiff(tmp_path):
    path = io.write_image(tmp_path / "stack.tif", STACK, SPACING)
    array, spacing = io.open_volume(path)
    assert isinstance(array, np.memmap)
    assert array.shape == (5, 20, 30) and np.array_equal(array, STACK)
    assert spacing == pytest.approx(SPACING)
    del array
    plain, _ = io.read_image(path)
    assert not isinstance(plain, np.memmap)


def test_open_volume_reads_a_compressed_tiff(tmp_path):
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, STACK, photometric="minisblack", compression="zlib")
    array, _ = io.open_volume(path)
    assert not isinstance(array, np.memmap)
    assert np.array_equal(array, STACK)


# --------------------------------------------------------------------------- writers

def test_write_mask_is_uint8_0_255_with_imagej_spacing(tmp_path):
    mask = STACK > 120
    path = io.write_mask(tmp_path / "out" / "mask.tif", mask, SPACING)
    assert path.is_file()
    with tifffile.TiffFile(path) as tif:  # as Fiji or napari see it
        data = tif.asarray()
        ij = tif.imagej_metadata
        xres = tif.pages.first.tags["XResolution"].value
        yres = tif.pages.first.tags["YResolution"].value
    assert data.dtype == np.uint8 and data.shape == (5, 20, 30)
    assert set(np.unique(data)) == {0, 255}
    assert np.array_equal(data == 255, mask)
    assert ij["spacing"] == pytest.approx(1.5) and ij["unit"] == "mm"
    assert xres[0] / xres[1] == pytest.approx(4.0)  # 1 / 0.25 mm
    assert yres[0] / yres[1] == pytest.approx(5.0)  # 1 / 0.2 mm
    # And back through bcseg.
    assert io.read_spacing(path) == pytest.approx(SPACING)
    assert np.array_equal(io.read_mask(path, expected_shape=(5, 20, 30)), mask)
    assert not list(path.parent.glob(".*partial*"))


def test_write_mask_2d_has_no_z_spacing(tmp_path):
    path = io.write_mask(tmp_path / "m2.tif", STACK[0] > 100, (0.2, 0.25))
    with tifffile.TiffFile(path) as tif:
        assert "spacing" not in tif.imagej_metadata and tif.imagej_metadata["unit"] == "mm"
    assert io.read_spacing(path) == pytest.approx((0.2, 0.25))


def test_write_probability_is_float32(tmp_path):
    prob = np.linspace(0, 1, 5 * 20 * 30).reshape(5, 20, 30)
    path = io.write_probability(tmp_path / "prob.tif", prob, SPACING)
    data = tifffile.imread(path)
    assert data.dtype == np.float32
    assert np.array_equal(data, prob.astype(np.float32))
    array, spacing = io.read_image(path)
    assert array.dtype == np.float32 and spacing == pytest.approx(SPACING)


def test_writers_keep_an_existing_file_without_force(tmp_path):
    path = io.write_mask(tmp_path / "mask.tif", STACK[0] > 100)
    before = path.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        io.write_mask(path, STACK[0] > 10, force=False)
    assert path.read_bytes() == before
    with pytest.raises(ValueError):
        io.write_mask(tmp_path / "mask.png", STACK[0] > 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]  # no partial file left


def test_file_stem_and_image_files(tmp_path):
    assert io.file_stem("a/vol.nii.gz") == "vol"
    assert io.file_stem("benign (1)_mask.png") == "benign (1)_mask"
    assert io.file_stem("x.TIF") == "x"
    for name in ("b.png", "a.tif", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in io.image_files(tmp_path)] == ["a.tif", "b.png"]
    with pytest.raises(DataError, match="not a folder"):
        io.image_files(tmp_path / "nope")


# --------------------------------------------------------------------------- bad input

def assert_names(error: pytest.ExceptionInfo, path) -> None:
    assert error.value.path == str(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    path = tmp_path / "gone.tif"
    with pytest.raises(DataError, match="not found") as error:
        io.read_image(path)
    assert_names(error, path)
    with pytest.raises(DataError, match="not found"):
        io.read_spacing(path)


@pytest.mark.parametrize("name", ["empty.tif", "empty.png", "empty.nii.gz"])
def test_zero_byte_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes") as error:
        io.read_image(path)
    assert_names(error, path)


@pytest.mark.parametrize("writer", ["bcseg", "tifffile", "zlib"])
@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_tiff(tmp_path, writer, mmap):
    good = tmp_path / "good.tif"
    if writer == "bcseg":  # ImageJ stack, as Fiji writes
        io.write_image(good, STACK, SPACING)
    else:
        tifffile.imwrite(good, STACK, photometric="minisblack",
                         compression="zlib" if writer == "zlib" else None)
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    # A stack cut in half must not read as its first slice.
    with pytest.raises(DataError, match="truncated|cannot read") as error:
        io.read_image(cut, mmap=mmap)
    assert_names(error, cut)
    with pytest.raises(DataError) as error:
        io.read_spacing(cut)
    assert_names(error, cut)


def test_garbage_bytes_named_png(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match="is not a PNG image") as error:
        io.read_image(path)
    assert_names(error, path)


def test_garbage_bytes_named_tif(tmp_path):
    path = tmp_path / "scan.tif"
    path.write_bytes(b"definitely not a tiff" * 20)
    with pytest.raises(DataError, match="is not a TIFF image: its content is text") as error:
        io.read_image(path)
    assert_names(error, path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "scan.bmp"
    path.write_bytes(b"BM" + bytes(100))
    with pytest.raises(DataError, match="unsupported") as error:
        io.read_image(path)
    assert_names(error, path)


def test_4d_hyperstack_is_refused(tmp_path):
    path = tmp_path / "two_channels.tif"
    tifffile.imwrite(path, np.stack([STACK, STACK], axis=1), imagej=True, metadata={"axes": "ZCYX"})
    # Channels are not slices: a plain read refuses them and says how to read them.
    with pytest.raises(DataError, match="has 2 channels.*multi-channel case") as error:
        io.read_image(path)
    assert_names(error, path)


def test_tiff_with_series_of_different_shapes_is_refused(tmp_path):
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, STACK[0])
    tifffile.imwrite(path, STACK[1, :10, :10], append=True)
    with pytest.raises(DataError, match="2 image series") as error:
        io.read_image(path)
    assert_names(error, path)


def test_tiff_with_same_size_2d_series_reads_as_a_stack(tmp_path):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, STACK[0])
    tifffile.imwrite(path, STACK[1], append=True)
    array, _ = io.read_image(path)
    assert array.shape == (2, 20, 30) and np.array_equal(array, STACK[:2])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_or_inf(tmp_path, bad):
    image = STACK.astype(np.float32)
    image[2, 3, 4] = bad
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, image)
    with pytest.raises(DataError, match="NaN or infinite") as error:
        io.read_image(path)
    assert_names(error, path)


@pytest.mark.parametrize("name", ["dot.png", "dot.tif"])
def test_one_by_one_image(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".png"):
        iio.imwrite(path, np.zeros((1, 1), np.uint8))
    else:
        tifffile.imwrite(path, np.zeros((1, 1), np.uint8))
    with pytest.raises(DataError, match="too small") as error:
        io.read_image(path)
    assert_names(error, path)


def test_mask_accepts_any_single_positive_label(tmp_path):
    expected = STACK[0] > 100
    for label in (1, 255, 7):
        path = tmp_path / f"label{label}.png"
        iio.imwrite(path, (expected * label).astype(np.uint8))
        mask = io.read_mask(path, expected_shape=(20, 30))
        assert mask.dtype == bool and np.array_equal(mask, expected)


def test_mask_with_two_labels_is_refused(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[2:5, 2:5] = 1
    labels[10:15, 10:15] = 2
    path = tmp_path / "labels.png"
    iio.imwrite(path, labels)
    with pytest.raises(DataError, match=r"not binary \(values 0, 1, 2\)") as error:
        io.read_mask(path)
    assert_names(error, path)


def test_mask_of_the_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "small.png"
    iio.imwrite(path, np.zeros((10, 30), np.uint8))
    with pytest.raises(DataError, match=r"\(10, 30\) differs from its image shape \(20, 30\)") as error:
        io.read_mask(path, expected_shape=(20, 30))
    assert_names(error, path)
