"""Synthetic ex-vivo specimen ultrasound stacks with two observers' masks.

No public 3D specimen data exists, so this phantom stands in for it. Each volume
``(Z, H, W)`` has, along the rows (axis 1, depth from the transducer):

- dark coupling medium around an echogenic tissue block with a rounded border,
- tissue texture (smoothed noise) under multiplicative speckle,
- depth attenuation that darkens deeper tissue,
- a hypoechoic tumour with a lobulated, irregular border, casting a posterior
  acoustic shadow (darker tissue below it),
- slices at either end of the stack that miss the tumour.

The two observers outline the true tumour with smooth, few-voxel disagreements:
each moves the boundary in or out by a smooth random field, and each has a small
bias of its own (one draws tight, the other generous), as real readers do.
Everything is deterministic from the seed. No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from bcseg import io
from bcseg.atomic import require_new
from bcseg.outputs import check_output_folder, claim

DEFAULT_SHAPE = (24, 128, 128)
DEFAULT_SPACING_MM = (1.0, 0.25, 0.25)  # slice step, depth, lateral


def _smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Zero-mean, unit-sd random field smoothed with a Gaussian of ``sigma`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _tissue_block(rng, shape) -> np.ndarray:
    """A rounded box (superellipsoid) filling most of the field, open to the top rows."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    half = rng.uniform([0.95, 0.6, 0.7], [1.3, 0.8, 0.88])
    centre = np.array([0.0, rng.uniform(0.05, 0.15), rng.uniform(-0.08, 0.08)])
    power = 6.0
    inside = (np.abs((z - centre[0]) / half[0]) ** power
              + np.abs((y - centre[1]) / half[1]) ** power
              + np.abs((x - centre[2]) / half[2]) ** power)
    wobble = 0.15 * _smooth_noise(rng, shape, (4, 8, 8))
    block = inside + wobble < 1.0
    # A block of tissue is one solid piece: no holes, no islands.
    block = np.stack([ndimage.binary_fill_holes(s) for s in block])
    labels, count = ndimage.label(block)
    if count > 1:
        block = labels == 1 + np.argmax(ndimage.sum_labels(block, labels, range(1, count + 1)))
    return block


def _tumour(rng, shape, tissue, spacing_mm) -> np.ndarray:
    """A lobulated tumour well inside the tissue, missing the end slices."""
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    coords = np.stack([zz, yy, xx]) * np.asarray(spacing_mm)[:, None, None, None]
    inner = ndimage.binary_erosion(tissue, iterations=6)
    if not inner.any():  # thin stacks (Z <= 12) erode away: keep off the sides only
        inner = np.stack([ndimage.binary_erosion(s, iterations=6) for s in tissue])
    candidates = np.argwhere(inner if inner.any() else tissue)
    extent_mm = np.asarray(shape) * np.asarray(spacing_mm)
    # Radius in mm: a third to a half of the smaller in-plane extent, so every
    # specimen has tumour, but never all the way through the stack.
    radius = rng.uniform(0.17, 0.26) * min(extent_mm[1], extent_mm[2])
    radius = min(radius, 0.32 * extent_mm[0])
    centre_mm = None
    for _ in range(50 if len(candidates) else 0):
        pick = candidates[rng.integers(len(candidates))] * np.asarray(spacing_mm)
        margin = pick - radius * 1.2, extent_mm - pick - radius * 1.2
        if (margin[0][1:] > 0).all() and (margin[1][1:] > 0).all() and margin[0][0] > 0 and margin[1][0] > 0:
            centre_mm = pick
            break
    if centre_mm is None:
        centre_mm = extent_mm / 2
    axes = radius * rng.uniform(0.75, 1.2, size=3)
    d = np.sqrt(sum(((coords[i] - centre_mm[i]) / axes[i]) ** 2 for i in range(3)))
    lobes = 0.22 * _smooth_noise(rng, shape, (2, 6, 6)) + 0.08 * _smooth_noise(rng, shape, (1, 2, 2))
    return (d + lobes < 1.0) & tissue


def _observer(rng, tumour, bias_vox, amplitude_vox) -> np.ndarray:
    """An observer's outline: the true border moved by a smooth field, slice by slice."""
    outside = ndimage.distance_transform_edt(~tumour, sampling=(1e6, 1, 1))
    inside = ndimage.distance_transform_edt(tumour, sampling=(1e6, 1, 1))
    signed = np.where(tumour, -inside + 0.5, outside - 0.5)  # in-plane voxels
    shift = bias_vox + amplitude_vox * _smooth_noise(rng, tumour.shape, (3, 10, 10))
    drawn = signed < shift
    # Observers outline each slice as one closed contour: fill holes, drop specks.
    drawn = np.stack([ndimage.binary_fill_holes(s) for s in drawn])
    labels, count = ndimage.label(drawn)
    if count > 1:
        sizes = ndimage.sum_labels(drawn, labels, range(1, count + 1))
        drawn = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.2 * sizes.max()))
    return drawn


