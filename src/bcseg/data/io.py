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
refused (:func:`bcseg.data.image_rules.spacing_problem`). Masks are written as uint8
TIFF (0 and 255) carrying ImageJ spacing and unit, so Fiji and napari show them at scale.

This module chooses the reader by the file's name and checks what every format
shares (the file is there, its content is the format its name says); the formats'
own readers are :mod:`bcseg.data.tiff` and :mod:`bcseg.data.png_jpeg` (NIfTI is
read here through SimpleITK, with :mod:`bcseg.data.nifti`'s header checks).
No TensorFlow here.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile

from bcseg.atomic import atomic_path
from bcseg.data import nifti
from bcseg.data.image_rules import (check_pixels, check_size, check_spacing, same_spacing,
                                    spacing_problem, spacing_text)
from bcseg.data.png_jpeg import read_png_jpeg
from bcseg.data.tiff import (ome_channel_names, read_error, read_tiff, read_tiff_channels,
                             series_geometry, series_of_the_image, stored_shape, tiff_spacing)
from bcseg.errors import DataError, not_a_file  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")

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
            return check_spacing(series_geometry(tif, path)[1], path)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise read_error(exc, path) from None


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
                shape, _ = stored_shape(tif, path)
                if len(shape) in (2, 3):
                    return shape, check_spacing(tiff_spacing(tif, len(shape), path), path)
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
        if is_nifti(path):  # as read_image says it, with the cure where ITK gives none
            raise nifti.read_error(path, exc) from None
        raise read_error(exc, path) from None
    array, spacing = read_image(path, mmap=True)
    return tuple(array.shape), spacing


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
        check_size(path, shape, math.prod(shape) * reader.GetNumberOfComponents() * itemsize)
        nifti.check(path)  # SimpleITK would fill missing voxels with zeros
        with nifti.quiet():
            image = reader.Execute()
    except DataError:
        raise
    except Exception as exc:
        raise nifti.read_error(path, exc) from None
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
        array, spacing = read_tiff(path, mmap)
    elif is_nifti(path):
        array, spacing = _read_nifti(path)
    elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        array, spacing = read_png_jpeg(path), None
    else:
        raise DataError(path, f"unsupported file type; use one of {', '.join(IMAGE_SUFFIXES)}")
    if array.ndim not in (2, 3):
        raise DataError(path, f"has {array.ndim} dimensions (shape {array.shape}); "
                        "bcseg reads 2D images and 3D stacks only")
    array = check_pixels(array, path)
    if spacing is not None and len(spacing) != array.ndim:
        spacing = None
    return array, check_spacing(spacing, path)


def channel_count(path: str | Path) -> int:
    """Number of channels along a C axis of a TIFF (ImageJ hyperstack or OME); 1 otherwise.

    Reads the header only (see :func:`channel_header`).
    """
    return channel_header(path)[0]


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
            stored_shape(tif, path)
            series = series_of_the_image(tif)[0]
            axes = series.axes
            count = int(series.shape[axes.index("C")]) if "C" in axes else 1
            names = ome_channel_names(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
            return count, names if names and len(names) == count else None
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise read_error(exc, path) from None


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
    array, spacing = read_tiff_channels(path)
    # as read_image refuses it: a spacing of 1e-7 mm (nm labelled mm) read from a C axis
    # went into predict's masks and every mm measured on them
    return check_pixels(array, path), check_spacing(spacing, path)


def open_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Like :func:`read_image`, memory-mapped where tifffile allows (for large stacks)."""
    return read_image(path, mmap=True)


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
        raise nifti.read_error(path, exc) from None
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


def _stated_plane_spacing(path: Path, ndim: int) -> tuple[float, float] | None:
    """The in-plane (y, x) spacing a 3D TIFF states where it states no slice spacing.

    Such a stack (ImageJ ``unit=`` and resolution without ``spacing=``, OME without
    ``PhysicalSizeZ``) reads as having no spacing, so a mask drawn at another pixel size
    passed the spacing check as one "without spacing" and was measured at its image's.
    """
    if ndim != 3 or not _is_tiff(path):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            plane = tiff_spacing(tif, 2, path)
    except DataError:
        raise
    except Exception:  # read_image has read this file: nothing stated is nothing to compare
        return None
    return check_spacing(plane, path)


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
    plane = _stated_plane_spacing(path, array.ndim) if spacing is None else None
    if plane is not None and known and not any(same_spacing(plane, s[-2:]) for s in known):
        raise DataError(path, f"mask pixel size {spacing_text(plane)} mm (its slice spacing is not "
                        f"stated) differs from its image's {' or '.join(allowed)} mm; re-save the "
                        "mask with its image's spacing, or with none")
    if not known and image is not None:
        # The other way round: the image states its pixel size but no slice spacing, so
        # its spacing reads as none, and a mask stating another pixel size passed.
        image_plane = _stated_plane_spacing(Path(image), array.ndim)
        own = plane if spacing is None else spacing[-2:]
        if image_plane is not None and own is not None and not same_spacing(own, image_plane):
            raise DataError(path, f"mask pixel size {spacing_text(own)} mm differs from its image's "
                            f"{spacing_text(image_plane)} mm (the image states no slice spacing); "
                            "re-save the mask with its image's spacing, or with none")
    values = np.unique(array)
    positive = values[values != 0]
    if len(positive) > 1 or (values < 0).any():
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(path, f"mask is not binary (values {shown}); "
                        "expected 0 and one positive label")
    return array != 0



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
