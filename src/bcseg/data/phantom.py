"""Synthetic ex-vivo specimen stacks with two observers' masks, in ultrasound and PA.

No public 3D specimen data exists, so this phantom stands in for it. Each volume
``(Z, H, W)`` has its rows (axis 1) along depth from the transducer. Two difficulties:

``easy`` (fast tests; the phantom as it has always been, byte for byte)
    dark coupling medium around an echogenic tissue block with a rounded border,
    smoothed-noise texture under multiplicative speckle, depth attenuation, a
    uniformly hypoechoic tumour with a lobulated border casting a posterior shadow.
    The two observers move the true border in or out by a smooth random field, one
    drawing tight, the other generous.
``realistic`` (demo and benchmarks)
    an irregular specimen with fat lobules, septa and ligaments; beam-shaped speckle
    correlated across neighbouring slices, attenuation, TGC and log compression; a
    tumour from hypoechoic to nearly isoechoic, heterogeneous, with a circumscribed,
    lobulated or spiculated margin and a posterior shadow or enhancement; optional
    clip and reverberation artefacts (see :mod:`bcseg.data.phantom_us`). The observers
    disagree more where the border is hard to see, and the tight one leaves out thin
    spicules there.

Either difficulty can add a co-registered photoacoustic channel
(:mod:`bcseg.data.phantom_pa`), drawn from a random stream of its own, so the
ultrasound is the same with or without it. In every stack, slices at either end miss
the tumour. Everything is deterministic from the seed. No TensorFlow here.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from bcseg.config import is_whole, shorten
from bcseg.data import io
from bcseg.data.image_rules import spacing_problem
from bcseg.atomic import write_text
from bcseg.outputs import check_output_folder, claim, require_new_folder
from bcseg.data import phantom_us as us
from bcseg.data.channels import CHANNELS_FILE
from bcseg.data.phantom_pa import pa_image
from bcseg.data.phantom_shapes import observer_outline, smooth_noise, tissue_block, tumour_blob

DEFAULT_SHAPE = (24, 128, 128)
DEFAULT_SPACING_MM = (1.0, 0.25, 0.25)  # slice step, depth, lateral
DIFFICULTIES = ("easy", "realistic")
CHANNELS = ("us", "pa")
ATTRIBUTES_FILE = "specimens.csv"
ATTRIBUTES = ("id", "difficulty", "us_contrast", "pa_contrast", "margin", "posterior", "artefacts")
_PA_STREAM = 1  # second number of the PA channel's SeedSequence
# Upper bounds of a request, far beyond any test or demo (the default stack is 0.4 M
# voxels), and below those that failed with a raw MemoryError: a specimen is generated
# as float64 fields of the stack's shape, about 100-160 bytes per voxel at once, so
# 8 x 40000 x 40000 asked for terabytes. 2**27 voxels (128 x 1024 x 1024) need ~20 GiB.
MAX_SIZE = 4096  # pixels a side, as data.size and a 2D input (rundir.MAX_INPUT_SIZE)
MAX_VOXELS = 2**27
MAX_SPECIMENS = 10_000  # 8 GB of files at the default shape; a typo of 10**9 fills the disk


def _easy_specimen(rng, shape, spacing_mm) -> dict:
    """The easy phantom; its draws from ``rng`` must never change (tests hash its output)."""
    tissue = tissue_block(rng, shape)
    tumour = tumour_blob(rng, shape, tissue, spacing_mm)

    texture = 1.0 + 0.25 * smooth_noise(rng, shape, (1, 3, 3))
    echo = np.where(tissue, 0.55 * texture, 0.04)
    echo = np.where(tumour, 0.18 * (1.0 + 0.15 * smooth_noise(rng, shape, (1, 2, 2))), echo)
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

    observer1 = observer_outline(rng, tumour, bias_vox=-0.8, amplitude_vox=1.2)
    observer2 = observer_outline(rng, tumour, bias_vox=0.8, amplitude_vox=1.2)
    attributes = {"us_contrast": round(1 - 0.18 / 0.55, 3), "margin": "lobulated",
                  "posterior": "shadow", "artefacts": ""}
    return {"image": image, "observer1": observer1, "observer2": observer2, "tumour": tumour,
            "tissue": tissue, "fat": np.zeros(shape, bool), "attributes": attributes}


def _realistic_specimen(rng, shape, spacing_mm, artefacts: bool) -> dict:
    """The realistic ultrasound specimen; see :mod:`bcseg.data.phantom_us`."""
    block = tissue_block(rng, shape)
    if block.sum() < 0.2 * np.prod(shape):  # small fields: the wobble can eat the block
        block = tissue_block(rng, shape, wobble=0.0)
    tissue = us.irregular_specimen(rng, block)
    tumour, margin = us.tumour_shape(rng, tissue, spacing_mm)
    echo, fat = us.tissue_echo(rng, tissue, spacing_mm)
    contrast = float(rng.uniform(0.05, 0.9))
    echo = us.tumour_echo(rng, echo, tumour, spacing_mm, contrast)
    factor, posterior = us.posterior(rng, tumour, spacing_mm)
    # Both draws are made either way, so ``artefacts=False`` changes nothing else.
    has_clip, has_reverberation = rng.random(2) < 0.35
    found = []
    if artefacts and has_clip:
        marker = us.clip_marker(rng, tumour, spacing_mm)
        echo = np.where(marker, 30.0, echo)
        factor = factor * np.exp(-3.0 * np.cumsum(marker, axis=1) * spacing_mm[1])
        found.append("clip")
    if artefacts and has_reverberation:
        echo = echo + us.reverberation(tissue, strength=1.5)
        found.append("reverberation")
    visible = echo * factor
    image, envelope = us.bmode(rng, visible, us.draw_scan(rng), spacing_mm)
    observer1, observer2 = _ambiguous_observers(rng, tumour, us.boundary_ambiguity(visible, tumour, spacing_mm))
    attributes = {"us_contrast": round(contrast, 3), "margin": margin, "posterior": posterior,
                  "artefacts": ";".join(found)}
    return {"image": image, "envelope": envelope, "observer1": observer1, "observer2": observer2,
            "tumour": tumour, "tissue": tissue, "fat": fat & ~tumour, "attributes": attributes}


def _ambiguous_observers(rng, tumour, ambiguity) -> tuple[np.ndarray, np.ndarray]:
    """A tight and a generous observer who disagree more where the border is hard to see.

    Their smooth random offset grows from 0.8 to 3.3 voxels with the ambiguity (less
    for tumours under 20 voxels in radius, so small ones are not drawn away), and the
    tight reader leaves out thin spicules (an opening of 2 voxels) where the border
    is more than 40 % ambiguous.
    """
    radius = np.sqrt(tumour.sum(axis=(1, 2)).max() / np.pi)
    scale = min(1.0, radius / 20)
    amplitude = (0.8 + 2.5 * ambiguity) * scale
    bias = (0.6 + 1.0 * ambiguity) * scale
    tight = observer_outline(rng, tumour, bias_vox=-bias, amplitude_vox=amplitude)
    opened = np.stack([ndimage.binary_opening(s, iterations=2) for s in tight])
    # A slice the opening would mostly erase is a small tumour, not a spicule: keep it.
    kept = opened.sum(axis=(1, 2)) >= 0.5 * tight.sum(axis=(1, 2))
    tight = np.where((ambiguity > 0.4) & kept[:, None, None], opened, tight)
    generous = observer_outline(rng, tumour, bias_vox=bias, amplitude_vox=amplitude)
    return tight, generous


def shape_problem(shape) -> str | None:
    """What is wrong with a phantom's ``(Z, H, W)``, or None when it can be generated."""
    shape = tuple(int(n) for n in shape)
    shown = shorten(str(shape))  # --shape takes 4000 digits, which made a line as long
    if len(shape) != 3 or min(shape) < 8:
        return f"must be (Z, H, W) with every size >= 8, got {shown}"
    if max(shape) > MAX_SIZE:
        return f"must have every size at most {MAX_SIZE}, got {shown}"
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        return (f"{shape} is {voxels:,} voxels, more than the {MAX_VOXELS:,} a phantom may have "
                "(generating one takes about 100-160 bytes of memory per voxel)")
    return None


