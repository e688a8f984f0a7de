"""NIfTI files SimpleITK reads without complaint but wrongly: cut short (read
zero-filled) or stating two voxel sizes. Each is written here, by SimpleITK or byte by
byte, and must be refused in one line naming the file."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from bcseg.cli import main
from bcseg.data import io, nifti
from bcseg.errors import DataError

STACK = (np.arange(6 * 32 * 40) % 200 + 20).astype(np.uint8).reshape(6, 32, 40)  # no zeros
SPACING = (1.0, 0.2, 0.2)


def write_nifti(path, array=STACK):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPACING)))
    sitk.WriteImage(image, str(path))
    return path


def cut(path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def refused(path, *words) -> str:
    with pytest.raises(DataError) as error:
        io.read_image(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message
    return message


def nifti_bytes(array: np.ndarray, version: int, order: str) -> bytes:
    """A single-file NIfTI-1 or NIfTI-2 of int16 ``array`` (z, y, x) in byte ``order``,
    written field by field (SimpleITK writes only little-endian NIfTI-1)."""
    z, y, x = array.shape
    dims, pixdim = (3, x, y, z, 1, 1, 1, 1), (1.0, SPACING[2], SPACING[1], SPACING[0], 0, 0, 0, 0)
    if version == 1:
        head = bytearray(352)
        struct.pack_into(order + "i", head, 0, 348)
        struct.pack_into(order + "8h", head, 40, *dims)
        struct.pack_into(order + "2h", head, 70, 4, 16)  # int16
        struct.pack_into(order + "8f", head, 76, *pixdim)
        struct.pack_into(order + "2f", head, 108, 352.0, 1.0)  # vox_offset, scl_slope
        head[344:348] = b"n+1\x00"
    else:
        head = bytearray(544)
        struct.pack_into(order + "i", head, 0, 540)
        head[4:12] = b"n+2\x00\r\n\x1a\n"
        struct.pack_into(order + "2h", head, 12, 4, 16)
        struct.pack_into(order + "8q", head, 16, *dims)
        struct.pack_into(order + "8d", head, 104, *pixdim)
        struct.pack_into(order + "qd", head, 168, 544, 1.0)
    return bytes(head) + array.astype(order + "i2").tobytes()


# --------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("name, keep", [("cut.nii", 0.5), ("cut.nii.gz", 0.75),
                                        ("end.nii", 0.999), ("end.nii.gz", 0.99)])
def test_a_cut_nifti_is_refused_not_zero_filled(name, keep, tmp_path):
    """SimpleITK read the missing voxels as zeros: the lower half of a stack came out
    black and was segmented (a cut mask read as a smaller tumour)."""
    path = write_nifti(tmp_path / name)
    assert np.array_equal(io.read_image(path)[0], STACK)  # whole: read whole
    cut(path, keep)
    refused(path, "is truncated or corrupt: its header declares (6, 32, 40) voxels of 8 bits",
            "copy it again from the source")



@pytest.mark.parametrize("size", [0, 123, 349])
def test_a_nifti_header_of_a_wrong_stated_size_is_refused_not_read_unchecked(size, tmp_path):
    """bcseg's header checks knew a NIfTI-1 header only by its sizeof_hdr of 348: one
    stating another size passed unchecked, and ITK, which goes by the magic, read it:
    cut in half, its lower half came out black; its pixdim of 0 came out as 1 mm."""
    for name in ("cut.nii", "cut.nii.gz"):
        path = write_nifti(tmp_path / name)
        raw = bytearray(gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes())
        struct.pack_into("<i", raw, 0, size)
        raw = raw[:len(raw) // 2]
        path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
        message = refused(path, "has a damaged NIfTI header", f"its size field says {size} bytes")
        assert "re-save it" in message
        with pytest.raises(DataError, match="damaged NIfTI header"):
            io.stored_geometry(path)

def test_a_header_declaring_more_slices_than_the_file_holds_is_refused(tmp_path):
    path = write_nifti(tmp_path / "more.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 46, 600)  # dim[3]: 600 slices over 6
    path.write_bytes(bytes(data))
    refused(path, "declares (600, 32, 40) voxels", f"it holds {len(data)} bytes")
    with pytest.raises(DataError, match="declares"):  # the header-only look agrees
        io.stored_geometry(path)


def test_a_gzip_stream_cut_after_the_voxels_is_refused(tmp_path):
    """The voxels are all there but the gzip stream ends before its end marker and
    checksum: a copy cut short, not a file to trust."""
    raw = write_nifti(tmp_path / "a.nii").read_bytes()
    packed = gzip.compress(raw)
    (tmp_path / "a.nii.gz").write_bytes(packed[:-4])  # the length field of the trailer
    refused(tmp_path / "a.nii.gz", "its compressed data")


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_cut_nifti_1_is_refused_in_either_byte_order(order, tmp_path):
    array = (STACK.astype(np.int16) - 100) * 37
    path = tmp_path / "v1.nii"
    path.write_bytes(nifti_bytes(array, 1, order))
    image, spacing = io.read_image(path)
    assert np.array_equal(image, array) and spacing == SPACING
    cut(path, 0.6)
    refused(path, "declares (6, 32, 40) voxels of 16 bits (15712 bytes with the header)")


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_cut_nifti_2_header_is_read_right(order, tmp_path):
    """SimpleITK reads no NIfTI-2 (it refuses the file whole or cut); the check reads
    its 540-byte header with 64-bit fields all the same."""
    path = tmp_path / "v2.nii"
    path.write_bytes(nifti_bytes(STACK, 2, order))
    header = nifti.read_header(path)
    assert header.dims == (40, 32, 6) and header.bits == 16 and header.data_offset == 544
    nifti.check(path)  # whole: passes
    cut(path, 0.6)
    with pytest.raises(DataError, match=r"declares \(6, 32, 40\) voxels of 16 bits \(15904 bytes"):
        nifti.check(path)


def test_a_cut_nifti_mask_is_named_by_check(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks" / "observer1").mkdir(parents=True, exist_ok=True)
        write_nifti(tmp_path / "images" / f"{name}.nii.gz")
        write_nifti(tmp_path / "masks" / "observer1" / f"{name}.nii.gz", (STACK > 120).astype(np.uint8))
    cut(tmp_path / "masks" / "observer1" / "b.nii.gz", 0.7)
    assert main(["check", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert f"{tmp_path / 'masks' / 'observer1' / 'b.nii.gz'}: is truncated or corrupt" in out


# --------------------------------------------------------------------------- two voxel sizes, ITK's warnings

def with_header(path, fields: dict):
    """``path`` rewritten with NIfTI-1 header ``fields`` ({offset: (format, values)})."""
    data = bytearray(path.read_bytes())
    for offset, (form, values) in fields.items():
        struct.pack_into(form, data, offset, *values)
    path.write_bytes(bytes(data))
    return path


def test_an_sform_voxel_size_other_than_pixdim_is_refused_naming_both(tmp_path):
    """The sform (which places the voxels when sform_code > 0) said 2 x 0.5 x 0.5 mm,
    pixdim 1 x 0.2 x 0.2 mm: bcseg measured margins with pixdim, ITK printed 33 lines."""
    path = with_header(write_nifti(tmp_path / "two.nii"), {
        252: ("<hh", (0, 2)),  # qform_code 0, sform_code 2
        280: ("<12f", (-0.5, 0, 0, 0, 0, -0.5, 0, 0, 0, 0, 2.0, 0))})
    refused(path, "its sform places voxels of 2x0.5x0.5 mm, its pixdim says 1x0.2x0.2 mm",
            "re-save it with one voxel size")
    with pytest.raises(DataError, match="states two voxel sizes"):
        io.stored_geometry(path)


def test_a_sheared_sform_is_one_plain_line_from_every_reader(tmp_path):
    """An sform whose axes are not at right angles (a shear, from a resampling tool)
    with the voxel sizes of pixdim: ITK cannot read it. read_image said so in one line;
    the header read predict and train make first printed ITK's whole exception, its
    build path and a newline (shown as '\\n') included. ITK's words ("only supports
    orthonormal direction cosines") gave no cure: the line now says what to do."""
    path = with_header(write_nifti(tmp_path / "shear.nii"), {
        252: ("<hh", (0, 1)),  # qform_code 0, sform_code 1
        280: ("<12f", (0.2, 0.12, 0, 0, 0, 0.16, 0, 0, 0, 0, 1.0, 0))})  # columns 0.2, 0.2, 1
    for look in (io.read_image, io.stored_geometry, io.nifti_frame):
        with pytest.raises(DataError, match="sheared or skewed orientation") as error:
            look(path)
        message = str(error.value)
        assert message.startswith(f"{path}: has a sheared") and "\\n" not in message, message
        assert "resample it onto an orthogonal grid" in message, message
        assert ".cxx" not in message and "SimpleITK" not in message, message


