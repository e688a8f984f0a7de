"""Surgical margins: how close the tumour comes to the surface of the excised specimen.

About one in five breast-conserving operations is followed by a second one because
tumour reaches the margin of the specimen. Given a tumour mask and a specimen mask on a
3D ultrasound stack ``(Z, H, W)``, :func:`margins` reports the closest distance from the
tumour to the specimen surface, overall and for each of the six faces a surgeon
orients and a pathologist inks: anterior (superficial), posterior (deep), superior,
inferior, medial and lateral.

Definitions (the numbers are only as good as these; say them next to any result)
-------------------------------------------------------------------------------
*Surface.* Enclosed holes in the specimen mask are filled first (a tumour left out of a
tissue label, an air bubble: their walls are inside the specimen, where no ink goes).
The specimen's surface voxels are then the specimen voxels with at least one
background voxel among their 26 neighbours (the same definition as
:func:`bcseg.measure.metrics.surface_distances`). Outside the array counts as background, so
where the specimen touches the edge of the image the "surface" is the edge of the field
of view, not the specimen; a warning names those faces.

*Distance.* The margin is the Euclidean distance in mm, using ``spacing_mm``, from the
centre of the nearest tumour voxel to the centre of the nearest surface voxel. For a
flat face perpendicular to an array axis this equals the gap between the outer edges of
the tumour's and the specimen's voxels (the half voxels on either side cancel); it is
exactly 0 when a tumour voxel lies on the surface (``ink_on_tumour``); on oblique or
curved surfaces it is off by up to about a voxel. It is the same number as the minimum
over the tumour of :func:`scipy.ndimage.distance_transform_edt` of the non-surface
voxels with ``sampling=spacing_mm`` (the tests check this); a k-d tree over the
tumour's own surface voxels computes it, giving the closest pair of points and the six
face-wise minima in one query, without full-volume transforms.

*Faces.* Every surface voxel is given to the face whose outward direction is closest to
its outward normal, the normal being minus the gradient of the specimen mask smoothed
with a Gaussian of ``normal_sigma_mm``. For a box this is exactly its six sides (voxels
within about ``normal_sigma_mm`` of an edge are split along the bisector); for a
rounded specimen each face is the part of the surface that faces that way, as the ink
would be painted. A face's margin is the distance from the tumour to that part only,
and the overall margin is the smallest of the six. The face directions come from an
:class:`Orientation`, default ``z:superior-inferior,y:anterior-posterior,x:medial-lateral``
(rows run from the transducer, superficial, to deep).

*Limits.* The specimen is not a box, and the faces are where the tissue faces, not the
surgeon's sutures: check the orientation of every stack. Ultrasound is not pathology:
the masks are only as good as the segmentation, margins smaller than the voxel size or
than the segmentation's own boundary error cannot be resolved, the specimen deforms on the
coupling medium, and DCIS is often invisible on ultrasound. Use the numbers to direct
attention, not as a margin status.
"""

from __future__ import annotations

import csv
import io as text_io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu

from bcseg import outputs
from bcseg.data import image_rules, io
from bcseg.data.channels import check_agreement, check_channel_name, read_files
from bcseg.data.case_checks import not_utf8
from bcseg.data.cases import IMAGE_CHANNEL
from bcseg.data.geometry import bounding_box, fill_holes, largest_component, surface
from bcseg.atomic import atomic_path, write_text
from bcseg.errors import BcsegError, DataError, UsageError

__all__ = [
    "FACES", "Orientation", "DEFAULT_ORIENTATION", "parse_orientation",
    "check_margin_spacing", "specimen_mask", "margins", "margins_row", "MARGIN_COLUMNS", "write_margins_csv",
    "margin_figure", "margins_for_files",
]

FACES = ("anterior", "posterior", "superior", "inferior", "medial", "lateral")
_OPPOSITE = {"anterior": "posterior", "superior": "inferior", "medial": "lateral"}
_OPPOSITE.update({b: a for a, b in list(_OPPOSITE.items())})
_SYNONYMS = {"superficial": "anterior", "deep": "posterior"}
_AXES = {"z": 0, "y": 1, "x": 2, "0": 0, "1": 1, "2": 2}
_AXIS_LETTER = "zyx"
_SPACING_HINT = "pass spacing_mm=(Z, Y, X), the voxel size in mm"
# A close-margin threshold is a few mm (1-2 in breast-conserving surgery); a lumpectomy
# specimen measures a few cm, so above this every margin is "close": a value in um typed
# as mm, not a threshold.
MAX_CLOSE_MM = 100.0

# Largest Gaussian sigma, in voxels, that margins will smooth with. The sigmas are set
# in mm (``sigma_mm``, ``normal_sigma_mm``: a fraction of a millimetre to a millimetre),
# so in voxels they are ``mm / spacing``: a few to a few tens of voxels for any real
# specimen stack. scipy's kernel is 8 sigma + 1 taps long, allocated as one array and
# run over every voxel: a spacing of 1e-12 mm asked for a 29 TiB kernel, and a few
# thousand voxels already take minutes per axis. A sigma past 4 times the stack's own
# length along an axis smooths that axis flat many times over, which only a wrong
# spacing asks for; 64 voxels are always allowed (thin stacks, small crops), and 1024
# (an 8193-tap kernel) never exceeded, whatever the stack's size.
MAX_SIGMA_VOXELS = 1024
MIN_SIGMA_LIMIT = 64
SIGMA_PER_LENGTH = 4


