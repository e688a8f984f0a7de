"""Reading TIFF files: their shape (pages, ImageJ hyperstacks, OME series, colour
samples, a channel axis), their spacing (ImageJ, OME and resolution tags, in any
length unit), their compression, and their pixels as grey values.

Everything here is checked from the header before pixels are read. The public
readers are :mod:`bcseg.data.io`'s, which choose the format by the file's name.

No TensorFlow here.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import tifffile

from bcseg.data.image_rules import (SPACING_TOLERANCE, check_orientation, check_size, cmyk_to_rgb,
                                    drop_alpha, to_grey)
from bcseg.errors import DataError


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
        if unit in _RESOLUTION_UNIT_MM:  # tifffile's MILLIMETER and MICROMETER: no editor
            scale = _RESOLUTION_UNIT_MM[unit]  # stamps these, so no default is ignored
            return (scale / y if y > 0 else math.inf, scale / x if x > 0 else math.inf)
        if unit not in (2, 3):  # 1: no absolute unit
            return None
        per_inch = 2.54 if unit == 3 else 1.0
        if _is_editor_default(x * per_inch) or _is_editor_default(y * per_inch):
            return None
        scale = 10.0 if unit == 3 else 25.4
    # A zero resolution is an infinite spacing: check_spacing refuses it by name.
    return (scale / y if y > 0 else math.inf, scale / x if x > 0 else math.inf)


# ResolutionUnit codes beyond TIFF's 2 (inch) and 3 (cm), mm per unit: tifffile writes
# 4 (MILLIMETER) and 5 (MICROMETER) for resolutionunit='MILLIMETER' or 'MICROMETER', the
# natural choice for a Python user saving spacing in mm. Read as "no unit", such a file's
# spacing was dropped without a word, and a mask so saved at another pixel size than its
# image passed the spacing check as one without spacing.
_RESOLUTION_UNIT_MM = {4: 1.0, 5: 1e-3}


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


def tiff_spacing(tif: tifffile.TiffFile, ndim: int, path: Path) -> tuple[float, ...] | None:
    page = image_page(tif)
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



# NewSubfileType bits of pages that are not the image: 1, a reduced-resolution copy (a
# scanner's thumbnail); 4, a transparency mask (written by image editors). Taken as
# series of their own by tifffile, such a page read as a second slice of the image.
_NOT_THE_IMAGE = 1 | 4


def series_of_the_image(tif: tifffile.TiffFile) -> list:
    """The file's series that hold the image, thumbnails and transparency masks left out
    (all of them if every series is marked so: then none is told apart)."""
    kept = [s for s in tif.series if not int(s.keyframe.subfiletype) & _NOT_THE_IMAGE]
    return kept or list(tif.series)


def image_page(tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The first page of the image, whose tags (spacing, grey scale, palette, compression,
    orientation) are the image's. Not the file's first page: where that is a thumbnail or
    transparency mask left out of the image (a scanner may write its preview first), its
    resolution, Photometric and compression were taken for the image's, so a stack with a
    quarter-size preview first read with 4 times its spacing, and a MinIsWhite image
    behind a plain preview as raw values."""
    return series_of_the_image(tif)[0].keyframe


def _check_complete(tif: tifffile.TiffFile, path: Path) -> None:
    """Raise if the chain of pages goes on past the pages tifffile read, as in a truncated
    copy, a chain that loops, or a page tifffile leaves out.

    tifffile only logs a broken chain and returns the pages it found, so a stack cut
    in half would silently read as its first page(s).
    """
    if tif.is_ndpi or len(tif.pages) == 0:  # NDPI stores offsets its own way
        return
    fmt, handle = tif.tiff, tif.filehandle
    if _next_page(fmt, handle, tif.pages[len(tif.pages) - 1].offset) == 0:
        return  # the last page read is the chain's last
    # Walked whole, the chain tells which: 'the file ends before its last page' for all
    # three sent users looking for a short copy of a whole file.
    count, offset, seen = 0, tif.pages[0].offset, set()
    while offset and offset < handle.size and offset not in seen and count < MAX_PAGES:
        seen.add(offset)
        count += 1
        offset = _next_page(fmt, handle, offset)
    if offset in seen:
        raise DataError(path, f"is corrupt: its chain of pages loops back to an earlier page "
                        f"(offset {offset}) after {count} page(s); copy it again from the "
                        "source, or save it again")
    if offset == 0:
        raise DataError(path, f"holds {count} pages, of which only {len(tif.pages)} could be "
                        "read as its image (a page left out, as tifffile does with the last frame "
                        "of some ScanImage files, or a damaged one); save it again as a plain "
                        "TIFF stack (for example from Fiji)")
    raise DataError(path, f"is truncated or corrupt: the file ends ({handle.size} bytes) "
                    f"before its last page; copy it again from the source")