def test_an_sform_agreeing_with_pixdim_in_another_orientation_is_read(tmp_path):
    path = with_header(write_nifti(tmp_path / "lps.nii"), {  # x flipped, y and z as written
        280: ("<12f", (0.2, 0, 0, 0, 0, -0.2, 0, 0, 0, 0, 1.0, 0))})
    image, spacing = io.read_image(path)
    assert np.array_equal(image, STACK) and spacing == SPACING


def test_a_single_slice_without_a_thickness_is_read(tmp_path):
    """One slice whose pixdim leaves the thickness 0 while the sform holds a unit column
    (as converters write one 2D frame) was refused for "two voxel sizes": a single
    slice has no spacing along z to disagree about."""
    path = tmp_path / "one.nii"
    sitk.WriteImage(sitk.GetImageFromArray(STACK[:1]), str(path))
    path = with_header(path, {88: ("<f", (0.0,)),  # pixdim[3], the z size: 0
                              252: ("<hh", (0, 1)),  # sform_code 1
                              280: ("<12f", (1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0))})
    image, _ = io.read_image(path)
    assert np.array_equal(image, STACK[0])


@pytest.mark.parametrize("pixdim, shown", [((0.0, 0.2, 1.0), "1x0.2x0"),
                                           ((0.2, 0.2, 0.0), "0x0.2x0.2"),
                                           ((float("nan"), 0.2, 1.0), "1x0.2xnan"),
                                           ((float("inf"), 0.2, 1.0), "1x0.2xinf")])
