"""Reading and writing images, stacks and masks, with their spacing in mm.

2D images: PNG, JPEG, TIFF (grey or RGB, 8 or 16 bit; RGB becomes grey, CMYK and
YCbCr too; alpha is dropped, and a picture drawn in alpha alone is refused).
3D stacks: TIFF (multi-page, ImageJ hyperstacks, OME-TIFF), memory-mapped where the
file allows, and NIfTI through SimpleITK. Arrays are ``(H, W)`` or ``(Z, H, W)``.
A TIFF with a channel (C) axis is refused by :func:`read_image` (channels are not
slices) and read by :func:`read_channels`, channels last; one with a time (T) axis of
several frames is refused by both (frames are not slices either).

Spacing is a tuple of mm per array axis, read from ImageJ metadata, OME metadata or
resolution tags, or None when the file does not say; outside 1e-4 to 100 mm it is
refused (:func:`spacing_problem`). Masks are written as uint8 TIFF
(0 and 255) carrying ImageJ spacing and unit, so Fiji and napari show them at scale.
No TensorFlow here.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile

from bcseg.atomic import atomic_path
from bcseg.data import nifti
from bcseg.errors import ConfigError, DataError, not_a_file  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
# Refuse a file whose header declares more pixel bytes than this, before reading it:
# a tiny corrupt or hostile file can declare terabytes (tiles that all point at one
# small tile). A 400 x 1024 x 1024 uint16 stack is 0.8 GiB. Raise it with the
# environment variable below.
MAX_IMAGE_GIB = 4.0
MAX_IMAGE_ENV = "BCSEG_MAX_IMAGE_GB"
MAX_IMAGE_GIB_LIMIT = 2**34  # 16 EiB: all a 64-bit address space holds

# The first bytes of each format, to tell a file whose content does not match its
# name (a web page saved as .png, a JPEG renamed .tif) before a reader guesses.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"\x1f\x8b", "gzip"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"%PDF", "PDF"),
    (b"PK\x03\x04", "zip"), (b"RIFF", "RIFF (WebP?)"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
)
_EXPECTED_CONTENT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF",
                     ".tiff": "TIFF", ".nii": "NIfTI", ".nii.gz": "gzip"}
_SUFFIX_OF = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "NIfTI": ".nii", "gzip": ".nii.gz"}

# Units as _unit_key spells them: lower case, singular, "meter", the micro sign for µ.
_UNIT_TO_MM = {
    "mm": 1.0, "millimeter": 1.0, "cm": 10.0, "centimeter": 10.0, "dm": 100.0,
    "decimeter": 100.0, "m": 1000.0, "meter": 1000.0,
    "um": 1e-3, "µm": 1e-3, "micron": 1e-3, "micrometer": 1e-3,
    "nm": 1e-6, "nanometer": 1e-6, "pm": 1e-9, "picometer": 1e-9, "å": 1e-7, "angstrom": 1e-7,
    "inch": 25.4, "inches": 25.4, "in": 25.4, "ft": 304.8, "foot": 304.8, "feet": 304.8,
}
# Units that say the image is not calibrated: ImageJ's "pixel", OME's "reference frame".
_NO_LENGTH_UNITS = ("", "pixel", "px", "reference frame")
# Image editors stamp these resolutions on every file; they say nothing about
# the anatomy, so a resolution of these values is ignored, in inches or in
# centimetres (an editor working in mm saves 72 ppi as 28.3465 pixels per cm).
_DEFAULT_DPI = (72.0, 96.0, 300.0)
_RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709, as scikit-image
# The voxel sizes a spacing may have, in mm: 0.1 µm to 10 cm. Outside it, the
# metadata has the wrong unit (nm or µm labelled mm) or is garbage, and a margin
# or distance map at that scale would ask for terabytes.
SPACING_RANGE_MM = (1e-4, 100.0)


def file_stem(path: str | Path) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_image_file(path: str | Path) -> bool:
    """True for a visible file with a supported image suffix."""
    path = Path(path)
    return (path.is_file() and not path.name.startswith(".")
            and path.name.lower().endswith(IMAGE_SUFFIXES))


def image_files(folder: str | Path, listed=None) -> list[Path]:
    """Supported image files directly in ``folder``, sorted by name.

    Something named like an image that is no file (a broken link, a folder) is refused;
    ``listed``, a function taking the DataError, lists it instead and leaves it out
    (``check`` lists every such file, not the first only).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "is not a folder")
    found = sorted(folder.iterdir())
    for path in found:  # anything named like an image that is none would be skipped
        # silently, and a case would just be missing
        if not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES):
            problem = not_a_file(path)
            if problem:
                error = DataError(path, problem + ("; move it out of this folder of images"
                                                   if path.is_dir() else ""))
                if listed is None:
                    raise error
                listed(error)
    return [p for p in found if is_image_file(p)]


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _check_file(path: Path) -> None:
    try:
        problem = not_a_file(path)
        if problem:
            raise DataError(path, problem)
        if not path.exists():
            raise DataError(path, "file not found")
        if path.stat().st_size == 0:
            raise DataError(path, "is empty (0 bytes)")
        _check_content(path)  # reads the first bytes: where a file we may not read fails
    except PermissionError:
        raise DataError(path, UNREADABLE) from None


UNREADABLE = ("cannot be read: permission denied for this user; give it read access "
              "(chmod) or run bcseg as a user who may read it")


def _content_kind(head: bytes) -> str | None:
    """The format the first bytes of a file announce, or None."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "NIfTI"
    return None


def _check_content(path: Path) -> None:
    """Refuse a file whose content is not the format its name says, naming what it is."""
    name = path.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
    expected = _EXPECTED_CONTENT.get(suffix)
    if expected is None:
        return
    written = path.name[-len(suffix):]
    if suffix in (".nii", ".nii.gz") and written not in (suffix, suffix.upper()):
        # ITK's NIfTI reader knows these two spellings only; any other it refused as
        # "Unable to determine ImageIO reader", which says nothing of the cure
        raise DataError(path, f"has the suffix '{written}', which the NIfTI reader does not "
                        f"know; rename it to {path.name[:-len(suffix)]}{suffix}")
    with open(path, "rb") as handle:
        head = handle.read(352)
    kind = _content_kind(head)
    if kind == expected == "gzip":
        _check_gzip_content(path)
        return
    if kind == expected:
        return
    kind = kind or _unknown_kind(head, "not an image format bcseg reads")
    label = "gzip-compressed NIfTI" if expected == "gzip" else expected
    hint = f"; rename it to {_SUFFIX_OF[kind]}" if kind in _SUFFIX_OF else ""
    raise DataError(path, f"is not a {label} image: its content is {kind}{hint}")


def _unknown_kind(head: bytes, otherwise: str) -> str:
    """What a file of no known signature holds, for a message: text, or ``otherwise``."""
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return otherwise


def _check_gzip_content(path: Path) -> None:
    """Refuse a ``.nii.gz`` whose compressed content is no NIfTI (a gzipped table or
    TIFF renamed): the gzip signature alone passed it, and ITK refused it as "Unable to
    determine ImageIO reader", which says nothing of what the file is."""
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(352)
    except (OSError, EOFError, zlib.error):
        return  # a damaged stream: the NIfTI checks name it
    kind = _content_kind(head)
    if kind == "NIfTI" or nifti.read_header(path) is not None:  # read_header: a cut header
        return
    kind = kind or _unknown_kind(head, "data that is no image format bcseg reads")
    raise DataError(path, f"is not a gzip-compressed NIfTI image: it holds gzip-compressed {kind}")


