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
import hashlib
import json
import math
import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tifffile
from tqdm.auto import tqdm

from bcseg import outputs
from bcseg.atomic import atomic_path, real_path, remove_partials
from bcseg.data import image_rules, io
from bcseg.data.channels import stack as stack_channels
from bcseg.data.case_checks import id_problem, name_key
from bcseg.data.cases import Case, read_case_channel_arrays, read_case_image
from bcseg.data.content import case_files
from bcseg.data.dataset import discover, has_class_folders, masks_beside_images
from bcseg.data.intensity import blank_problem, check_methods, normalise
from bcseg.errors import BcsegError, ConfigError, DataError, ModelError, UsageError
from bcseg.infer.postprocess import check_steps, release_slices
from bcseg.infer.predict import load_model, model_spec, rank_problem, segment_volume
from bcseg.rundir import SETTINGS_FILE, WEIGHTS_KEY, InferenceSettings, load_run, read_settings

# Every output ``predict`` (with --margins) writes for one input, by suffix after its
# stem. A forced run removes those of a case it does not write again: a stale
# probability map beside a new mask would be scored as if it belonged to it.
CASE_OUTPUTS = ("_mask.tif", "_prob.tif", "_overlay.png",
                "_margins.csv", "_margins.png", "_specimen.tif")
MARGINS_TABLE = "margins.csv"  # one row per case, named as its files (output_name)


def segment_case(models, case: Case, settings: InferenceSettings, keep_prob: bool = True):
    """Segment one case: ``(image, spacing, mask, prob)`` through the one inference path.

    A model of named channels gets the case's channels, channel axis last (``image``
    then has it too); a grey model the case's image.
    """
    names = settings.input_channels()
    dtypes = None
    if names:
        image, spacing, dtypes = _case_channels(case, names)
    else:
        image, spacing = read_case_image(case)
    mask, prob = segment_volume(models, image, settings, spacing, keep_prob=keep_prob,
                                channel_dtypes=dtypes)
    return image, spacing, mask, prob


def _case_channels(case: Case, names) -> tuple[np.ndarray, tuple | None, list]:
    """A case's named channels stacked last, its spacing, and each channel's own dtype:
    stacked beside float32 photoacoustics, 8-bit ultrasound becomes float32, and
    segment_volume must still divide it by 255, as training did."""
    arrays, spacing = read_case_channel_arrays(case, list(names))
    return stack_channels(list(arrays.values())), spacing, [a.dtype for a in arrays.values()]


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
        from bcseg.infer.onnx_runtime import OnnxModel, keras_source, load_onnx_run

        paths = [model_path] if isinstance(model_path, (str, Path)) else list(model_path)
        if len(paths) != 1:
            raise ModelError(None, "the onnx runtime runs one exported model, not an ensemble; "
                             "pass one --model")
        files, settings = load_onnx_run(paths[0])
        models = [OnnxModel(f, exported_from=keras_source(f)) for f in files]
    else:
        files, settings = load_run(model_path)
        models = [load_model(f) for f in files]
    settings = settings.overridden(threshold, tta, None if postprocess is None else check_steps(postprocess),
                                   min_size, source=files[0])
    specs = [_spec(f, m) for f, m in zip(files, models)]
    _refuse_mixed_kinds(files, specs)
    views = [_fitted(f, spec, view) for f, spec, view in zip(files, specs, settings.member_views())]
    if not settings.members:
        return models, views[0]
    # each member's file, found: an error from its output names it, not the ensemble
    views = [view.replace(info={**view.info, "path": str(f)}) for f, view in zip(files, views)]
    return models, settings.replace(members=tuple(views))


def _spec(model_file: Path, model):
    """The model's spec; a model bcseg cannot run is an error of its file."""
    try:
        return model_spec(model)
    except ModelError as exc:
        raise ModelError(model_file, exc.problem) from None


def _refuse_mixed_kinds(files: list[Path], specs: list) -> None:
    """The members of an ensemble are of one kind: a 2D model's slices and a 3D model's
    windows averaged are no model's output (``bcseg ensemble`` refuses such runs too)."""
    for model_file, spec in zip(files[1:], specs[1:]):
        if spec.ndim != specs[0].ndim:
            raise ModelError(model_file, f"is a {spec.ndim}D model, but {files[0]} is a "
                             f"{specs[0].ndim}D one: the members of an ensemble must be of one kind, "
                             "all 2D or all 3D")


