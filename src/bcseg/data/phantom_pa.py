"""The phantom's photoacoustic (PA) channel, co-registered with its ultrasound.

A PA image shows where light is absorbed, as seen by the same linear array:

1. optical absorption: high in blood (vessels, denser near the tumour) and in the
   tumour's vascular rim, moderate in its core and in fibroglandular tissue, low in
   fat, none in the coupling gel. The rim's strength (``contrast``) is drawn
   independently of the tumour's echo, so an isoechoic tumour can have a strong PA
   rim and a dark one a weak rim;
2. fluence: light enters through the illuminated top surface of the specimen and
   decays exponentially with depth below it;
3. reconstruction from a band-limited, limited-view array: low spatial frequencies
   are lost (large uniform regions look dim, boundaries and small structures bright),
   boundaries facing the array are seen better than those along the beam, and bright
   sources throw faint X-shaped streaks; band-limited noise is added before the
   envelope is detected.

The result is float32 in arbitrary units with a wide range, as PA systems export.
No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from bcseg.data.phantom_us import filter_energy, smooth_field, vox


@dataclass(frozen=True)
class PAScan:
    """Settings of one PA acquisition.

    Attributes
    ----------
    fluence_per_mm : float
        Effective attenuation of light: fluence falls as ``exp(-fluence_per_mm * depth)``.
    limited_view : float
        Share of the signal that only sees boundaries facing the array (0 to 1).
    streaks : float
        Strength of the streaks thrown by bright sources (0 for none).
    noise : float
        sd of the noise relative to the sd of the band-limited signal.
    gain : float
        Scale of the arbitrary output units.
    """

    fluence_per_mm: float
    limited_view: float
    streaks: float
    noise: float
    gain: float


def draw_pa_scan(rng: np.random.Generator, difficulty: str) -> PAScan:
    """Random settings: gentle for ``easy``, the full range for ``realistic``."""
    if difficulty == "easy":
        return PAScan(rng.uniform(0.03, 0.06), 0.3, 0.0, rng.uniform(0.02, 0.05), rng.uniform(500, 2000))
    return PAScan(rng.uniform(0.05, 0.15), rng.uniform(0.5, 0.8), rng.uniform(0.02, 0.08),
                  rng.uniform(0.05, 0.2), rng.uniform(200, 5000))


def vessels(rng, tissue: np.ndarray, tumour: np.ndarray, spacing_mm) -> np.ndarray:
    """Blood vessels: curves where two smooth fields both cross zero, denser near the tumour."""
    shape = tissue.shape

    def tubes(size_mm: float, width: float) -> np.ndarray:
        first = smooth_field(rng, shape, vox(size_mm, spacing_mm))
        second = smooth_field(rng, shape, vox(size_mm, spacing_mm))
        return (np.abs(first) < width) & (np.abs(second) < width)

    near = signed_distance_mm(tumour, spacing_mm, reach_mm=3.0) < 3.0
    return (tubes(2.5, 0.12) | (tubes(1.0, 0.15) & near)) & tissue


def signed_distance_mm(tumour: np.ndarray, spacing_mm, reach_mm: float) -> np.ndarray:
    """Distance to the tumour border in mm, negative inside, clipped at ``reach_mm`` outside.

    Computed in the box around the tumour only, which is all that is asked of it.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    found = np.argwhere(tumour)
    pad = np.ceil(reach_mm / spacing).astype(int) + 1
    low = np.maximum(found.min(axis=0) - pad, 0)
    high = np.minimum(found.max(axis=0) + pad + 1, tumour.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    part = tumour[box]
    inside = ndimage.distance_transform_edt(part, sampling=spacing)
    outside = ndimage.distance_transform_edt(~part, sampling=spacing)
    signed = np.full(tumour.shape, float(reach_mm))
    signed[box] = np.minimum(np.where(part, -inside, outside), reach_mm)
    return signed


def absorption(rng, tissue, tumour, fat, spacing_mm, contrast: float) -> np.ndarray:
    """Optical absorption (relative units): tumour rim ``1 + 7 * contrast`` times tissue."""
    signed = signed_distance_mm(tumour, spacing_mm, reach_mm=1.0)
    rim = (signed > -0.8) & (signed < 0.4) & tissue
    patchy = np.exp(0.4 * smooth_field(rng, tissue.shape, vox(1.0, spacing_mm)))
    mu = np.where(fat, 0.08, 0.3) * np.exp(0.2 * smooth_field(rng, tissue.shape, vox(0.8, spacing_mm)))
    mu = np.where(tumour, 0.3 * rng.uniform(0.4, 1.2) * patchy, mu)
    mu = np.where(rim, 0.3 * (1 + 7 * contrast) * patchy, mu)
    mu = np.where(vessels(rng, tissue, tumour, spacing_mm), 2.0, mu)
    return np.where(tissue, mu, 0.0)


def fluence(tissue: np.ndarray, spacing_mm, per_mm: float) -> np.ndarray:
    """Light decaying with depth below the illuminated top surface of each column."""
    surface = np.argmax(tissue, axis=1)[:, None, :]
    rows = np.arange(tissue.shape[1])[None, :, None]
    depth_mm = np.maximum(rows - surface, 0) * spacing_mm[1]
    return np.exp(-per_mm * depth_mm)


def _x_kernel(length: int, angle: float) -> np.ndarray:
    """Two crossing lines at +-``angle`` from the beam axis, summing to 1."""
    kernel = np.zeros((length, length))
    centre = length // 2
    steps = np.linspace(-centre, centre, 4 * length)
    for sign in (-1, 1):
        rows = np.rint(centre + steps * np.cos(angle)).astype(int)
        cols = np.rint(centre + sign * steps * np.sin(angle)).astype(int)
        kernel[rows, cols] = 1.0
    return kernel / kernel.sum()


def reconstruct(rng, initial_pressure: np.ndarray, spacing_mm, scan: PAScan) -> np.ndarray:
    """The band-limited, limited-view image of an initial pressure map, as float32."""
    fine, coarse = vox(0.15, spacing_mm), vox(1.0, spacing_mm)
    band = ndimage.gaussian_filter(initial_pressure, fine) - ndimage.gaussian_filter(initial_pressure, coarse)
    # A linear array on top hears boundaries whose normal points at it: the depth derivative.
    facing = ndimage.gaussian_filter(initial_pressure, fine, order=(0, 1, 0))
    rf = ((1 - scan.limited_view) * band / (band.std() + 1e-12)
          + scan.limited_view * facing / (facing.std() + 1e-12))
    noise = ndimage.gaussian_filter(rng.standard_normal(rf.shape), fine) / np.sqrt(filter_energy(fine))
    rf += scan.noise * noise
    image = np.abs(signal.hilbert(rf, axis=1))
    if scan.streaks > 0:
        bright = np.where(image > np.percentile(image, 98), image, 0.0)
        length = 2 * max(2, int(round(3.0 / spacing_mm[1]))) + 1
        kernel = _x_kernel(length, rng.uniform(np.pi / 6, np.pi / 4))[None] * length
        image += scan.streaks * ndimage.convolve(bright, kernel, mode="constant")
    return (image * scan.gain).astype(np.float32)


def pa_image(rng, tissue, tumour, fat, spacing_mm, difficulty: str) -> tuple[np.ndarray, float]:
    """The PA channel of a specimen and the tumour rim's contrast (0 weak to 1 strong).

    ``rng`` should be a stream of its own, so the ultrasound channel is the same
    whether or not PA is made.
    """
    contrast = rng.uniform(0.6, 1.0) if difficulty == "easy" else rng.uniform(0.0, 1.0)
    scan = draw_pa_scan(rng, difficulty)
    mu = absorption(rng, tissue, tumour, fat, spacing_mm, contrast)
    return reconstruct(rng, mu * fluence(tissue, spacing_mm, scan.fluence_per_mm), spacing_mm, scan), contrast