def max_image_bytes() -> int:
    """Most pixel bytes one file may declare: ``BCSEG_MAX_IMAGE_GB`` GiB, default 4."""
    text = os.environ.get(MAX_IMAGE_ENV)
    if text is None:
        return int(MAX_IMAGE_GIB * 2**30)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(None, f"environment variable {MAX_IMAGE_ENV}={text!r} must be a "
                          "positive number of GiB")
    if value * 2**30 < 1:  # a limit of 0 bytes refused every file, blamed on the data (exit 3)
        raise ConfigError(None, f"environment variable {MAX_IMAGE_ENV}={text!r} is under one byte; "
                          f"give the GiB of pixels one file may hold (default {MAX_IMAGE_GIB:g})")
    # A limit beyond what a 64-bit machine can address (16 EiB) limits nothing, and from
    # 1e300 GiB the bytes overflowed to infinity: every command stopped with an
    # OverflowError (exit 1) naming no setting.
    if value > MAX_IMAGE_GIB_LIMIT:
        raise ConfigError(None, f"environment variable {MAX_IMAGE_ENV}={text!r} is more than "
                          f"{MAX_IMAGE_GIB_LIMIT} GiB (16 EiB), more than any machine addresses; "
                          f"give the GiB of pixels one file may hold (default {MAX_IMAGE_GIB:g})")
    return int(value * 2**30)


def _check_size(path: Path, shape: tuple[int, ...], nbytes: int) -> None:
    """Refuse, from the header alone, a file that would need too much memory."""
    limit = max_image_bytes()
    if nbytes > limit:
        raise DataError(path, f"is too large ({tuple(shape)}: {nbytes / 2**30:.3g} GiB of pixels, "
                        f"over the {limit / 2**30:.3g} GiB limit); split it into smaller stacks "
                        f"or raise the limit with {MAX_IMAGE_ENV}=<GiB>")


def spacing_problem(spacing, ndim: int | None = None) -> str | None:
    """What is wrong with a spacing (mm per axis), or None when it is usable.

    The one rule for spacing from files, manifests and the command line: one
    positive, finite number per axis, between 1e-4 mm (0.1 µm) and 100 mm
    (:data:`SPACING_RANGE_MM`).
    """
    values = tuple(spacing)
    if ndim is not None and len(values) != ndim:
        return f"needs {ndim} values (one per axis), got {len(values)}"
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return "must be numbers"
    if not numbers or not all(math.isfinite(v) and v > 0 for v in numbers):
        return "must be positive, finite mm per axis"
    low, high = SPACING_RANGE_MM
    if not all(low <= v <= high for v in numbers):
        return (f"must lie between {low:g} and {high:g} mm per axis (0.1 µm to 10 cm); "
                "a value outside is a unit error, such as nm or µm labelled as mm")
    return None


def check_spacing(spacing, path: str | Path, ndim: int | None = None):
    """Return ``spacing`` unchanged, or raise :class:`DataError` naming ``path``."""
    if spacing is None:
        return None
    problem = spacing_problem(spacing, ndim)
    if problem:
        shown = " x ".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in spacing)
        raise DataError(path, f"has unusable spacing {shown} mm in its metadata: spacing {problem}; "
                        "correct it (in Fiji: Image > Properties) and try again")
    return spacing


def _drop_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """The colour bands of a grey+alpha or RGBA array (alpha last), alpha dropped.

    An image or mask drawn in the alpha channel alone (constant colour, varying
    transparency) would read as blank, an empty mask passing every check: refuse it.
    """
    colour, alpha = array[..., :-1], array[..., -1]
    if alpha.size == 0:  # no pixels: _validate names the shape
        return colour[..., 0] if colour.shape[-1] == 1 else colour
    first = colour.reshape(-1, colour.shape[-1])[0]
    if (colour == first).all() and alpha.min() != alpha.max():
        raise DataError(path, "draws its image or mask in the alpha (transparency) channel only: "
                        "its colour is the same everywhere, so it would read as blank; save it "
                        "as a grey image (a mask: grey 0 and 255) without alpha")
    return colour[..., 0] if colour.shape[-1] == 1 else colour


def _cmyk_to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """RGB of unsigned-integer CMYK inks, as Pillow converts them: (max - C)(max - K) / max."""
    if array.dtype.kind != "u":
        raise DataError(path, f"is a CMYK image of type {array.dtype}; save it as grey or RGB")
    top = float(np.iinfo(array.dtype).max)
    ink = array.astype(np.float64)
    rgb = (top - ink[..., :3]) * (top - ink[..., 3:4]) / top
    return np.rint(rgb).astype(array.dtype)


def _to_grey(array: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) array in its own dtype; grey input is returned as is."""
    if array.ndim < 3 or array.shape[-1] not in (3, 4):
        return array
    rgb = array[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    grey = rgb.astype(np.float64) @ _RGB_WEIGHTS
    if np.issubdtype(array.dtype, np.integer):
        grey = np.rint(grey)
    return grey.astype(array.dtype)


def _validate(array: np.ndarray, path: Path) -> np.ndarray:
    if array.size == 0 or min(array.shape) < 1:
        raise DataError(path, f"has no pixels (shape {array.shape})")
    if array.ndim == 2 and min(array.shape) < 2:
        raise DataError(path, f"is too small to segment (shape {array.shape})")
    if array.ndim == 3 and min(array.shape[1:]) < 2:
        raise DataError(path, f"is too small to segment (shape {array.shape})")
    if array.dtype == bool:  # a 1-bit file: its 1 is white, full scale, as 255 is in uint8
        # (as 0 and 1, it was normalised as 8-bit into black and 1/255 grey)
        array = array.astype(np.uint8) * np.uint8(255)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(path, f"has unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not isinstance(array, np.memmap):
        if not np.isfinite(array).all():
            raise DataError(path, "contains NaN or infinite values")
    return array


# --------------------------------------------------------------------------- spacing

def _unit_key(unit) -> str:
    """A unit as :data:`_UNIT_TO_MM` spells it: "Microns", "micrometres", "\\u00B5m" (as
    ImageJ escapes µ) and "μm" (the Greek letter mu, not the micro sign) are all "µm"."""
    text = str(unit).strip().lower()
    for mu in ("\\u00b5", "\\u03bc", "μ"):
        text = text.replace(mu, "µ")
    text = text.replace("metre", "meter")
    # plurals of words only: "ms" is no metres
    if len(text) > 3 and text.endswith("s") and (text[:-1] in _UNIT_TO_MM or text[:-1] in _NO_LENGTH_UNITS):
        text = text[:-1]
    return text


def _unit_scale(unit: str | None, path: Path) -> float | None:
    """mm per ``unit``, or None where there is no unit or it is a pixel (no calibration).

    A length unit bcseg does not know is refused, not taken for "no spacing": the file
    states its voxel size, and a mask that states another would pass the spacing check.
    """
    if unit is None:
        return None
    key = _unit_key(unit)
    if key in _NO_LENGTH_UNITS:
        return None
    if key not in _UNIT_TO_MM:
        raise DataError(path, f"states its spacing in the unit {str(unit).strip()!r}, which bcseg "
                        "does not know; re-save it with the spacing in mm or µm (in Fiji: "
                        "Image > Properties)")
    return _UNIT_TO_MM[key]


def _resolution_mm(page: tifffile.TiffPage, imagej_unit: str | None,
                   path: Path, imagej_yunit: str | None = None) -> tuple[float, float] | None:
    """In-plane (y, x) spacing from the resolution tags, or None (``imagej_yunit``: the
    unit of y where ImageJ states one of its own)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    xres = tags["XResolution"].value
    yres = tags["YResolution"].value
    x = xres[0] / xres[1] if xres[1] else 0.0
    y = yres[0] / yres[1] if yres[1] else 0.0
    if imagej_unit is not None:
        scale = _unit_scale(imagej_unit, path)
        y_scale = _unit_scale(imagej_yunit or imagej_unit, path)
        if scale is None or y_scale is None:
            return None
        return (y_scale / y if y > 0 else math.inf, scale / x if x > 0 else math.inf)
    else:
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        if unit not in (2, 3):  # 1: no absolute unit
            return None
        per_inch = 2.54 if unit == 3 else 1.0
        if _is_editor_default(x * per_inch) or _is_editor_default(y * per_inch):
            return None
        scale = 10.0 if unit == 3 else 25.4
    # A zero resolution is an infinite spacing: check_spacing refuses it by name.
    return (scale / y if y > 0 else math.inf, scale / x if x > 0 else math.inf)