def _fitted(model_file: Path, spec, view):
    """A model's settings checked against its graph: the channels it takes, named and
    normalised; a 2D model segments whole slices (fitted to ``input_size`` when it was
    trained so); a patch size is for 3D windows."""
    names = view.channel_names
    if spec.channels != max(1, len(names)):  # the model is at fault, not the images given to it
        raise ModelError(model_file, f"takes {spec.channels} input channels, but its settings name "
                         f"{len(names) or 'no'} channel(s) {', '.join(names)}; predict with the run "
                         "folder it was trained in, whose settings name its channels")
    if view.channels != spec.channels:  # the settings are at fault: name their file
        raise ConfigError(_settings_file(model_file, view), f"says channels {view.channels}, "
                          f"but {model_file.name} takes {spec.channels} input channel(s)")
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
    # A window side the network cannot take (7 for a U-Net that halves twice) was met only
    # as the first window ran: a bare ValueError, exit 1, naming no file.
    if view.patch_size is not None and any(p % spec.divisor for p, f in zip(view.patch_size, spec.fixed)
                                           if f is None):
        raise ConfigError(_settings_file(model_file, view), f"patch_size {list(view.patch_size)} must be "
                          f"multiples of {spec.divisor}, the sizes {model_file.name} takes")
    return view.replace(input_size=None)


def _settings_file(model_file: Path, view) -> Path:
    """The file a model's settings were read from, to name when they are at fault: the
    model's own inference.json beside it, else the copy inside the model file."""
    beside = model_file.parent / SETTINGS_FILE
    own = beside.is_file() and not (read_settings(beside) or view).members
    return beside if own else model_file


# --------------------------------------------------------------------------- files

def output_name(item: Path | Case) -> str:
    """The one name of every output of an input: a case's id, or the file's stem.

    Masks, probability maps, overlays, the margins files (``_margins.csv``,
    ``_margins.png``, ``_specimen.tif``) and the case's row of ``margins.csv`` all
    take it from here. Cases of a manifest often share file names (``P1/us.tif``,
    ``P2/us.tif``, one folder per patient); naming margins by the file instead filed
    every patient's margins under one name, ``us``.
    """
    return item.id if isinstance(item, Case) else io.file_stem(item)


def input_file(item: Path | Case) -> Path:
    """The file an input's messages name: the file, or a case's first channel's file."""
    return item.image if isinstance(item, Case) else item


def read_files(item: Path | Case) -> list[Path]:
    """Every file predict reads of an input: the file, or each of a case's channels.

    A case's other channels are inputs as much as its first: a manifest may take its PA
    channel from an earlier run's ``_prob.tif``, which ``--force`` must neither replace
    nor remove as that case's stale probability map."""
    if isinstance(item, Case) and item.channels:  # its image is its first channel's file
        return [channel.path for channel in item.channels]
    return [input_file(item)]


def _dataset_inputs(root: Path) -> list[Path | Case]:
    """The cases of a dataset folder or manifest, laid out as for training.

    A case of one unnamed image is segmented as its file (:func:`_named_channels`), but
    stays a Case so that its outputs take its id, as ``evaluate`` pairs them: a manifest
    row ``img1,scans/img0.tif`` named its mask ``img0_mask.tif``, which evaluate then
    scored against case ``img0``, another image's masks, without a word.
    """
    return list(discover(root))


def _named_channels(item: Path | Case) -> bool:
    """Whether an input is read by its named channels; a case that names none (a
    manifest's ``image`` column) is read as its one file."""
    return isinstance(item, Case) and bool(item.channels)


def _is_dataset(item: Path) -> bool:
    return (item.is_dir() and ((item / "images").is_dir() or (item / "manifest.csv").is_file()
                               or has_class_folders(item))
            or item.is_file() and item.suffix.lower() == ".csv")


