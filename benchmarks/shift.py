"""Scanner-shift benchmark: how much Dice a BUSI model loses on shifted images.

Users bring their own scanner and protocol. This script takes the lesion images of
BUSI fold 0 (never seen by the held-out twin model), applies synthetic scanner
shifts, each at three strengths, and scores the model's masks against the truth
with the model's own inference settings. The shifts stand for what differs between
scanners: gamma and contrast (display and dynamic range), a gain ramp with depth
(time-gain compensation), blur and resampling (resolution and focus), speckle of
another grain, JPEG compression (exported images), and the depth and width of the field
of view (zoom in and out: lesions shown larger or smaller).

The shifts are written here in NumPy/SciPy, independently of the training
augmentation, so the benchmark does not grade the augmentation by its own yardstick.

Examples
--------
All 130 fold-0 lesion images, every shift (a few minutes on 2 cores)::

    .venv/bin/python benchmarks/shift.py --out bench-out/shift

The bundled model instead of the held-out twin (it saw fold 0: only the losses are
meaningful, not the level)::

    .venv/bin/python benchmarks/shift.py --model src/bcseg/pretrained   # one file or an ensemble

The validation images of a run on all of BUSI (its ``fold.json``), which that run and
every other ``--all`` run of the same split never trained on: the one unseen yardstick for
comparing two candidates for the bundle, level and losses alike::

    .venv/bin/python benchmarks/shift.py --model bench-out/bundle-candidate \
        --validation-of bench-out/busi-all-student-r13

A one-minute check::

    .venv/bin/python benchmarks/shift.py --quick
"""

from __future__ import annotations

import argparse
import io as bytes_io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import busi_missing, cpu_flags  # noqa: E402  (benchmarks/machine.py)

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
DEFAULT_MODEL = ROOT / "tests" / "data" / "busi_heldout"  # the held-out twin: one model or an ensemble
STRENGTHS = ("mild", "moderate", "strong")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gamma(image, value):
    return _to_uint8(255.0 * (image / 255.0) ** value)


def gain_ramp(image, bottom_gain):
    """Gain 1 at the transducer (top row) rising or falling linearly to ``bottom_gain``."""
    ramp = np.linspace(1.0, bottom_gain, image.shape[0])[:, None]
    return _to_uint8(image * ramp)


def blur(image, sigma_px):
    return _to_uint8(ndimage.gaussian_filter(image.astype(np.float32), sigma_px))


def resample(image, factor):
    """Down-sample by ``factor`` and back: a coarser scanner at the same field of view."""
    small = ndimage.zoom(image.astype(np.float32), factor, order=1)
    back = ndimage.zoom(small, np.array(image.shape) / np.array(small.shape), order=1)
    return _to_uint8(back[: image.shape[0], : image.shape[1]])


def speckle(image, grain_px, seed=0):
    """Multiplicative speckle (unit-mean gamma-like field) of a given grain size."""
    rng = np.random.default_rng(seed)
    field = rng.standard_normal(image.shape)
    field = ndimage.gaussian_filter(field, grain_px)
    field = 1.0 + 0.35 * field / (field.std() + 1e-9)
    return _to_uint8(image * np.clip(field, 0.1, None))


def contrast(image, factor):
    """Compress the dynamic range about the image mean."""
    mean = image.mean()
    return _to_uint8(mean + (image - mean) * factor)


def jpeg(image, quality):
    import imageio.v3 as iio

    buffer = iio.imwrite("<bytes>", image, extension=".jpg", quality=quality)
    return iio.imread(bytes_io.BytesIO(buffer), extension=".jpg")


def zoom_in(image, truth, fraction):
    """A shallower depth and narrower field of view: the central ``fraction`` of the
    height and width, truth cropped alike, shown at the image's size (lesions larger)."""
    h, w = image.shape
    top, left = (h - round(h * fraction)) // 2, (w - round(w * fraction)) // 2
    window = (slice(top, top + round(h * fraction)), slice(left, left + round(w * fraction)))
    return image[window], truth[window]


def zoom_out(image, truth, factor):
    """A deeper, wider field of view: the image and truth shrunk by ``factor`` at the
    top centre of a dark frame of the original size (lesions smaller, the transducer
    still at the top; outside the scanned sector a scanner shows black)."""
    small = _to_uint8(ndimage.zoom(image.astype(np.float32), factor, order=1))
    small_truth = ndimage.zoom(truth.astype(np.float32), factor, order=1) >= 0.5
    frame, frame_truth = np.zeros_like(image), np.zeros_like(truth)
    left = (image.shape[1] - small.shape[1]) // 2
    frame[: small.shape[0], left: left + small.shape[1]] = small
    frame_truth[: small.shape[0], left: left + small.shape[1]] = small_truth
    return frame, frame_truth


# name -> (function, value per strength); "moderate" is the level the recipe targets.
# Intensity shifts take the image; geometric ones (GEOMETRIC) the image and its truth.
SHIFTS = {
    "gamma dark": (gamma, (1.2, 1.5, 2.0)),
    "gamma bright": (gamma, (0.85, 0.67, 0.5)),
    "gain ramp down": (gain_ramp, (0.85, 0.7, 0.5)),
    "gain ramp up": (gain_ramp, (1.15, 1.3, 1.6)),
    "blur": (blur, (0.75, 1.5, 3.0)),
    "resample": (resample, (0.75, 0.5, 0.33)),
    "speckle": (speckle, (0.75, 1.5, 3.0)),
    "contrast": (contrast, (0.8, 0.6, 0.4)),
    "jpeg": (jpeg, (50, 20, 8)),
    "zoom in": (zoom_in, (0.9, 0.8, 0.67)),
    "zoom out": (zoom_out, (0.9, 0.8, 0.67)),
}
GEOMETRIC = ("zoom in", "zoom out")  # change the truth with the image


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image[..., :3].mean(axis=-1).astype(np.uint8)


