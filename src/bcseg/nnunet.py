"""Export a bcseg dataset as an nnU-Net v2 raw dataset, with bcseg's group folds.

nnU-Net is the usual baseline for medical segmentation; :func:`export_nnunet` writes
the same cases, the same reference masks and the same specimen-wise folds in the
layout nnU-Net v2 reads, so the two can be compared case by case::

    OUT/DatasetXXX_NAME/
        dataset.json
        imagesTr/NAME_0001_0000.tif   (+ NAME_0001.json with the spacing, 3D TIFF only;
                                       _0001, ... for further channels)
        labelsTr/NAME_0001.tif        (+ NAME_0001.json, 3D TIFF only)
        splits_final.json             copy to nnUNet_preprocessed/DatasetXXX_NAME/
        bcseg_case_map.json           nnU-Net id -> bcseg id, group, image, fold

Example::

    export_nnunet("specimens/", "nnUNet_raw", 501, "BCS")   # -> nnUNet_raw/Dataset501_BCS

nnU-Net does not read ``splits_final.json`` from the raw folder. After
``nnUNetv2_plan_and_preprocess -d XXX``, copy it to
``$nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json``; nnU-Net's trainer
(``do_split``) then uses it instead of its own random 5-fold split, so
``nnUNetv2_train XXX CONFIG FOLD`` holds out the same specimens as bcseg's fold
``FOLD`` (the case map gives bcseg's fold number per case).

A case of one image is written as grey (RGB is converted as
:func:`bcseg.data.io.read_image` does), one channel, ``_0000``, and ``dataset.json``
names that channel ``"zscore"`` (see ``CHANNEL_NAMES`` below). Cases with several
named channels (``us``, ``pa``, ...) get one file per channel, ``_0000``, ``_0001``, ...
in the order of ``channels`` (by default the dataset's), and ``dataset.json`` names
them in that order, ``"channel_names": {"0": "us", "1": "pa"}``. nnU-Net picks each
channel's normalisation by its name and z-scores every case for a name not in its table
(``documentation/explanation_normalization.md``), so ``us`` and ``pa`` are z-scored;
a channel named ``CT`` or ``noNorm`` would not be. The files appear only when
complete: they are written under a hidden temporary folder and moved in at the end,
each file written atomically.
Stacks without spacing get ``(1, 1, 1)`` mm, nnU-Net's own assumption, with a
warning.

Conventions, checked against nnU-Net v2's sources (MIC-DKFZ/nnUNet):

- ``documentation/dataset_format.md``: images are ``<case>_XXXX<ending>`` with a
  four-digit channel index, labels ``<case><ending>``, consecutive integer labels
  with background 0, and the dataset.json keys ``channel_names``, ``labels``,
  ``numTraining``, ``file_ending`` and optionally ``overwrite_image_reader_writer``.
- ``nnunetv2/imageio/tif_reader_writer.py`` (``Tiff3DIO``): 3D TIFFs only; spacing
  comes from a JSON file ``{"spacing": [...]}`` named like the file without its
  ending and without the channel index (``imagesTr/<case>.json`` for
  ``<case>_0000.tif``, ``labelsTr/<case>.json`` for the label). The spacing is used
  as nnU-Net's spacing, which follows the array axes: ``(z, y, x)``, as
  ``SimpleITKIO`` shows by reversing ITK's ``(x, y, z)``.
- ``nnunetv2/imageio/natural_image_reader_writer.py`` (``NaturalImage2DIO``): 2D
  PNG images and labels, spacing ignored.
- ``documentation/manual_data_splits.md`` and ``nnUNetTrainer.do_split``: the split
  file is ``nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json``, a list with one
  ``{"train": [...], "val": [...]}`` per fold.

No TensorFlow here.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from bcseg.data import io
from bcseg.atomic import PARTIAL_MARK, atomic_path, real_path, write_text
from bcseg.data.consensus import METHODS, consensus
from bcseg.data.channels import value_range
from bcseg.data.case_checks import require_every_observer
from bcseg.data.cases import (IMAGE_CHANNEL, Case, dataset_channels, read_case_channel_arrays,
                              read_case_image, read_case_masks)
from bcseg.config import shorten
from bcseg.data.content import case_files, refuse_duplicate_images
from bcseg.data.dataset import discover
from bcseg.data.check import refuse_bad_cases, refuse_orphan_masks
from bcseg.data.splits import check_groups_whole, kfold_by_group
from bcseg.errors import DataError, DiskFullError, UsageError
from bcseg.outputs import (JOURNAL, RECORD, beat, check_not_inputs, check_output_folder, claim, remove_abandoned,
                            refuse_dataset_folder, remove_if_ours, require_new_folder)

__all__ = ["export_nnunet", "dataset_folder_name", "FILE_ENDINGS", "CASE_MAP", "SPLITS_FILE"]

FILE_ENDINGS = (".tif", ".png", ".nii.gz")
CASE_MAP = "bcseg_case_map.json"
SPLITS_FILE = "splits_final.json"
LABELS = {"background": 0, "tumour": 1}
# nnU-Net picks the intensity normalisation from the channel name. "zscore" (per
# image: subtract the mean, divide by the sd) is nnU-Net's own default for every
# non-CT modality, and the right one for ultrasound: gain and time-gain
# compensation change from one acquisition to the next, so grey values are not
# comparable across specimens the way CT's Hounsfield units are ("CT" would apply
# one global, foreground-based clip and scale). "noNorm" would feed raw 0-255
# values, and a per-image min-max rescale hangs on the brightest speckle or
# specular rim. Any unknown name (e.g. "US") also falls back to z-score, but
# "zscore" is the literal key in every nnU-Net version's table, whereas the other
# keys changed spelling between versions ("rescale_0_1" / "rescale_to_0_1").
CHANNEL_NAMES = {"0": "zscore"}
# Name the reader explicitly: for ".tif" nnU-Net would otherwise try
# NaturalImage2DIO (2D) before Tiff3DIO (3D).
_READER_WRITER = {
    (2, ".png"): "NaturalImage2DIO", (2, ".tif"): "NaturalImage2DIO",
    (3, ".tif"): "Tiff3DIO",
    (2, ".nii.gz"): "SimpleITKIO", (3, ".nii.gz"): "SimpleITKIO",
}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_NAME`` after checking the id and name.

    Raises
    ------
    UsageError
        If ``dataset_id`` is not a whole number in 1..999, or ``name`` is empty or
        holds characters other than letters, digits, ``_`` and ``-``.

    Examples
    --------
    >>> dataset_folder_name(7, "BUSI")
    'Dataset007_BUSI'
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) \
            or not 1 <= dataset_id <= 999:
        raise UsageError("--dataset-id", f"nnU-Net dataset id must be a whole number from 1 to 999, "
                         f"got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        # named as the flag, as every usage error is (it said only 'nnU-Net dataset name ...')
        raise UsageError("--name", f"nnU-Net dataset name must be letters, digits, '_' or '-', "
                         f"got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def export_nnunet(data: str | Path | Iterable[Case], out: str | Path, dataset_id: int,
                  name: str, observer: str = "union", folds: Mapping[str, int] | None = None,
                  k: int = 5, seed: int = 0, file_ending: str | None = None,
                  force: bool = False, channels: Sequence[str] | None = None) -> Path:
    """Write cases as an nnU-Net v2 raw dataset with bcseg's specimen-wise folds.

    Parameters
    ----------
    data : str, Path or iterable of Case
        A dataset folder or manifest (:func:`bcseg.data.dataset.discover`), or the cases.
    out : str or Path
        The ``nnUNet_raw`` folder; the dataset goes to ``OUT/DatasetXXX_NAME/``.
    dataset_id : int
        nnU-Net's dataset id, 1 to 999 (1-10 are the Decathlon's), unused in ``out``.
    name : str
        Dataset name: letters, digits, ``_`` and ``-``. Case ids become
        ``NAME_0001``, ``NAME_0002``, ... in the order of the cases.
    observer : str
        The label: ``"union"``, ``"intersection"``, ``"staple"`` of the observers'
        masks, or one observer's name. Written as uint8 0/1.
    folds, k, seed
        Fold per bcseg case id (:func:`bcseg.data.splits.folds_from_file`); default
        :func:`bcseg.data.splits.kfold_by_group` with ``k`` and ``seed``, as training uses.
    file_ending : {".tif", ".png", ".nii.gz"}, optional
        Default ``.tif`` for 3D stacks (Tiff3DIO) and ``.png`` for 2D images (8 or 16
        bit); ``.nii.gz`` opens in 3D Slicer too; 2D images may also be ``.tif``.
    force : bool
        Replace a dataset folder that bcseg exported (kept until the new one is
        complete); one holding a file bcseg did not write there, or an input, is refused.
    channels : sequence of str, optional
        The channels, in the model's order, as ``_0000``, ``_0001``, ... (default: the
        dataset's, :func:`bcseg.data.cases.dataset_channels`). Every case needs them.

    Returns
    -------
    Path
        ``OUT/DatasetXXX_NAME``.

    Raises
    ------
    UsageError
        Bad id, name, ending, observer, channels or k; the folder exists and not
        ``force``; or another dataset in ``out`` uses the id.
    DataError
        A case without masks or a channel, a mask unlike its image, 2D and 3D cases
        mixed, pixels PNG cannot hold, folds that miss a case or split a group.
    """
    folder_name = dataset_folder_name(dataset_id, name)
    ending = _check_ending(file_ending)
    out = check_output_folder(out, command="export-nnunet")
    # a file of the user's of that name: refused
    dest = check_output_folder(out / folder_name, command="export-nnunet")
    cases, reads, names = _cases_to_export(data, dest, observer, channels)  # never an input first
    # nor among the dataset's files: in masks/ it was read as an observer's folder of
    # masks without images, and check, train and evaluate refused the dataset
    if isinstance(data, (str, Path)):
        refuse_dataset_folder(out, data, {f for c in cases for f in case_files(c)}, "export-nnunet")
    replace = require_new_folder(dest, force, "export-nnunet")
    _check_not_mounted(dest)
    _check_id_free(out, int(dataset_id), folder_name)
    _check_ending_fits(cases[0], ending, names)  # before the folds' warnings and the claim
    refuse_bad_cases(cases, names, "exporting")  # a damaged image is one line, before the warnings too
    # a copy of one image under two groups could sit in nnU-Net's training and validation
    # folds at once, as train and split refuse it
    refuse_duplicate_images(cases, names)
    _check_images_fit(cases, ending, names)
    fold_of = _folds(cases, folds, k, seed, data if isinstance(data, (str, Path)) else None)
    nn_ids = [f"{name}_{i:0{max(4, len(str(len(cases))))}d}" for i in range(1, len(cases) + 1)]
    stage = _free_stage(out, folder_name)
    # all or nothing: a Ctrl-C while the files are moved in leaves no half dataset that
    # the next export would take for a finished one
    with claim(dest, "export-nnunet", replace=replace, new=True, inputs=reads, all_or_nothing=True):
        _write_dataset(cases, nn_ids, stage, dest, observer, ending, fold_of, name, names)
    return dest


def _check_not_mounted(dest: Path) -> None:
    """Refuse a dataset folder on another file system than its parent (a disk or volume
    mounted at ``DatasetXXX_NAME``, or a link to one): the export is written beside it and its files are moved in,
    which no rename does across file systems: 'OSError: [Errno 18] Invalid cross-device
    link', exit 1, after every image was written."""
    if dest.is_dir() and (os.path.ismount(dest) or dest.stat().st_dev != dest.parent.stat().st_dev):
        raise UsageError(dest, f"is on another file system than {dest.parent} (a disk or volume is "
                         "mounted there, or it links to one); the export is written beside it and "
                         "moved in, which cannot cross file systems: mount it at the nnUNet_raw "
                         "folder instead, or export elsewhere")