def test_a_voxel_size_of_0_nan_or_infinity_is_refused_not_read_as_1_mm(pixdim, shown, tmp_path):
    """ITK reads a pixdim of 0, NaN or infinity as 1 mm: a file that says no usable
    spacing was measured, without a word, as if its voxels were 1 mm along that axis."""
    path = with_header(write_nifti(tmp_path / "zero.nii"), {80: ("<3f", pixdim)})
    for look in (io.read_image, io.stored_geometry, io.read_spacing):
        with pytest.raises(DataError, match=rf"zero\.nii: has no usable voxel size in its header "
                                            rf"\(pixdim {shown} mm\)"):
            look(path)


def test_itk_warnings_do_not_reach_stderr(tmp_path, capfd):
    """ITK printed its 'WARNING: In .../itkNiftiImageIO.cxx' lines on stderr (three for
    a negative pixdim, one per read for two voxel sizes) before bcseg's one line."""
    negative = with_header(write_nifti(tmp_path / "neg.nii"), {76: ("<4f", (1.0, -0.2, 0.2, 1.0))})
    for look in (io.read_image, io.stored_geometry):  # the header said -0.2, the voxels 0.2
        with pytest.raises(DataError, match=r"negative voxel size in its header \(pixdim 1x0.2x-0.2"):
            look(negative)
    two = with_header(write_nifti(tmp_path / "two.nii"), {280: ("<12f", (-0.4, 0, 0, 0, 0, -0.2, 0, 0,
                                                                          0, 0, 1.0, 0))})
    image = write_nifti(tmp_path / "image.nii")
    with pytest.raises(DataError, match="two voxel sizes"):
        io.read_mask(two, image=image)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("field, value", [(70, 1234), (40, 9)], ids=["datatype", "dim[0]"])