def _is_editor_default(dpi: float) -> bool:
    """Whether a resolution is an editor's default (72, 96 or 300 dpi), to the rounding of
    one converted from centimetres (28.35 pixels per cm is 72.009 dpi)."""
    return any(math.isclose(dpi, default, rel_tol=SPACING_TOLERANCE) for default in _DEFAULT_DPI)


def _ome_spacing(xml: str, path: Path) -> dict[str, float]:
    """PhysicalSize{X,Y,Z} from OME-XML, converted to mm (OME's default unit is µm)."""
    found = {}
    for axis in "XYZ":
        size = _xml_attribute(xml, f"PhysicalSize{axis}")
        if size is None:
            continue
        scale = _unit_scale(_xml_attribute(xml, f"PhysicalSize{axis}Unit") or "µm", path)
        if scale is not None:
            found[axis.lower()] = _number(size, f"OME PhysicalSize{axis}", path) * scale
    return found


def _xml_attribute(xml: str, name: str) -> str | None:
    """The first value of attribute ``name`` in ``xml``: XML allows single quotes and
    blanks around '=' (``PhysicalSizeX = '0.1'``), which a search for ``name="`` missed,
    reading such a file's spacing as none."""
    found = re.search(rf"\b{name}\s*=\s*([\"'])(.*?)\1", xml)
    return found.group(2) if found else None


def _tiff_spacing(tif: tifffile.TiffFile, ndim: int, path: Path) -> tuple[float, ...] | None:
    page = tif.pages.first
    if tif.is_ome and tif.ome_metadata:
        ome = _ome_spacing(tif.ome_metadata, path)
        if "x" in ome and "y" in ome:
            plane = (ome["y"], ome["x"])
            if ndim == 2:
                return plane
            if "z" in ome:
                return (ome["z"],) + plane
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit") if tif.is_imagej else None
    # ImageJ writes yunit= and zunit= where y or z has another unit than x (unit=):
    # read with x's, a stack of 250 micron pixels and 1 mm slices (zunit=mm) had slices
    # of 1 micron, within the plausible range, and every volume and margin 1000 times off
    yunit, zunit = (ij.get("yunit"), ij.get("zunit")) if unit is not None else (None, None)
    plane = _resolution_mm(page, unit, path, yunit)
    if plane is None:
        return None
    if ndim == 2:
        return plane
    z = ij.get("spacing")
    scale = _unit_scale(zunit or unit, path)
    if z is None or scale is None:
        return None
    return (_number(z, "ImageJ spacing", path) * scale,) + plane


def _number(value, what: str, path: Path) -> float:
    """A metadata value as a number; one that is none is refused naming its field (it
    was 'cannot read TIFF (could not convert string to float ...)', naming none)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"has unusable spacing in its metadata: its {what} {str(value)[:40]!r} "
                        "is no number; correct it (in Fiji: Image > Properties) and try again") from None


def read_spacing(path: str | Path) -> tuple[float, ...] | None:
    """Spacing in mm per array axis stored in ``path``, or None if it says none."""
    path = Path(path)
    _check_file(path)
    if is_nifti(path):
        return read_image(path)[1]
    if not _is_tiff(path):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            return check_spacing(_series_geometry(tif, path)[1], path)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None


# --------------------------------------------------------------------------- reading

# NewSubfileType bits of pages that are not the image: 1, a reduced-resolution copy (a
# scanner's thumbnail); 4, a transparency mask (written by image editors). Taken as
# series of their own by tifffile, such a page read as a second slice of the image.
_NOT_THE_IMAGE = 1 | 4


def _image_series(tif: tifffile.TiffFile) -> list:
    """The file's series that hold the image, thumbnails and transparency masks left out
    (all of them if every series is marked so: then none is told apart)."""
    kept = [s for s in tif.series if not int(s.keyframe.subfiletype) & _NOT_THE_IMAGE]
    return kept or list(tif.series)


def _check_complete(tif: tifffile.TiffFile, path: Path) -> None:
    """Raise if the chain of pages is cut short, as in a truncated copy.

    tifffile only logs a broken chain and returns the pages it found, so a stack cut
    in half would silently read as its first page(s).
    """
    if tif.is_ndpi or len(tif.pages) == 0:  # NDPI stores offsets its own way
        return
    fmt, handle = tif.tiff, tif.filehandle
    last = tif.pages[len(tif.pages) - 1].offset
    handle.seek(last)
    raw = handle.read(fmt.tagnosize)
    tags = struct.unpack(fmt.tagnoformat, raw)[0] if len(raw) == fmt.tagnosize else 0
    handle.seek(last + fmt.tagnosize + tags * fmt.tagsize)
    raw = handle.read(fmt.offsetsize)
    if len(raw) < fmt.offsetsize or struct.unpack(fmt.offsetformat, raw)[0] != 0:
        raise DataError(path, f"is truncated or corrupt: the file ends ({handle.size} bytes) "
                        f"before its last page; copy it again from the source")


def _stored_shape(tif: tifffile.TiffFile, path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and axes of the file's single image series, RGB samples left out."""
    _check_complete(tif, path)
    image_series = _image_series(tif)
    if len(image_series) == 0:
        raise DataError(path, "holds no image")
    if len(image_series) > 1 and tif.is_ome:  # OME Images are fields of view, not slices
        raise DataError(path, f"holds {len(image_series)} separate OME images (fields of view or "
                        "positions), not one stack; save each image as its own file, or, if they "
                        "are the slices of one stack, save the stack in one write, naming its "
                        "axes (tifffile.imwrite(path, stack, ome=True, metadata={'axes': 'ZYX'}))")
        # (without the axes tifffile writes a 3D array's first axis as channels, C, which
        # bcseg then refused as an image of several channels: the advice led to a refusal)
    if len(image_series) > 1 and not tif.is_imagej:
        shapes = [s.shape for s in image_series]
        if len({s[-2:] for s in shapes}) > 1 or any(len(s) > 2 for s in shapes):
            raise DataError(path, f"holds {len(shapes)} image series {shapes}; "
                            "bcseg reads one image or stack per file")
    _check_like_pages(tif, path)
    _check_orientation(tif.pages.first.tags.valueof(274, 1), path)  # TIFF Orientation
    series = image_series[0]
    axes = series.axes
    shape = list(series.shape)
    _check_no_time(series, path)
    _check_imagej_count(tif, series, path)
    _check_shaped_count(tif, path)
    if len(image_series) > 1:  # several same-size 2D pages written as separate series
        shape = [len(image_series)] + shape
        axes = "Q" + axes
    # Refuse from the header, before tifffile allocates what a corrupt header declares.
    _check_size(path, tuple(shape), math.prod(shape) * series.dtype.itemsize)
    if _samples_are_slices(tif, axes):
        axes = axes.replace("S", "Z")
    if _planar_array(tif, axes, shape):
        # tifffile saves a (Z, 3, H, W) array as planar RGB pages, as it does (3, H, W):
        # read as colour, each slice's 3 or 4 channels were mixed into one grey value.
        raise DataError(path, f"holds a {tuple(shape)} array that tifffile stored as planar "
                        "colour pages, so bcseg cannot tell channels from colour; save channels "
                        "as a Fiji hyperstack (tifffile: imagej=True, metadata={'axes': 'ZCYX'}), "
                        "or colour with its samples last (Z, H, W, 3)")
    if "S" in axes:  # samples per pixel: last when interleaved, first when planar (SYX)
        samples = shape.pop(axes.index("S"))
        axes = axes.replace("S", "")
        if not _samples_are_colour(tif.pages.first, samples):  # e.g. grey + a second channel
            raise DataError(path, f"has {samples} samples per pixel (shape {tuple(series.shape)}, "
                            f"axes {series.axes}), which are channels, not slices; save each channel "
                            "as its own file (images/<channel>/) or as a Fiji hyperstack")
    return tuple(shape), axes