def _free_stage(out: Path, folder_name: str) -> Path:
    """The hidden folder the dataset is written into before it is moved into place
    (nnU-Net never sees half a dataset), ``.NAME.bcseg-partial-PID``. Stages that killed
    exports of this dataset left are deleted first: each is a claimed folder, so only
    one whose export has ended and that holds nothing but what bcseg wrote."""
    for leftover in sorted(out.glob(f".{glob.escape(folder_name)}{PARTIAL_MARK}*")):
        remove_abandoned(leftover)
    stage = out / f".{folder_name}{PARTIAL_MARK}{os.getpid()}"
    if stage.exists() or stage.is_symlink():
        raise UsageError(stage, "is in the way of the export and was not left by bcseg; move it away")
    return stage


def _cases_to_export(data, dest: Path, observer: str, channels) -> tuple[list[Case], list, list | None]:
    """The cases, the inputs that the export may not overwrite, and the channels to write."""
    cases = discover(data) if isinstance(data, (str, Path)) else list(data)
    if not cases:
        raise DataError(data if isinstance(data, (str, Path)) else None, "no cases to export")
    refuse_orphan_masks(data, cases)
    reads = [data] if isinstance(data, (str, Path)) else []
    check_not_inputs(dest, reads + [p for c in cases for p in (c.image, *(ch.path for ch in c.channels), *(
        f for files in c.masks.values() for f in files))])
    _check_observer(cases, observer)
    return cases, reads, _export_channels(cases, channels)