def _check_request(shape, difficulty, channels, seed=0, spacing_mm=DEFAULT_SPACING_MM
                   ) -> tuple[tuple[int, ...], tuple[str, ...]]:
    # Checked here, before any specimen is made: a fractional size was cut to a whole
    # one without a word, a negative or fractional seed failed inside NumPy naming
    # nothing, and a spacing of two values as "operands could not be broadcast".
    shape = tuple(shape)
    if not all(is_whole(n) for n in shape):
        raise ValueError(f"shape must be whole numbers of voxels (Z, H, W), got {shape}")
    if not is_whole(seed):
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    problem = spacing_problem(spacing_mm, 3)
    if problem:
        raise ValueError(f"spacing_mm {tuple(spacing_mm)} (Z, Y, X mm): {problem}")
    shape = tuple(int(n) for n in shape)
    problem = shape_problem(shape)
    if problem:
        raise ValueError(f"shape {problem}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got '{difficulty}'")
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    if not channels or unknown or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct names from {', '.join(CHANNELS)}, got {channels}")
    return shape, channels


def make_specimen(shape=DEFAULT_SHAPE, seed: int = 0, spacing_mm=DEFAULT_SPACING_MM,
                  difficulty: str = "easy", channels=("us",), artefacts: bool = True) -> dict:
    """Generate one synthetic specimen.

    Parameters
    ----------
    shape : tuple of 3 int
        ``(Z, H, W)``; each at least 8.
    seed : int
        Random seed (non-negative); the same seed gives the same specimen.
    spacing_mm : tuple of 3 float
        Slice step, depth and lateral pixel size in mm.
    difficulty : {"easy", "realistic"}
        ``easy`` is the original phantom, unchanged; ``realistic`` is harder.
    channels : sequence of {"us", "pa"}
        Which channels to return under ``channels``.
    artefacts : bool
        Let realistic specimens carry clip and reverberation artefacts (each drawn
        with probability 0.35).

    Returns
    -------
    dict
        ``image`` (ultrasound, uint8), ``channels`` (name to array; ``pa`` is float32),
        ``observer1``, ``observer2``, ``tumour`` (the truth), ``tissue`` and ``fat``
        (bool), ``attributes`` (``us_contrast`` 0 isoechoic to 1 anechoic, and with PA
        ``pa_contrast`` 0 weak to 1 strong rim, ``margin``, ``posterior``,
        ``artefacts``), ``spacing_mm``; realistic ones also ``envelope``, the
        ultrasound before log compression.
    """
    shape, channels = _check_request(shape, difficulty, channels, seed, spacing_mm)
    rng = np.random.default_rng(seed)
    if difficulty == "easy":
        specimen = _easy_specimen(rng, shape, spacing_mm)
    else:
        specimen = _realistic_specimen(rng, shape, spacing_mm, artefacts)
    specimen["channels"] = {}
    for name in channels:
        if name == "us":
            specimen["channels"]["us"] = specimen["image"]
        else:
            pa_rng = np.random.default_rng(np.random.SeedSequence([seed, _PA_STREAM]))
            pa, contrast = pa_image(pa_rng, specimen["tissue"], specimen["tumour"], specimen["fat"],
                                    spacing_mm, difficulty)
            specimen["channels"]["pa"] = pa
            specimen["attributes"]["pa_contrast"] = round(float(contrast), 3)
    specimen["spacing_mm"] = tuple(spacing_mm)
    return specimen


