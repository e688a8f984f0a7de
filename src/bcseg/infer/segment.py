"""Segment image files and folders with a trained run: the work behind ``bcseg predict``.

Reads each input memory-mapped where possible, runs :func:`bcseg.infer.predict.segment_volume`
with the run's inference settings (:mod:`bcseg.rundir`: threshold, post-processing,
TTA flips, input size, ensemble members, chosen on the run's validation split), and writes the mask (and
optionally the probability map and a quick-look PNG) with the input's exact shape
and spacing. Output TIFFs are filled batch by batch through memory-mapped temporary
files, renamed only when complete.
"""

from __future__ import annotations

import errno
import math
import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
from tqdm.auto import tqdm

from bcseg import outputs
from bcseg.atomic import atomic_path, remove_partials
from bcseg.data import io
from bcseg.data.dataset import Case, discover, read_case_channels
from bcseg.data.intensity import check_methods, normalise
from bcseg.errors import BcsegError, ConfigError, DataError, ModelError, UsageError
from bcseg.infer.postprocess import check_steps, release_slices
from bcseg.infer.predict import load_model, model_spec, segment_volume
from bcseg.rundir import SETTINGS_FILE, load_run

# Every output ``predict`` (with --margins) writes for one input, by suffix after its
# stem. A forced run removes those of a case it does not write again: a stale
# probability map beside a new mask would be scored as if it belonged to it.
CASE_OUTPUTS = ("_mask.tif", "_prob.tif", "_overlay.png",
                "_margins.csv", "_margins.png", "_specimen.tif")


def load_models(model_path, threshold=None, tta=None, postprocess=None, min_size=None,
                runtime: str = "tensorflow"):
    """The models of a run, model file or several, and the settings to run them with.

    Parameters
    ----------
    model_path : path or sequence of paths
        See :func:`bcseg.rundir.load_run`; several paths, or a k-fold run folder,
        make an ensemble.
    threshold, tta, postprocess, min_size : optional
        Override the recorded settings (see
        :meth:`bcseg.rundir.InferenceSettings.overridden`).

    Returns
    -------
    models : list of keras.Model
    settings : InferenceSettings
    """
    if runtime == "onnx":  # the exported run, without TensorFlow
        from bcseg.infer.onnx_runtime import OnnxModel, load_onnx_run

        paths = [model_path] if isinstance(model_path, (str, Path)) else list(model_path)
        if len(paths) != 1:
            raise ModelError(None, "the onnx runtime runs one exported model, not an ensemble; "
                             "pass one --model")
        files, settings = load_onnx_run(paths[0])
        models = [OnnxModel(f) for f in files]
    else:
        files, settings = load_run(model_path)
        models = [load_model(f) for f in files]
    settings = settings.overridden(threshold, tta, None if postprocess is None else check_steps(postprocess),
                                   min_size, source=files[0])
    views = [_fitted(f, _spec(f, m), view) for f, m, view in zip(files, models, settings.member_views())]
    return models, settings.replace(members=tuple(views)) if settings.members else views[0]


def _spec(model_file: Path, model):
    """The model's spec; a model bcseg cannot run is an error of its file."""
    try:
        return model_spec(model)
    except ModelError as exc:
        raise ModelError(model_file, exc.problem) from None


def _fitted(model_file: Path, spec, view):
    """A model's settings checked against its graph: the channels it takes, named and
    normalised; a 2D model segments whole slices (fitted to ``input_size`` when it was
    trained so); a patch size is for 3D windows."""
    names = view.channel_names
    if spec.channels != max(1, len(names)):  # the model is at fault, not the images given to it
        raise ModelError(model_file, f"takes {spec.channels} input channels, but its settings name "
                         f"{len(names) or 'no'} channel(s) {', '.join(names)}; predict with the run "
                         "folder it was trained in, whose settings name its channels")
    try:
        check_methods(view.normalisation, list(names))
    except ValueError as exc:
        raise ConfigError(model_file, f"settings: {exc}") from None
    if view.ndim is not None and view.ndim != spec.ndim:
        raise ModelError(model_file, f"is a {spec.ndim}D model but its settings say ndim {view.ndim}")
    if spec.ndim == 2:
        return view.replace(patch_size=None)
    if view.patch_size is not None and len(view.patch_size) != 3:
        raise ConfigError(model_file.parent / SETTINGS_FILE,
                          f"patch_size {list(view.patch_size)} needs 3 sizes for a 3D model")
    return view.replace(input_size=None)