def _write_dataset(cases: list[Case], nn_ids: list[str], stage: Path, dest: Path, observer: str,
                   ending: str | None, fold_of: dict[str, int], name: str,
                   channels: list[str] | None) -> None:
    """Write the dataset under the hidden name ``stage``, then swap it in for ``dest``.
    The stage is claimed like any output, so that a stage a killed export left is known
    to be bcseg's, and the next export deletes it (:func:`_free_stage`)."""
    folder_name = dest.name
    try:
        # still open while moving: a kill leaves it open. All or nothing: on a full disk its
        # record cannot be settled, and its files were then judged not bcseg's and kept
        with claim(stage, "export-nnunet", all_or_nothing=True):
            _write_staged(cases, nn_ids, stage, observer, ending, fold_of, name, channels, folder_name)
            # dataset.json last: nnU-Net needs it, so a dataset cut short by a kill
            # in this loop is never taken for a complete one.
            for path in sorted(stage.rglob("*"), key=lambda p: (p.name == "dataset.json", p)):
                if path.is_file() and path.name not in (RECORD, JOURNAL):
                    (dest / path.relative_to(stage)).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, dest / path.relative_to(stage))
                    beat(dest / path.relative_to(stage))  # moved, not written through atomic_path
    except DiskFullError as exc:  # name the file the user will look for, not the hidden one
        raise DiskFullError(dest / Path(exc.path).relative_to(stage), exc.problem) from None
    finally:  # its files moved into place or, after a failure, never to be used
        kept = remove_if_ours(stage) if stage.exists() else []
        if kept:
            warnings.warn(f"{stage / kept[0]}: was not written by bcseg; the staging folder "
                          f"{stage} is kept", stacklevel=3)


