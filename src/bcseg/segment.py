"""Segment image files and folders with a trained run: the work behind ``bcseg predict``.

Reads each input memory-mapped where possible, runs :func:`bcseg.predict.predict_volume`
with the run's inference settings (``inference.json``: threshold, post-processing,
TTA, input size, chosen on the run's validation split), and writes the mask (and
optionally the probability map and a quick-look PNG) with the input's exact shape
and spacing. Output TIFFs are filled batch by batch through memory-mapped temporary
files, renamed only when complete.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
from tqdm.auto import tqdm

from bcseg import io, outputs
from bcseg.atomic import atomic_path, remove_partials
from bcseg.errors import BcsegError, ConfigError, DataError, ModelError, UsageError
from bcseg.intensity import normalise
from bcseg.postprocess import POSTPROCESS_STEPS, check_steps, release_slices
from bcseg.predict import load_model, model_spec, predict_volume

MODEL_FILE = "model_best.keras"
SETTINGS_FILE = "inference.json"
DEFAULT_SETTINGS = {"threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False,
                    "ndim": None, "patch_size": None, "input_size": None}
# Every output ``predict`` (with --margins) writes for one input, by suffix after its
# stem. A forced run removes those of a case it does not write again: a stale
# probability map beside a new mask would be scored as if it belonged to it.
CASE_OUTPUTS = ("_mask.tif", "_prob.tif", "_overlay.png",
                "_margins.csv", "_margins.png", "_specimen.tif")

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
            # bcseg's own outputs there (--out was this folder) are never inputs
            ours = outputs.owned(item)
            found = [f for f in io.image_files(item) if f.name not in ours]
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
    """An output TIFF with ImageJ spacing, memory-mapped so it is filled batch by batch.

    The file is created sparse; its blocks are allocated here, so a full disk is an
    OSError now rather than a SIGBUS when a page of the map is first written.
    """
    array = tifffile.memmap(path, shape=tuple(shape), dtype=dtype, **io.imagej_kwargs(tuple(shape), spacing))
    with open(path, "rb+") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    return array


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


def _case_outputs(path: Path, out_dir: Path, save_prob: bool, quicklook: bool) -> dict:
    """The outputs asked for one input: mask, and optionally prob and overlay (else None)."""
    stem = io.file_stem(path)
    return {"mask": out_dir / f"{stem}_mask.tif",
            "prob": out_dir / f"{stem}_prob.tif" if save_prob else None,
            "overlay": out_dir / f"{stem}_overlay.png" if quicklook else None}


def _every_output(path: Path, out_dir: Path) -> list[Path]:
    return [out_dir / f"{io.file_stem(path)}{suffix}" for suffix in CASE_OUTPUTS]


def _complete(wanted: dict, known: dict) -> bool:
    """All outputs asked for exist and were written by bcseg (``--resume`` keeps them)."""
    return all(outputs.is_owned(p, known) for p in wanted.values() if p is not None)


def _segment_file(model, path: Path, wanted: dict, options: dict) -> dict:
    """Segment one file into the ``wanted`` outputs, each written atomically; then drop
    the case's other, stale outputs (checked to be bcseg's before the run began)."""
    with ExitStack() as stack:
        temp = {k: stack.enter_context(atomic_path(v)) if v else None for k, v in wanted.items()}
        _segment_into(model, *io.open_volume(path), temp, options)
    stale = [p for p in _every_output(path, wanted["mask"].parent)
             if p not in wanted.values() and p.exists()]
    if stale:  # checked to exist first: listing what bcseg owns reads the whole folder
        outputs.remove_owned(stale)
    return {k: None if v is None else str(v) for k, v in wanted.items()}


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


def _files_to_do(files: list[Path], wanted: dict, out_dir: Path, force: bool,
                 resume: bool) -> list[Path]:
    """The inputs to segment; refuses, before any work, outputs it may not replace."""
    if force and resume:
        raise UsageError(None, "force and resume exclude each other: resume keeps complete "
                         "outputs, force replaces them")
    known: dict = {}  # bcseg's files in out_dir, listed once, not once per input
    todo = [p for p in files if not (resume and _complete(wanted[p], known))]
    for path in todo:
        outputs.check_name_lengths([p for p in wanted[path].values() if p is not None], path)
        outputs.check_replaceable(_every_output(path, out_dir), force or resume, known)
    return todo


def _options(model, model_file: Path, settings: dict, **chosen) -> dict:
    """predict_volume's options: the arguments given, else the run's inference settings."""
    spec = model_spec(model)
    if settings["ndim"] is not None and settings["ndim"] != spec.ndim:
        raise ModelError(model_file, f"is a {spec.ndim}D model but its {SETTINGS_FILE} says ndim "
                         f"{settings['ndim']}")
    options = {k: settings[k] if v is None else v for k, v in chosen.items()}
    options["postprocess"] = check_steps(options["postprocess"])
    # A 2D model segments whole slices (fitted to input_size when it was trained so);
    # a saved patch size is for 3D windows.
    options["patch_size"] = settings["patch_size"] if spec.ndim == 3 else None
    options["input_size"] = settings["input_size"] if spec.ndim == 2 else None
    if options["patch_size"] is not None and len(options["patch_size"]) != 3:
        raise ConfigError(model_file.parent / SETTINGS_FILE,
                          f"patch_size {options['patch_size']} needs 3 sizes for a 3D model")
    return options


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
    resume: bool = False,
    keep_going: bool = False,
    progress: bool = True,
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
        Replace existing outputs that bcseg wrote, and remove a case's other, stale
        outputs (an old ``_prob.tif`` beside a new mask); otherwise an existing output
        raises UsageError. Files bcseg did not write are never replaced.
    resume : bool
        Keep inputs whose asked-for outputs are complete, remove temporary files a
        killed run left, and segment the rest.
    keep_going : bool
        Record a file that fails with a bcseg error and go on with the next.
    progress : bool
        Show a progress bar over files (and over windows of each stack).

    Returns
    -------
    list of dict
        One per input file: ``input``, ``mask``, ``prob``, ``overlay`` (paths or
        None), ``status`` ("ok", "skipped" by ``resume``, or "error") and ``error``
        (message or None).
    """
    out_dir = outputs.check_output_folder(out_dir)
    files = _input_files(inputs)
    wanted = {path: _case_outputs(path, out_dir, save_prob, quicklook) for path in files}
    _files_to_do(files, wanted, out_dir, force, resume)  # refuse before the model loads
    model_file, settings = resolve_model(model_path)
    model = load_model(model_file)
    options = _options(model, model_file, settings, threshold=threshold, tta=tta,
                       postprocess=postprocess, min_size=min_size)
    records = []
    with outputs.claim(out_dir, "predict"):
        # again, now that no other run can write here: one may have finished meanwhile
        todo = _files_to_do(files, wanted, out_dir, force, resume)
        if resume:
            remove_partials(out_dir)
        for path in tqdm(files, disable=not progress, desc="Segmenting", unit="image"):
            record = {"input": str(path), "mask": None, "prob": None, "overlay": None,
                      "status": "ok", "error": None}
            if path not in todo:
                record.update({k: None if v is None else str(v) for k, v in wanted[path].items()},
                              status="skipped")
            else:
                try:
                    record.update(_segment_file(model, path, wanted[path],
                                                {**options, "progress": progress}))
                except BcsegError as exc:
                    if exc.path is None:  # errors from arrays name no file: this one is at fault
                        exc = type(exc)(path, exc.problem)
                    if not keep_going:
                        raise exc from None
                    record.update(status="error", error=str(exc))
            records.append(record)
    return records