MAX_PAGES = 1 << 24  # pages walked in a chain that does not end, before it is called corrupt


def _next_page(fmt, handle, offset: int) -> int | None:
    """Where the page after the page (IFD) at ``offset`` starts (0: none), or None where
    the file ends first."""
    handle.seek(offset)
    raw = handle.read(fmt.tagnosize)
    if len(raw) < fmt.tagnosize:
        return None
    tags = struct.unpack(fmt.tagnoformat, raw)[0]
    handle.seek(offset + fmt.tagnosize + tags * fmt.tagsize)
    raw = handle.read(fmt.offsetsize)
    return struct.unpack(fmt.offsetformat, raw)[0] if len(raw) == fmt.offsetsize else None


def stored_shape(tif: tifffile.TiffFile, path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and axes of the file's single image series, RGB samples left out."""
    _check_complete(tif, path)
    image_series = series_of_the_image(tif)
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
    _check_ome_count(tif, path)
    _check_like_pages(tif, path)
    _check_pixel_data(tif, path)
    check_orientation(image_page(tif).tags.valueof(274, 1), path)  # TIFF Orientation
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
    check_size(path, tuple(shape), math.prod(shape) * series.dtype.itemsize)
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
        if not _samples_are_colour(image_page(tif), samples):  # e.g. grey + a second channel
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
    page = image_page(tif)
    return (axes == "SYX" and tif.is_shaped and series_of_the_image(tif)[0].shape[0] in (3, 4)
            and page.photometric == tifffile.PHOTOMETRIC.RGB)


def _planar_array(tif: tifffile.TiffFile, axes: str, shape: list[int]) -> bool:
    """Whether a planar colour file is an array of more than 3 dimensions saved by
    tifffile with its shape noted (Z, 3 or 4, H, W), colour only by tifffile's default:
    see :func:`_samples_are_slices`."""
    # len, not the product of the leading sizes: (1, 3, H, W), one slice of 3 channels,
    # is stored as (Z, 3, H, W) is, and was read as colour (its header as (1, H, W))
    return (tif.is_shaped and axes.endswith("SYX") and len(shape) > 3
            and image_page(tif).photometric == tifffile.PHOTOMETRIC.RGB)


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
    if tif.is_shaped:
        _refuse_uncovered_pages(tif, path, "the shape its description gives", "save the stack "
                                "again without that description (or with the stack's own shape)")


def _refuse_uncovered_pages(tif: tifffile.TiffFile, path: Path, described_by: str,
                            cure: str) -> None:
    """Refuse a file holding more pages than its series (as ``described_by`` makes them)
    account for: tifffile reads the series and drops the pages beyond, without a word."""
    covered = sum(len(s.pages) for s in tif.series)
    if covered < len(tif.pages):
        raise DataError(path, f"holds {len(tif.pages)} pages, but {described_by} accounts for "
                        f"{covered}, so the others would be dropped; {cure}")


def _check_ome_count(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse an OME-TIFF whose OME-XML declares another number of images than it holds.

    tifffile trusts SizeZ, SizeC and SizeT: given more planes than the file holds (a cut
    copy, or XML a tool left unchanged after removing slices) it zero-fills the rest, and
    given fewer it drops the pages beyond, logging either (a log bcseg keeps quiet). A
    4-slice stack declared as 8 read as 8 slices, 4 of them black, without a word; one
    declared as 2 read as its first 2 slices. (The ImageJ and tifffile-shape
    descriptions are checked by _check_imagej_count and _check_shaped_count.)
    """
    if not tif.is_ome:
        return
    for series in tif.series:
        held = sum(page is not None for page in series.pages)
        if held < len(series.pages):
            raise DataError(path, f"is truncated or damaged: its OME metadata declares "
                            f"{len(series.pages)} images (shape {tuple(series.shape)}, axes "
                            f"{series.axes}), the file holds {held}; copy it again from the "
                            "source, or save the stack again so its metadata fits it")
    _refuse_uncovered_pages(tif, path, "its OME metadata (SizeZ, SizeC, SizeT)",
                            "save the stack again so its metadata fits it")


def _check_like_pages(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse a stack whose pages differ in pixel type, grey scale, palette or samples.

    Pages written one by one (one series each) are stacked in a common dtype and read
    with the first page's Photometric and palette: a palette on page 1 would invert a
    plain page 2, a MinIsWhite page 2 would slip past its refusal, and 8-bit slices
    would turn near black beside 16-bit ones. Within one series tifffile groups pages
    by dtype, Photometric and samples, but not by palette: a palette stack is compared
    page by page (reading every page's tags costs about 1 ms a page, so only then), as
    is an ImageJ stack whose pages are not written in one run (:func:`_scattered_imagej`).
    """
    image_series = series_of_the_image(tif)
    if len(image_series) > 1:
        indices = [s.pages[0].index for s in image_series]
    elif int(image_page(tif).photometric) == 3 or _scattered_imagej(tif, image_series[0]):
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


def _check_pixel_data(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse an image whose first page declares a strip or tile of no bytes, or pixels of
    0 bits: tifffile fills such a strip with zeros (a stack of a cut copy read as black,
    without a word) and decodes 0-bit pixels to nothing (ValueError: cannot reshape)."""
    page = image_page(tif)
    if not page.bitspersample or page.dtype is None:
        raise DataError(path, f"is corrupt: its pixels are {page.bitspersample}-bit of sample "
                        f"format {int(page.sampleformat)}, which no image has; copy it again "
                        "from the source")
    counts = list(page.databytecounts)
    if math.prod(page.shape) and counts and min(counts) == 0:
        raise DataError(path, f"is truncated or corrupt: {counts.count(0)} of the {len(counts)} "
                        "strips or tiles of its first page hold no bytes, and would read as "
                        "black; copy it again from the source")


def _scattered_imagej(tif: tifffile.TiffFile, series) -> bool:
    """Whether an ImageJ stack's pages do not lie one after the other, as Fiji writes them.

    tifffile reads every page of an ImageJ series with the first page's pixel type and
    size: a page another tool replaced (a 16-bit slice in an 8-bit stack, kept under the
    ImageJ description) was decoded as 8-bit, half its bytes read as the slice, without
    a word. Such a page breaks the run of pixel data, so only then are the pages compared.
    """
    return tif.is_imagej and len(series.pages) > 1 and series.dataoffset is None


def _same_palette(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or np.array_equal(a, b))


def _kept_axes(shape: tuple[int, ...]) -> list[int]:
    """Indices of the axes bcseg keeps: singleton axes of a 3D+ shape are dropped, down to
    two. Those two hold every pixel: a (Z, 1, 1) column of pixels kept its last two axes,
    (1, 1), and its Z pixels failed to reshape into them (ValueError, exit 1), where
    (Z, 1) is refused as too small to segment, naming the file."""
    kept = [i for i, n in enumerate(shape) if n != 1] if len(shape) > 2 else list(range(len(shape)))
    singletons = [i for i in reversed(range(len(shape))) if i not in kept]
    return sorted(kept + singletons[:max(0, 2 - len(kept))])


def series_geometry(tif: tifffile.TiffFile, path: Path):
    """The (H, W) or (Z, H, W) shape bcseg reads, after checks, and its spacing.

    A (Z, 1, X) stack read as (Z, X) has the spacing (z, x) of those axes.
    """
    stored, axes = stored_shape(tif, path)
    if "C" in axes and stored[axes.index("C")] > 1:
        # Channels are not slices: reading them as a stack would mix modalities. The
        # advice must fit every layout that reaches here: "name its channels in
        # channels.json" told a manifest's user of a file that manifests never read
        # (a manifest cell, like a channel folder's file, is one channel).
        series = series_of_the_image(tif)[0]
        raise DataError(path, f"has {stored[axes.index('C')]} channels (shape "
                        f"{tuple(series.shape)}, axes {series.axes}); a mask has one, and an "
                        "image with several is read as a multi-channel case only from images/ "
                        "with a channels.json beside it naming them: a manifest's image or "
                        "image_<channel> cell, a channel folder's or a _0000 file holds one "
                        "channel, so save each channel as its own file there")
    kept_axes = _kept_axes(stored)
    kept = tuple(stored[i] for i in kept_axes)
    if len(kept) > 3:
        series = series_of_the_image(tif)[0]
        raise DataError(path, f"has {len(kept)} dimensions (shape {tuple(series.shape)}, "
                        f"axes {series.axes}); bcseg reads 2D images and 3D stacks only")
    if len(stored) not in (2, 3):
        return kept, tiff_spacing(tif, len(kept), path)
    spacing = tiff_spacing(tif, len(stored), path)
    if spacing is not None and len(spacing) == len(stored):
        spacing = tuple(spacing[i] for i in kept_axes)
    return kept, spacing


def codec_error(value: int, path: Path) -> DataError:
    """The error for pixels compressed with a codec the installed libraries lack."""
    try:
        name = f"{tifffile.COMPRESSION(value).name} (TIFF code {int(value)})"
    except ValueError:
        name = f"code {int(value)}, unknown to tifffile"
    return DataError(path, f"is compressed with {name}, which the installed libraries cannot "
                     "decompress; re-save it uncompressed or with deflate (zip), or install "
                     "imagecodecs (pip install imagecodecs)")


def check_codec(value: int, path: Path) -> None:
    """Refuse, before decoding, a TIFF whose compression has no decoder here.

    tifffile needs imagecodecs for LZW, JPEG, PNG and more; without it the failure
    names a Python module or a package, not the file's compression.
    """
    if value not in tifffile.TIFF.DECOMPRESSORS:  # resolves the codec
        raise codec_error(value, path)


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
        return to_grey(cmyk_to_rgb(array, path))
    if photometric == _YCBCR and int(page.compression) not in _JPEG_CODES:
        return np.ascontiguousarray(array[..., 0])  # Y is the luma itself
    if photometric not in (0, 1, _RGB, _YCBCR):  # CIELAB, ICCLAB, LogLuv, ...
        raise DataError(path, f"stores colour as {_photometric_name(page)}, which bcseg cannot "
                        "convert to grey; save it as grey or RGB")
    return to_grey(drop_alpha(array, path) if array.shape[-1] in (2, 4) else array)


def read_error(exc: Exception, path: Path, compression: int | None = None) -> DataError:
    """The one line for tifffile's failure ``exc`` on ``path``: it raises many types for
    a corrupt file, and an ImportError where a decoder's module is missing (ZSTD before
    Python 3.14), which is the codec's to name once ``compression`` is known."""
    if isinstance(exc, ImportError) and compression is not None:
        return codec_error(compression, path)
    if "incompatible keyframe" in str(exc):
        # tifffile's words for a page unlike the stack's first (another size or pixel
        # type: a slice another tool replaced), which said nothing of what to do
        return DataError(path, "holds a page of another size or kind than the stack's first "
                         "(tifffile: incompatible keyframe); save the stack with all its "
                         "slices alike")
    return DataError(path, f"cannot read TIFF ({exc})")


def read_tiff(path: Path, mmap: bool) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A TIFF's grey pixels in its stored shape (singleton axes dropped), and spacing."""
    compression = None
    try:
        with tifffile.TiffFile(path) as tif:
            shape, spacing = series_geometry(tif, path)
            compression = image_page(tif).compression
            check_codec(compression, path)
            array = grey_pixels(tif, path, mmap)
    except DataError:
        raise
    except Exception as exc:
        raise read_error(exc, path, compression) from None
    if array.size != math.prod(shape):  # a header tifffile decoded to no pixels (BitsPerSample 0)
        raise DataError(path, f"is corrupt: its header declares {tuple(shape)} pixels, its "
                        f"pixel data decodes to {array.size}; copy it again from the source")
    if array.shape != shape:
        array = array.reshape(shape)
    return array, spacing


def read_tiff_channels(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A TIFF with a channel (C) axis as grey pixels, channels last, and its spacing."""
    compression = None
    try:
        with tifffile.TiffFile(path) as tif:
            # read_tiff's checks and grey values, channel by channel: colour samples (an
            # OME CYXS file) were read as a spatial axis 3 pixels wide, a palette as its
            # indices, and an inverted grey scale or an Orientation tag went unnoticed
            shape, axes = stored_shape(tif, path)
            if "C" not in axes:
                raise DataError(path, f"has no channel axis (axes {axes})")
            spatial = [n for a, n in zip(axes, shape) if a != "C" and n != 1]
            if len(spatial) not in (2, 3):
                raise DataError(path, f"has {len(spatial)} dimensions besides its channels "
                                f"(shape {tuple(shape)}, axes {axes}); expected 2D or 3D")
            spacing = tiff_spacing(tif, len(spatial), path)
            compression = image_page(tif).compression
            check_codec(compression, path)
            array = np.moveaxis(grey_pixels(tif, path), axes.index("C"), -1)
    except DataError:
        raise
    except Exception as exc:
        raise read_error(exc, path, compression) from None
    return array.reshape(tuple(spatial) + (array.shape[-1],)), spacing


def grey_pixels(tif: tifffile.TiffFile, path: Path, mmap: bool = False) -> np.ndarray:
    """The pixels of the file's image series as grey values, in the axes :func:`stored_shape`
    gives (colour samples converted, a palette or grey scale as the TIFF means it)."""
    page = image_page(tif)
    array = None
    image_series = series_of_the_image(tif)
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


def ome_channel_names(xml: str) -> list[str] | None:
    """The Name of every Channel of the first OME Image, or None where one has none (or
    the XML cannot be parsed: names are a check, not needed to read the pixels)."""
    import xml.etree.ElementTree as ElementTree

    try:
        pixels = ElementTree.fromstring(xml).find("{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        return None
    names = [c.get("Name") for c in pixels.findall("{*}Channel")] if pixels is not None else []
    return names if names and all(names) else None