def _write_staged(cases: list[Case], nn_ids: list[str], stage: Path, observer: str,
                  ending: str | None, fold_of: dict[str, int], name: str,
                  channels: list[str] | None, folder_name: str) -> None:
    """Write the images, labels, dataset.json, splits and case map into ``stage``."""
    ndim, ending = _write_cases(cases, nn_ids, stage, observer, ending, channels)
    dataset_json = {
        "channel_names": (CHANNEL_NAMES if channels is None
                          else {str(i): channel for i, channel in enumerate(channels)}),
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ending,
        "overwrite_image_reader_writer": _READER_WRITER[(ndim, ending)],
        "name": name,
        "description": f"Exported by bcseg; label = {observer} of the observers' masks",
    }
    write_text(stage / "dataset.json", json.dumps(dataset_json, indent=2) + "\n")
    order = sorted(set(fold_of.values()))
    splits = [{"train": [n for n, c in zip(nn_ids, cases) if fold_of[c.id] != f],
               "val": [n for n, c in zip(nn_ids, cases) if fold_of[c.id] == f]}
              for f in order]
    write_text(stage / SPLITS_FILE, json.dumps(splits, indent=2) + "\n")
    case_map = {
        "dataset": folder_name, "observer": observer, "file_ending": ending,
        "splits": f"copy {SPLITS_FILE} to nnUNet_preprocessed/{folder_name}/ after "
                  "nnUNetv2_plan_and_preprocess",
        "cases": {n: {"id": c.id, "group": c.group, "class": c.label_class,
                      "image": str(real_path(c.image)),
                      **({} if channels is None else {"channels": _channel_files(c, channels)}),
                      "fold": fold_of[c.id], "nnunet_fold": order.index(fold_of[c.id])}
                  for n, c in zip(nn_ids, cases)},
    }
    write_text(stage / CASE_MAP, json.dumps(case_map, indent=2) + "\n")