def _refuse_dataset_folders(out_dir: Path, inputs, files: list[Path | Case]) -> None:
    """'predict data --out data/masks/observer1', the dataset given whole, put the masks
    among an observer's: as split and evaluate, predict refuses a folder of a dataset it
    reads (a folder of images given as such is the documented place beside them). A
    dataset's ``masks/`` above ``out_dir``, whatever predict reads, was refused by
    :func:`bcseg.outputs.check_output_folder`."""
    read = {f for item in files if isinstance(item, Case) for f in case_files(item)}
    for item in map(Path, [inputs] if isinstance(inputs, (str, Path)) else inputs):
        if _is_dataset(item):
            outputs.refuse_dataset_folder(out_dir, item, read, "predict")


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
            # bcseg's own results there (--out was this folder, or it is a run's
            # predictions/) are never inputs: a mask segmented again is no new case
            ours = outputs.results_in(item)
            images = io.image_files(item)
            # the masks of images beside them (a BUSI class folder) are no images to
            # segment: they came out as '<name>_mask_mask.tif', which evaluate then refused
            masks = set(masks_beside_images(images))
            if masks:
                warnings.warn(f"{item}: {len(masks)} file(s) named NAME_mask beside an image NAME "
                              "are read as its masks, not segmented")
            found = [f for f in images if f.name not in ours and f not in masks]
            if not found:
                raise DataError(item, "holds only bcseg's outputs (masks, probability maps), not "
                                "images to segment" if images else
                                "holds no supported images (" + ", ".join(io.IMAGE_SUFFIXES) + ")")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise DataError(item, "file not found")
    stems: dict[str, Path | Case] = {}
    for f in files:
        problem = id_problem(output_name(f), max_bytes=None)  # files; discover() checked cases
        if problem:
            raise DataError(input_file(f), f"names its outputs '{output_name(f)[:60]}', which {problem}; "
                            "rename the file")
        # Letter case and Unicode form apart too: a_mask.tif and A_mask.tif, or café
        # in its two Unicode forms, are one file on macOS (and the first on Windows).
        other = stems.setdefault(name_key(output_name(f)), f)
        if _same_input(other, f):
            continue  # one input given twice (or itself)
        if real_path(input_file(other)) == real_path(input_file(f)):
            # the same first file: name the channel that differs (or the case's first file
            # when it has fewer channels than the other)
            differ = [c for c in f.channels if _channel_key(c) not in _channel_files(other)]
            what = f"channel '{differ[0].name}'" if differ else "the first channel"
            raise UsageError(differ[0].path if differ else f.image,
                             f"is {what} of case '{f.id}', which is also given with other channel "
                             "files; their outputs would collide: segment them into different "
                             "output folders")
        raise UsageError(input_file(f), f"has the same name as {input_file(other)} (letter case "
                         "or Unicode form aside), so their outputs would collide; segment them "
                         "into different output folders")
    return list(stems.values())  # each file once


def _same_input(a: Path | Case, b: Path | Case) -> bool:
    """Whether two inputs of one output name are one input, given twice.

    Cases of named channels are one case only when every channel is the same: two
    manifests with a case ``S1`` of the same ultrasound file but another PA file are two
    cases, and the second was dropped unseen (its first file matched)."""
    if isinstance(a, Case) and isinstance(b, Case) and a.channels and b.channels:
        return _channel_files(a) == _channel_files(b)
    return real_path(input_file(a)) == real_path(input_file(b))


def _channel_key(channel) -> tuple:
    return channel.name, real_path(channel.path), channel.index


def _channel_files(case: Case) -> set[tuple]:
    return {_channel_key(c) for c in case.channels}


def _check_channels(files: list[Path | Case], names: tuple[str, ...], problems: dict) -> None:
    """Note, naming the file, every input that lacks a channel the model takes.

    A grey model takes image files; a model of one named channel takes an image file
    as that channel too; a model of several takes cases whose channels include its own.
    Noted in ``problems`` as a damaged header is, not raised: with ``keep_going`` one
    specimen whose PA stack is missing stopped the whole run, and no other was segmented.
    """
    for item in files:
        if _named_channels(item):
            have = item.channel_names
            missing = [n for n in names if n not in have]
            if not names or missing:
                wants = f"channels {', '.join(names)}" if names else "one grey image"
                problems.setdefault(output_name(item), DataError(
                    item.image, f"case '{item.id}' has channel(s) {', '.join(have)}; the model takes {wants}"))
        elif len(names) > 1:
            problems.setdefault(output_name(item), DataError(
                input_file(item), f"is one image, but the model takes channels {', '.join(names)}: "
                "give a dataset folder with images/<channel>/ folders (or _0000 files, "
                "or images with a C axis, named by channels.json)"))