# --------------------------------------------------------------------------- files

def _stem(item: Path | Case) -> str:
    """The name of an input's outputs: a case's id, or the file's stem."""
    return item.id if isinstance(item, Case) else io.file_stem(item)


def _source(item: Path | Case) -> Path:
    """The file an input's messages name: the file, or a case's first channel's file."""
    return item.image if isinstance(item, Case) else item


def _dataset_inputs(root: Path) -> list[Path | Case]:
    """The images of a dataset folder or manifest, laid out as for training: a case of
    named channels as its Case, a case of one unnamed image as its file."""
    return [case if case.channels else case.image for case in discover(root)]


def _is_dataset(item: Path) -> bool:
    return (item.is_dir() and ((item / "images").is_dir() or (item / "manifest.csv").is_file())
            or item.is_file() and item.suffix.lower() == ".csv")


def _input_files(inputs) -> list[Path | Case]:
    """Every input: image files, the images in folders, and the cases of dataset folders
    (``images/`` with ``images/<channel>/``, ``_0000`` files or a C axis named by
    ``channels.json``) or manifests; each name once."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path | Case] = []
    for item in map(Path, inputs):
        if _is_dataset(item):
            files.extend(_dataset_inputs(item))
        elif item.is_dir():
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
    stems: dict[str, Path | Case] = {}
    for f in files:
        other = stems.setdefault(_stem(f), f)
        if _source(other).resolve() != _source(f).resolve():
            raise UsageError(_source(f), f"has the same name as {_source(other)}, so their outputs "
                             "would collide; segment them into different output folders")
    return list(stems.values())  # each file once


def _check_channels(files: list[Path | Case], names: tuple[str, ...]) -> None:
    """Refuse, naming the file, an input that lacks a channel the model takes.

    A grey model takes image files; a model of one named channel takes an image file
    as that channel too; a model of several takes cases whose channels include its own.
    """
    for item in files:
        if isinstance(item, Case):
            have = item.channel_names
            missing = [n for n in names if n not in have]
            if not names or missing:
                wants = f"channels {', '.join(names)}" if names else "one grey image"
                raise DataError(item.image, f"case '{item.id}' has channel(s) {', '.join(have)}; "
                                f"the model takes {wants}")
        elif len(names) > 1:
            raise DataError(item, f"is one image, but the model takes channels {', '.join(names)}: "
                            "give a dataset folder with images/<channel>/ folders (or _0000 files, "
                            "or images with a C axis, named by channels.json)")


def _tiff_memmap(path: Path, shape, dtype, spacing) -> np.memmap:
    """An output TIFF with ImageJ spacing, memory-mapped so it is filled batch by batch.

    The file is created sparse; its blocks are allocated here, so a full disk is an
    OSError now rather than a SIGBUS when a page of the map is first written.
    """
    if len(shape) == 3 and 1 in (shape[0], shape[-1]):
        # ImageJ files read back (1, H, W) and (Z, H, 1) without the singleton axis: a
        # shaped TIFF keeps it, with the in-plane spacing in resolution tags (pixels per cm).
        kwargs = {} if spacing is None else {"resolution": (10 / spacing[-1], 10 / spacing[-2]),
                                             "resolutionunit": "CENTIMETER"}
        array = tifffile.memmap(path, shape=tuple(shape), dtype=dtype, photometric="minisblack", **kwargs)
    else:
        array = tifffile.memmap(path, shape=tuple(shape), dtype=dtype,
                                **io.imagej_kwargs(tuple(shape), spacing))
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


def _case_outputs(path: Path | Case, out_dir: Path, save_prob: bool, quicklook: bool) -> dict:
    """The outputs asked for one input: mask, and optionally prob and overlay (else None)."""
    stem = _stem(path)
    return {"mask": out_dir / f"{stem}_mask.tif",
            "prob": out_dir / f"{stem}_prob.tif" if save_prob else None,
            "overlay": out_dir / f"{stem}_overlay.png" if quicklook else None}


def _every_output(path: Path | Case, out_dir: Path) -> list[Path]:
    return [out_dir / f"{_stem(path)}{suffix}" for suffix in CASE_OUTPUTS]


def _complete(wanted: dict, known: dict) -> bool:
    """All outputs asked for exist and were written by bcseg (``--resume`` keeps them)."""
    return all(outputs.is_owned(p, known) for p in wanted.values() if p is not None)


def _read_input(item: Path | Case, names: tuple[str, ...]) -> tuple[np.ndarray, tuple | None]:
    """An input's image and spacing: a file memory-mapped (channel axis added for a
    model of one named channel), a case's named channels stacked last."""
    if isinstance(item, Case):
        image, spacing, _ = read_case_channels(item, list(names))
        return image, spacing
    image, spacing = io.open_volume(item)
    return (image[..., None] if names else image), spacing


