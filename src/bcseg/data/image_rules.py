"""The rules every image file meets, whatever its format: how many pixel bytes one
file may declare, which spacings are usable, which pixel types are read, and how
colour becomes grey. :mod:`bcseg.data.io` and the format readers beside it
(:mod:`bcseg.data.tiff`, :mod:`bcseg.data.png_jpeg`) share them, as do the
commands that take a spacing from a manifest or the command line.

No TensorFlow here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from bcseg.errors import ConfigError, DataError


# Refuse a file whose header declares more pixel bytes than this, before reading it:
# a tiny corrupt or hostile file can declare terabytes (tiles that all point at one
# small tile). A 400 x 1024 x 1024 uint16 stack is 0.8 GiB. Raise it with the
# environment variable below.
MAX_IMAGE_GIB = 4.0
MAX_IMAGE_ENV = "BCSEG_MAX_IMAGE_GB"
MAX_IMAGE_GIB_LIMIT = 2**34  # 16 EiB: all a 64-bit address space holds
_RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709, as scikit-image
# The voxel sizes a spacing may have, in mm: 0.1 µm to 10 cm. Outside it, the
# metadata has the wrong unit (nm or µm labelled mm) or is garbage, and a margin
# or distance map at that scale would ask for terabytes.
SPACING_RANGE_MM = (1e-4, 100.0)


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


def check_size(path: Path, shape: tuple[int, ...], nbytes: int) -> None:
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


def drop_alpha(array: np.ndarray, path: Path) -> np.ndarray:
    """The colour bands of a grey+alpha or RGBA array (alpha last), alpha dropped.

    An image or mask drawn in the alpha channel alone (constant colour, varying
    transparency) would read as blank, an empty mask passing every check: refuse it.
    """
    colour, alpha = array[..., :-1], array[..., -1]
    if alpha.size == 0:  # no pixels: check_pixels names the shape
        return colour[..., 0] if colour.shape[-1] == 1 else colour
    first = colour.reshape(-1, colour.shape[-1])[0]
    if (colour == first).all() and alpha.min() != alpha.max():
        raise DataError(path, "draws its image or mask in the alpha (transparency) channel only: "
                        "its colour is the same everywhere, so it would read as blank; save it "
                        "as a grey image (a mask: grey 0 and 255) without alpha")
    return colour[..., 0] if colour.shape[-1] == 1 else colour


def cmyk_to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """RGB of unsigned-integer CMYK inks, as Pillow converts them: (max - C)(max - K) / max."""
    if array.dtype.kind != "u":
        raise DataError(path, f"is a CMYK image of type {array.dtype}; save it as grey or RGB")
    top = float(np.iinfo(array.dtype).max)
    ink = array.astype(np.float64)
    rgb = (top - ink[..., :3]) * (top - ink[..., 3:4]) / top
    return np.rint(rgb).astype(array.dtype)


def to_grey(array: np.ndarray) -> np.ndarray:
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


def check_pixels(array: np.ndarray, path: Path) -> np.ndarray:
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


# How viewers show a picture whose EXIF or TIFF Orientation tag has this value.
_ORIENTATIONS = {2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom",
                 5: "mirrored along its diagonal", 6: "rotated 90° clockwise",
                 7: "mirrored along its other diagonal", 8: "rotated 90° counter-clockwise"}


def check_orientation(value, path: Path) -> None:
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


SPACING_TOLERANCE = 1e-3  # relative; spacings stored as float32 or rationals differ in the 7th digit


def same_spacing(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two known spacings (mm per axis) are the same voxel size."""
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=SPACING_TOLERANCE, atol=0))


def spacing_text(spacing: tuple[float, ...]) -> str:
    """``1x0.25x0.25``: a spacing as messages and reports show it (mm)."""
    return "x".join(f"{v:g}" for v in spacing)