def _tiff_memmap(path: Path, shape, dtype, spacing, software: str | None = None) -> np.memmap:
    """An output TIFF with ImageJ spacing, memory-mapped so it is filled batch by batch.

    The file is created sparse; its blocks are allocated here, so a full disk is an
    OSError now rather than a SIGBUS when a page of the map is first written.
    """
    if len(shape) == 3 and 1 in (shape[0], shape[-1]):
        # ImageJ files read back (1, H, W) and (Z, H, 1) without the singleton axis: a
        # shaped TIFF keeps it, with the in-plane spacing in resolution tags (pixels per cm).
        kwargs = {} if spacing is None else {"resolution": (10 / spacing[-1], 10 / spacing[-2]),
                                             "resolutionunit": "CENTIMETER"}
        array = tifffile.memmap(path, shape=tuple(shape), dtype=dtype, photometric="minisblack",
                                software=software, **kwargs)
    else:
        array = tifffile.memmap(path, shape=tuple(shape), dtype=dtype, software=software,
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
    stem = output_name(path)
    return {"mask": out_dir / f"{stem}_mask.tif",
            "prob": out_dir / f"{stem}_prob.tif" if save_prob else None,
            "overlay": out_dir / f"{stem}_overlay.png" if quicklook else None}


def _every_output(path: Path | Case, out_dir: Path) -> list[Path]:
    return [out_dir / f"{output_name(path)}{suffix}" for suffix in CASE_OUTPUTS]


def _complete(wanted: dict, known: dict, made: str | None = None) -> bool:
    """All outputs asked for exist and were written by bcseg (``--resume`` keeps them),
    and, given ``made``, the mask says it was made with it (:func:`made_with`)."""
    return all(outputs.is_owned(p, known) for p in wanted.values() if p is not None) \
        and (made is None or io.recorded_made_with(wanted["mask"]) == made)


def made_with(models, settings: InferenceSettings) -> str:
    """A digest of the models' weights and the inference settings, written into every
    mask: ``--resume`` keeps only masks made with the same, so an interrupted run
    finished with another model or threshold never leaves a folder of two models' masks."""
    # Where the models were found is not what made the masks: the same run given as
    # /abs/run or ./run is the same weights, hashed below (and so the weights' digest that
    # the settings record is left out: a run's test-fold masks are made before it is).
    digest = hashlib.sha256(json.dumps(_without_paths(settings.to_dict()), sort_keys=True,
                                       default=str).encode())
    for model in models:
        if hasattr(model, "get_weights"):
            for weights in model.get_weights():
                digest.update(np.ascontiguousarray(weights).tobytes())
        else:  # an ONNX model: its file is its weights
            digest.update(Path(model.path).read_bytes())
    return digest.hexdigest()[:16]


def _without_paths(value):
    """``value`` (JSON-like) with every ``path`` and weights digest left out, at any depth."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k not in ("path", WEIGHTS_KEY)}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def _read_input(item: Path | Case, names: tuple[str, ...]) -> tuple[np.ndarray, tuple | None, list | None]:
    """An input's image, spacing and channels' own dtypes (None for a file): a file
    memory-mapped (channel axis added for a model of one named channel), a case's named
    channels stacked last."""
    if _named_channels(item):
        return _case_channels(item, names)
    image, spacing = io.open_volume(input_file(item))
    return (image[..., None] if names else image), spacing, None


def _segment_file(models, settings, path: Path | Case, wanted: dict, progress: bool,
                  made: str | None = None) -> dict:
    """Segment one input into the ``wanted`` outputs, each written atomically; then drop
    the case's other, stale outputs (checked to be bcseg's before the run began)."""
    names = settings.input_channels()
    with ExitStack() as stack:
        temp = {k: stack.enter_context(atomic_path(v)) if v else None for k, v in wanted.items()}
        image, spacing, dtypes = _read_input(path, names)
        plane = image[..., 0] if names else image  # the spatial axes: the first channel
        _segment_into(models, settings, image, spacing, temp, progress,
                      _output_geometry(path, plane, spacing), plane, made, dtypes)
    stale = [p for p in _every_output(path, wanted["mask"].parent)
             if p not in wanted.values() and p.exists()]
    if stale:  # checked to exist first: listing what bcseg owns reads the whole folder
        outputs.remove_owned(stale)
    return {k: None if v is None else str(v) for k, v in wanted.items()}


def _output_geometry(item: Path | Case, image: np.ndarray, spacing) -> tuple:
    """The shape and spacing outputs are written with: the input file's own.

    Reading drops singleton axes (a ``(Z, 1, X)`` stack is segmented as ``(Z, X)``);
    the outputs keep them, so they line up with the input in every viewer. A plane of a
    file's C axis is written as read: the file stores its channels too, and reading it
    as one image refuses it (every case of a hyperstack dataset failed so).
    """
    if _named_channels(item) and item.channels[0].index is not None:
        return image.shape, spacing
    shape, stored_spacing = io.stored_geometry(input_file(item))
    if shape == image.shape or math.prod(shape) != image.size:
        return image.shape, spacing
    return shape, stored_spacing


def _segment_into(models, settings, image, spacing, temp: dict, progress: bool, geometry: tuple,
                  plane: np.ndarray, made: str | None = None, dtypes: list | None = None) -> None:
    """Segment ``image`` into the temporary outputs; ``plane`` is its spatial view (the
    image itself, or its first channel) that outputs and the overlay follow; ``dtypes``
    are its channels' own (see :func:`_case_channels`)."""
    shape, out_spacing = geometry
    software = None if made is None else io.MADE_WITH + made
    files = {k: None if temp[k] is None else _tiff_memmap(temp[k], shape, dtype, out_spacing, software)
             for k, dtype in (("mask", np.uint8), ("prob", np.float32))}
    # Views in the shape that was segmented, writing through to the files.
    mask, prob = (None if f is None else f.reshape(plane.shape) for f in files.values())
    segment_volume(models, image, settings, spacing, mask_out=mask, prob_out=prob, keep_prob=False,
                   progress=progress and plane.ndim == 3,  # no bar per 2D image
                   channel_dtypes=dtypes)
    if temp["overlay"] is not None:
        _write_overlay(temp["overlay"], plane, mask, spacing)
    for out in files.values():
        if out is not None:
            out.flush()