# --------------------------------------------------------------------------- checks

def _check_ending(file_ending: str | None) -> str | None:
    if file_ending is None:
        return None
    ending = str(file_ending).lower()
    ending = ending if ending.startswith(".") else "." + ending
    if ending not in FILE_ENDINGS:
        raise UsageError(None, f"unsupported nnU-Net file ending {file_ending!r}; "
                         f"choose one of {', '.join(FILE_ENDINGS)}")
    return ending


def _check_id_free(out: Path, dataset_id: int, folder_name: str) -> None:
    """nnU-Net refuses an id that two dataset folders share."""
    for other in sorted(out.glob(f"Dataset{dataset_id:03d}_*")):
        if other.is_dir() and other.name != folder_name:
            raise UsageError(other, f"already uses nnU-Net dataset id {dataset_id}; "
                             "choose another id or remove that folder")


def _check_observer(cases: list[Case], observer: str) -> None:
    names = sorted({o for case in cases for o in case.masks})
    if observer not in METHODS and observer not in names:
        # named as train names it: the one line says which option to change
        # shortened: a name of 5000 characters made as long a line
        raise UsageError("--observer", f"unknown observer {shorten(repr(observer))}; choose one of "
                         f"{', '.join(map(repr, [*METHODS, *names]))}")
    if observer in METHODS:
        require_every_observer(cases, f"the label '{observer}'")


def _folds(cases: list[Case], folds: Mapping[str, int] | None, k: int, seed: int,
           source=None) -> dict[str, int]:
    """Folds of the cases: given, or by group k-fold; ``source`` (the dataset) is named
    when the cases cannot be split."""
    if folds is None:
        try:
            return kfold_by_group(cases, k=k, seed=seed, source=source)
        except ValueError as exc:
            raise UsageError(None, str(exc)) from None
    missing = [c.id for c in cases if c.id not in folds]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(None, f"{len(missing)} case(s) have no fold: {shown}")
    try:
        fold_of = {c.id: int(folds[c.id]) for c in cases}
    except (TypeError, ValueError):
        raise UsageError(None, "folds must map case ids to whole numbers") from None
    check_groups_whole(cases, fold_of, None)
    if len(set(fold_of.values())) < 2:
        raise DataError(None, "all cases are in one fold; cross-validation needs at least 2")
    return fold_of


# --------------------------------------------------------------------------- writing

def _check_ending_fits(case: Case, ending: str | None, channels: list[str] | None) -> None:
    """Refuse an asked-for file ending that nnU-Net cannot read for these images."""
    if ending is None:  # chosen from the images: always one it reads
        return
    ndim = _case_images(case, channels)[0][0].ndim
    if (ndim, ending) not in _READER_WRITER:
        raise UsageError(None, f"file_ending {ending}: nnU-Net cannot read {ndim}D images as "
                         f"{ending} ({case.image.name} is {ndim}D); use .tif or .nii.gz")


