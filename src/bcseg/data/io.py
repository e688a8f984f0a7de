"""Reading and writing images, stacks and masks, with their spacing in mm.

2D images: PNG, JPEG, TIFF (grey or RGB, 8 or 16 bit; RGB becomes grey).
3D stacks: TIFF (multi-page, ImageJ hyperstacks, OME-TIFF), memory-mapped where the
file allows, and NIfTI through SimpleITK. Arrays are ``(H, W)`` or ``(Z, H, W)``.
A TIFF with a channel (C) axis is refused by :func:`read_image` (channels are not
slices) and read by :func:`read_channels`, channels last.

Spacing is a tuple of mm per array axis, read from ImageJ metadata, OME metadata or
resolution tags, or None when the file does not say. Masks are written as uint8 TIFF
(0 and 255) carrying ImageJ spacing and unit, so Fiji and napari show them at scale.
No TensorFlow here.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import tifffile

from bcseg.atomic import atomic_path
from bcseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
# Refuse anything larger than this many voxels rather than exhaust memory
# (about 4 GB as uint8; a 400x1024x1024 stack is 0.42 G voxels).
MAX_VOXELS = 4_000_000_000

_UNIT_TO_MM = {
    "mm": 1.0, "millimeter": 1.0, "millimetre": 1.0,
    "cm": 10.0, "centimeter": 10.0, "m": 1000.0, "meter": 1000.0,
    "um": 1e-3, "µm": 1e-3, "\\u00b5m": 1e-3, "micron": 1e-3, "microns": 1e-3,
    "micrometer": 1e-3, "nm": 1e-6, "inch": 25.4, "in": 25.4,
}
# Image editors stamp these resolutions on every file; they say nothing about
# the anatomy, so an inch-based resolution of exactly these values is ignored.
_DEFAULT_DPI = (72.0, 96.0, 300.0)
_RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709, as scikit-image


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


def image_files(folder: str | Path) -> list[Path]:
    """Supported image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "is not a folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise DataError(path, "is empty (0 bytes)")


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
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(path, f"has unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not isinstance(array, np.memmap):
        if not np.isfinite(array).all():
            raise DataError(path, "contains NaN or infinite values")
    return array


# --------------------------------------------------------------------------- spacing

def _unit_scale(unit: str | None) -> float | None:
    if unit is None:
        return None
    return _UNIT_TO_MM.get(str(unit).strip().lower())


def _resolution_mm(page: tifffile.TiffPage, imagej_unit: str | None) -> tuple[float, float] | None:
    """In-plane (y, x) spacing from the resolution tags, or None."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    xres = tags["XResolution"].value
    yres = tags["YResolution"].value
    x = xres[0] / xres[1] if xres[1] else 0.0
    y = yres[0] / yres[1] if yres[1] else 0.0
    if x <= 0 or y <= 0:
        return None
    if imagej_unit is not None:
        scale = _unit_scale(imagej_unit)
        if scale is None:
            return None
    else:
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
        if int(unit) == 3:
            scale = 10.0
        elif int(unit) == 2 and x not in _DEFAULT_DPI and y not in _DEFAULT_DPI:
            scale = 25.4
        else:
            return None
    return (scale / y, scale / x)


def _ome_spacing(xml: str) -> dict[str, float]:
    """PhysicalSize{X,Y,Z} from OME-XML, converted to mm (OME's default unit is µm)."""
    found = {}
    for axis in "XYZ":
        size = re.search(rf'PhysicalSize{axis}="([^"]+)"', xml)
        if not size:
            continue
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
        scale = _unit_scale(unit.group(1) if unit else "µm")
        if scale is not None:
            found[axis.lower()] = float(size.group(1)) * scale
    return found


def _tiff_spacing(tif: tifffile.TiffFile, ndim: int) -> tuple[float, ...] | None:
    page = tif.pages.first
    if tif.is_ome and tif.ome_metadata:
        ome = _ome_spacing(tif.ome_metadata)
        if "x" in ome and "y" in ome:
            plane = (ome["y"], ome["x"])
            if ndim == 2:
                return plane
            if "z" in ome:
                return (ome["z"],) + plane
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit") if tif.is_imagej else None
    plane = _resolution_mm(page, unit)
    if plane is None:
        return None
    if ndim == 2:
        return plane
    z = ij.get("spacing")
    scale = _unit_scale(unit) if unit is not None else None
    if z is None or scale is None:
        return None
    return (float(z) * scale,) + plane


def read_spacing(path: str | Path) -> tuple[float, ...] | None:
    """Spacing in mm per array axis stored in ``path``, or None if it says none."""
    path = Path(path)
    _check_file(path)
    if _is_nifti(path):
        return read_image(path)[1]
    if not _is_tiff(path):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            shape = _series_shape(tif, path)
            return _tiff_spacing(tif, len(shape))
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None


# --------------------------------------------------------------------------- reading

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


def _series_shape(tif: tifffile.TiffFile, path: Path) -> tuple[int, ...]:
    """The (H, W) or (Z, H, W) shape of the single image series, after checks."""
    _check_complete(tif, path)
    if len(tif.series) == 0:
        raise DataError(path, "holds no image")
    if len(tif.series) > 1 and not tif.is_imagej:
        shapes = [s.shape for s in tif.series]
        if len({s[-2:] for s in shapes}) > 1 or any(len(s) > 2 for s in shapes):
            raise DataError(path, f"holds {len(shapes)} image series {shapes}; "
                            "bcseg reads one image or stack per file")
    series = tif.series[0]
    axes = series.axes
    shape = list(series.shape)
    if len(tif.series) > 1:  # several same-size 2D pages written as separate series
        shape = [len(tif.series)] + shape
        axes = "Q" + axes
    if axes and axes[-1] == "S" and shape[-1] in (3, 4):  # RGB samples
        shape, axes = shape[:-1], axes[:-1]
    if "C" in axes and shape[axes.index("C")] > 1:
        # Channels are not slices: reading them as a stack would mix modalities.
        kept = [n for n in shape if n != 1]
        raise DataError(path, f"has {len(kept)} dimensions with {shape[axes.index('C')]} channels "
                        f"(shape {tuple(series.shape)}, axes {series.axes}); read it as a "
                        "multi-channel case (name its channels in channels.json)")
    kept = [n for n in shape if n != 1] if len(shape) > 2 else shape
    if len(kept) < 2:
        kept = shape[-2:]
    if len(kept) > 3:
        raise DataError(path, f"has {len(kept)} dimensions (shape {tuple(series.shape)}, "
                        f"axes {series.axes}); bcseg reads 2D images and 3D stacks only")
    return tuple(kept)


def _read_tiff(path: Path, mmap: bool) -> tuple[np.ndarray, tuple[float, ...] | None]:
    try:
        with tifffile.TiffFile(path) as tif:
            shape = _series_shape(tif, path)
            if math.prod(shape) > MAX_VOXELS:
                raise DataError(path, f"is too large ({shape}); split it into smaller stacks")
            spacing = _tiff_spacing(tif, len(shape))
            array = None
            if mmap and len(tif.series) == 1:
                try:
                    array = tifffile.memmap(path, mode="r")
                except Exception:  # compressed or non-contiguous: read it instead
                    array = None
            if array is None:
                if len(tif.series) > 1:
                    array = np.stack([s.asarray() for s in tif.series])
                else:
                    array = tif.series[0].asarray()
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None
    array = _to_grey(array) if array.shape[-1] in (3, 4) and array.ndim > len(shape) else array
    if array.shape != shape:
        array = array.reshape(shape)
    return array, spacing


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    import SimpleITK as sitk  # only NIfTI users pay for the import

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header only: refuse a huge image before reading it
        shape = tuple(reversed(reader.GetSize()))
        if math.prod(shape) * reader.GetNumberOfComponents() > MAX_VOXELS:
            raise DataError(path, f"is too large ({shape}); split it into smaller stacks")
        image = reader.Execute()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read NIfTI ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() > 3:
        raise DataError(path, "has more than one channel or 3 dimensions")
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    # NIfTI stores float32 spacing; round away the float noise (0.2 -> 0.20000000298).
    spacing = tuple(round(float(s), 6) for s in reversed(image.GetSpacing()))
    if array.ndim == 3 and array.shape[0] == 1:
        array, spacing = array[0], spacing[1:]
    return array, spacing


def _read_plain(path: Path) -> np.ndarray:
    import imageio.v3 as iio  # comes with scikit-image

    try:
        array = iio.imread(path)
    except Exception as exc:
        raise DataError(path, f"cannot read image ({str(exc).strip().splitlines()[0]})") from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha, not a 2-slice stack
        array = array[..., 0]
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
        Missing, empty, corrupt, too large, of 4 or more dimensions, or holding NaN.
    """
    path = Path(path)
    _check_file(path)
    if _is_tiff(path):
        array, spacing = _read_tiff(path, mmap)
    elif _is_nifti(path):
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
    return array, spacing


def channel_count(path: str | Path) -> int:
    """Number of channels along a C axis of a TIFF (ImageJ hyperstack or OME); 1 otherwise.

    Reads the header only. Unreadable files count as 1 channel: reading them reports why.
    """
    path = Path(path)
    if not _is_tiff(path) or not path.is_file():
        return 1
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            return int(series.shape[axes.index("C")]) if "C" in axes else 1
    except Exception:  # tifffile raises many types for corrupt files
        return 1


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
        Missing, corrupt or too large, without a C axis, or with more than 3
        spatial dimensions.
    """
    path = Path(path)
    _check_file(path)
    if not _is_tiff(path):
        raise DataError(path, "only TIFF files hold a channel axis; store each channel as its own file")
    try:
        with tifffile.TiffFile(path) as tif:
            _check_complete(tif, path)
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            if "C" not in axes:
                raise DataError(path, f"has no channel axis (axes {axes})")
            spatial = [n for a, n in zip(axes, shape) if a != "C" and n != 1]
            if len(spatial) not in (2, 3):
                raise DataError(path, f"has {len(spatial)} dimensions besides its channels "
                                f"(shape {tuple(shape)}, axes {axes}); expected 2D or 3D")
            if math.prod(shape) > MAX_VOXELS:
                raise DataError(path, f"is too large ({tuple(shape)}); split it into smaller stacks")
            spacing = _tiff_spacing(tif, len(spatial))
            array = np.moveaxis(series.asarray(), axes.index("C"), -1)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(path, f"cannot read TIFF ({exc})") from None
    array = array.reshape(tuple(spatial) + (array.shape[-1],))
    return _validate(array, path), spacing


def open_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Like :func:`read_image`, memory-mapped where tifffile allows (for large stacks)."""
    return read_image(path, mmap=True)


def read_mask(path: str | Path, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a binary mask as a bool array.

    Any single positive value marks tumour (1, 255, ...). A mask with two or more
    positive values, or a shape unlike ``expected_shape``, raises :class:`DataError`.
    """
    path = Path(path)
    array, _ = read_image(path)
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise DataError(path, f"mask shape {tuple(array.shape)} differs from its image "
                        f"shape {tuple(expected_shape)}")
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
        if len(spacing_mm) != ndim:
            raise ValueError(f"spacing_mm {spacing_mm} does not match a {ndim}D array")
        metadata["unit"] = "mm"
        if ndim == 3:
            metadata["spacing"] = float(spacing_mm[0])
        kwargs["resolution"] = (1.0 / spacing_mm[-1], 1.0 / spacing_mm[-2])
    return kwargs


def _write_nifti(path: Path, array: np.ndarray, spacing_mm) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    if spacing_mm is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_mm)))
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_array(path: str | Path, array: np.ndarray, spacing_mm, force: bool) -> Path:
    path = Path(path)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D array, got shape {array.shape}")
    with atomic_path(path, force=force) as tmp:
        if _is_nifti(path):
            _write_nifti(tmp, array, spacing_mm)
        elif _is_tiff(path):
            tifffile.imwrite(tmp, array, **imagej_kwargs(array.shape, spacing_mm))
        else:
            raise ValueError(f"{path}: masks and maps are written as .tif or .nii.gz")
    return path


def write_mask(path: str | Path, mask: np.ndarray, spacing_mm=None, force: bool = True) -> Path:
    """Write a bool mask as uint8 (0/255) TIFF or NIfTI (0/1) with spacing, atomically."""
    mask = np.asarray(mask) != 0
    values = mask.astype(np.uint8) * (1 if _is_nifti(Path(path)) else 255)
    return _write_array(path, values, spacing_mm, force)


def write_probability(path: str | Path, prob: np.ndarray, spacing_mm=None, force: bool = True) -> Path:
    """Write a probability map as float32 TIFF or NIfTI with spacing, atomically."""
    return _write_array(path, np.asarray(prob, dtype=np.float32), spacing_mm, force)


def write_image(path: str | Path, image: np.ndarray, spacing_mm=None, force: bool = True) -> Path:
    """Write a grey image or stack in its own dtype with spacing, atomically."""
    return _write_array(path, np.asarray(image), spacing_mm, force)