def _files_to_do(files: list[Path], wanted: dict, out_dir: Path, force: bool,
                 resume: bool, made: str | None = None) -> list[Path]:
    """The inputs to segment; refuses, before any work, outputs it may not replace.

    ``wanted`` holds each input's outputs by its name (:func:`output_name`)."""
    if force and resume:
        raise UsageError(None, "force and resume exclude each other: resume keeps complete "
                         "outputs, force replaces them")
    known: dict = {}  # bcseg's files in out_dir, listed once, not once per input
    sources = [f for p in files for f in read_files(p)]  # never replaced, never removed as stale
    todo = [p for p in files if not (resume and _complete(wanted[output_name(p)], known, made))]
    # A killed predict's masks: 'already exists; pass --force' hid the way that keeps them
    killed = outputs.unfinished_claim(out_dir) if out_dir.is_dir() else None
    for path in todo:
        outputs.check_name_lengths([p for p in wanted[output_name(path)].values() if p is not None],
                                   input_file(path))
        try:
            outputs.check_replaceable(_every_output(path, out_dir), force or resume, known,
                                      command="predict", inputs=sources)
        except UsageError as exc:
            if killed is None or killed.get("command") != "predict" or force or resume \
                    or not exc.problem.startswith("already exists"):
                raise
            raise UsageError(exc.path, f"already exists, in {outputs.unfinished_output(killed)}; "
                             "pass resume=True to keep the masks it finished and do the rest, "
                             "or force=True to segment every input again") from None
    return todo


# --------------------------------------------------------------------------- checks

def _raise_first(problems: dict, keep_going: bool) -> None:
    if problems and not keep_going:
        raise next(iter(problems.values()))


def _read_geometry(shape: tuple[int, ...], spacing) -> tuple[tuple[int, ...], tuple | None]:
    """The shape (and spacing) reading gives an image whose header stores ``shape``:
    like :func:`bcseg.data.io.read_image`, singleton axes of a stack are dropped (a
    ``(Z, 1, X)`` TIFF is segmented as ``(Z, X)``)."""
    if len(shape) <= 2:
        return tuple(shape), spacing
    kept = [i for i, n in enumerate(shape) if n != 1]
    kept = kept if len(kept) >= 2 else list(range(len(shape)))[-2:]
    if spacing is not None:
        spacing = tuple(spacing[i] for i in kept) if len(spacing) == len(shape) else None
    return tuple(shape[i] for i in kept), spacing