# ----------------------------------------------------------------------- orientation
def _face_name(word: str) -> str:
    name = _SYNONYMS.get(str(word).strip().lower(), str(word).strip().lower())
    if name not in FACES:
        raise ValueError(f"orientation: unknown face {word!r}; faces are {', '.join(FACES)} "
                         "(or superficial, deep)")
    return name


@dataclass(frozen=True)
class Orientation:
    """Which specimen face lies at each end of each volume axis.

    Parameters
    ----------
    axes : tuple of three (str, str)
        ``axes[i] = (face at index 0 of axis i, face at the last index of axis i)``.
        Each of the three opposite pairs (anterior/posterior, superior/inferior,
        medial/lateral) is used on exactly one axis. "superficial" and "deep" are
        accepted for anterior and posterior.

    Examples
    --------
    >>> o = parse_orientation("z:superior-inferior,y:anterior-posterior,x:medial-lateral")
    >>> o == DEFAULT_ORIENTATION, o.direction("posterior")
    (True, (1, 1))
    """

    axes: tuple = (("superior", "inferior"), ("anterior", "posterior"), ("medial", "lateral"))

    def __post_init__(self):
        if len(self.axes) != 3 or any(len(pair) != 2 for pair in self.axes):
            raise ValueError(f"orientation needs one (low, high) face pair per axis, got {self.axes}")
        axes = tuple(tuple(_face_name(f) for f in pair) for pair in self.axes)
        for low, high in axes:
            if _OPPOSITE[low] != high:
                raise ValueError(f"orientation: {low!r} and {high!r} are not opposite faces; "
                                 "pairs are anterior-posterior, superior-inferior, medial-lateral")
        used = sorted(face for pair in axes for face in pair)
        if used != sorted(FACES):
            raise ValueError(f"orientation: each face pair must be used on exactly one axis, got {axes}")
        object.__setattr__(self, "axes", axes)

    def direction(self, face: str) -> tuple[int, int]:
        """``(axis, sign)`` of a face: sign -1 at index 0 of the axis, +1 at its end."""
        face = _face_name(face)
        for axis, pair in enumerate(self.axes):
            if face in pair:
                return axis, (-1 if pair[0] == face else 1)
        raise AssertionError(face)  # unreachable: every face is on an axis

    def face(self, axis: int, sign: int) -> str:
        """The face at the low (``sign < 0``) or high end of ``axis``."""
        return self.axes[axis][0 if sign < 0 else 1]

    def __str__(self) -> str:
        return ",".join(f"{_AXIS_LETTER[i]}:{lo}-{hi}" for i, (lo, hi) in enumerate(self.axes))


DEFAULT_ORIENTATION = Orientation()


def parse_orientation(text: str) -> Orientation:
    """Parse ``"z:superior-inferior,y:anterior-posterior,x:medial-lateral"``.

    Each of the three comma-separated items is ``axis:low-high``: the axis (``z``,
    ``y``, ``x`` or ``0``, ``1``, ``2``), the face at index 0 of that axis and the face
    at its last index. Case and spaces are ignored.

    Raises
    ------
    ValueError
        Unless every axis and every face pair appears exactly once.
    """
    form = "expected 'z:superior-inferior,y:anterior-posterior,x:medial-lateral'"
    items = [item.strip() for item in str(text).split(",")]
    # An empty item ("...,x:medial-lateral,") is a slip, not a separator to skip.
    if "" in items and any(items):
        raise ValueError(f"orientation {text!r}: has an empty item; {form}")
    items = [item for item in items if item]
    if len(items) != 3:
        raise ValueError(f"orientation {text!r}: needs 3 items, one per axis; {form}")
    axes: dict[int, tuple[str, str]] = {}
    for item in items:
        axis, _, faces = item.partition(":")
        low, dash, high = faces.partition("-")
        if not dash or axis.strip().lower() not in _AXES:
            raise ValueError(f"orientation {text!r}: cannot read {item!r}; {form}")
        index = _AXES[axis.strip().lower()]
        if index in axes:
            raise ValueError(f"orientation {text!r}: axis {_AXIS_LETTER[index]} given twice")
        axes[index] = (low, high)
    try:
        return Orientation(tuple(axes[i] for i in range(3)))
    except ValueError as exc:
        raise ValueError(f"orientation {text!r}: {str(exc).removeprefix('orientation: ')}") from None


def _as_orientation(orientation) -> Orientation:
    if orientation is None:
        return DEFAULT_ORIENTATION
    if isinstance(orientation, Orientation):
        return orientation
    return parse_orientation(orientation)


# -------------------------------------------------------------------- specimen mask
def _sampling(spacing_mm, ndim: int) -> np.ndarray:
    if spacing_mm is None:
        return np.ones(ndim)
    problem = image_rules.spacing_problem(spacing_mm, ndim)
    if problem:
        raise DataError(None, f"spacing_mm {tuple(spacing_mm)}: spacing {problem}")
    return np.asarray(spacing_mm, dtype=float)


