"""Segment image files and folders with a trained run: the work behind ``bcseg predict``.

Reads each input memory-mapped where possible, runs :func:`bcseg.predict.predict_volume`
with the run's inference settings (``inference.json``: threshold, post-processing,
TTA, input size, chosen on the run's validation split), and writes the mask (and
optionally the probability map and a quick-look PNG) with the input's exact shape
and spacing. Output TIFFs are filled batch by batch through memory-mapped temporary
files, renamed only when complete.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
from tqdm.auto import tqdm

from bcseg import io
from bcseg.atomic import atomic_path
from bcseg.errors import BcsegError, ConfigError, DataError, ModelError, UsageError
from bcseg.intensity import normalise
from bcseg.postprocess import POSTPROCESS_STEPS, check_steps, release_slices
from bcseg.predict import load_model, model_spec, predict_volume

MODEL_FILE = "model_best.keras"
SETTINGS_FILE = "inference.json"
DEFAULT_SETTINGS = {"threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False,
                    "ndim": None, "patch_size": None, "input_size": None}

def _settings_error(path: Path, key: str, expected: str, value) -> ConfigError:
    return ConfigError(path, f"{key} must be {expected}, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def inference_settings(run_dir: str | Path) -> dict:
    """Read the inference settings a training run saved, filling in defaults.

    Parameters
    ----------
    run_dir : str or Path
        A training run folder. Its ``inference.json`` may hold ``threshold``,
        ``postprocess`` (list of step names), ``min_size``, ``tta``, ``ndim``,
        ``patch_size`` (3D windows) and ``input_size`` (2D square size); missing
        keys (or a missing file) take the defaults threshold 0.5, postprocess [],
        min_size 0, tta False, None for the rest.

    Returns
    -------
    dict
        Those keys, plus any other keys the file holds (run metadata, unchecked).

    Raises
    ------
    ConfigError
        Unreadable JSON, an unknown key or a wrongly typed value.
    """
    path = Path(run_dir) / SETTINGS_FILE
    settings = {**DEFAULT_SETTINGS, "postprocess": []}
    if not path.is_file():
        return settings
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(path, f"cannot read inference settings ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "must hold a JSON object of settings")
    settings.update(data)  # other keys (best_epoch, observer, ...) are kept as they are
    threshold, steps = settings["threshold"], settings["postprocess"]
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise _settings_error(path, "threshold", "a number in [0, 1]", threshold)
    if not isinstance(steps, list) or any(s not in POSTPROCESS_STEPS for s in steps):
        raise _settings_error(path, "postprocess", f"a list of {', '.join(POSTPROCESS_STEPS)}", steps)
    if not isinstance(settings["min_size"], int) or isinstance(settings["min_size"], bool) \
            or settings["min_size"] < 0:
        raise _settings_error(path, "min_size", "a whole number >= 0", settings["min_size"])
    if not isinstance(settings["tta"], bool):
        raise _settings_error(path, "tta", "true or false", settings["tta"])
    if settings["ndim"] not in (None, 2, 3) or isinstance(settings["ndim"], bool):
        raise _settings_error(path, "ndim", "2 or 3", settings["ndim"])
    patch = settings["patch_size"]
    if patch is not None and (not isinstance(patch, list) or not patch
                              or any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in patch)
                              or (settings["ndim"] and len(patch) != settings["ndim"])):
        raise _settings_error(path, "patch_size", "a list of positive sizes, one per spatial axis", patch)
    size = settings["input_size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise _settings_error(path, "input_size", "a positive whole number of pixels", size)
    return settings


def resolve_model(path: str | Path) -> tuple[Path, dict]:
    """Find the model file and its inference settings.

    Parameters
    ----------
    path : str or Path
        A training run folder (holding ``model_best.keras`` and optionally
        ``inference.json``) or a ``.keras`` file; a file uses the
        ``inference.json`` beside it, if there is one.

    Returns
    -------
    model_path : Path
    settings : dict
        As :func:`inference_settings`.
    """
    path = Path(path)
    if path.is_dir():
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(path, f"holds no {MODEL_FILE}; pass a training run folder or a .keras file")
        return model_path, inference_settings(path)
    if not path.exists():
        raise ModelError(path, "model not found; pass a training run folder or a .keras file")
    return path, inference_settings(path.parent)


# --------------------------------------------------------------------------- files

def _input_files(inputs) -> list[Path]:
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = io.image_files(item)
            if not found:
                raise DataError(item, "holds no supported images (" + ", ".join(io.IMAGE_SUFFIXES) + ")")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise DataError(item, "file not found")
    stems: dict[str, Path] = {}
    for f in files:
        other = stems.setdefault(io.file_stem(f), f)
        if other.resolve() != f.resolve():
            raise UsageError(f, f"has the same name as {other}, so their outputs would collide; "
                             "segment them into different output folders")
    return list(stems.values())  # each file once


def _tiff_memmap(path: Path, shape, dtype, spacing) -> np.memmap:
    """An output TIFF with ImageJ spacing, memory-mapped so it is filled batch by batch."""
    return tifffile.memmap(path, shape=tuple(shape), dtype=dtype, **io.imagej_kwargs(tuple(shape), spacing))


def _max_projection(volume: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Maximum over the first axis, read a few slices at a time."""
    out = np.array(volume[0])
    for start in range(1, volume.shape[0], chunk):
        np.maximum(out, np.max(volume[start:start + chunk], axis=0), out=out)
        release_slices(volume, start, start + chunk)
    return out