def _header(item: Path | Case) -> tuple[tuple[int, ...], tuple | None] | None:
    """An input's spatial shape as it will be read, and its file's spacing, from the
    header (TIFF, NIfTI; a PNG or JPEG is read, being 2D and small).

    Raises DataError naming the file when the header cannot be read (so a damaged
    later input stops the run before any output exists, or ``keep_going`` records it),
    and for an image file with channels along a C axis, which bcseg reads as one grey
    image only from a dataset folder that names its channels.
    """
    path = input_file(item)
    if _named_channels(item) and item.channels[0].index is not None:
        # a plane of a file's C axis: read it (tifffile has no header-only view of one)
        planes, spacing = io.read_channels(path)
        return tuple(planes.shape[:-1]), spacing
    count = io.channel_count(path)
    if count == 1:
        return _read_geometry(*io.stored_geometry(path))
    raise DataError(path, f"has {count} channels along a C axis, but one image file is segmented "
                    "as one image; give a dataset folder whose channels.json names its channels")


def _headers(files: list[Path | Case], problems: dict) -> dict[str, tuple | None]:
    """Each input's :func:`_header` by output name; a problem goes into ``problems``."""
    headers = {}
    for item in files:
        try:
            headers[output_name(item)] = _header(item)
        except BcsegError as exc:
            headers[output_name(item)] = None
            problems.setdefault(output_name(item), exc)
    return headers


def _check_pixels(files: list[Path | Case], names: tuple[str, ...], problems: dict,
                  methods: dict[str, set[str]]) -> None:
    """Decode what will be segmented of every input whose header passed (``names``: the
    model's channels): a compressed TIFF damaged past its header fails only when its
    pixels are decoded, which must happen before the first mask is written. An
    uncompressed TIFF is memory-mapped, so this reads little of it; a compressed one
    is decoded twice, here and when segmented. A named channel that holds one value, or
    none above 0 where the model log-normalises it, or one value in nearly every voxel
    where it scales it between percentiles (``methods``: each channel's normalisations
    by the members), is refused as check and train refuse it
    (:func:`bcseg.data.intensity.blank_problem`)."""
    for item in files:
        if output_name(item) in problems:
            continue
        try:
            for path, name, array in _decoded(item, names):
                for method in sorted(methods.get(name, {"auto"})) if name else ():
                    problem = blank_problem(name, array, method)
                    if problem:
                        raise DataError(path, problem)
        except BcsegError as exc:
            problems.setdefault(output_name(item), exc)


def _decoded(item: Path | Case, names: tuple[str, ...]) -> list[tuple[Path, str | None, np.ndarray]]:
    """``(file, channel name or None, array)`` of what predict segments of one input,
    memory-mapped where the file allows."""
    if _named_channels(item) and names:
        arrays, _ = read_case_channel_arrays(item, list(names), mmap=True)
        files = {channel.name: channel.path for channel in item.channels}
        return [(files[name], name, array) for name, array in arrays.items()]
    if _named_channels(item):
        return [(item.image, None, read_case_image(item, mmap=True)[0])]
    name = names[0] if len(names) == 1 else None  # one file: the model's one channel, if named
    return [(input_file(item), name, io.read_image(input_file(item), mmap=True)[0])]


def _check_ranks(files: list[Path | Case], headers: dict, models: list, problems: dict) -> None:
    """Note every input whose header shows the model cannot segment it (a 2D image for
    a 3D model), so a late one stops the run before the earlier ones' masks exist."""
    ranks = {model_spec(m).ndim for m in models}
    for item in files:
        header = headers[output_name(item)]
        stored = io.stored_geometry(input_file(item))[0] if header and len(header[0]) == 2 \
            and 3 in ranks and not _named_channels(item) else ()
        for ndim in sorted(ranks):
            problem = header and rank_problem(ndim, header[0], stored)
            if problem:
                problems.setdefault(output_name(item), DataError(input_file(item), problem))


def _check_margins_request(out_dir: Path, spacing_mm) -> None:
    """The margins table may be added to (bcseg wrote it, or it is absent), and a
    spacing given is usable; UsageError otherwise, before any work."""
    outputs.check_replaceable([out_dir / MARGINS_TABLE], force=True, command="predict")
    problem = None if spacing_mm is None else image_rules.spacing_problem(spacing_mm, 3)
    if problem:
        raise UsageError(None, f"spacing_mm {tuple(spacing_mm)}: spacing {problem}")


