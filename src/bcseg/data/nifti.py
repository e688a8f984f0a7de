"""NIfTI header checks that SimpleITK does not make, and SimpleITK with its warnings off.

SimpleITK fills voxels missing from a short file with zeros and says nothing, reads
NaN and infinite voxels of a float file as zeros without a word either, and
resolves a header stating two voxel sizes its own way, printing C++ warnings (many
lines, one per read) on stderr. The header (NIfTI-1 or NIfTI-2, either byte order)
is checked here instead, so a cut or inconsistent file is refused in one line
naming it. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bcseg.errors import DataError

# Bits per voxel by NIfTI datatype code; bitpix is only used for codes not listed.
_DATATYPE_BITS = {1: 1, 2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16,
                  768: 32, 1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}

# Relative, as image_rules.SPACING_TOLERANCE: sform and pixdim written from one voxel size
# agree to float32's 7 digits; beyond this they are two sizes.
_SCALE_TOLERANCE = 1e-3


def simpleitk():
    """The SimpleITK module, with ITK's C++ warnings off: bcseg checks what they are
    about itself, and a warning spilling many lines on stderr is no message."""
    import SimpleITK as sitk  # only NIfTI users pay for the import

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


@contextlib.contextmanager
def quiet():
    """SimpleITK reading a file with the NIfTI C library's own messages kept off stderr.

    niftilib prints what it finds wrong ("** ERROR: nifti_convert_nhdr2nim: bad
    datatype") to the process's stderr itself, which no warning switch turns off, and
    SimpleITK then raises with what is wrong: bcseg's refusal would follow the library's
    line. Descriptor 2 points at the null device while the reader runs.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Header(NamedTuple):
    dims: tuple[int, ...]  # voxels along x, y, z, ... (NIfTI order)
    bits: int  # per voxel
    data_offset: int  # bytes before the voxels
    pixdim: tuple[float, ...]  # voxel size along dims
    sform_code: int
    sform: np.ndarray  # 3 x 4: voxel index -> world mm
    float_type: str | None = None  # numpy type of float voxels ('<f4', '>f8'), else None


def read_error(path: Path, exc: Exception) -> DataError:
    """One line for an exception of ITK's NIfTI reader: its last line (the first names
    ITK's own source file), with the cure where ITK's words give none."""
    last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    if "orthonormal" in last:  # "ITK only supports orthonormal direction cosines"
        return DataError(path, "has a sheared or skewed orientation (the direction cosines of its "
                         "sform or qform are not orthogonal), which the NIfTI reader cannot take; "
                         "resample it onto an orthogonal grid (3D Slicer, or nibabel's "
                         "resample_to_output) and save it again")
    return DataError(path, f"cannot read NIfTI ({last})")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_header(path: Path) -> Header | None:
    """The fields of a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header, or None when the
    file holds neither (SimpleITK then says what is wrong)."""
    try:
        with _open(path) as handle:
            head = handle.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":  # the header size tells the byte order
        size = struct.unpack_from(order + "i", head)[0] if len(head) >= 4 else 0
        if size in (348, 540):
            break
    else:
        # ITK knows a NIfTI file by its magic and reads it whatever the size field says:
        # passed over here, a cut copy was read zero-filled and a pixdim of 0 as 1 mm
        if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
            stated = struct.unpack_from("<i", head)[0]
            raise DataError(path, f"has a damaged NIfTI header: its size field says {stated} bytes, "
                            "where a NIfTI header's is 348 (NIfTI-1) or 540 (NIfTI-2); re-save it "
                            "or copy it again from the source")
        return None
    if len(head) < size:
        raise DataError(path, f"is truncated: it ends ({len(head)} bytes) inside its "
                        f"{size}-byte NIfTI header; copy it again from the source")
    if size == 348:
        dims = struct.unpack_from(order + "8h", head, 40)
        datatype, bitpix = struct.unpack_from(order + "2h", head, 70)
        pixdim = struct.unpack_from(order + "8f", head, 76)
        offset = struct.unpack_from(order + "f", head, 108)[0]
        sform_code = struct.unpack_from(order + "h", head, 254)[0]
        srow = struct.unpack_from(order + "12f", head, 280)
    else:
        datatype, bitpix = struct.unpack_from(order + "2h", head, 12)
        dims = struct.unpack_from(order + "8q", head, 16)
        pixdim = struct.unpack_from(order + "8d", head, 104)
        offset = struct.unpack_from(order + "q", head, 168)[0]
        sform_code = struct.unpack_from(order + "i", head, 348)[0]
        srow = struct.unpack_from(order + "12d", head, 400)
    rank = dims[0] if 1 <= dims[0] <= 7 else 0
    # A single file's voxels follow its header (and extensions) at vox_offset.
    data_offset = max(int(offset) if math.isfinite(offset) else 0, size)
    float_type = {16: "f4", 64: "f8"}.get(datatype)
    return Header(tuple(dims[1:rank + 1]), _DATATYPE_BITS.get(datatype, bitpix), data_offset,
                  tuple(pixdim[1:rank + 1]), sform_code, np.reshape(srow, (3, 4)),
                  order + float_type if float_type else None)


def _held_bytes(path: Path) -> tuple[int, str | None]:
    """Bytes the file holds (decompressed, streamed in chunks), and why it stopped
    short of its end, if it did."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size, None
    held = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read1(1 << 20):
                held += len(chunk)
    except EOFError:  # the gzip stream is cut short: a truncated copy
        return held, "its compressed data ends early"
    except (OSError, zlib.error) as exc:
        return held, f"its compressed data cannot be decompressed ({exc})"
    return held, None


def check(path: Path, stream: bool = True) -> None:
    """Refuse a NIfTI file whose voxels are fewer than its header declares, or whose
    voxel size is negative or disagrees between sform and pixdim.

    A ``.nii.gz`` is decompressed to count its bytes only with ``stream`` (a header-only
    look leaves that to the reading); a ``.nii``'s size is always compared.
    """
    header = read_header(path)
    if header is None:
        return
    _check_voxel_size(path, header)
    if not header.dims or min(header.dims) < 1:
        return  # no voxels: the reader names the shape
    if not stream and path.name.lower().endswith(".gz"):
        return
    needed = header.data_offset + -(-math.prod(header.dims) * header.bits // 8)
    held, broken = _held_bytes(path)
    if broken or held < needed:
        shape = tuple(reversed(header.dims))  # as bcseg shows arrays: (z, y, x)
        held_text = f"{broken} after {held}" if broken else f"it holds {held}"
        raise DataError(path, f"is truncated or corrupt: its header declares {shape} voxels of "
                        f"{header.bits} bits ({needed} bytes with the header), {held_text} "
                        "bytes; copy it again from the source")
    if header.float_type and not _all_finite(path, header, needed):
        # ITK's reader writes 0 over NaN and infinity: the array bcseg would get holds
        # zeros where the file says "no value", and a TIFF of the same values is refused
        raise DataError(path, "contains NaN or infinite values")


def _all_finite(path: Path, header: Header, needed: int) -> bool:
    """Whether every float voxel of the file is finite, read from the file itself in
    chunks (SimpleITK's array no longer tells: it holds zeros in their place)."""
    itemsize = np.dtype(header.float_type).itemsize
    chunk = itemsize << 20
    with _open(path) as handle:
        handle.seek(header.data_offset)  # a gzip stream seeks forward by reading
        left = needed - header.data_offset
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:
                break  # a short file: the size check above names it
            left -= len(data)
            voxels = np.frombuffer(data[:len(data) - len(data) % itemsize], header.float_type)
            if not np.isfinite(voxels).all():
                return False
    return True


def _check_voxel_size(path: Path, header: Header) -> None:
    """One positive, finite voxel size: pixdim's, and the sform's when it places the voxels in
    space (sform_code > 0; its voxel size is the length of its columns). bcseg measures
    with pixdim, so a file saying two sizes would have volumes and margins measured
    with either; a negative pixdim SimpleITK reads as negative from the header and
    positive with the voxels, so one look would refuse what the other takes."""
    axes = min(len(header.dims), 3)
    stated = np.asarray(header.pixdim[:axes], dtype=float)
    shown = "x".join(f"{v:.6g}" for v in reversed(stated))
    if (stated < 0).any():
        raise DataError(path, f"has a negative voxel size in its header (pixdim {shown} mm); "
                        "re-save it with positive spacing")
    # an axis of one voxel has no spacing to measure with (a single slice's thickness
    # is often left 0 in pixdim while the sform holds a unit column)
    many = np.asarray(header.dims[:axes]) > 1
    if not (np.isfinite(stated[many]) & (stated[many] > 0)).all():
        # ITK reads a voxel size of 0, NaN or infinity as 1 mm: measured, silently, in mm
        raise DataError(path, f"has no usable voxel size in its header (pixdim {shown} mm): "
                        "0, NaN or infinite along an axis; re-save it with its spacing")
    if header.sform_code <= 0:
        return
    placed = np.linalg.norm(header.sform[:, :axes], axis=0)
    if not np.allclose(placed[many], stated[many], rtol=_SCALE_TOLERANCE, atol=0):
        shown_placed = "x".join(f"{v:.6g}" for v in reversed(placed))
        raise DataError(path, f"states two voxel sizes: its sform places voxels of {shown_placed} mm, "
                        f"its pixdim says {shown} mm; re-save it with one voxel size "
                        "(set the sform from the right spacing, or clear it: sform_code 0)")
