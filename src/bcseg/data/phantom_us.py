"""Realistic specimen ultrasound: the ``realistic`` difficulty of the phantom.

The image is formed in the steps a scanner takes, simplified:

1. an echogenicity map (mean backscattered intensity): fibroglandular tissue with
   darker fat lobules, bright septa and Cooper's ligaments (thin sheets), and a
   tumour from hypoechoic to nearly isoechoic against its surroundings,
   heterogeneous inside, with a circumscribed, lobulated or spiculated margin;
   optionally a marker clip and reverberation of the specimen's top surface;
2. scatterers: a circular complex Gaussian field weighted by the square root of the
   echogenicity, convolved with a Gaussian point-spread function (PSF) that is
   longer laterally (beam width) and in elevation (slice thickness, so neighbouring
   slices share speckle) than axially (pulse length);
3. attenuation with depth, a posterior shadow or enhancement below the tumour,
   electronic noise, then time-gain compensation (TGC);
4. envelope detection and log compression into 8 bits over a 45-60 dB range.

Because step 2 is a linear filter of a circular Gaussian field, the envelope of a
homogeneous region is Rayleigh distributed: fully developed speckle, with
SNR = mean / sd = sqrt(pi / (4 - pi)) = 1.91, and an intensity autocorrelation that
is a Gaussian with the PSF's sd along each axis. tests/test_phantom_v2.py measures
both. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bcseg.data.phantom_shapes import tumour_blob

# sd of the amplitude PSF in mm: elevation (slice thickness), axial, lateral.
PSF_SIGMA_MM = (0.8, 0.15, 0.35)
MARGINS = ("circumscribed", "lobulated", "spiculated")
POSTERIOR = ("shadow", "enhancement", "none")
IN_PLANE = ndimage.generate_binary_structure(2, 1)[None]  # 4-neighbours within a slice


@dataclass(frozen=True)
class Scan:
    """Scanner settings of one B-mode acquisition.

    Attributes
    ----------
    attenuation_db_mm : float
        Two-way attenuation of the tissue, dB per mm of depth.
    tgc_db_mm : float
        Time-gain compensation, dB per mm (a little under or over the attenuation).
    noise : float
        sd of the complex electronic noise, relative to tissue amplitude 1.
    dynamic_range_db : float
        Range of the log compression mapped onto 0-255.
    headroom_db : float
        How far below full scale the brightest 0.1 % of echoes sit.
    """

    attenuation_db_mm: float = 0.0
    tgc_db_mm: float = 0.0
    noise: float = 0.0
    dynamic_range_db: float = 50.0
    headroom_db: float = 6.0


def draw_scan(rng: np.random.Generator) -> Scan:
    """Random but plausible scanner settings for one specimen."""
    attenuation = rng.uniform(0.2, 0.5)
    return Scan(attenuation_db_mm=attenuation, tgc_db_mm=attenuation * rng.uniform(0.75, 1.1),
                noise=rng.uniform(0.0003, 0.001), dynamic_range_db=rng.uniform(45, 60),
                headroom_db=rng.uniform(6, 12))


def vox(mm, spacing_mm) -> tuple[float, ...]:
    """A length in mm (one per axis, or one for all) as voxels along each axis."""
    mm = np.broadcast_to(np.asarray(mm, dtype=float), (len(spacing_mm),))
    return tuple(float(m / s) for m, s in zip(mm, spacing_mm))


def smooth_field(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Zero-mean, unit-sd random field with Gaussian correlation of ``sigma_vox``.

    Like :func:`bcseg.data.phantom_shapes.smooth_noise` (periodic, as its ``wrap``
    mode), but filtered in the Fourier domain, so a wide field costs no more than a
    narrow one.
    """
    spectrum = np.fft.rfftn(rng.standard_normal(shape))
    spectrum = ndimage.fourier_gaussian(spectrum, sigma_vox, n=shape[-1])
    field = np.fft.irfftn(spectrum, s=shape, axes=range(len(shape)))
    return (field - field.mean()) / (field.std() + 1e-12)