def _segment_file(models, settings, path: Path | Case, wanted: dict, progress: bool) -> dict:
    """Segment one input into the ``wanted`` outputs, each written atomically; then drop
    the case's other, stale outputs (checked to be bcseg's before the run began)."""
    names = settings.input_channels()
    with ExitStack() as stack:
        temp = {k: stack.enter_context(atomic_path(v)) if v else None for k, v in wanted.items()}
        image, spacing = _read_input(path, names)
        plane = image[..., 0] if names else image  # the spatial axes: the first channel
        _segment_into(models, settings, image, spacing, temp, progress,
                      _output_geometry(_source(path), plane, spacing), plane)
    stale = [p for p in _every_output(path, wanted["mask"].parent)
             if p not in wanted.values() and p.exists()]
    if stale:  # checked to exist first: listing what bcseg owns reads the whole folder
        outputs.remove_owned(stale)
    return {k: None if v is None else str(v) for k, v in wanted.items()}


def _output_geometry(path: Path, image: np.ndarray, spacing) -> tuple:
    """The shape and spacing outputs are written with: the input file's own.

    Reading drops singleton axes (a ``(Z, 1, X)`` stack is segmented as ``(Z, X)``);
    the outputs keep them, so they line up with the input in every viewer.
    """
    shape, stored_spacing = io.stored_geometry(path)
    if shape == image.shape or math.prod(shape) != image.size:
        return image.shape, spacing
    return shape, stored_spacing


def _segment_into(models, settings, image, spacing, temp: dict, progress: bool, geometry: tuple,
                  plane: np.ndarray) -> None:
    """Segment ``image`` into the temporary outputs; ``plane`` is its spatial view (the
    image itself, or its first channel) that outputs and the overlay follow."""
    shape, out_spacing = geometry
    files = {k: None if temp[k] is None else _tiff_memmap(temp[k], shape, dtype, out_spacing)
             for k, dtype in (("mask", np.uint8), ("prob", np.float32))}
    # Views in the shape that was segmented, writing through to the files.
    mask, prob = (None if f is None else f.reshape(plane.shape) for f in files.values())
    segment_volume(models, image, settings, spacing, mask_out=mask, prob_out=prob, keep_prob=False,
                   progress=progress and plane.ndim == 3)  # no bar per 2D image
    if temp["overlay"] is not None:
        _write_overlay(temp["overlay"], plane, mask, spacing)
    for out in files.values():
        if out is not None:
            out.flush()


def _files_to_do(files: list[Path], wanted: dict, out_dir: Path, force: bool,
                 resume: bool) -> list[Path]:
    """The inputs to segment; refuses, before any work, outputs it may not replace.

    ``wanted`` holds each input's outputs by its name (:func:`_stem`)."""
    if force and resume:
        raise UsageError(None, "force and resume exclude each other: resume keeps complete "
                         "outputs, force replaces them")
    known: dict = {}  # bcseg's files in out_dir, listed once, not once per input
    todo = [p for p in files if not (resume and _complete(wanted[_stem(p)], known))]
    for path in todo:
        outputs.check_name_lengths([p for p in wanted[_stem(path)].values() if p is not None],
                                   _source(path))
        outputs.check_replaceable(_every_output(path, out_dir), force or resume, known)
    return todo


