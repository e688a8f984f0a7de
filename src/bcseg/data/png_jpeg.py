"""Reading PNG and JPEG pictures (BUSI's format) as grey values, with the checks made
from their headers first: declared size, interlacing, colour mode, and an EXIF
orientation that would show the picture turned.

No TensorFlow here.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from bcseg.data.image_rules import check_orientation, check_size, drop_alpha, to_grey
from bcseg.errors import DataError


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
    check_size(path, (height, width, channels), height * width * channels)


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
    check_size(path, (height, width, channels), height * width * channels * max(depth, 8) // 8)
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
    check_orientation(orientation, path)
    return mode


def read_png_jpeg(path: Path) -> np.ndarray:
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
        array = drop_alpha(array, path)
    return to_grey(array)