def load_fold(data: Path, fold: int, limit: int | None, ids: list[str] | None = None):
    """(id, image uint8, truth bool) of the fold's lesion images, in folds.csv order; with
    ``ids``, those lesion images instead of the fold's."""
    from bcseg.data.cases import read_case_image, read_case_masks
    from bcseg.data.dataset import BUSI_OBSERVER, discover
    from bcseg.data.splits import folds_from_file

    cases = discover(data)
    folds = folds_from_file(data / "folds.csv", cases)
    chosen = [c for c in cases if (folds[c.id] == fold if ids is None else c.id in ids)
              and c.label_class in ("benign", "malignant")]
    out = []
    for case in chosen[:limit]:
        image, _ = read_case_image(case)
        out.append((case.id, case.label_class, _grey(np.asarray(image)),
                    read_case_masks(case)[BUSI_OBSERVER]))
    return out


def segment(models, image, settings) -> np.ndarray:
    """bcseg's one inference path (:func:`bcseg.infer.predict.segment_volume`), so that
    an ensemble folder scores as ``bcseg predict`` would run it."""
    from bcseg.infer.predict import segment_volume

    return segment_volume(models, image, settings, keep_prob=False)[0]


def score(model, images, settings, shift=None) -> np.ndarray:
    from bcseg.measure.metrics import dice

    scores = []
    for i, (_, _, image, truth) in enumerate(images):
        shifted, target = (image, truth) if shift is None else shift(image, truth)
        scores.append(dice(segment(model, shifted, settings), target))
    return np.array(scores)


def table(result: dict) -> str:
    which = (f"fold-{result['fold']}" if result.get("validation_of") is None
             else f"validation ({result['validation_of']})")
    lines = [f"Clean: Dice {result['clean']:.3f} on {result['n']} {which} lesion images.", "",
             "| shift | " + " | ".join(f"{s} (value)" for s in result["strengths"]) + " |",
             "|---|" + "---|" * len(result["strengths"])]
    for name, row in result["shifts"].items():
        cells = [f"{r['dice']:.3f} ({r['dice'] - result['clean']:+.3f}; {r['value']:g})" for r in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Model: {result['model']}. CPU: {result['cpu']}, {os.cpu_count()} cores. "
              f"Wall time {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--model", nargs="+", default=[str(DEFAULT_MODEL)],
                        help="run folder, ensemble folder or .keras file; several form an ensemble "
                        "(default: held-out twin)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", default="bench-out/shift")
    parser.add_argument("--strengths", nargs="+", choices=STRENGTHS, default=list(STRENGTHS),
                        help="which strengths to score (default: all three)")
    parser.add_argument("--shifts", nargs="+", choices=list(SHIFTS), default=list(SHIFTS),
                        metavar="SHIFT", help="which shifts to score (default: all): "
                        + ", ".join(f"'{name}'" for name in SHIFTS))
    parser.add_argument("--validation-of", metavar="RUN",
                        help="score the validation images of this run's fold.json instead of "
                        "the fold's test images (e.g. an --all run of build_pretrained.py)")
    parser.add_argument("--quick", action="store_true",
                        help="20 images, moderate strength only (about a minute)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = Path(args.data)
    if busi_missing(data, "shift.py"):
        return 3
    from bcseg.infer.segment import load_models

    started = time.perf_counter()
    ids = None
    if args.validation_of:
        split = json.loads((Path(args.validation_of) / "fold.json").read_text(encoding="utf-8"))
        ids = list(split["validation"])
    images = load_fold(data, args.fold, 20 if args.quick else None, ids)
    model, settings = load_models(args.model[0] if len(args.model) == 1 else args.model)
    strengths = ("moderate",) if args.quick else tuple(s for s in STRENGTHS if s in args.strengths)
    clean = score(model, images, settings)
    sizes = [view.input_size for view in settings.member_views()]
    result = {"model": ", ".join(args.model),
              "settings": {"threshold": settings.threshold, "postprocess": list(settings.postprocess),
                           "tta": settings.tta, "input_size": sizes},
              "fold": args.fold, "validation_of": args.validation_of, "n": len(images),
              "clean": float(clean.mean()), "strengths": strengths, "shifts": {}, "cpu": cpu_flags()}
    for name, (function, values) in SHIFTS.items():
        if name not in args.shifts:
            continue
        row = []
        for strength in strengths:
            value = values[STRENGTHS.index(strength)]
            if name in GEOMETRIC:
                shifted = lambda im, truth: function(im, truth, value)  # noqa: E731
            else:
                shifted = lambda im, truth: (function(im, value), truth)  # noqa: E731
            scores = score(model, images, settings, shifted)
            row.append({"strength": strength, "value": value, "dice": float(scores.mean()),
                        "missed": float((scores < 0.5).mean())})
        result["shifts"][name] = row
        print(f"{name}: " + ", ".join(f"{r['strength']} {r['dice']:.3f}" for r in row), flush=True)
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    from bcseg.atomic import write_text

    write_text(out / "shift.json", json.dumps(result, indent=1) + "\n")
    text = table(result)
    write_text(out / "shift.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