def case_spacing(item: Path | Case, spacing_mm):
    """The spacing given, else a case's own (its manifest row): over the file's."""
    if spacing_mm is not None:
        return tuple(spacing_mm)
    return item.spacing_mm if isinstance(item, Case) else None


def _check_margin_spacing(files: list[Path | Case], headers: dict, spacing_mm, problems: dict,
                          margin_check: Callable | None = None) -> None:
    """Note every stack whose voxel size is unknown, or that ``margin_check(shape,
    spacing)`` refuses (the margins' own check, given by the caller: margins are a later
    stage than inference): its margins would fail after its mask was written. 2D images
    are skipped with a warning; unreadable ones are reported when they are read."""
    for item in files:
        header = headers[output_name(item)]
        if header is None or len(header[0]) != 3:
            continue
        spacing = case_spacing(item, spacing_mm) or header[1]
        try:
            if not spacing:
                raise DataError(None, "records no voxel spacing, and margins in voxels mislead; "
                                "pass spacing_mm=(Z, Y, X), the voxel size in mm")
            if margin_check is not None and 1 not in header[0]:  # a singleton axis reads as 2D
                margin_check(header[0], spacing)
        except DataError as exc:
            problems.setdefault(output_name(item), DataError(input_file(item), exc.problem))


def predict_files(model_path: str | Path, inputs, out_dir: str | Path, *, threshold: float | None = None,
                  tta: bool | None = None, postprocess: Sequence[str] | None = None,
                  min_size: int | None = None, save_prob: bool = False, quicklook: bool = False,
                  force: bool = False, resume: bool = False, keep_going: bool = False,
                  progress: bool = True, runtime: str = "tensorflow", margins: bool = False,
                  spacing_mm: Sequence[float] | None = None,
                  after: Callable[[list, list[dict]], None] | None = None,
                  margin_check: Callable[[tuple, tuple], None] | None = None) -> list[dict]:
    """Segment image files and folders, writing masks beside the input's geometry.

    Every input is checked before any output is written: its outputs may be written
    (``force``), its header fits the model (rank, channels), and with ``margins`` its
    voxel size is known. A failed check raises naming the file, and leaves ``out_dir``
    as it was (not even created); with ``keep_going`` the input is recorded as failed.

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
    margins : bool
        Margins will be measured (by ``after``): check before the model loads that every
        3D stack's voxel size is known and that ``margins.csv`` may be added to.
    spacing_mm : tuple of 3 float, optional
        With ``margins``: the voxel size ``(z, y, x)`` in mm, over a case's manifest
        spacing and the file's own. Without it each stack must record its spacing.
    margin_check : callable, optional
        With ``margins``: called as ``margin_check(shape, spacing)`` on every 3D stack's
        header before the model loads, raising DataError for a stack the margins would
        refuse (``bcseg predict`` passes :func:`bcseg.measure.margins.check_margin_spacing`).
    after : callable, optional
        Called as ``after(files, records)`` inside the output folder's claim once every
        input is segmented: ``bcseg predict`` measures margins there
        (:func:`bcseg.after_predict.margins_step`), as the later stage it is.
    runtime : {"tensorflow", "onnx"}
        ``"onnx"``: the run's ``model_best.onnx`` (or a ``.onnx`` file) in ONNX Runtime, no TensorFlow.

    Returns
    -------
    list of dict
        One per input file: ``input``, ``case`` (the name of its outputs), ``mask``,
        ``prob``, ``overlay`` (paths or None), ``status`` ("ok", "skipped" by ``resume``,
        or "error") and ``error`` (message or None; with ``keep_going``, also set when
        the mask was written but its margins failed).
    """
    out_dir = outputs.check_output_folder(out_dir, command="predict")
    outputs.refuse_whole_result(out_dir, "predict")
    files = _input_files(inputs)
    wanted = {output_name(path): _case_outputs(path, out_dir, save_prob, quicklook) for path in files}
    todo = _files_to_do(files, wanted, out_dir, force, resume)  # refuse before the model loads
    _refuse_dataset_folders(out_dir, inputs, files)
    if margins:
        _check_margins_request(out_dir, spacing_mm)
    # Input problems by output name, found from headers before any output exists.
    # Without keep_going the first is raised; with it, that input is recorded as failed.
    problems: dict[str, BcsegError] = {}
    headers = _headers(files, problems)
    if margins and not keep_going:  # with keep_going a stack without spacing still gets its mask
        _check_margin_spacing(files, headers, spacing_mm, problems, margin_check)
    _raise_first(problems, keep_going)  # before the model loads
    models, settings, notes = _models_for(model_path, (threshold, tta, postprocess, min_size),
                                          runtime)
    _check_channels(files, settings.input_channels(), problems)
    _raise_first(problems, keep_going)  # an input lacking a channel: before any pixel is decoded
    _check_ranks(files, headers, models, problems)
    made = made_with(models, settings)
    remade = []
    if resume:  # a mask made with another model or settings is not complete: made again
        kept = [f for f in files if f not in todo]
        todo = _files_to_do(files, wanted, out_dir, force, resume, made)
        remade = [f for f in kept if f in todo]
    names = settings.input_channels()
    # a channel must hold an image by every member's normalisation of it (an ensemble's
    # members may normalise it differently): a value above 0 where one log-normalises it
    methods: dict[str, set[str]] = {}
    for view in settings.member_views():
        for name, method in check_methods(view.normalisation, list(names)).items():
            methods.setdefault(name, set()).add(method)
    _check_pixels([f for f in files if f in todo], names, problems, methods)
    _raise_first(problems, keep_going)
    model_named = model_path[0] if isinstance(model_path, (list, tuple)) else model_path
    # Stopped part-way (Ctrl-C, SIGTERM, an error), the masks so far stay for --resume,
    # under a record that says the run did not finish: evaluate refuses to score them.
    with outputs.claim(out_dir, "predict", open_on_failure=True):
        # again, now that no other run can write here: one may have finished meanwhile
        todo = _files_to_do(files, wanted, out_dir, force, resume, made)
        if resume or force:  # a killed run's temporaries: --force left them beside its masks
            remove_partials(out_dir)
        records = [_predict_one(models, settings, path, wanted[output_name(path)], path in todo, progress,
                                keep_going, model_named, problems.get(output_name(path)), made)
                   for path in tqdm(files, disable=not progress, desc="Segmenting", unit="image")]
        if after is not None:
            after(files, records)
    for note in notes:
        warnings.warn(note.message, stacklevel=2)
    if remade:
        warnings.warn(f"{len(remade)} mask(s) in {out_dir} were made with another model or other "
                      "settings (first: {}); --resume segmented them again with these".format(
                          output_name(remade[0])), stacklevel=2)
    return records