def _write_overlay(path: Path, image: np.ndarray, mask: np.ndarray, spacing) -> None:
    """PNG quicklook: the image with the mask outline (3D: mid slice and MIP)."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state

    if image.ndim == 2:
        panels = [("image", image, mask)]
    else:
        mid = image.shape[0] // 2
        panels = [(f"slice {mid} of {image.shape[0]}", image[mid], mask[mid]),
                  ("maximum-intensity projection", _max_projection(image), _max_projection(mask))]
    aspect = 1.0 if spacing is None else spacing[-2] / spacing[-1]
    figure = Figure(figsize=(5 * len(panels), 5), layout="constrained")
    for ax, (title, picture, outline) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(normalise(picture), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if np.any(outline) and not np.all(outline):
            ax.contour(np.asarray(outline) != 0, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title)
        ax.set_axis_off()
    figure.savefig(path, dpi=100)


def _segment_file(model, path: Path, out_dir: Path, options: dict, force: bool) -> dict:
    """Segment one file into ``out_dir``; every output is written atomically."""
    stem = io.file_stem(path)
    outputs = {"mask": out_dir / f"{stem}_mask.tif",
               "prob": out_dir / f"{stem}_prob.tif" if options.pop("save_prob") else None,
               "overlay": out_dir / f"{stem}_overlay.png" if options.pop("quicklook") else None}
    with ExitStack() as stack:  # refuses existing outputs before any work is done
        temp = {k: stack.enter_context(atomic_path(v, force=force)) if v else None
                for k, v in outputs.items()}
        _segment_into(model, *io.open_volume(path), temp, options)
    return {k: None if v is None else str(v) for k, v in outputs.items()}


def _segment_into(model, image, spacing, temp: dict, options: dict) -> None:
    options["progress"] = options["progress"] and image.ndim == 3  # no bar per 2D image
    mask = _tiff_memmap(temp["mask"], image.shape, np.uint8, spacing)
    prob = None if temp["prob"] is None else _tiff_memmap(temp["prob"], image.shape, np.float32, spacing)
    predict_volume(model, image, spacing, mask_out=mask, prob_out=prob, keep_prob=False, **options)
    if temp["overlay"] is not None:
        _write_overlay(temp["overlay"], image, mask, spacing)
    for out in (mask, prob):
        if out is not None:
            out.flush()


def predict_files(
    model_path: str | Path,
    inputs,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    tta: bool | None = None,
    postprocess: Sequence[str] | None = None,
    min_size: int | None = None,
    save_prob: bool = False,
    quicklook: bool = False,
    force: bool = False,
    keep_going: bool = False,
    progress: bool = True,
    runtime: str = "tensorflow",
) -> list[dict]:
    """Segment image files and folders, writing masks beside the input's geometry.

    Parameters
    ----------
    model_path : str or Path
        Training run folder or ``.keras`` file (see :func:`resolve_model`).
    inputs : path or sequence of paths
        Image files and folders of images; folders are read one file at a time.
    out_dir : str or Path
        Receives ``<stem>_mask.tif`` (uint8 0/255, the input's shape and spacing), with
        ``save_prob`` ``<stem>_prob.tif`` (float32) and with ``quicklook``
        ``<stem>_overlay.png``.
    threshold, tta, postprocess, min_size : optional
        Override the run's ``inference.json`` (see :func:`predict_volume`). Its
        ``patch_size`` sets the windows of a 3D model, its ``input_size`` the square a
        2D model was trained on; otherwise a 2D model segments whole slices.
    save_prob, quicklook : bool
        Also write the probability map / the overlay PNG.
    force : bool
        Overwrite existing outputs; otherwise an existing output raises UsageError.
    keep_going : bool
        Record a file that fails with a bcseg error and go on with the next.
    progress : bool
        Show a progress bar over files (and over windows of each stack).
    runtime : {"tensorflow", "onnx"}
        ``"onnx"`` runs the run's ``model_best.onnx`` (or a ``.onnx`` file) with ONNX
        Runtime, without TensorFlow (see :mod:`bcseg.onnx_runtime`).

    Returns
    -------
    list of dict
        One per input file: ``input``, ``mask``, ``prob``, ``overlay`` (paths or
        None), ``status`` ("ok" or "error") and ``error`` (message or None).
    """
    if runtime == "onnx":
        from bcseg.onnx_runtime import OnnxModel, resolve_onnx
        model_file, settings = resolve_onnx(model_path)
        model = OnnxModel(model_file)
    else:
        model_file, settings = resolve_model(model_path)
        model = load_model(model_file)
    spec = model_spec(model)
    if settings["ndim"] is not None and settings["ndim"] != spec.ndim:
        raise ModelError(model_file, f"is a {spec.ndim}D model but its {SETTINGS_FILE} says ndim "
                         f"{settings['ndim']}")
    chosen = {"threshold": threshold, "tta": tta, "postprocess": postprocess, "min_size": min_size}
    options = {k: settings[k] if v is None else v for k, v in chosen.items()}
    options["postprocess"] = check_steps(options["postprocess"])
    # A 2D model segments whole slices (fitted to input_size when it was trained so);
    # a saved patch size is for 3D windows.
    options["patch_size"] = settings["patch_size"] if spec.ndim == 3 else None
    options["input_size"] = settings["input_size"] if spec.ndim == 2 else None
    if options["patch_size"] is not None and len(options["patch_size"]) != 3:
        raise ConfigError(model_file.parent / SETTINGS_FILE,
                          f"patch_size {options['patch_size']} needs 3 sizes for a 3D model")
    files = _input_files(inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(out_dir, "is a file; --out must be a folder")
    records = []
    for path in tqdm(files, disable=not progress, desc="Segmenting", unit="image"):
        record = {"input": str(path), "mask": None, "prob": None, "overlay": None,
                  "status": "ok", "error": None}
        try:
            record.update(_segment_file(model, path, out_dir, {
                **options, "save_prob": save_prob, "quicklook": quicklook, "progress": progress}, force))
        except BcsegError as exc:
            if exc.path is None:  # errors from arrays name no file: this one is at fault
                exc = type(exc)(path, exc.problem)
            if not keep_going:
                raise exc from None
            record.update(status="error", error=str(exc))
        records.append(record)
    return records