def write_phantom(out: str | Path, n: int = 8, shape=DEFAULT_SHAPE, seed: int = 0,
                  spacing_mm=DEFAULT_SPACING_MM, truth: bool = False, force: bool = False,
                  difficulty: str = "easy", channels=("us",), artefacts: bool = True) -> list[Path]:
    """Write ``n`` specimens in the ``images/`` + ``masks/<observer>/`` layout.

    Files are ``OUT/images/specimen_NNN.tif`` (ultrasound only) or
    ``OUT/images/<channel>/specimen_NNN.tif`` (any other choice of channels; PA as
    float32), and ``OUT/masks/observer{1,2}/`` with the same names, all carrying
    spacing; with ``truth`` also ``OUT/truth/tumour/`` and ``OUT/truth/tissue/`` (kept
    outside ``masks/`` so they are not observers). ``OUT/specimens.csv`` records each
    specimen's attributes (see :func:`make_specimen`) so benchmarks can pick hard
    subsets; with channels other than ``us`` alone, ``OUT/channels.json`` lists them in
    order. Other parameters as :func:`make_specimen`.

    Returns
    -------
    list of Path
        The image files written (every channel).
    """
    if not (is_whole(n, 1) and n <= MAX_SPECIMENS):
        raise ValueError(f"n must be at least 1 and at most {MAX_SPECIMENS}, a whole number, got {n!r}")
    _, channels = _check_request(shape, difficulty, channels, seed, spacing_mm)
    out = check_output_folder(out, command="phantom")  # never a dataset inside another's masks/
    require_new_folder(out, force, "phantom")
    with claim(out, "phantom", replace=force, new=True, all_or_nothing=True):
        return _write_specimens(out, n, shape, seed, spacing_mm, truth, difficulty, channels, artefacts)


def _write_specimens(out: Path, n: int, shape, seed: int, spacing_mm, truth: bool, difficulty: str,
                     channels, artefacts: bool) -> list[Path]:
    images, rows = [], []
    for index in range(n):
        # One independent stream per specimen, so specimen k is the same whatever n is.
        specimen = make_specimen(shape, seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]),
                                 spacing_mm=spacing_mm, difficulty=difficulty, channels=channels,
                                 artefacts=artefacts)
        name = f"specimen_{index:03d}.tif"
        spacing = specimen["spacing_mm"]
        for channel, array in specimen["channels"].items():
            folder = out / "images" if channels == ("us",) else out / "images" / channel
            images.append(io.write_image(folder / name, array, spacing))
        for observer in ("observer1", "observer2"):
            io.write_mask(out / "masks" / observer / name, specimen[observer], spacing)
        if truth:
            for kind in ("tumour", "tissue"):
                io.write_mask(out / "truth" / kind / name, specimen[kind], spacing)
        rows.append({"id": io.file_stem(name), "difficulty": difficulty, **specimen["attributes"]})
    write_text(out / ATTRIBUTES_FILE, _attributes_csv(rows))
    if channels != ("us",):  # the channels' order, which folder names cannot give
        write_text(out / CHANNELS_FILE, json.dumps(list(channels)) + "\n")
    return images


def _attributes_csv(rows: list[dict]) -> str:
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ATTRIBUTES, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