def _check_images_fit(cases: list[Case], ending: str | None, channels: list[str] | None) -> None:
    """What writing the cases would refuse, found before the folds' warnings and the
    claim, so that it is the one line printed: 2D and 3D cases mixed, pixels a PNG
    cannot hold, floats beyond float32 (images memory-mapped where they can be)."""
    ndim = None
    first_spacing = None  # (case, spacing) of the first 2D case that records one
    for case in cases:
        images, spacing = _case_images(case, channels, mmap=True)
        if ndim is None:
            ndim = images[0].ndim
            ending = ending or (".tif" if ndim == 3 else ".png")
        elif images[0].ndim != ndim:
            raise DataError(case.image, f"is {images[0].ndim}D but the cases before it are "
                            f"{ndim}D; an nnU-Net dataset holds one kind")
        if ndim == 2 and ending != ".nii.gz" and spacing is not None:
            first_spacing = first_spacing or (case, spacing)
            _check_same_pixel_size(case, spacing, *first_spacing)
        for pixels, source in zip(images, _channel_sources(case, channels)):
            _check_float32_range(pixels, source)
            if ending == ".png":
                _png_pixels(pixels, source)


def _check_same_pixel_size(case: Case, spacing, first: Case, first_spacing) -> None:
    """nnU-Net reads 2D .png and .tif with NaturalImage2DIO, which gives every image the
    spacing (1, 1): images of other pixel sizes would be taken for one scale, silently.
    NIfTI keeps each image's spacing (SimpleITKIO)."""
    if not np.allclose(spacing, first_spacing, rtol=1e-4, atol=0):
        shown = " x ".join(f"{s:g}" for s in spacing)
        raise DataError(case.image, f"has pixels of {shown} mm but {first.image.name} of "
                        f"{' x '.join(f'{s:g}' for s in first_spacing)} mm; nnU-Net reads 2D .png "
                        "and .tif without spacing, as one pixel size: export with --file-ending .nii.gz")


def _write_cases(cases: list[Case], nn_ids: list[str], stage: Path, observer: str,
                 ending: str | None, channels: list[str] | None) -> tuple[int, str]:
    """Write every case's images, label (and spacing file); return (ndim, ending)."""
    ndim = None
    no_spacing = []
    for case, nn_id in zip(cases, nn_ids):
        images, spacing = _case_images(case, channels)
        image = images[0]
        if ndim is None:  # an ending asked for was checked to fit (_check_ending_fits)
            ndim = image.ndim
            ending = ending or (".tif" if ndim == 3 else ".png")
        elif image.ndim != ndim:
            raise DataError(case.image, f"is {image.ndim}D but the cases before it are "
                            f"{ndim}D; an nnU-Net dataset holds one kind")
        label = _label(case, image.shape, None if case.spacing_mm else spacing, observer)
        if image.ndim == 3 and spacing is None:
            no_spacing.append(case.image)
        sources = _channel_sources(case, channels)
        # NIfTI keeps where the source lay in space: nnU-Net copies it into its predictions,
        # which then lie on the source image (bcseg evaluate compares the frames)
        frame = io.nifti_frame(case.image) if ending == ".nii.gz" and io.is_nifti(case.image) else None
        for index, pixels in enumerate(images):  # nnU-Net's channel index: _0000, _0001, ...
            _write_image(stage / "imagesTr" / f"{nn_id}_{index:04d}{ending}", pixels, spacing,
                         sources[index], frame)
        label_path = stage / "labelsTr" / f"{nn_id}{ending}"
        if ending == ".png":
            _write_png(label_path, label)
        else:
            io.write_image(label_path, label, spacing, frame=frame)
        if ending == ".tif" and ndim == 3:
            # Tiff3DIO's spacing file: the name without ending and channel index,
            # beside the image and beside the label; axes as the array, (z, y, x).
            sidecar = json.dumps({"spacing": [float(s) for s in (spacing or (1.0, 1.0, 1.0))]})
            write_text(stage / "imagesTr" / f"{nn_id}.json", sidecar + "\n")
            write_text(stage / "labelsTr" / f"{nn_id}.json", sidecar + "\n")
    if no_spacing:
        warnings.warn(f"{len(no_spacing)} stack(s) record no spacing in mm (e.g. {no_spacing[0]}); "
                      "nnU-Net will treat them as 1 mm isotropic", stacklevel=3)
    return ndim, ending


def _export_channels(cases: list[Case], channels: Sequence[str] | None) -> list[str] | None:
    """The channels to write in order; None for cases of one channel (written as before)."""
    names = dataset_channels(cases) if channels is None else [str(c) for c in channels]
    if not names or len(set(names)) != len(names):
        raise UsageError(None, f"channels must name each channel once, not {names}")
    return None if channels is None and len(names) == 1 else names