def _check_kernel(sigma_mm: float, sampling: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """Refuse a smoothing of ``sigma_mm`` that the spacing makes absurdly many voxels
    wide (see ``MAX_SIGMA_VOXELS``): DataError naming the spacing; the caller names
    the file."""
    sigma = sigma_mm / np.asarray(sampling, float)
    limit = np.minimum(np.maximum(SIGMA_PER_LENGTH * np.asarray(shape), MIN_SIGMA_LIMIT),
                       MAX_SIGMA_VOXELS)
    for axis in np.flatnonzero(sigma > limit):
        raise DataError(None, f"spacing {_by(sampling)} mm makes the {what} of {sigma_mm:g} mm "
                        f"{sigma[axis]:.3g} voxels wide along axis {_AXIS_LETTER[-len(shape):][axis]} "
                        f"(the stack has {shape[axis]}; at most {limit[axis]:g} is allowed): "
                        "that voxel size is implausible; check the spacing (mm per voxel)")


def check_margin_spacing(shape: tuple[int, ...], spacing_mm, sigma_mm: float = 0.5,
                         normal_sigma_mm: float = 1.0) -> None:
    """Refuse, from a stack's shape and spacing alone, a spacing that makes the
    smoothing of :func:`specimen_mask` or of the surface normals in :func:`margins`
    absurdly many voxels wide: DataError naming no file. ``bcseg predict --margins``
    asks this of every stack's header before any mask is written, so such a stack is
    refused up front rather than after its mask stands."""
    sampling = _sampling(spacing_mm, len(shape))
    _check_kernel(sigma_mm, sampling, shape, "smoothing")
    _check_kernel(normal_sigma_mm, sampling, shape, "surface-normal smoothing")


def _ball_open_close(mask: np.ndarray, radius_mm: float, sampling, closing: bool) -> np.ndarray:
    """Opening or closing by a Euclidean ball of ``radius_mm`` (anisotropic voxels),
    through distance transforms, so the cost does not grow with the radius."""
    def within(region: np.ndarray) -> np.ndarray:  # voxels within radius_mm of region
        if not region.any() or region.all():  # the transform needs both values
            return region.copy()
        return ndimage.distance_transform_edt(~region, sampling=sampling) <= radius_mm

    if radius_mm <= 0:
        return mask
    if closing:
        # Outside the image is medium: without a margin of it, tissue that the dilation
        # carries to the edge of the image cannot be eroded back from there, and a
        # specimen within radius_mm of the edge would be glued to the field of view.
        pad = np.ceil(radius_mm / np.asarray(sampling, float)).astype(int) + 1
        inner = tuple(slice(p, p + n) for p, n in zip(pad, mask.shape))
        return ~within(~within(np.pad(mask, [(p, p) for p in pad])))[inner]
    return within(~within(~mask))


def specimen_mask(volume, spacing_mm=None, sigma_mm: float = 0.5, opening_mm: float = 0.5,
                  closing_mm: float = 1.0, max_samples: int = 2_000_000) -> np.ndarray:
    """Find the tissue block in an ultrasound stack: bright speckle in dark medium.

    Gaussian smoothing (``sigma_mm``), an Otsu threshold (on a fixed random subsample
    of at most ``max_samples`` voxels for big stacks), opening by a ball of
    ``opening_mm``, the largest connected component, closing by a ball of
    ``closing_mm``, then hole filling in 3D and slice by slice along every axis, so a
    dark (hypoechoic) tumour inside the tissue is part of the specimen.

    Parameters
    ----------
    volume : array_like, shape (Z, H, W) or (H, W)
        Ultrasound intensities, tissue brighter than the coupling medium.
    spacing_mm : tuple of float, optional
        Voxel size per axis. When None the ``*_mm`` sizes are read as voxels.
    sigma_mm, opening_mm, closing_mm : float
        Smoothing sigma and ball radii in mm (0 switches a step off).
    max_samples : int
        Most voxels the threshold is computed from.

    Returns
    -------
    ndarray of bool
        Same shape as ``volume``. Empty when the volume is constant.

    Notes
    -----
    Dark regions open to the outside are not filled: a tumour that breaks the surface
    in every slice, or acoustic shadowing that runs from the tumour to the deep face.
    Bright structures touching the tissue (a holder, near-field reverberation) are
    not separated from it. Check the mask (it is written next to the margins) before
    trusting the margins.
    """
    volume = np.asarray(volume)
    if volume.ndim not in (2, 3) or not np.issubdtype(volume.dtype, np.number):
        raise ValueError(f"expected a 2D or 3D numeric array, got {volume.dtype} {volume.shape}")
    sampling = _sampling(spacing_mm, volume.ndim)
    if sigma_mm > 0:  # before any array is made: a wrong spacing makes an absurd kernel
        _check_kernel(sigma_mm, sampling, volume.shape, "smoothing")
    smooth = volume.astype(np.float32)
    if sigma_mm > 0:
        smooth = ndimage.gaussian_filter(smooth, sigma=sigma_mm / sampling, mode="nearest")
    if not np.isfinite(smooth).all():
        raise DataError(None, "image holds NaN or infinite values; cannot find the specimen")
    values = smooth.ravel()
    if values.size > max_samples:
        values = values[np.random.default_rng(0).integers(0, values.size, max_samples)]
    if values.min() == values.max():
        return np.zeros(volume.shape, bool)
    # in float64: float32 values from -3e38 to 3e38 (which predict takes) span a range
    # float32 cannot hold, and the histogram's bins could not be made
    mask = smooth > threshold_otsu(values.astype(np.float64))
    del smooth
    mask = _ball_open_close(mask, opening_mm, sampling, closing=False)
    mask = largest_component(mask)
    if not mask.any():
        return mask
    mask = _ball_open_close(mask, closing_mm, sampling, closing=True)
    mask = fill_holes(mask)
    if mask.ndim == 3:
        for axis in range(3):
            mask = fill_holes(mask, plane_axis=axis)
    return mask


# ------------------------------------------------------------------------- margins
def _surface_faces(specimen: np.ndarray, surface_idx: np.ndarray, sampling: np.ndarray,
                   orientation: Orientation, normal_sigma_mm: float) -> np.ndarray:
    """Face index (into FACES) of each surface voxel, by its outward normal."""
    _check_kernel(normal_sigma_mm, sampling, specimen.shape, "surface-normal smoothing")
    sigma = np.maximum(normal_sigma_mm / sampling, 1.0)
    smooth = np.pad(ndimage.gaussian_filter(specimen.astype(np.float32), sigma, mode="constant"), 1)
    idx = surface_idx + 1
    outward = np.empty(surface_idx.shape, float)
    for axis in range(3):
        step = np.zeros(3, int)
        step[axis] = 1
        ahead, behind = idx + step, idx - step
        outward[:, axis] = (smooth[tuple(behind.T)] - smooth[tuple(ahead.T)]) / (2 * sampling[axis])
    flat = np.abs(outward).max(axis=1) <= 1e-6
    if flat.any():  # no usable gradient: fall back to the side of the bounding box
        centre = (np.array(specimen.shape) - 1) / 2
        outward[flat] = (surface_idx[flat] - centre) / np.maximum(np.array(specimen.shape) / 2, 1)
    axis = np.argmax(np.abs(outward), axis=1)
    sign = np.sign(outward[np.arange(len(axis)), axis])
    table = np.array([[FACES.index(orientation.face(a, s)) for s in (-1, 1)] for a in range(3)])
    return table[axis, (sign > 0).astype(int)]


def _empty_face(flag: bool | None = None) -> dict:
    """A margin not measured. Its flags are None, blank in the table: a tumour wholly
    outside the specimen (or no specimen, or a face with no surface) read "ink False,
    close False", a clear margin, beside a distance nobody measured. Where no tumour
    was found (``flag=False``) there is nothing on the ink, nor close to it."""
    return {"distance_mm": math.nan, "ink_on_tumour": flag, "close_margin": flag,
            "tumour_index": None, "tumour_mm": None, "surface_index": None, "surface_mm": None}


def margins(tumour, specimen, spacing_mm, orientation=DEFAULT_ORIENTATION, close_mm: float = 2.0,
            normal_sigma_mm: float = 1.0) -> dict:
    """Closest distance from the tumour to the specimen surface, overall and per face.

    See the module docstring for the definitions of surface, distance and face.

    Parameters
    ----------
    tumour, specimen : array_like of bool, shape (Z, H, W)
        Tumour and specimen masks on the same grid.
    spacing_mm : tuple of 3 float
        Voxel size ``(z, y, x)`` in mm. Required: margins in voxels mislead.
    orientation : Orientation or str
        Which face lies at each end of each axis (see :func:`parse_orientation`).
    close_mm : float
        A margin below this is ``close_margin`` (2 mm: the DCIS guideline).
    normal_sigma_mm : float
        Smoothing of the specimen surface used to decide which way it faces.

    Returns
    -------
    dict
        ``tumour_volume_mm3``, ``specimen_volume_mm3``; the overall ``distance_mm``,
        ``closest_face``, ``ink_on_tumour`` (a tumour voxel on the surface, distance 0)
        and ``close_margin`` (``distance_mm < close_mm``, or ink: ink implies close);
        ``tumour_index``/``tumour_mm`` and ``surface_index``/``surface_mm``, the closest
        pair of voxel centres (index ``(z, y, x)`` and ``index * spacing_mm``);
        ``faces``, the same fields for each of :data:`FACES`; ``close_mm``,
        ``spacing_mm``, ``orientation`` and ``warnings`` (a list of str). An empty
        tumour or specimen, or a tumour wholly outside the specimen, gives NaN
        distances, flags None where a tumour was found (False without one), and a
        warning instead of an error; a tumour partly outside is
        measured from its part inside, with a warning. Enclosed holes in ``specimen``
        are part of it (and of its volume).

    Raises
    ------
    DataError
        ``spacing_mm`` is None or invalid, or the masks are not 3D of one shape.
    """
    tumour, specimen, sampling, orientation = _check_margin_inputs(tumour, specimen, spacing_mm,
                                                                   orientation, close_mm)
    # The surface is the specimen's outside: the walls of an enclosed hole in its mask (the
    # tumour left out of a tissue label, an air bubble) are no surface ink reaches.
    # A specimen mask drawn without its tumour (tissue and tumour as separate labels) holds
    # no tumour voxel. Enclosed, the tumour is a hole that fill_holes brings in; reaching
    # the surface (the inked case) it is a notch open to the outside, and it read as
    # "wholly outside the specimen, no margins" instead of ink on tumour. Such a tumour is
    # tissue: add it, as margins_for_files does for a computed mask. One that touches no
    # tissue lies in the medium and stays outside; one that overlaps the mask was drawn
    # inside it, and any part beyond it is outside, as before.
    if tumour.any() and not (tumour & specimen).any() and _touches(tumour, specimen):
        specimen = specimen | tumour
    specimen = fill_holes(specimen)
    n_tumour, n_specimen = int(np.count_nonzero(tumour)), int(np.count_nonzero(specimen))
    result = _blank_result(n_tumour, n_specimen, sampling, orientation, close_mm)
    warnings = result["warnings"]
    if n_specimen == 0:
        warnings.append("specimen mask is empty; no margins")
    if n_tumour == 0:
        warnings.append("no tumour found")
    if n_specimen == 0 or n_tumour == 0:
        return result
    box = bounding_box(specimen)
    spec = specimen[box]
    inside = tumour[box] & spec
    if not _tumour_inside(inside, n_tumour, warnings):
        return result
    _warn_edges(specimen, orientation, warnings)
    offset = np.array([s.start for s in box])
    _face_margins(result, spec, inside, offset, sampling, orientation, normal_sigma_mm, close_mm)
    return result


def _check_margin_inputs(tumour, specimen, spacing_mm, orientation, close_mm):
    """Masks as bool, spacing as an array and the orientation, checked by parameter name."""
    if spacing_mm is None:
        raise DataError(None, f"voxel spacing unknown, and margins in voxels mislead; {_SPACING_HINT}")
    tumour = np.asarray(tumour) != 0
    specimen = np.asarray(specimen) != 0
    if tumour.ndim != 3 or tumour.shape != specimen.shape:
        raise DataError(None, f"margins need 3D tumour and specimen masks of one shape, got "
                        f"{tumour.shape} and {specimen.shape}")
    if 1 in tumour.shape:  # the command line reads such a stack as 2D and refuses it there
        raise DataError(None, f"margins need a stack at least 2 voxels along each axis, got "
                        f"{tumour.shape}: along an axis of one voxel the specimen has no "
                        "surface of its own, and a tumour at the field's edge read as 0 mm "
                        "on the wrong face")
    sampling = _sampling(spacing_mm, 3)
    orientation = _as_orientation(orientation)
    if not 0 <= close_mm <= MAX_CLOSE_MM:
        raise ValueError(f"close_mm must be from 0 to {MAX_CLOSE_MM:g} mm, got {close_mm} (a "
                         "specimen measures a few cm: every margin would be close)")
    return tumour, specimen, sampling, orientation


def _blank_result(n_tumour: int, n_specimen: int, sampling, orientation: Orientation,
                  close_mm: float) -> dict:
    """A :func:`margins` result with the volumes and no distances yet."""
    voxel_mm3 = float(np.prod(sampling))
    flag = False if n_tumour == 0 else None
    return {"tumour_volume_mm3": n_tumour * voxel_mm3, "specimen_volume_mm3": n_specimen * voxel_mm3,
            "closest_face": "", **_empty_face(flag),
            "faces": {face: _empty_face(flag) for face in FACES},
            "close_mm": float(close_mm), "spacing_mm": tuple(float(s) for s in sampling),
            "orientation": str(orientation), "warnings": []}


def _tumour_inside(inside: np.ndarray, n_tumour: int, warnings: list[str]) -> bool:
    """Whether any tumour lies inside the specimen; warn about the part outside."""
    n_inside = int(np.count_nonzero(inside))
    if n_inside == 0:
        warnings.append("tumour lies wholly outside the specimen mask; no margins")
        return False
    if n_inside < n_tumour:
        out = n_tumour - n_inside
        warnings.append(f"{out} of {n_tumour} tumour voxels ({100 * out / n_tumour:.1f}%) lie outside "
                        "the specimen mask; margins are measured from the part inside")
    return True


def _warn_edges(specimen: np.ndarray, orientation: Orientation, warnings: list[str]) -> None:
    edge_faces = [orientation.face(a, s) for a in range(3) for s, i in ((-1, 0), (1, -1))
                  if np.take(specimen, i, axis=a).any()]
    if edge_faces:
        warnings.append("specimen touches the edge of the image on the " + ", ".join(edge_faces)
                        + " side(s); margins there are measured to the edge of the field of view")


def _face_margins(result: dict, spec: np.ndarray, inside: np.ndarray, offset: np.ndarray, sampling,
                  orientation: Orientation, normal_sigma_mm: float, close_mm: float) -> None:
    """Fill ``result["faces"]`` with the closest tumour-surface pair of each face, and
    the overall margin with the closest of them."""
    surface_idx = np.argwhere(surface(spec))
    face_of = _surface_faces(spec, surface_idx, sampling, orientation, normal_sigma_mm)
    # The nearest tumour voxel to any outside point is on the tumour's own surface.
    tbox = bounding_box(inside)
    toffset = np.array([s.start for s in tbox])
    tumour_idx = np.argwhere(surface(inside[tbox])) + toffset
    # One query: for every surface voxel, its nearest tumour voxel. (The tree holds
    # the compact tumour; querying the shell-shaped surface into it prunes well.)
    distance, nearest = cKDTree(tumour_idx * sampling).query(surface_idx * sampling, k=1)
    for number, face in enumerate(FACES):
        mine = np.flatnonzero(face_of == number)
        if len(mine) == 0:
            result["warnings"].append(f"no surface faces {face}; no margin for that face")
            continue
        best = mine[int(np.argmin(distance[mine]))]
        t_index, s_index = tumour_idx[nearest[best]] + offset, surface_idx[best] + offset
        d = float(distance[best])
        result["faces"][face] = {
            "distance_mm": d, "ink_on_tumour": d == 0.0,
            # ink is the closest margin of all: close at every --close-mm, 0 included
            "close_margin": d < close_mm or d == 0.0,
            "tumour_index": tuple(int(i) for i in t_index),
            "tumour_mm": tuple(float(v) for v in t_index * sampling),
            "surface_index": tuple(int(i) for i in s_index),
            "surface_mm": tuple(float(v) for v in s_index * sampling)}
    found = [f for f in FACES if not math.isnan(result["faces"][f]["distance_mm"])]
    closest = min(found, key=lambda f: result["faces"][f]["distance_mm"])
    result.update(result["faces"][closest], closest_face=closest)


# ---------------------------------------------------------------------------- table
def _point_columns(prefix: str) -> list[str]:
    return [f"{prefix}_{a}" for a in _AXIS_LETTER] + [f"{prefix}_{a}_mm" for a in _AXIS_LETTER]


MARGIN_COLUMNS = (["case", "tumour_volume_mm3", "specimen_volume_mm3", "distance_mm", "closest_face",
                   "ink_on_tumour", "close_margin"] + _point_columns("tumour") + _point_columns("surface")
                  + [f"{face}_{what}" for face in FACES for what in ("mm", "ink", "close")]
                  + ["close_mm", "spacing_mm", "orientation", "warnings"])


def margins_row(result: Mapping) -> dict:
    """Flatten a :func:`margins` result into one CSV row (see ``MARGIN_COLUMNS``)."""
    row = {"case": result.get("case", ""), "closest_face": result["closest_face"],
           "ink_on_tumour": result["ink_on_tumour"], "close_margin": result["close_margin"],
           "close_mm": result["close_mm"], "orientation": result["orientation"],
           "spacing_mm": " ".join(f"{s:g}" for s in result["spacing_mm"]),
           "warnings": "; ".join(result["warnings"])}
    for key in ("tumour_volume_mm3", "specimen_volume_mm3", "distance_mm"):
        row[key] = result[key]
    for prefix in ("tumour", "surface"):
        index, mm = result[f"{prefix}_index"], result[f"{prefix}_mm"]
        for i, axis in enumerate(_AXIS_LETTER):
            row[f"{prefix}_{axis}"] = "" if index is None else index[i]
            row[f"{prefix}_{axis}_mm"] = "" if mm is None else mm[i]
    for face in FACES:
        entry = result["faces"][face]
        row.update({f"{face}_mm": entry["distance_mm"], f"{face}_ink": entry["ink_on_tumour"],
                    f"{face}_close": entry["close_margin"]})
    return row


def _cell(value) -> str:
    # Ten significant digits, not a fixed number of decimals: at 0.02 mm voxels a tumour
    # of 27 voxels is 0.000216 mm^3, which four decimals wrote as 0.0002, and one voxel as 0.
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return "" if value is None else str(value)  # a flag of a margin not measured


def write_margins_csv(rows: Iterable[Mapping], path: str | Path, force: bool = True) -> Path:
    """Write one row per specimen to ``path`` atomically.

    ``rows`` are :func:`margins` / :func:`margins_for_files` results (with a
    ``case`` key) or rows already flattened by :func:`margins_row`. NaN is written as
    an empty cell.
    """
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MARGIN_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = margins_row(row) if "faces" in row else row
        writer.writerow({key: _cell(flat.get(key, "")) for key in MARGIN_COLUMNS})
    return write_text(path, buffer.getvalue(), force=force)


def merge_margins_csv(rows: Iterable[Mapping], path: str | Path,
                      replace_cases: Iterable[str] = ()) -> Path | None:
    """Merge rows into a summary CSV shared by several runs: one row per case.

    Rows already in ``path`` are kept, except those of the cases in ``rows`` and in
    ``replace_cases`` (cases whose mask was made again, so their old row is stale).
    Returns the path, or None when no row is left: nothing is written then (a table
    holding only its header would claim margins were measured), and the caller decides
    whether the old table goes.
    """
    path = Path(path)
    kept = []
    if path.is_file():
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                kept = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(path, f"cannot read the margins table to add rows to it ({exc})") from None
    new = [margins_row(row) if "faces" in row else dict(row) for row in rows]
    drop = set(replace_cases) | {str(row.get("case", "")) for row in new}
    merged = [row for row in kept if row.get("case") not in drop] + new
    if not merged:
        return None
    return write_margins_csv(sorted(merged, key=lambda row: str(row.get("case", ""))), path)


# --------------------------------------------------------------------------- figure
def _plane_name(orientation: Orientation, axis: int) -> str:
    pair = set(orientation.axes[axis])
    return {"superior": "axial", "medial": "sagittal", "anterior": "coronal"}[
        next(f for f in ("superior", "medial", "anterior") if f in pair)]


def margin_figure(image, tumour, specimen, result: Mapping, path: str | Path, spacing_mm,
                  force: bool = True) -> Path:
    """Three orthogonal slices through the closest tumour point, saved as PNG.

    Each panel shows the image with the specimen (cyan) and tumour (red) contours, the
    closest tumour point, the closest surface point and the line between them
    (projected onto the panel when the surface point lies off it), with the face names
    on the panel sides. Without a tumour the slices pass through the middle of the
    specimen. Written atomically; distances on the axes are in mm.
    """
    from matplotlib.figure import Figure

    image = np.asarray(image)
    tumour, specimen = np.asarray(tumour) != 0, np.asarray(specimen) != 0
    sampling = _sampling(spacing_mm, 3)
    orientation = _as_orientation(result.get("orientation"))
    if result.get("tumour_index") is not None:
        centre = np.array(result["tumour_index"])
    elif specimen.any():
        centre = np.array([(s.start + s.stop - 1) // 2 for s in bounding_box(specimen)])
    else:
        centre = np.array(image.shape) // 2
    fig = Figure(figsize=(13, 4.8), dpi=100, layout="constrained")
    for panel, axis in enumerate(range(3)):
        ax = fig.add_subplot(1, 3, panel + 1)
        rows, cols = [a for a in range(3) if a != axis]
        take = [slice(None)] * 3
        take[axis] = int(centre[axis])
        picture = image[tuple(take)].astype(float)
        low, high = np.percentile(picture, (1, 99)) if picture.size else (0, 1)
        nr, nc = picture.shape
        sr, sc = sampling[rows], sampling[cols]
        ax.imshow(picture, cmap="gray", vmin=low, vmax=max(high, low + 1e-9), interpolation="nearest",
                  extent=(-sc / 2, (nc - 0.5) * sc, (nr - 0.5) * sr, -sr / 2))
        xs, ys = np.arange(nc) * sc, np.arange(nr) * sr
        for mask, colour in ((specimen, "cyan"), (tumour, "red")):
            cut = mask[tuple(take)]
            if cut.any() and not cut.all():
                ax.contour(xs, ys, cut.astype(float), levels=[0.5], colors=colour, linewidths=1)
        if result.get("surface_index") is not None:
            t, s = np.array(result["tumour_index"]), np.array(result["surface_index"])
            ax.plot([t[cols] * sc, s[cols] * sc], [t[rows] * sr, s[rows] * sr], "-", color="yellow", lw=1.5)
            ax.plot(t[cols] * sc, t[rows] * sr, "o", color="red", ms=4)
            ax.plot(s[cols] * sc, s[rows] * sr, "x", color="yellow", ms=6)
        ax.set_title(f"{_plane_name(orientation, axis)}: {_AXIS_LETTER[axis]} = {int(centre[axis])}", fontsize=10)
        ax.set_xlabel(f"{_AXIS_LETTER[cols]} (mm): {orientation.axes[cols][0]} \u2192 {orientation.axes[cols][1]}")
        ax.set_ylabel(f"{_AXIS_LETTER[rows]} (mm): {orientation.axes[rows][0]} \u2192 {orientation.axes[rows][1]}")
    # the case is a file's stem, not math: a stack named 's$^{$' failed the command after
    # measuring it ("ValueError: ... ParseSyntaxException", naming no file)
    fig.suptitle(_figure_title(result), fontsize=11, parse_math=False)
    fig.supxlabel("cyan: specimen   red: tumour   yellow: closest margin, tumour point (o) to "
                  "surface point (x), projected onto each slice", fontsize=9)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def _figure_title(result: Mapping) -> str:
    """The case, the channel shown, and the closest margin with its flag."""
    name = result.get("case") or ""
    if result.get("display_channel"):
        name += f" (shown: channel {result['display_channel']})"
    if math.isnan(result.get("distance_mm", math.nan)):
        headline = "; ".join(result.get("warnings", [])) or "no margin"
    else:
        flag = ("ink on tumour" if result["ink_on_tumour"]
                else f"close (< {result['close_mm']:g} mm)" if result["close_margin"] else "clear")
        headline = f"closest margin {result['distance_mm']:.2f} mm, {result['closest_face']} face: {flag}"
    return f"{name}  {headline}".strip()


# ---------------------------------------------------------------------------- files
def _touches(tumour: np.ndarray, tissue: np.ndarray) -> bool:
    """True when some tumour voxel lies in or next to (26-connected) the tissue."""
    if not tumour.any():
        return True
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in bounding_box(tumour))
    grown = ndimage.binary_dilation(tumour[box], structure=np.ones((3,) * tumour.ndim, bool))
    return bool((grown & tissue[box]).any())


def margins_for_files(image_path, tumour_path: str | Path, out_dir: str | Path,
                      specimen_path: str | Path | None = None, spacing_mm=None, orientation=None,
                      close_mm: float = 2.0, force: bool = False,
                      display_channel: str | None = None, case: str | None = None) -> dict:
    """Margins for one stack on disk: CSV row, figure and (when computed) specimen mask.

    Writes ``<stem>_margins.csv``, ``<stem>_margins.png`` and, when ``specimen_path``
    is None, ``<stem>_specimen.tif`` from :func:`specimen_mask`, all into ``out_dir``
    and atomically. ``spacing_mm`` overrides the spacing stored in the image file.

    ``image_path`` is the stack's file, or its channels by name, in order (``{"us":
    "us/S01.tif", "pa": "pa/S01.tif"}``; a channel stored as plane ``i`` of a file's C
    axis as ``(path, i)``). Margins are measured on the masks; a specimen mask not
    given is found in the first channel (tissue bright against the medium); the figure
    draws ``display_channel`` (default the first).

    ``case`` names the outputs and the row (``<case>_margins.csv``); by default the
    first channel's file stem. ``bcseg predict --margins`` passes the name of the
    case's mask (:func:`bcseg.infer.segment.output_name`), a case's id: the cases of
    a manifest may share file names.

    Returns
    -------
    dict
        The :func:`margins` result, ``case``, ``outputs`` (name -> path) and, for
        named channels, ``display_channel``.

    Raises
    ------
    UsageError
        An output exists and not ``force`` (or bcseg did not write it), the output
        folder is a file, a bad ``orientation``, or an unknown ``display_channel``.
    DataError
        Unreadable files, shapes that differ (channels too), a 2D image, no spacing, or
        a spacing that makes the smoothing absurdly many voxels wide.
    """
    # nor among a dataset's masks (inside predict's own folder, predict checked that)
    channels = _channel_paths(image_path)
    out_dir = outputs.check_output_folder(out_dir, command="margins")
    display = _display_channel(channels, display_channel)
    orientation = _check_request(orientation, close_mm)
    image_file = _file_of(next(iter(channels.values())))
    case = io.file_stem(image_file) if case is None else str(case)
    problem = not_utf8(case)  # it names the CSV's row
    if problem:
        raise DataError(image_file, f"names its outputs '{case[:60]}', which {problem}; "
                        "rename the file")
    written = {"csv": out_dir / f"{case}_margins.csv", "png": out_dir / f"{case}_margins.png"}
    if specimen_path is None:
        written["specimen"] = out_dir / f"{case}_specimen.tif"
    inputs = [*map(_file_of, channels.values()), tumour_path, specimen_path]
    outputs.check_replaceable(written.values(), force, command="margins", inputs=inputs)
    if not outputs.held_here(out_dir):  # predict --margins writes into predict's own folder
        outputs.refuse_whole_result(out_dir, "margins")  # as predict: never into a run's folders
    arrays, spacing, file_spacing = _read_stack(channels, spacing_mm)
    image = next(iter(arrays.values()))
    # masks are drawn on the image's voxels: a mask stating a spacing other than the image
    # file's, or than the --spacing given in its place, is refused
    allowed = (file_spacing, spacing)
    tumour = io.read_mask(tumour_path, expected_shape=image.shape, spacings=allowed,
                          image=image_file)
    try:
        specimen = _specimen_for(image, tumour, specimen_path, spacing, allowed, image_file)
        result = margins(tumour, specimen, spacing, orientation, close_mm)
    except BcsegError as exc:  # from arrays, naming no file: the image is at fault
        if exc.path is not None:
            raise
        raise type(exc)(image_file, exc.problem) from None
    result["case"] = case
    if list(channels) != [IMAGE_CHANNEL]:  # named channels: say which one the figure shows
        result["display_channel"] = display
    if spacing_mm is not None and file_spacing is not None and not np.allclose(spacing, file_spacing):
        result["warnings"].append(f"spacing {_by(spacing)} mm given overrides the file's "
                                  f"{_by(file_spacing)} mm")
    # All or nothing: the figure takes a third of the run, so a Ctrl-C often lands after
    # the table; a table without its figure, or a new table beside the old figure, must
    # never be left looking like one result. The old result goes first for the same reason.
    with outputs.claim(out_dir, "margins", all_or_nothing=True):
        outputs.check_replaceable(written.values(), force, command="margins", inputs=inputs)
        if force:
            outputs.remove_owned(written.values())
        if specimen_path is None:
            io.write_mask(written["specimen"], specimen, spacing_mm=spacing)
        elif force:  # a specimen mask computed by an earlier run no longer matches the row
            computed = out_dir / f"{case}_specimen.tif"
            # margins' own only: one that predict --margins computed is predict's result;
            # and never an input (an earlier run's specimen mask given as --tumour was deleted)
            if not outputs.input_test(inputs)(computed):
                outputs.remove_owned([computed], by=("margins",))
        write_margins_csv([result], written["csv"])
        margin_figure(arrays[display], tumour, specimen, result, written["png"], spacing)
    result["outputs"] = {name: str(p) for name, p in written.items()}
    return result


def _by(spacing) -> str:
    return " x ".join(f"{v:g}" for v in spacing)


def _check_request(orientation, close_mm: float) -> Orientation:
    """The orientation, after checking it and ``close_mm``; UsageError naming either."""
    try:
        orientation = _as_orientation(orientation)
    except ValueError as exc:
        raise UsageError(None, str(exc)) from None
    if not close_mm >= 0:
        raise UsageError(None, f"close_mm must be >= 0 mm, got {close_mm}")
    return orientation


def _channel_paths(image_path) -> dict[str, Path | tuple[Path, int]]:
    """Channel name -> file, or (file, plane of its C axis): ``{"image": path}`` for a
    stack of one unnamed channel."""
    if isinstance(image_path, (str, Path)):
        return {IMAGE_CHANNEL: Path(image_path)}
    channels = {check_channel_name(name, None): (Path(where[0]), int(where[1]))
                if isinstance(where, tuple) else Path(where) for name, where in dict(image_path).items()}
    if not channels:
        raise UsageError(None, "image_path names no channels")
    return channels


def _file_of(where: Path | tuple[Path, int]) -> Path:
    return where[0] if isinstance(where, tuple) else where


def _display_channel(channels: Mapping[str, Path], display_channel: str | None) -> str:
    if display_channel is None:
        return next(iter(channels))
    if display_channel not in channels:
        raise UsageError(None, f"display_channel {display_channel!r} is not a channel of the stack; "
                         f"it has {', '.join(map(repr, channels))}")
    return display_channel


def _read_stack(channels: Mapping[str, Path], spacing_mm) -> tuple[dict[str, np.ndarray], tuple[float, ...],
                                                                  tuple | None]:
    """Every channel (of one shape and spacing), the spacing to use (``spacing_mm``
    or the files') and the files' own."""
    names, paths = list(channels), [_file_of(where) for where in channels.values()]
    arrays, spacings = read_files([(name, *(where if isinstance(where, tuple) else (where, None)))
                                   for name, where in channels.items()])
    image_path, image = paths[0], arrays[0]
    if image.ndim != 3:
        raise DataError(image_path, f"margins need a 3D stack (Z, H, W), got shape {image.shape}")
    file_spacing = check_agreement(names, paths, arrays, spacings)
    spacing = spacing_mm if spacing_mm is not None else file_spacing
    if spacing is None:
        raise DataError(image_path, f"voxel spacing unknown, and margins in voxels mislead; {_SPACING_HINT}")
    try:
        spacing = tuple(float(s) for s in _sampling(spacing, 3))
    except DataError as exc:
        raise DataError(image_path, exc.problem) from None
    return dict(zip(names, arrays)), spacing, file_spacing


def _specimen_for(image: np.ndarray, tumour: np.ndarray, specimen_path, spacing,
                  allowed_spacings=(), image_file=None) -> np.ndarray:
    """The specimen mask from ``specimen_path``, or found in the image with the tumour in it."""
    if specimen_path is not None:
        return io.read_mask(specimen_path, expected_shape=image.shape, spacings=allowed_spacings,
                            image=image_file)
    # The tumour is tissue by definition. A hypoechoic tumour that reaches the
    # surface is open to the medium, so hole filling cannot bring it into the
    # thresholded mask: add it, or every such case would read as "outside".
    tissue = specimen_mask(image, spacing)
    # ... but a tumour that touches no tissue at all lies in the coupling medium:
    # adding it would make it a specimen of its own, reported as ink on tumour.
    return tissue | tumour if _touches(tumour, tissue) else tissue