def make_specimen(shape=DEFAULT_SHAPE, seed: int = 0, spacing_mm=DEFAULT_SPACING_MM) -> dict:
    """Generate one synthetic specimen.

    Parameters
    ----------
    shape : tuple of 3 int
        ``(Z, H, W)``; each at least 8.
    seed : int
        Random seed; the same seed gives the same specimen.
    spacing_mm : tuple of 3 float
        Slice step, depth and lateral pixel size in mm.

    Returns
    -------
    dict
        ``image`` (uint8), ``observer1``, ``observer2``, ``tumour`` (the truth) and
        ``tissue`` (bool), and ``spacing_mm``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (Z, H, W) with every size >= 8, got {shape}")
    rng = np.random.default_rng(seed)
    tissue = _tissue_block(rng, shape)
    tumour = _tumour(rng, shape, tissue, spacing_mm)

    texture = 1.0 + 0.25 * _smooth_noise(rng, shape, (1, 3, 3))
    echo = np.where(tissue, 0.55 * texture, 0.04)
    echo = np.where(tumour, 0.18 * (1.0 + 0.15 * _smooth_noise(rng, shape, (1, 2, 2))), echo)
    # Bright specular rim where the beam meets the tissue surface.
    rim = tissue & ~ndimage.binary_erosion(tissue, iterations=2)
    echo = np.where(rim, 0.8, echo)

    depth = np.arange(shape[1], dtype=float)[None, :, None] / shape[1]
    attenuation = np.exp(-rng.uniform(0.6, 1.2) * depth)
    # Posterior shadow: each tumour voxel above a point dims it a little.
    shadow = np.exp(-rng.uniform(0.008, 0.02) * np.cumsum(tumour, axis=1))
    speckle = rng.rayleigh(scale=np.sqrt(2 / np.pi), size=shape)  # mean 1
    image = echo * attenuation * shadow * speckle
    image = ndimage.gaussian_filter(image, (0, 0.7, 0.7))  # finite resolution
    image = np.clip(image * rng.uniform(230, 290), 0, 255).astype(np.uint8)

    observer1 = _observer(rng, tumour, bias_vox=-0.8, amplitude_vox=1.2)
    observer2 = _observer(rng, tumour, bias_vox=0.8, amplitude_vox=1.2)
    return {"image": image, "observer1": observer1, "observer2": observer2,
            "tumour": tumour, "tissue": tissue, "spacing_mm": tuple(spacing_mm)}


def write_phantom(out: str | Path, n: int = 8, shape=DEFAULT_SHAPE, seed: int = 0,
                  spacing_mm=DEFAULT_SPACING_MM, truth: bool = False,
                  force: bool = False) -> list[Path]:
    """Write ``n`` specimens in the ``images/`` + ``masks/<observer>/`` layout.

    Files are ``OUT/images/specimen_NNN.tif`` and ``OUT/masks/observer{1,2}/`` with
    the same names, all carrying spacing; with ``truth`` also ``OUT/truth/tumour/``
    and ``OUT/truth/tissue/`` (kept outside ``masks/`` so they are not observers).

    Returns
    -------
    list of Path
        The image files written.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = check_output_folder(out)
    require_new(out, force)
    with claim(out, "phantom", replace=force):
        return _write_specimens(out, n, shape, seed, spacing_mm, truth)


def _write_specimens(out: Path, n: int, shape, seed: int, spacing_mm, truth: bool) -> list[Path]:
    images = []
    for index in range(n):
        # One independent stream per specimen, so specimen k is the same whatever n is.
        specimen = make_specimen(shape, seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]),
                                 spacing_mm=spacing_mm)
        name = f"specimen_{index:03d}.tif"
        spacing = specimen["spacing_mm"]
        images.append(io.write_image(out / "images" / name, specimen["image"], spacing))
        for observer in ("observer1", "observer2"):
            io.write_mask(out / "masks" / observer / name, specimen[observer], spacing)
        if truth:
            for kind in ("tumour", "tissue"):
                io.write_mask(out / "truth" / kind / name, specimen[kind], spacing)
    return images