def _check_no_time(series, path: Path) -> None:
    """Refuse a series with a time (T) axis of more than one frame.

    Fiji saves a cine loop with frames=N, OME with SizeT: its frames are one section
    at N moments, not N sections. Read as Z they were segmented as a stack of slices
    (an ImageJ one with its slice spacing put on the time axis), as an animated PNG
    would be. (A T axis of one, TZCYX beside a stack, is dropped with the other
    singleton axes.)
    """
    if "T" in series.axes and series.shape[series.axes.index("T")] > 1:
        raise DataError(path, f"has {series.shape[series.axes.index('T')]} time points (shape "
                        f"{tuple(series.shape)}, axes {series.axes}): frames of a time series, "
                        "not slices of a stack; save the frame to segment as its own file, or, "
                        "if the frames are slices, relabel them (Fiji: Image > Properties, "
                        "swap Slices and Frames)")


def _samples_are_colour(page, samples: int) -> bool:
    """Whether a page's samples per pixel are one colour (alpha dropped when read).

    Colour spaces have 3 or 4 (RGB, RGBA, CMYK, ...). A grey page (MinIsBlack or
    MinIsWhite) has one grey sample: with alpha as its one extra sample it is grey +
    alpha; any other extra samples are channels, which mixed as R, G, B would read as
    one grey image made of them.
    """
    if int(page.photometric) not in (0, 1):
        return samples in (3, 4)
    return samples == 2 and tuple(int(e) for e in page.extrasamples) in ((1,), (2,))


def _samples_are_slices(tif: tifffile.TiffFile, axes: str) -> bool:
    """Whether a planar three- or four-sample image is a stack of 3 or 4 slices.

    tifffile, scikit-image and imageio save any (3, H, W) or (4, H, W) array as planar
    RGB(A) unless told otherwise, and note its shape in their description; read back by
    tifffile it is the stack it was. Such a file is read as that stack (as bcseg always
    read it), not mixed into one grey image. A planar colour image without that
    description (from other software) is colour.
    """
    page = tif.pages.first
    return (axes == "SYX" and tif.is_shaped and _image_series(tif)[0].shape[0] in (3, 4)
            and page.photometric == tifffile.PHOTOMETRIC.RGB)


def _planar_array(tif: tifffile.TiffFile, axes: str, shape: list[int]) -> bool:
    """Whether a planar colour file is an array of more than 3 dimensions saved by
    tifffile with its shape noted (Z, 3 or 4, H, W), colour only by tifffile's default:
    see :func:`_samples_are_slices`."""
    # len, not the product of the leading sizes: (1, 3, H, W), one slice of 3 channels,
    # is stored as (Z, 3, H, W) is, and was read as colour (its header as (1, H, W))
    return (tif.is_shaped and axes.endswith("SYX") and len(shape) > 3
            and tif.pages.first.photometric == tifffile.PHOTOMETRIC.RGB)


def _check_imagej_count(tif: tifffile.TiffFile, series, path: Path) -> None:
    """Refuse an ImageJ stack holding fewer images than its description declares: Fiji
    writes stacks over 4 GiB as one page with the others after it, and tifffile reads such
    a file cut short as its first image alone (a stack read as one slice, silently).
    More pages than declared (appended by another tool) would be dropped: refused too."""
    declared = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
    planes = math.prod(n for n, axis in zip(series.shape, series.axes) if axis not in "YXS")
    if isinstance(declared, int) and declared > planes:
        raise DataError(path, f"is truncated or damaged: its ImageJ description declares {declared} "
                        f"images, the file holds {planes}; copy it again from the source")
    if isinstance(declared, int) and len(tif.pages) > declared:
        raise DataError(path, f"holds {len(tif.pages)} pages, but its ImageJ description declares "
                        f"{declared} images, so the others would be dropped; save the whole stack "
                        "again from Fiji")