def _models_for(model_path, overrides: tuple, runtime: str) -> tuple[list, object, list]:
    """The models and settings, and the warnings they gave.

    Warnings about the settings (none recorded, a threshold tuned without TTA) wait
    until the inputs are segmented: a bad input still gives one line, its error.
    """
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        models, settings = load_models(model_path, *overrides, runtime=runtime)
    return models, settings, notes


def _predict_one(models, settings, path: Path | Case, wanted: dict, todo: bool, progress: bool,
                 keep_going: bool, model_named, problem: BcsegError | None = None,
                 made: str | None = None) -> dict:
    """The record of one input: segmented, skipped (complete, ``resume``) or failed
    (``keep_going``; otherwise the error is raised, naming the file at fault). An input
    with a ``problem`` found in its header (keep_going) is not read at all."""
    record = {"input": str(input_file(path)), "case": output_name(path), "mask": None, "prob": None,
              "overlay": None, "status": "ok", "error": None}
    if problem is not None:
        record.update(status="error", error=str(problem))
        return record
    if not todo:
        record.update({k: None if v is None else str(v) for k, v in wanted.items()}, status="skipped")
        return record
    try:
        record.update(_segment_file(models, settings, path, wanted, progress, made))
    except BcsegError as exc:
        if exc.path is None:  # errors from arrays name no file: name the one at fault
            exc = type(exc)(model_named if isinstance(exc, ModelError) else input_file(path), exc.problem)
        # keep_going carries on past a bad file; a fault of the model (NaN weights, no
        # sigmoid) is no file's, and would fail every later one as if the images were bad
        if not keep_going or isinstance(exc, ModelError):
            raise exc from None
        record.update(status="error", error=str(exc))
    return record