def predict_files(model_path: str | Path, inputs, out_dir: str | Path, *, threshold: float | None = None,
                  tta: bool | None = None, postprocess: Sequence[str] | None = None,
                  min_size: int | None = None, save_prob: bool = False, quicklook: bool = False,
                  force: bool = False, resume: bool = False, keep_going: bool = False,
                  progress: bool = True, runtime: str = "tensorflow") -> list[dict]:
    """Segment image files and folders, writing masks beside the input's geometry.

    Parameters
    ----------
    model_path : path or sequence of paths
        Training run folder, ``.keras`` file, k-fold run folder (an ensemble of its
        fold models) or several of these (an ensemble); see :func:`bcseg.rundir.load_run`.
    inputs : path or sequence of paths
        Image files, folders of images (read one file at a time), and dataset folders or
        manifests laid out as for training, whose cases give a model its named channels.
    out_dir : str or Path
        Receives ``<stem>_mask.tif`` (uint8 0/255, the input's shape and spacing), with
        ``save_prob`` ``<stem>_prob.tif`` (float32) and with ``quicklook`` ``<stem>_overlay.png``.
    threshold, tta, postprocess, min_size : optional
        Override the run's settings (see :func:`bcseg.infer.predict.predict_volume`); its
        ``patch_size`` sets a 3D model's windows, ``input_size`` a 2D model's square.
    force : bool
        Replace existing outputs that bcseg wrote, and remove a case's other, stale
        outputs (an old ``_prob.tif`` beside a new mask); otherwise an existing output
        raises UsageError. Files bcseg did not write are never replaced.
    resume : bool
        Keep inputs whose asked-for outputs are complete, remove temporary files a
        killed run left, and segment the rest.
    save_prob, quicklook, keep_going, progress : bool
        Also write the probability map / the overlay PNG; record a file that fails with a
        bcseg error and go on with the next; show progress bars.
    runtime : {"tensorflow", "onnx"}
        ``"onnx"``: the run's ``model_best.onnx`` (or a ``.onnx`` file) in ONNX Runtime, no TensorFlow.

    Returns
    -------
    list of dict
        One per input file: ``input``, ``mask``, ``prob``, ``overlay`` (paths or None),
        ``status`` ("ok", "skipped" by ``resume``, or "error") and ``error`` (message or None).
    """
    out_dir = outputs.check_output_folder(out_dir)
    files = _input_files(inputs)
    wanted = {_stem(path): _case_outputs(path, out_dir, save_prob, quicklook) for path in files}
    _files_to_do(files, wanted, out_dir, force, resume)  # refuse before the model loads
    models, settings, notes = _models_for(files, model_path, (threshold, tta, postprocess, min_size),
                                          runtime)
    model_named = model_path[0] if isinstance(model_path, (list, tuple)) else model_path
    with outputs.claim(out_dir, "predict"):
        # again, now that no other run can write here: one may have finished meanwhile
        todo = _files_to_do(files, wanted, out_dir, force, resume)
        if resume:
            remove_partials(out_dir)
        records = [_predict_one(models, settings, path, wanted[_stem(path)], path in todo, progress,
                                keep_going, model_named)
                   for path in tqdm(files, disable=not progress, desc="Segmenting", unit="image")]
    for note in notes:
        warnings.warn(note.message, stacklevel=2)
    return records


def _models_for(files: list, model_path, overrides: tuple, runtime: str) -> tuple[list, object, list]:
    """The models and settings, and the warnings they gave; refuses, before any output
    is touched, inputs that lack a channel the model takes.

    Warnings about the settings (none recorded, a threshold tuned without TTA) wait
    until the inputs are segmented: a bad input still gives one line, its error.
    """
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        models, settings = load_models(model_path, *overrides, runtime=runtime)
    _check_channels(files, settings.input_channels())
    return models, settings, notes


def _predict_one(models, settings, path: Path | Case, wanted: dict, todo: bool, progress: bool,
                 keep_going: bool, model_named) -> dict:
    """The record of one input: segmented, skipped (complete, ``resume``) or failed
    (``keep_going``; otherwise the error is raised, naming the file at fault)."""
    record = {"input": str(_source(path)), "mask": None, "prob": None, "overlay": None,
              "status": "ok", "error": None}
    if not todo:
        record.update({k: None if v is None else str(v) for k, v in wanted.items()}, status="skipped")
        return record
    try:
        record.update(_segment_file(models, settings, path, wanted, progress))
    except BcsegError as exc:
        if exc.path is None:  # errors from arrays name no file: name the one at fault
            exc = type(exc)(model_named if isinstance(exc, ModelError) else _source(path), exc.problem)
        if not keep_going:
            raise exc from None
        record.update(status="error", error=str(exc))
    return record