def _check_shaped_count(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse a file whose description (tifffile's JSON shape) accounts for fewer pages
    than the file holds: given a shape its pages do not make (a tool that edited the
    stack kept the old description), tifffile logs a warning and reads the first page
    alone, so a stack was segmented as one slice without a word."""
    if not tif.is_shaped:
        return
    covered = sum(len(s.pages) for s in tif.series)
    if covered < len(tif.pages):
        raise DataError(path, f"holds {len(tif.pages)} pages, but the shape its description gives "
                        f"accounts for {covered}, so the others would be dropped; save the stack "
                        "again without that description (or with the stack's own shape)")


def _check_like_pages(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse a stack whose pages differ in pixel type, grey scale, palette or samples.

    Pages written one by one (one series each) are stacked in a common dtype and read
    with the first page's Photometric and palette: a palette on page 1 would invert a
    plain page 2, a MinIsWhite page 2 would slip past its refusal, and 8-bit slices
    would turn near black beside 16-bit ones. Within one series tifffile groups pages
    by dtype, Photometric and samples, but not by palette: a palette stack is compared
    page by page (reading every page's tags costs about 1 ms a page, so only then).
    """
    image_series = _image_series(tif)
    if len(image_series) > 1:
        indices = [s.pages[0].index for s in image_series]
    elif int(tif.pages.first.photometric) == 3:  # PALETTE
        indices = [p.index for p in image_series[0].pages if p is not None]
    else:
        return
    first = tif.pages.get(indices[0])
    for number, index in enumerate(indices[1:], start=2):
        page = tif.pages.get(index)
        for what, value in (("pixel type", lambda p: p.dtype),
                            ("grey scale or colour space", _photometric_name),
                            ("samples per pixel", lambda p: p.samplesperpixel)):
            if value(page) != value(first):
                raise DataError(path, f"holds pages of different kinds: page {number}'s {what} "
                                f"({value(page)}) differs from page 1's ({value(first)}); save "
                                "the stack with all its slices alike")
        if not _same_palette(page.colormap, first.colormap):
            raise DataError(path, f"holds pages of different kinds: page {number}'s palette "
                            "differs from page 1's; save the stack with all its slices alike")


def _same_palette(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or np.array_equal(a, b))


def _kept_axes(shape: tuple[int, ...]) -> list[int]:
    """Indices of the axes bcseg keeps: singleton axes of a 3D+ shape are dropped."""
    kept = [i for i, n in enumerate(shape) if n != 1] if len(shape) > 2 else list(range(len(shape)))
    return kept if len(kept) >= 2 else list(range(len(shape)))[-2:]


def _series_geometry(tif: tifffile.TiffFile, path: Path):
    """The (H, W) or (Z, H, W) shape bcseg reads, after checks, and its spacing.

    A (Z, 1, X) stack read as (Z, X) has the spacing (z, x) of those axes.
    """
    stored, axes = _stored_shape(tif, path)
    if "C" in axes and stored[axes.index("C")] > 1:
        # Channels are not slices: reading them as a stack would mix modalities. The
        # advice must fit every layout that reaches here: "name its channels in
        # channels.json" told a manifest's user of a file that manifests never read
        # (a manifest cell, like a channel folder's file, is one channel).
        series = _image_series(tif)[0]
        raise DataError(path, f"has {stored[axes.index('C')]} channels (shape "
                        f"{tuple(series.shape)}, axes {series.axes}); a mask has one, and an "
                        "image with several is read as a multi-channel case only from images/ "
                        "with a channels.json beside it naming them: a manifest's image or "
                        "image_<channel> cell, a channel folder's or a _0000 file holds one "
                        "channel, so save each channel as its own file there")
    kept_axes = _kept_axes(stored)
    kept = tuple(stored[i] for i in kept_axes)
    if len(kept) > 3:
        series = _image_series(tif)[0]
        raise DataError(path, f"has {len(kept)} dimensions (shape {tuple(series.shape)}, "
                        f"axes {series.axes}); bcseg reads 2D images and 3D stacks only")
    if len(stored) not in (2, 3):
        return kept, _tiff_spacing(tif, len(kept), path)
    spacing = _tiff_spacing(tif, len(stored), path)
    if spacing is not None and len(spacing) == len(stored):
        spacing = tuple(spacing[i] for i in kept_axes)
    return kept, spacing


def stored_geometry(path: str | Path) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """The shape and spacing of an image as its file stores them.

    :func:`read_image` drops singleton axes (a ``(Z, 1, X)`` TIFF reads as ``(Z, X)``,
    a one-slice NIfTI as 2D); outputs written with this shape keep the input's.
    """
    path = Path(path)
    _check_file(path)
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                shape, _ = _stored_shape(tif, path)
                if len(shape) in (2, 3):
                    return shape, check_spacing(_tiff_spacing(tif, len(shape), path), path)
        elif is_nifti(path):
            sitk = nifti.simpleitk()

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            with nifti.quiet():
                reader.ReadImageInformation()
            nifti.check(path, stream=False)  # as read_image would, short of decompressing
            return (tuple(int(n) for n in reversed(reader.GetSize())),
                    check_spacing(tuple(round(float(v), 6) for v in reversed(reader.GetSpacing())), path))
    except DataError:
        raise
    except Exception as exc:  # corrupt files are reported by read_image
        # the last line, as read_image says it: ITK's exception holds its source path,
        # a newline, then what is wrong
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise DataError(path, f"cannot read its header ({last})") from None
    array, spacing = read_image(path, mmap=True)
    return tuple(array.shape), spacing


def _codec_error(value: int, path: Path) -> DataError:
    """The error for pixels compressed with a codec the installed libraries lack."""
    try:
        name = f"{tifffile.COMPRESSION(value).name} (TIFF code {int(value)})"
    except ValueError:
        name = f"code {int(value)}, unknown to tifffile"
    return DataError(path, f"is compressed with {name}, which the installed libraries cannot "
                     "decompress; re-save it uncompressed or with deflate (zip), or install "
                     "imagecodecs (pip install imagecodecs)")


def _check_codec(value: int, path: Path) -> None:
    """Refuse, before decoding, a TIFF whose compression has no decoder here.

    tifffile needs imagecodecs for LZW, JPEG, PNG and more; without it the failure
    names a Python module or a package, not the file's compression.
    """
    if value not in tifffile.TIFF.DECOMPRESSORS:  # resolves the codec
        raise _codec_error(value, path)


# TIFF Photometric values whose samples are read as R, G, B (+ alpha) or converted.
_RGB, _CMYK, _YCBCR = 2, 5, 6
_JPEG_CODES = (6, 7, 33007, 34892)  # tifffile decodes JPEG YCbCr to RGB


def _photometric_name(page) -> str:
    try:
        return tifffile.PHOTOMETRIC(int(page.photometric)).name
    except ValueError:
        return f"Photometric {int(page.photometric)}"


def _tiff_grey(array: np.ndarray, page: tifffile.TiffPage, path: Path) -> np.ndarray:
    """Grey values of a TIFF's 3 or 4 samples, by the colour space its Photometric tag names.

    Treating CMYK inks as R, G, B (and dropping K) would read a grey picture as black.
    """
    photometric = int(page.photometric)
    if photometric == _CMYK:
        if array.shape[-1] != 4 or page.tags.valueof("InkSet", 1) != 1:
            raise DataError(path, f"holds {array.shape[-1]} inks that are not CMYK; "
                            "save it as grey or RGB")
        return _to_grey(_cmyk_to_rgb(array, path))
    if photometric == _YCBCR and int(page.compression) not in _JPEG_CODES:
        return np.ascontiguousarray(array[..., 0])  # Y is the luma itself
    if photometric not in (0, 1, _RGB, _YCBCR):  # CIELAB, ICCLAB, LogLuv, ...
        raise DataError(path, f"stores colour as {_photometric_name(page)}, which bcseg cannot "
                        "convert to grey; save it as grey or RGB")
    return _to_grey(_drop_alpha(array, path) if array.shape[-1] in (2, 4) else array)


def _read_tiff(path: Path, mmap: bool) -> tuple[np.ndarray, tuple[float, ...] | None]:
    compression = None
    try:
        with tifffile.TiffFile(path) as tif:
            shape, spacing = _series_geometry(tif, path)
            compression = tif.pages.first.compression
            _check_codec(compression, path)
            array = _grey_pixels(tif, path, mmap)
    except DataError:
        raise
    except ImportError as exc:  # a decoder whose module is missing (ZSTD before Python 3.14)
        if compression is None:
            raise DataError(path, f"cannot read TIFF ({exc})") from None
        raise _codec_error(compression, path) from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None
    if array.shape != shape:
        array = array.reshape(shape)
    return array, spacing


def _grey_pixels(tif: tifffile.TiffFile, path: Path, mmap: bool = False) -> np.ndarray:
    """The pixels of the file's image series as grey values, in the axes :func:`_stored_shape`
    gives (colour samples converted, a palette or grey scale as the TIFF means it)."""
    page = tif.pages.first
    array = None
    image_series = _image_series(tif)
    if mmap and len(image_series) == 1:
        try:
            array = tifffile.memmap(path, series=tif.series.index(image_series[0]), mode="r")
        except Exception:  # compressed or non-contiguous: read it instead
            array = None
    if array is None:
        if len(image_series) > 1:
            array = np.stack([s.asarray() for s in image_series])
        else:
            array = image_series[0].asarray()
    axes = ("Q" if len(image_series) > 1 else "") + image_series[0].axes
    if "S" in axes and not _samples_are_slices(tif, axes):  # colour samples
        # a planar file's samples come first: _tiff_grey takes them last. (Not by
        # the array's shape: a (Z, 1, 3) stack's last axis is 3 pixels, not colour.)
        array = _tiff_grey(np.moveaxis(array, axes.index("S"), -1), page, path)
    return _as_stored_grey(array, page, path)


def _as_stored_grey(array: np.ndarray, page, path: Path) -> np.ndarray:
    """Grey values as the TIFF means them. A palette of greys is applied (its indices are
    not the image); a colour palette, or MinIsWhite (an inverted grey scale, as ImageJ
    writes for an inverting LUT, whose values may be meant either way), is refused rather
    than read as raw values. A 1-bit MinIsWhite file tifffile wrote (its JSON shape
    description) is a bool array saved with ``tifffile.imwrite``, which stores each
    True as 1 and reads it back so: its values are meant as stored."""
    photometric = int(page.photometric)
    if photometric == 0 and page.bitspersample == 1 and page.is_shaped:
        return array
    if photometric == 0 and page.bitspersample == 1:  # MINISWHITE bilevel, from elsewhere
        raise DataError(path, "stores a 1-bit image as MinIsWhite (0 is white), whose values may "
                        "be meant either way; save a mask as 8-bit grey, 0 and 255 (Python: "
                        "tifffile.imwrite(path, mask.astype('uint8') * 255))")
    if photometric == 0:  # MINISWHITE
        raise DataError(path, "stores an inverted grey scale (MinIsWhite, as ImageJ writes with an "
                        "inverting LUT), whose values may be meant either way; save it with a "
                        "normal LUT (Fiji: Image > Lookup Tables > Invert LUT, then save)")
    if photometric != 3:  # not PALETTE
        return array
    colormap = page.colormap
    if colormap is None or not (np.array_equal(colormap[0], colormap[1])
                                and np.array_equal(colormap[0], colormap[2])):
        raise DataError(path, "is a colour palette (indexed colour) image; save it as greyscale")
    grey = colormap[0].astype(np.uint16)
    if array.dtype == np.uint8:  # TIFF palettes are 16 bit: 8-bit images keep 8-bit greys
        grey = (grey // 257).astype(np.uint8)
    return grey[np.asarray(array)]


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    sitk = nifti.simpleitk()  # only NIfTI users pay for the import

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        with nifti.quiet():
            reader.ReadImageInformation()  # the header only: refuse a huge image before reading it
        shape = tuple(reversed(reader.GetSize()))
        bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        itemsize = int(bits.group(1)) // 8 if bits else 8
        _check_size(path, shape, math.prod(shape) * reader.GetNumberOfComponents() * itemsize)
        nifti.check(path)  # SimpleITK would fill missing voxels with zeros
        with nifti.quiet():
            image = reader.Execute()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read NIfTI ({str(exc).strip().splitlines()[-1]})") from None
    shape = tuple(reversed(image.GetSize()))
    if image.GetDimension() > 3:
        raise DataError(path, f"has {image.GetDimension()} dimensions (shape {shape}); bcseg reads "
                        "2D images and 3D stacks of one channel")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(path, f"has {image.GetNumberOfComponentsPerPixel()} values per voxel "
                        f"(shape {shape}, a colour or vector image); bcseg reads 2D images and "
                        "3D stacks of one channel: save each channel as its own file")
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    # NIfTI stores float32 spacing; round away the float noise (0.2 -> 0.20000000298).
    spacing = tuple(round(float(s), 6) for s in reversed(image.GetSpacing()))
    if array.ndim == 3 and array.shape[0] == 1:
        array, spacing = array[0], spacing[1:]
    return array, spacing


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_chunks(data: bytes) -> tuple[bytes, bytes]:
    """The IHDR body and the joined IDAT bodies of a PNG file's bytes."""
    position, header, pixels = 8, b"", []
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            pixels.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    return header, b"".join(pixels)


def _check_jpeg_size(path: Path) -> None:
    """Refuse a JPEG whose header declares too many pixels, before decoding it."""
    from PIL import Image  # comes with imageio

    try:
        with Image.open(path) as picture:
            width, height = picture.size
            channels = len(picture.getbands())
    except Exception:  # unreadable: the reader reports it
        return
    _check_size(path, (height, width, channels), height * width * channels)


def _check_png(path: Path) -> None:
    """Refuse a PNG that is too large or whose pixel data is short.

    Pillow fills rows missing from a short pixel stream with zeros and reports
    nothing, so a cut copy would read as an image with a black lower part.
    """
    header, pixels = _png_chunks(path.read_bytes())
    if len(header) < 13:
        raise DataError(path, "is not a valid PNG image (its header chunk is missing)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    channels = _PNG_CHANNELS.get(colour, 4)
    if depth == 16 and colour in (2, 4, 6):  # Pillow reads 16-bit colour or grey + alpha
        # at 8 bits per channel
        kind = "grey + alpha" if colour == 4 else "colour"
        warnings.warn(f"{path}: is a 16-bit {kind} PNG, read at 8 bits per channel (the PNG "
                      "reader's limit); save it as a 16-bit grey PNG or a TIFF to keep its precision")
    _check_size(path, (height, width, channels), height * width * channels * max(depth, 8) // 8)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    sizes = [(-(-(height - y0) // dy), -(-(width - x0) // dx)) for x0, y0, dx, dy in passes]
    expected = sum(h * (1 + -(-w * depth * channels // 8)) for h, w in sizes if h > 0 and w > 0)
    try:
        found = len(zlib.decompressobj().decompress(pixels, expected))
    except zlib.error:
        found = -1
    if found < expected:
        held = "cannot be decompressed" if found < 0 else f"holds {found} of {expected} bytes"
        raise DataError(path, f"is truncated or corrupt: its pixel data {held}; "
                        "copy it again from the source")


# Pillow modes read as they are: grey, grey or RGB with alpha, and palettes (which
# imageio expands to RGB or RGBA). Any other (CMYK, YCbCr, LAB, HSV) has bands that
# are not R, G, B: Pillow, which knows their maths, converts it to RGB first.
_PLAIN_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F")


def _pillow_mode(path: Path) -> str | None:
    """Pillow's mode of a PNG or JPEG, once one that is not the one picture it stores
    (turned by an Orientation tag, or animated) is refused."""
    from PIL import Image  # comes with imageio

    try:
        with Image.open(path) as picture:
            mode, kind, frames = picture.mode, picture.format, getattr(picture, "n_frames", 1)
            orientation = picture.getexif().get(0x0112, 1)  # EXIF (JPEG; PNG's eXIf chunk)
            # A palette index past the palette's end is read as black without a word
            # (PNG calls it an error): part of the image, or a mask, would vanish.
            entries = len(picture.getpalette() or ()) // 3 if mode == "P" else 0
            beyond = mode == "P" and picture.getextrema()[1] >= entries
    except Exception:  # unreadable: the reader reports it
        return None
    if beyond:
        raise DataError(path, f"is a corrupt palette PNG: it uses colours past the end of its "
                        f"{entries}-entry palette; save it again from the source")
    if kind == "PNG" and frames > 1:
        # imageio stacks an APNG's frames: a cine loop would be segmented as Z slices.
        # (An MPO JPEG's extra frames are previews or stereo views: its first is read.)
        raise DataError(path, f"is an animated PNG of {frames} frames; a PNG is read as one 2D "
                        "image: save the frame to segment as a plain PNG, or a stack as a "
                        "multi-page TIFF")
    _check_orientation(orientation, path)
    return mode


# How viewers show a picture whose EXIF or TIFF Orientation tag has this value.
_ORIENTATIONS = {2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom",
                 5: "mirrored along its diagonal", 6: "rotated 90° clockwise",
                 7: "mirrored along its other diagonal", 8: "rotated 90° counter-clockwise"}


def _check_orientation(value, path: Path) -> None:
    """Refuse a picture whose Orientation tag makes viewers turn or mirror it.

    bcseg reads pixels as stored; a mask drawn on the picture as shown would mark the
    mirrored place (a 180° turn or a mirror keeps the shape, so nothing else catches
    it). 1 is as stored; 0 and other values are no orientation, and viewers ignore them.
    """
    try:
        shown = _ORIENTATIONS.get(int(value))
    except (TypeError, ValueError):
        return
    if shown:
        raise DataError(path, f"has Orientation {int(value)} in its metadata: viewers show it "
                        f"{shown}, bcseg reads it as stored, so a mask drawn on what is shown "
                        "would not line up; save it with the rotation applied and without the "
                        "Orientation tag")


def _read_plain(path: Path) -> np.ndarray:
    import imageio.v3 as iio  # comes with scikit-image

    if path.suffix.lower() == ".png":
        _check_png(path)
    else:
        _check_jpeg_size(path)
    mode = _pillow_mode(path)
    convert = mode is not None and mode not in _PLAIN_MODES
    # imageio expands a palette to RGB and drops its transparency (tRNS): read with it,
    # or a mask drawn in a palette's transparency alone would read as blank.
    read_as = "RGB" if convert else "RGBA" if mode == "P" else None
    try:
        array = iio.imread(path, mode=read_as) if read_as else iio.imread(path)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0]
        if convert:
            raise DataError(path, f"has colour mode {mode}, which cannot be converted to grey "
                            f"({reason}); save it as grey or RGB") from None
        raise DataError(path, f"cannot read image ({reason})") from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # grey or RGB + alpha, not slices
        array = _drop_alpha(array, path)
    return _to_grey(array)


def read_image(path: str | Path, mmap: bool = False) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Read a 2D image or 3D stack as grey values, with its spacing.

    Parameters
    ----------
    path : str or Path
        PNG, JPEG, TIFF or NIfTI file.
    mmap : bool
        Memory-map an uncompressed TIFF instead of reading it (read-only).

    Returns
    -------
    array : ndarray
        ``(H, W)`` or ``(Z, H, W)`` in the file's own dtype; RGB is converted to grey.
    spacing_mm : tuple of float or None
        mm per array axis, when the file records it.

    Raises
    ------
    DataError
        Missing, empty, corrupt, too large, of 4 or more dimensions, holding NaN, in
        a colour space or compression that cannot be read, drawn in alpha alone, or
        with unusable spacing.
    """
    path = Path(path)
    _check_file(path)
    if _is_tiff(path):
        array, spacing = _read_tiff(path, mmap)
    elif is_nifti(path):
        array, spacing = _read_nifti(path)
    elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        array, spacing = _read_plain(path), None
    else:
        raise DataError(path, f"unsupported file type; use one of {', '.join(IMAGE_SUFFIXES)}")
    if array.ndim not in (2, 3):
        raise DataError(path, f"has {array.ndim} dimensions (shape {array.shape}); "
                        "bcseg reads 2D images and 3D stacks only")
    array = _validate(array, path)
    if spacing is not None and len(spacing) != array.ndim:
        spacing = None
    return array, check_spacing(spacing, path)


def channel_count(path: str | Path) -> int:
    """Number of channels along a C axis of a TIFF (ImageJ hyperstack or OME); 1 otherwise.

    Reads the header only (see :func:`channel_header`).
    """
    return channel_header(path)[0]


def _ome_channel_names(xml: str) -> list[str] | None:
    """The Name of every Channel of the first OME Image, or None where one has none (or
    the XML cannot be parsed: names are a check, not needed to read the pixels)."""
    import xml.etree.ElementTree as ElementTree

    try:
        pixels = ElementTree.fromstring(xml).find("{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        return None
    names = [c.get("Name") for c in pixels.findall("{*}Channel")] if pixels is not None else []
    return names if names and all(names) else None


def channel_header(path: str | Path) -> tuple[int, list[str] | None]:
    """Number of channels along a C axis of a TIFF (1 otherwise), and the channels'
    names where OME metadata gives every one of them (None otherwise).

    Reads the header only.

    Raises
    ------
    DataError
        Missing, empty, not the format its name says, or a TIFF that cannot be read:
        counting it as one channel would blame the channel count for a broken file.
    """
    path = Path(path)
    _check_file(path)
    if not _is_tiff(path):
        return 1, None
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) == 0:
                raise DataError(path, "holds no image")
            # the checks reading makes, from the header: a hyperstack cut short reads as its
            # first page, and was refused as "has 1 channel(s), but channels.json names 2"
            _stored_shape(tif, path)
            series = _image_series(tif)[0]
            axes = series.axes
            count = int(series.shape[axes.index("C")]) if "C" in axes else 1
            names = _ome_channel_names(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
            return count, names if names and len(names) == count else None
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None


def read_channels(path: str | Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Read a TIFF with a channel (C) axis, ImageJ hyperstack or OME-TIFF.

    Returns
    -------
    array : ndarray
        ``(H, W, C)`` or ``(Z, H, W, C)``: channels last, as Keras takes them.
    spacing_mm : tuple of float or None
        mm per spatial axis.

    Raises
    ------
    DataError
        Missing, corrupt or too large, without a C axis, with more than 3
        spatial dimensions, or with unusable spacing.
    """
    path = Path(path)
    _check_file(path)
    if not _is_tiff(path):
        raise DataError(path, "only TIFF files hold a channel axis; store each channel as its own file")
    compression = None
    try:
        with tifffile.TiffFile(path) as tif:
            # read_image's checks and grey values, channel by channel: colour samples (an
            # OME CYXS file) were read as a spatial axis 3 pixels wide, a palette as its
            # indices, and an inverted grey scale or an Orientation tag went unnoticed
            shape, axes = _stored_shape(tif, path)
            if "C" not in axes:
                raise DataError(path, f"has no channel axis (axes {axes})")
            spatial = [n for a, n in zip(axes, shape) if a != "C" and n != 1]
            if len(spatial) not in (2, 3):
                raise DataError(path, f"has {len(spatial)} dimensions besides its channels "
                                f"(shape {tuple(shape)}, axes {axes}); expected 2D or 3D")
            spacing = _tiff_spacing(tif, len(spatial), path)
            compression = tif.pages.first.compression
            _check_codec(compression, path)
            array = np.moveaxis(_grey_pixels(tif, path), axes.index("C"), -1)
    except DataError:
        raise
    except ImportError as exc:  # a decoder whose module is missing (ZSTD before Python 3.14)
        if compression is None:
            raise DataError(path, f"cannot read TIFF ({exc})") from None
        raise _codec_error(compression, path) from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None
    array = array.reshape(tuple(spatial) + (array.shape[-1],))
    # as read_image refuses it: a spacing of 1e-7 mm (nm labelled mm) read from a C axis
    # went into predict's masks and every mm measured on them
    return _validate(array, path), check_spacing(spacing, path)


def open_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Like :func:`read_image`, memory-mapped where tifffile allows (for large stacks)."""
    return read_image(path, mmap=True)


SPACING_TOLERANCE = 1e-3  # relative; spacings stored as float32 or rationals differ in the 7th digit


def same_spacing(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two known spacings (mm per axis) are the same voxel size."""
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=SPACING_TOLERANCE, atol=0))


def spacing_text(spacing: tuple[float, ...]) -> str:
    """``1x0.25x0.25``: a spacing as messages and reports show it (mm)."""
    return "x".join(f"{v:g}" for v in spacing)


def nifti_frame(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Origin (mm) and direction cosines of a NIfTI file, from its header, as read
    (a one-slice file reads as 2D: its in-plane axes only)."""
    sitk = nifti.simpleitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with nifti.quiet():
            reader.ReadImageInformation()
    except Exception as exc:
        raise DataError(path, f"cannot read NIfTI ({str(exc).strip().splitlines()[-1]})") from None
    dim = reader.GetDimension()
    return np.asarray(reader.GetOrigin()), np.reshape(reader.GetDirection(), (dim, dim))


def check_same_frame(path: Path, reference: Path, what: str = "the mask",
                     against: str = "its image") -> None:
    """Refuse a NIfTI file whose voxels lie elsewhere in space than ``reference``'s: a
    mask against its NIfTI image, or a channel against the case's first channel.

    Arrays of the same shape and spacing are compared voxel by voxel, but a NIfTI file
    also places its grid in the scanner's space (origin and axis directions). A mask
    saved with other axes (say, flipped left-right by a tool that rewrote the
    orientation) or shifted by a slice has the right shape and marks the wrong voxels:
    Dice, volumes and margins would be computed on a mirrored or displaced tumour; a
    channel so saved gives the model a mirrored image beside the others.
    TIFF files place nothing in space, so only NIfTI pairs can be checked.
    """
    if not (is_nifti(path) and is_nifti(reference)):
        return
    (m_origin, m_dir), (i_origin, i_dir) = nifti_frame(path), nifti_frame(reference)
    # A 2D file beside a one-slice 3D one (a squeezed mask) shares the in-plane axes only.
    axes = min(len(m_origin), len(i_origin))
    m_origin, i_origin, m_dir, i_dir = m_origin[:axes], i_origin[:axes], m_dir[:axes, :axes], i_dir[:axes, :axes]
    if not np.allclose(m_dir, i_dir, atol=1e-4):
        raise DataError(path, f"{what}'s axes point elsewhere than {against}'s ({reference.name}: NIfTI "
                        f"direction differs), so its voxels are mirrored or turned against {against}; "
                        f"resample {what} onto {against}'s grid")
    if not np.allclose(m_origin, i_origin, atol=1e-3, rtol=1e-5):
        shown = ", ".join(f"{v:g}" for v in m_origin), ", ".join(f"{v:g}" for v in i_origin)
        raise DataError(path, f"{what}'s origin ({shown[0]}) mm differs from {against}'s "
                        f"({reference.name}: {shown[1]}) mm, so its voxels are shifted against "
                        f"{against}; resample {what} onto {against}'s grid")


def read_mask(path: str | Path, expected_shape: tuple[int, ...] | None = None,
              spacings: Sequence[tuple[float, ...] | None] = (),
              image: str | Path | None = None) -> np.ndarray:
    """Read a binary mask as a bool array.

    Any single positive value marks tumour (1, 255, ...). A mask with two or more
    positive values, a shape unlike ``expected_shape``, or a spacing of its own that
    is none of ``spacings`` (its image file's, and one the user gave in its place;
    None entries are unknown and skipped), raises :class:`DataError`. A mask without
    spacing takes its image's: most label tools save none. With ``image`` (the image
    file the mask was drawn on), a NIfTI mask placed elsewhere in space than a NIfTI
    image (another origin or axis directions) is refused too.
    """
    path = Path(path)
    if image is not None:
        check_same_frame(path, Path(image))
    channels = channel_count(path)
    if channels > 1:
        raise DataError(path, f"is a mask with {channels} channels; a mask is one channel "
                        "(0 and one positive label): save the tumour outline alone")
    array, spacing = read_image(path)
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise DataError(path, f"mask shape {tuple(array.shape)} differs from its image "
                        f"shape {tuple(expected_shape)}")
    # Same shape but another voxel size: drawn on a resampled or another stack, or
    # saved with a wrong calibration. Volumes and margins would be measured with the
    # image's spacing either way, so the disagreement must be settled by the user.
    known = [s for s in spacings if s is not None]
    allowed = list(dict.fromkeys(spacing_text(s) for s in known))
    if spacing is not None and known and not any(same_spacing(spacing, s) for s in known):
        raise DataError(path, f"mask spacing {spacing_text(spacing)} mm differs from its image's "
                        f"{' or '.join(allowed)} mm; re-save the mask with its image's spacing, "
                        "or with none")
    values = np.unique(array)
    positive = values[values != 0]
    if len(positive) > 1 or (values < 0).any():
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(path, f"mask is not binary (values {shown}); "
                        "expected 0 and one positive label")
    return array != 0


# --------------------------------------------------------------------------- writing

def imagej_kwargs(shape: tuple[int, ...], spacing_mm: tuple[float, ...] | None) -> dict:
    """tifffile keyword arguments for an ImageJ TIFF that Fiji opens with its spacing."""
    ndim = len(shape)
    metadata: dict = {"axes": "ZYX" if ndim == 3 else "YX"}
    kwargs: dict = {"imagej": True, "metadata": metadata}
    if spacing_mm is not None:
        problem = spacing_problem(spacing_mm, ndim)
        if problem:
            raise ValueError(f"spacing_mm {spacing_mm} for a {ndim}D array: spacing {problem}")
        metadata["unit"] = "mm"
        if ndim == 3:
            metadata["spacing"] = float(spacing_mm[0])
        kwargs["resolution"] = (1.0 / spacing_mm[-1], 1.0 / spacing_mm[-2])
    return kwargs


def _write_nifti(path: Path, array: np.ndarray, spacing_mm, frame=None) -> None:
    sitk = nifti.simpleitk()

    if array.dtype == np.float16:  # ITK has no half floats; float32 holds every value
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(array)
    if spacing_mm is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_mm)))
    if frame is not None and len(frame[0]) == array.ndim:  # where its source lay in space
        image.SetOrigin(tuple(float(v) for v in frame[0]))
        image.SetDirection(tuple(float(v) for v in np.ravel(frame[1])))
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_array(path: str | Path, array: np.ndarray, spacing_mm, force: bool, frame=None) -> Path:
    path = Path(path)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D array, got shape {array.shape}")
    with atomic_path(path, force=force) as tmp:
        if is_nifti(path):
            _write_nifti(tmp, array, spacing_mm, frame)
        elif _is_tiff(path):
            tifffile.imwrite(tmp, array, **imagej_kwargs(array.shape, spacing_mm))
        else:
            raise ValueError(f"{path}: masks and maps are written as .tif or .nii.gz")
    return path


# The TIFF Software tag of every mask predict writes: this, then the digest of the
# model's weights and settings (bcseg.infer.segment.made_with).
MADE_WITH = "bcseg predict, model and settings "


def recorded_made_with(path: str | Path) -> str | None:
    """The model-and-settings digest a mask bcseg predict wrote records, or None (not
    such a mask, or unreadable)."""
    try:
        with tifffile.TiffFile(path) as tif:
            software = tif.pages[0].software or ""
    except Exception:  # tifffile raises many types; unreadable is "not recorded"
        return None
    return software[len(MADE_WITH):] if software.startswith(MADE_WITH) else None


def write_mask(path: str | Path, mask: np.ndarray, spacing_mm=None, force: bool = True,
               frame=None) -> Path:
    """Write a bool mask as uint8 (0/255) TIFF or NIfTI (0/1) with spacing, atomically
    (``frame``: as :func:`write_image`)."""
    mask = np.asarray(mask) != 0
    values = mask.astype(np.uint8) * (1 if is_nifti(Path(path)) else 255)
    return _write_array(path, values, spacing_mm, force, frame)


def write_probability(path: str | Path, prob: np.ndarray, spacing_mm=None, force: bool = True) -> Path:
    """Write a probability map as float32 TIFF or NIfTI with spacing, atomically."""
    return _write_array(path, np.asarray(prob, dtype=np.float32), spacing_mm, force)


def write_image(path: str | Path, image: np.ndarray, spacing_mm=None, force: bool = True,
                frame=None) -> Path:
    """Write a grey image or stack in its own dtype with spacing, atomically; a NIfTI
    file with ``frame`` (origin and direction, :func:`nifti_frame`) lies where that says."""
    return _write_array(path, np.asarray(image), spacing_mm, force, frame)