def _case_images(case: Case, channels: list[str] | None,
                 mmap: bool = False) -> tuple[list[np.ndarray], tuple | None]:
    """The case's image, or its channels in ``channels`` order, with its spacing."""
    if channels is None:
        image, spacing = read_case_image(case, mmap=mmap)
        return [image], spacing
    arrays, spacing = read_case_channel_arrays(case, channels, mmap=mmap)
    return list(arrays.values()), spacing


def _channel_sources(case: Case, channels: list[str] | None) -> list[Path]:
    """The file of each image written for ``case``, in order (the case's image for one)."""
    own = {c.name: c.path for c in case.channels} or {IMAGE_CHANNEL: case.image}
    return [Path(own[name]) for name in channels] if channels is not None else [case.image]


def _channel_files(case: Case, channels: list[str]) -> dict[str, str]:
    return {name: str(real_path(path)) for name, path in zip(channels, _channel_sources(case, channels))}


def _write_image(path: Path, image: np.ndarray, spacing, source: Path, frame=None) -> None:
    """One channel as PNG (8 or 16 bit), TIFF (in a type ImageJ holds) or NIfTI."""
    _check_float32_range(image, source)
    if path.name.endswith(".png"):
        _write_png(path, _png_pixels(image, source))
    else:
        io.write_image(path, _tiff_pixels(image) if path.suffix == ".tif" else image, spacing,
                       frame=frame)


def _label(case: Case, shape: tuple[int, ...], spacing, observer: str) -> np.ndarray:
    """The chosen observer's mask or consensus as uint8 0/1 (masks of the image's shape and spacing)."""
    masks = read_case_masks(case, shape, spacing)
    if not masks:
        raise DataError(case.image, "has no observer mask; every nnU-Net training case needs a label")
    if observer not in METHODS and observer not in masks:
        raise DataError(case.image, f"has no mask by observer {observer!r} "
                        f"(it has {', '.join(sorted(masks))})")
    try:
        return consensus(masks, observer).astype(np.uint8)
    except (ValueError, RuntimeError) as exc:
        raise DataError(case.image, str(exc)) from None


def _png_pixels(image: np.ndarray, source: Path) -> np.ndarray:
    """The image as uint8 or uint16, or DataError when PNG cannot hold it exactly."""
    if image.dtype in (np.uint8, np.uint16):
        return image
    if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 65535:
        return image.astype(np.uint8 if image.max() <= 255 else np.uint16)
    raise DataError(source, f"pixels of type {image.dtype} (range {image.min()}..{image.max()}) "
                    "do not fit an 8 or 16 bit PNG; export as .nii.gz or .tif (--file-ending)")


def _check_float32_range(image: np.ndarray, source: Path) -> None:
    """Refuse float values nnU-Net would read as infinite: it casts every image to float32."""
    if image.dtype.kind != "f" or image.dtype.itemsize <= 4:
        return
    low, high = value_range(image)
    limit = float(np.finfo(np.float32).max)
    if max(abs(low), abs(high)) > limit:
        raise DataError(source, f"holds values from {low:g} to {high:g}, beyond float32's range "
                        f"(±{limit:.3g}); nnU-Net reads images as float32 and they would become "
                        "infinite: rescale the image (e.g. divide by its maximum) and export again")


def _tiff_pixels(image: np.ndarray) -> np.ndarray:
    """The image in a type ImageJ TIFF holds (uint8, uint16, int16, float32).

    nnU-Net reads every image as float32, so float32 loses nothing it would keep.
    """
    if image.dtype.char in "BHhf":
        return image
    if np.issubdtype(image.dtype, np.integer):
        low, high = int(image.min()), int(image.max())
        if 0 <= low and high <= 65535:
            return image.astype(np.uint16)
        if -32768 <= low and high <= 32767:
            return image.astype(np.int16)
    return image.astype(np.float32)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    import imageio.v3 as iio  # comes with scikit-image

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, pixels, extension=".png")