def speckle(rng: np.random.Generator, amplitude: np.ndarray, sigma_vox) -> np.ndarray:
    """Complex echo field: circular Gaussian scatterers weighted by ``amplitude``, through the PSF.

    Scaled so that the mean of ``|field|**2`` equals ``amplitude**2`` in a homogeneous
    region; ``|field|`` is then Rayleigh distributed (fully developed speckle).
    """
    shape = amplitude.shape
    field = np.empty(shape, np.complex128)
    field.real = ndimage.gaussian_filter(rng.standard_normal(shape) * amplitude, sigma_vox, mode="wrap")
    field.imag = ndimage.gaussian_filter(rng.standard_normal(shape) * amplitude, sigma_vox, mode="wrap")
    return field / np.sqrt(2 * filter_energy(sigma_vox))


def filter_energy(sigma_vox) -> float:
    """Sum of the squared impulse response of a Gaussian filter: the variance it leaves
    of unit white noise."""
    size = tuple(2 * int(np.ceil(4 * s)) + 1 for s in sigma_vox)
    impulse = np.zeros(size)
    impulse[tuple(n // 2 for n in size)] = 1.0
    return float((ndimage.gaussian_filter(impulse, sigma_vox) ** 2).sum())


def bmode(rng, echo: np.ndarray, scan: Scan, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """Form the B-mode image of an echogenicity map.

    Parameters
    ----------
    echo : ndarray ``(Z, H, W)``
        Mean backscattered intensity; rows (axis 1) are depth from the transducer.
    scan : Scan
    spacing_mm : tuple of 3 float

    Returns
    -------
    image : ndarray of uint8
        Log-compressed B-mode.
    envelope : ndarray of float
        The detected envelope after TGC, before log compression.
    """
    field = speckle(rng, np.sqrt(echo), vox(PSF_SIGMA_MM, spacing_mm))
    depth_mm = np.arange(echo.shape[1], dtype=float)[None, :, None] * spacing_mm[1]
    field *= 10 ** (-scan.attenuation_db_mm * depth_mm / 20)
    if scan.noise > 0:
        field += scan.noise * (rng.standard_normal(echo.shape) + 1j * rng.standard_normal(echo.shape)) / np.sqrt(2)
    # TGC: the sonographer's sliders, a slope with a gentle wobble of about 1 dB.
    wobble = ndimage.gaussian_filter1d(rng.standard_normal(echo.shape[1]), echo.shape[1] / 8, mode="nearest")
    wobble_db = wobble / (np.abs(wobble).max() + 1e-12)
    tgc_db = scan.tgc_db_mm * depth_mm + (wobble_db[None, :, None] if scan.tgc_db_mm else 0.0)
    envelope = np.abs(field) * 10 ** (tgc_db / 20)
    full_scale = np.percentile(envelope, 99.9) * 10 ** (scan.headroom_db / 20)
    db = 20 * np.log10(envelope / full_scale + 1e-12)
    image = np.clip((db + scan.dynamic_range_db) / scan.dynamic_range_db * 255, 0, 255)
    return np.rint(image).astype(np.uint8), envelope


# --------------------------------------------------------------------------- anatomy

def irregular_specimen(rng, tissue: np.ndarray) -> np.ndarray:
    """Cut 2-4 rounded bites out of a tissue block's border: a hand-cut specimen.

    Each bite is an ellipsoid centred on an in-plane border voxel, 10-22 % of the in-plane
    extent across and longer along the slices, so notches run through the stack.
    The largest piece is kept, so the block never falls apart or vanishes.
    """
    border = np.argwhere(tissue & ~ndimage.binary_erosion(tissue, structure=IN_PLANE))
    if len(border) == 0:
        return tissue
    zz, yy, xx = np.indices(tissue.shape, dtype=float)
    cut = tissue.copy()
    for _ in range(int(rng.integers(2, 5))):
        z, y, x = border[rng.integers(len(border))]
        radius = rng.uniform(0.1, 0.22) * min(tissue.shape[1:])
        along_z = radius * rng.uniform(0.5, 2.0)
        cut &= ((zz - z) / along_z) ** 2 + ((yy - y) / radius) ** 2 + ((xx - x) / radius) ** 2 > 1
    # Where a bite reaches slices whose border lies elsewhere it would punch a hole: fill it.
    cut = np.stack([ndimage.binary_fill_holes(s) for s in cut])
    labels, count = ndimage.label(cut)
    if count == 0:
        return tissue
    sizes = ndimage.sum_labels(cut, labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def tissue_echo(rng, tissue: np.ndarray, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity of the specimen without its tumour, and its fat lobules.

    Fibroglandular tissue (about 1) with darker fat lobules (about 0.15) bounded by
    bright septa, bright thin Cooper's ligaments, a specular rim where the beam meets
    the surface, and nearly anechoic coupling gel around the specimen.
    """
    shape = tissue.shape
    fat = (smooth_field(rng, shape, vox(1.8, spacing_mm)) > rng.uniform(-0.2, 0.6)) & tissue
    # Septa in the slice plane only: slices 1 mm apart would make every lobule all edge.
    septa = fat & ~ndimage.binary_erosion(fat, structure=IN_PLANE)
    # A ligament is where a smooth field crosses zero: a thin, curved sheet.
    ligaments = (np.abs(smooth_field(rng, shape, vox(3.0, spacing_mm))) < 0.05) & tissue
    echo = np.exp(0.3 * smooth_field(rng, shape, vox(0.5, spacing_mm)))
    echo = np.where(fat, 0.15 * np.exp(0.2 * smooth_field(rng, shape, vox(0.8, spacing_mm))), echo)
    echo = np.where(septa, 1.8, echo)
    echo = np.where(ligaments, 2.5, echo)
    rim = tissue & ~ndimage.binary_erosion(tissue, iterations=2)
    echo = np.where(rim, 3.0, echo)
    return np.where(tissue, echo, 0.003), fat


def tumour_shape(rng, tissue: np.ndarray, spacing_mm) -> tuple[np.ndarray, str]:
    """A tumour in the tissue and its margin: circumscribed, lobulated or spiculated.

    Small fields (a few dozen pixels) sometimes leave a drawn blob no room inside
    the irregular tissue; it is drawn again, and at worst is a ball at the deepest
    point of the tissue, so every specimen has a tumour.
    """
    for _ in range(10):
        tumour = tumour_blob(rng, tissue.shape, tissue, spacing_mm) & tissue
        if tumour.any():
            break
    else:
        tumour = _deepest_ball(tissue)
    margin = str(rng.choice(MARGINS, p=[0.3, 0.3, 0.4]))
    if margin == "circumscribed":  # smooth the lobes away
        smooth = ndimage.gaussian_filter(tumour.astype(float), vox(0.6, spacing_mm)) > 0.5
        tumour = smooth if smooth.any() else tumour
    elif margin == "spiculated":
        tumour = tumour | _spicules(rng, tumour, spacing_mm)
    return tumour & tissue, margin


def _deepest_ball(tissue: np.ndarray) -> np.ndarray:
    """A ball (one slice either side) at the tissue voxel farthest from its border."""
    depth = ndimage.distance_transform_edt(tissue)
    centre = np.unravel_index(np.argmax(depth), tissue.shape)
    radius = max(1.0, min(depth.max(), 0.2 * min(tissue.shape[1:])))
    zz, yy, xx = np.indices(tissue.shape)
    ball = ((zz - centre[0]) ** 2 * radius ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
            <= radius ** 2)
    return ball & tissue


def _spicules(rng, tumour: np.ndarray, spacing_mm) -> np.ndarray:
    """Thin tapering spikes radiating from the tumour, mostly within the slice plane."""
    spacing = np.asarray(spacing_mm, dtype=float)
    centre = np.array(ndimage.center_of_mass(tumour)) * spacing
    radius = (tumour.sum() * np.prod(spacing) * 3 / (4 * np.pi)) ** (1 / 3)
    # Only the box a spike can reach is computed: a few times faster than the volume.
    low = np.maximum(np.floor((centre - 2 * radius) / spacing), 0).astype(int)
    high = np.minimum(np.ceil((centre + 2 * radius) / spacing) + 1, tumour.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    coords = np.indices(high - low, dtype=float) + low[:, None, None, None]
    offset = coords * spacing[:, None, None, None] - centre[:, None, None, None]
    spikes = np.zeros(high - low, bool)
    for _ in range(int(rng.integers(6, 14))):
        direction = rng.standard_normal(3) * [0.3, 1.0, 1.0]
        direction /= np.linalg.norm(direction)
        along = np.tensordot(direction, offset, axes=1)
        across = np.linalg.norm(offset - along * direction[:, None, None, None], axis=0)
        reach = radius * rng.uniform(1.3, 1.9)
        width = rng.uniform(0.3, 0.6) * (1 - along / reach)
        spikes |= (along > 0) & (along < reach) & (across < width)
    full = np.zeros(tumour.shape, bool)
    full[box] = spikes
    return full


def tumour_echo(rng, echo, tumour, spacing_mm, contrast: float) -> np.ndarray:
    """Put a heterogeneous tumour ``contrast`` below the mean echo of its surroundings.

    ``contrast`` 0 is isoechoic, 1 anechoic. Inside, the echo varies by about 35 %
    and some tumours hold bright microcalcifications.
    """
    shell = ndimage.binary_dilation(tumour, iterations=4) & ~tumour & (echo > 0.01)
    around = echo[shell].mean() if shell.any() else 1.0
    inside = np.exp(0.35 * smooth_field(rng, tumour.shape, vox(0.6, spacing_mm)) - 0.35 ** 2 / 2)
    level = (1 - contrast) * around * inside
    if rng.random() < 0.3:
        calcifications = (rng.random(tumour.shape) < 0.002) & tumour
        level = np.where(calcifications, 10.0, level)
    return np.where(tumour, level, echo)


def posterior(rng, tumour: np.ndarray, spacing_mm) -> tuple[np.ndarray, str]:
    """Intensity factor below the tumour: a shadow, an enhancement, or neither.

    Each mm of tumour that the beam crosses above a voxel dims it (shadow, the tumour
    attenuates more than tissue) or brightens it (enhancement, it attenuates less).
    """
    kind = str(rng.choice(POSTERIOR, p=[0.5, 0.3, 0.2]))
    per_mm = {"shadow": rng.uniform(0.08, 0.25), "enhancement": -rng.uniform(0.03, 0.08),
              "none": 0.0}[kind]
    path_mm = np.cumsum(tumour, axis=1) * spacing_mm[1]
    return np.minimum(np.exp(-per_mm * path_mm), 2.0), kind


def clip_marker(rng, tumour: np.ndarray, spacing_mm) -> np.ndarray:
    """A biopsy marker clip: a short bright wire in the tumour, one or two slices thick."""
    z, y, x = np.argwhere(tumour)[rng.integers(tumour.sum())]
    angle = rng.uniform(0, np.pi)
    half_mm = rng.uniform(0.7, 1.5)
    rows, cols = np.indices(tumour.shape[1:], dtype=float)
    dy, dx = (rows - y) * spacing_mm[1], (cols - x) * spacing_mm[2]
    along = dy * np.sin(angle) + dx * np.cos(angle)
    across = -dy * np.cos(angle) + dx * np.sin(angle)
    wire = (np.abs(along) < half_mm) & (np.abs(across) < 0.15)
    marker = np.zeros(tumour.shape, bool)
    marker[z:z + 2] = wire
    return marker


def reverberation(tissue: np.ndarray, strength: float) -> np.ndarray:
    """Echoes of the top surface bouncing between it and the probe: bands at 2x, 3x its depth."""
    surface = np.argmax(tissue, axis=1)  # (Z, W): first tissue row of each column
    bands = np.zeros(tissue.shape)
    z, x = np.indices(surface.shape)
    for multiple, gain in ((2, 1.0), (3, 0.4)):
        row = surface * multiple
        inside = (surface > 1) & (row < tissue.shape[1]) & tissue.any(axis=1)
        bands[z[inside], row[inside], x[inside]] = strength * gain
    return bands


def boundary_ambiguity(visible: np.ndarray, tumour: np.ndarray, spacing_mm) -> np.ndarray:
    """How hard the tumour border is to see, 0 (clear) to 1 (invisible), voxel by voxel.

    Compares the mean echo just inside and just outside the border (within about
    1 mm in the slice): a ratio of 4 or more is clear, equal echo is invisible.
    Meaningful near the border only, which is where observers use it.
    """
    sigma = (0.0,) + vox(1.0, spacing_mm)[1:]
    rest = ~tumour & (visible > 0.01)

    def local_mean(region: np.ndarray) -> np.ndarray:
        weight = ndimage.gaussian_filter(region.astype(float), sigma)
        return ndimage.gaussian_filter(np.where(region, visible, 0.0), sigma) / np.maximum(weight, 1e-6)

    ratio = np.abs(np.log((local_mean(tumour) + 1e-6) / (local_mean(rest) + 1e-6)))
    return np.clip(1 - ratio / np.log(4), 0, 1)