def test_niftilib_errors_do_not_reach_stderr(field, value, tmp_path, capfd):
    """A header with an unknown datatype or a dim[0] over 7: the NIfTI C library printed
    '** ERROR: nifti_convert_nhdr2nim: bad datatype' on stderr itself, before bcseg's line
    refusing the file, so the refusal was two lines."""
    bad = with_header(write_nifti(tmp_path / "bad.nii"), {field: ("<h", (value,))})
    for look in (io.read_image, io.stored_geometry, io.nifti_frame):
        with pytest.raises(DataError, match=r"bad\.nii: cannot read"):
            look(bad)
    capfd.readouterr()
    out = tmp_path / "out"
    code = main(["predict", str(bad), "--out", str(out)])
    lines = capfd.readouterr().err.splitlines()
    assert code == 3 and len(lines) == 1 and lines[0].startswith(f"bcseg: error: {bad}: "), lines
    assert not out.exists()


# --------------------------------------------------------------------------- non-finite voxels

@pytest.mark.parametrize("name", ["nan.nii", "nan.nii.gz"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_or_infinity_in_a_float_nifti_is_refused_not_read_as_zero(name, bad, dtype, tmp_path):
    """ITK's NIfTI reader turns NaN and infinite voxels into 0 without a word: a float
    NIfTI holding them was checked, segmented and exported as if the scanner had
    measured zeros there, where the same values in a TIFF are refused."""
    array = (STACK / 255.0).astype(dtype)
    array[3, 10, 20] = bad
    path = write_nifti(tmp_path / name, array)
    refused(path, "contains NaN or infinite values")
    write_nifti(path, (STACK / 255.0).astype(dtype))  # finite: read as written
    assert np.array_equal(io.read_image(path)[0], (STACK / 255.0).astype(dtype))


def test_nan_in_a_nifti_mask_is_refused_by_check(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks" / "observer1").mkdir(parents=True)
    for name in ("s0", "s1"):
        write_nifti(tmp_path / "images" / f"{name}.nii.gz")
    mask = (STACK > 120).astype(np.float32)
    write_nifti(tmp_path / "masks" / "observer1" / "s0.nii.gz", mask)
    mask[0, 0, 0] = np.nan
    write_nifti(tmp_path / "masks" / "observer1" / "s1.nii.gz", mask)
    assert main(["check", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert f"problem: {tmp_path / 'masks' / 'observer1' / 's1.nii.gz'}: contains NaN or infinite values" in out


@pytest.mark.parametrize("name", ["s.Nii.gz", "s.nii.GZ", "s.Nii"])
def test_a_nifti_suffix_in_mixed_letter_case_is_refused_with_the_name_to_use(name, tmp_path):
    """bcseg lists image suffixes in any letter case, but ITK's NIfTI reader knows
    '.nii', '.nii.gz' and their upper case only: 's.Nii.gz' was listed as an image and
    then refused as 'Unable to determine ImageIO reader for ...', which says nothing of
    the cure."""
    lower = "s.nii.gz" if name.lower().endswith(".gz") else "s.nii"
    path = write_nifti(tmp_path / lower).rename(tmp_path / name)
    assert io.is_image_file(path)
    refused(path, f"rename it to {lower}")
    with pytest.raises(DataError, match=f"rename it to {lower}"):
        io.stored_geometry(path)
    upper = write_nifti(tmp_path / lower).rename(tmp_path / lower.upper())
    assert np.array_equal(io.read_image(upper)[0], STACK)  # upper case is read


def test_a_nii_gz_holding_something_else_compressed_is_named_for_what_it_holds(tmp_path):
    """A .nii.gz that is gzip but holds no NIfTI (a gzipped table renamed, a header cut
    short before compressing) passed the content check, which looked only at the gzip
    signature, and ITK refused it as 'Unable to determine ImageIO reader for ...'."""
    text = tmp_path / "text.nii.gz"
    text.write_bytes(gzip.compress(b"id,image,group\n" * 40))
    refused(text, "is not a gzip-compressed NIfTI image: it holds gzip-compressed text")
    tiff = tmp_path / "tiff.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(STACK), str(tmp_path / "s.tif"))
    tiff.write_bytes(gzip.compress((tmp_path / "s.tif").read_bytes()))
    refused(tiff, "it holds gzip-compressed TIFF")
    head = tmp_path / "head.nii.gz"
    head.write_bytes(gzip.compress(gzip.decompress(write_nifti(tmp_path / "a.nii.gz").read_bytes())[:100]))
    refused(head, "is truncated: it ends (100 bytes) inside its 348-byte NIfTI header")
    with pytest.raises(DataError, match="gzip-compressed text"):
        io.stored_geometry(text)
