"""Cases and how to find them: folder layouts and manifest CSV files.

A *case* is one image (2D or 3D) with zero or more observer masks, a *group* (the
specimen or patient it came from; splits never separate a group), an optional
class, and optional spacing. Three ways to build a dataset:

- BUSI layout: ``CLASS/NAME.png`` with ``CLASS/NAME_mask.png`` (and ``_mask_1`` ...,
  OR-merged into one observer called ``reference``). A ``folds.csv`` beside the class
  folders supplies the near-duplicate groups.
- ``images/`` with ``masks/<observer>/`` holding files of the same stem (2D or 3D).
  Each stack is its own group (one specimen per file).
- A manifest CSV with columns ``id,image,mask_<observer>...,group`` and optionally
  ``class``; paths are relative to the manifest's folder.

A case may hold several named, co-registered channels (``images/<channel>/``,
nnU-Net ``_0000`` suffixes or a C axis named by ``channels.json``, or manifest
columns ``image_<channel>``; see :mod:`bcseg.data.channels`). ``Case.image`` is then
its first channel, so code that reads one image per case keeps working;
:func:`read_case_channels` reads them all, channels last.

No TensorFlow here.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import re
import unicodedata
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from bcseg.data import channels as channel_files
from bcseg import outputs
from bcseg.atomic import file_sha256, real_path
from bcseg.data import io
from bcseg.errors import DataError

BUSI_OBSERVER = "reference"
BUSI_MASK = re.compile(r"^(?P<name>.+)_mask(_\d+)?$")


@dataclass(frozen=True)
class Channel:
    """One named channel of a case: a whole file, or plane ``index`` of a file's C axis."""

    name: str
    path: Path
    index: int | None = None


IMAGE_CHANNEL = "image"  # the name of the one channel of a case that names none


@dataclass(frozen=True)
class Case:
    """One image with its observers' masks.

    Attributes
    ----------
    id : str
        Unique name of the case (file stem by default).
    image : Path
        The image or stack file.
    masks : dict of str to tuple of Path
        Files per observer; several files for one observer are OR-merged.
    group : str
        Specimen or patient; cases of one group always share a split.
    label_class : str or None
        Class such as ``benign``, used to stratify folds.
    spacing_mm : tuple of float or None
        Overrides the spacing stored in the image file.
    group_given : bool
        False when a manifest row left ``group`` missing or empty, so the case
        became its own group (see :func:`bcseg.data.splits.require_groups`).
    channels : tuple of Channel
        The named channels, in order; empty for a case of one unnamed image.
        ``image`` is then the first channel's file.
    """

    id: str
    image: Path
    masks: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    group: str = ""
    label_class: str | None = None
    spacing_mm: tuple[float, ...] | None = None
    group_given: bool = True
    channels: tuple[Channel, ...] = ()

    @property
    def observers(self) -> list[str]:
        return sorted(self.masks)

    @property
    def channel_names(self) -> list[str]:
        """Names of the case's channels; ``["image"]`` for a case that names none."""
        return [c.name for c in self.channels] or [IMAGE_CHANNEL]


def read_case_image(case: Case, mmap: bool = False) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """The case's image array and its spacing (the case's own spacing wins).

    For a multi-channel case this is its first channel, with the spacing its channels
    agree on: a first channel saved without spacing takes another's, as training and
    prediction read it (:func:`read_case_channel_arrays`), so that ``evaluate`` does not
    measure the same case in voxels.
    """
    if case.channels and case.channels[0].index is not None:
        arrays, spacings = channel_files.read_files([_triple(case.channels[0])])
        return arrays[0], case.spacing_mm or spacings[0]
    array, spacing = io.read_image(case.image, mmap=mmap)
    for other in case.channels[1:]:  # headers only, and only while none is known
        if spacing is not None or case.spacing_mm:
            break
        spacing = io.stored_geometry(other.path)[1]
    return array, case.spacing_mm or spacing


def _triple(channel: Channel) -> tuple[str, Path, int | None]:
    return channel.name, channel.path, channel.index


def read_case_channel_arrays(case: Case, names: list[str] | None = None, mmap: bool = False
                             ) -> tuple[dict[str, np.ndarray], tuple[float, ...] | None]:
    """Each channel's array in its own dtype, and the case's spacing.

    Parameters
    ----------
    case : Case
    names : list of str, optional
        Channels to read, in this order; all of the case's when omitted. A case that
        names no channels has one, called ``"image"``.
    mmap : bool
        Memory-map whole-file channels where the file allows.

    Raises
    ------
    DataError
        For a channel the case lacks (naming its image), or channels that differ in
        shape or spacing (naming the file that disagrees).
    """
    own = case.channels or (Channel(IMAGE_CHANNEL, case.image),)
    by_name = {c.name: c for c in own}
    names = list(names) if names is not None else [c.name for c in own]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(case.image, f"case '{case.id}' has no channel {', '.join(map(repr, missing))}; "
                        f"it has {', '.join(map(repr, by_name))}")
    chosen = [by_name[n] for n in names]
    arrays, spacings = channel_files.read_files([_triple(c) for c in chosen], mmap=mmap)
    spacing = channel_files.check_agreement(names, [c.path for c in chosen], arrays, spacings)
    return dict(zip(names, arrays)), case.spacing_mm or spacing


def read_case_channels(case: Case, names: list[str] | None = None, mmap: bool = False
                       ) -> tuple[np.ndarray, tuple[float, ...] | None, list[str]]:
    """The case's channels as one array with the channel axis LAST.

    Returns
    -------
    array : ndarray
        ``(H, W, C)`` or ``(Z, H, W, C)`` in the smallest dtype holding every channel
        (uint8 US with float32 PA gives float32, values unchanged).
    spacing_mm : tuple of float or None
    names : list of str
        The channel of each plane of the last axis.

    Raises
    ------
    DataError
        As :func:`read_case_channel_arrays`.
    """
    arrays, spacing = read_case_channel_arrays(case, names, mmap=mmap)
    return channel_files.stack(list(arrays.values())), spacing, list(arrays)


def dataset_channels(cases: list[Case]) -> list[str]:
    """Every channel name used in ``cases``, in first-seen order."""
    return list(dict.fromkeys(name for case in cases for name in case.channel_names))


def read_case_masks(case: Case, shape: tuple[int, ...] | None = None,
                    spacing: tuple[float, ...] | None = None) -> dict[str, np.ndarray]:
    """Each observer's mask as a bool array; several files per observer are OR-merged.

    ``shape`` and ``spacing`` are the image's: a mask that states another is refused.
    """
    masks = {}
    stated = None  # the first mask stating a spacing, where the image states none
    for observer, files in sorted(case.masks.items()):
        merged = None
        for path in files:
            mask = io.read_mask(path, shape, (spacing,), image=case.image)
            if spacing is None and not case.spacing_mm:
                stated = same_mask_spacing(path, stated)
            shape = mask.shape
            merged = mask if merged is None else merged | mask
        masks[observer] = merged
    return masks


def same_mask_spacing(path: Path, stated: tuple[Path, tuple[float, ...]] | None
                      ) -> tuple[Path, tuple[float, ...]] | None:
    """Refuse a mask whose spacing differs from ``stated``, the file and spacing of an
    earlier mask of the case; return the first mask's that states one (or None).

    For a case whose image states no spacing: each mask is compared with its image's
    spacing where there is one, so two observers' masks of 1x0.25x0.25 and 2x0.5x0.5 mm
    passed together, one drawn on another stack or saved with a wrong calibration, and
    were united, scored and trained on as one grid.
    """
    # headers only: a NIfTI mask is not decoded twice, and a PNG or JPEG (which states
    # no spacing) not at all: BUSI's masks were each read again
    own = io.stored_geometry(path)[1] if io.is_nifti(path) else io.read_spacing(path)
    if own is None:
        return stated
    if stated is None:
        return path, own
    if not io.same_spacing(own, stated[1]):
        raise DataError(path, f"mask spacing {io.spacing_text(own)} mm differs from that of "
                        f"another mask of its image, {stated[0]} ({io.spacing_text(stated[1])} mm), "
                        "and the image states none; re-save the masks with the image's spacing, "
                        "or with none")
    return stated


# --------------------------------------------------------------------------- layouts

class Problems(list):
    """Problems of single files that discovery lists instead of raising, for ``check``:
    ``(path, message)`` pairs, as :class:`bcseg.data.check.CheckReport` holds them.

    ``check`` lists every problem of a dataset; raised, the first bad hyperstack (a
    damaged header, a wrong channel count) hid every other file's. ``set_aside`` holds
    the ids (in :func:`_form`) of cases left out for such a problem, so that their
    masks are not listed again as masks of no image.
    """

    def __init__(self):
        super().__init__()
        self.set_aside: set[str] = set()

    def left_out(self, case_id: str) -> bool:
        """Whether the case ``case_id`` (or a file of that stem) was left out for a problem."""
        return _form(case_id) in self.set_aside


def _fault(problems: Problems | None, error: DataError, case_id: str | None = None) -> None:
    """One file's problem found while building the case list: raised where ``problems``
    is None (``train``, ``predict``, ``evaluate`` refuse at the first), else listed,
    and the caller goes on without the file (and the case ``case_id``, if given)."""
    if problems is None:
        raise error
    problems.append((error.path, error.problem))
    if case_id is not None:
        problems.set_aside.add(_form(case_id))


def discover(root: str | Path, problems: Problems | None = None) -> list[Case]:
    """Build the list of cases from a folder layout or a manifest CSV.

    ``problems`` (``check``): a problem of one file (a damaged or mis-channelled
    hyperstack, two files of one case, a manifest row naming a missing file, ids that
    clash) is listed there and the file or case left out, rather than raised.

    Raises
    ------
    DataError
        When the path is missing, holds no known layout, or holds no images; without
        ``problems``, also at the first problem of a single file.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(root, "not found")
    if not root.is_dir():
        if root.suffix.lower() == ".csv":
            return read_manifest(root, problems)  # which refuses a pipe or a device by name
        raise DataError(root, io.not_a_file(root, "a folder or a manifest .csv file")
                        or "expected a folder or a manifest .csv file")
    for part in ("manifest.csv", "images", "masks"):  # else another layout is read in its place
        _refuse_broken_link(root / part)
    unfinished = outputs.unfinished_claim(root)
    # Half a phantom or export: its cases would read as a whole dataset. Not a stopped
    # predict's masks (never read as cases): refused, `predict DATA --out DATA --resume`
    # could not read its own inputs to finish.
    if unfinished is not None and unfinished.get("command") != "predict":
        raise DataError(root, f"is {outputs.unfinished_output(unfinished)}; let it finish, or write "
                        "it again with --force")
    if (root / "manifest.csv").is_file():
        return read_manifest(root / "manifest.csv", problems)
    if (root / "images").is_dir():
        return _discover_images_masks(root, problems)
    if has_class_folders(root, listing=problems is not None):  # _discover_busi lists its links
        return _discover_busi(root, problems)
    if not any(root.iterdir()):
        raise DataError(root, "folder is empty")
    raise DataError(root, "no known layout: expected images/ + masks/<observer>/, "
                    "class folders with NAME_mask.png files, or a manifest.csv")


def has_class_folders(root: Path, listing: bool = False) -> bool:
    """Whether ``root`` holds BUSI's layout: class folders with ``NAME_mask.png`` files.

    A broken link there is refused; ``listing`` (``check``, which lists every such link
    when it reads the class folders) counts one named ``NAME_mask.png`` as a mask, so
    that class folders of links only are still read as such, not as no known layout.
    """
    if not listing:
        return any(BUSI_MASK.match(io.file_stem(p)) for d in _subfolders(root) for p in data_files(d))
    seen = Problems()
    files = [p for d in _subfolders(root) for p in data_files(d, seen)]
    return any(BUSI_MASK.match(io.file_stem(p)) for p in files + [Path(path) for path, _ in seen])


def masks_beside_images(files: list[Path]) -> list[Path]:
    """The files of one folder that are the masks of images beside them, as in BUSI's
    class folders: ``NAME_mask.png`` and ``NAME_mask_1.png`` where ``NAME.png`` is one of
    ``files`` too."""
    stems = {_form(io.file_stem(path)) for path in files}
    return [path for path in files
            if (match := BUSI_MASK.match(io.file_stem(path))) and _form(match["name"]) in stems]


def data_files(folder: Path, problems: Problems | None = None) -> list[Path]:
    """The image files of ``folder`` that are data, not bcseg's outputs.

    A run's figures (``train --out`` inside the dataset) and masks or probability maps
    predicted into it are recorded as bcseg's in the folder; read as cases, they made
    a class folder of ``loss.png`` and ``examples.png``. Edited outputs stay outputs.
    ``problems``: a broken link named as an image is listed there (see :func:`_fault`).
    """
    files = io.image_files(folder, None if problems is None else
                           lambda error: _fault(problems, error, io.file_stem(Path(error.path))))
    if not files:
        return files
    # A run's predictions/ are recorded in the run's record, the folder above: 'train
    # --out data/masks/run' left run/predictions/*_mask.tif read as masks without images,
    # and check, train and evaluate refused the dataset. (A dataset's own files, recorded
    # as phantom's above, are data: results_in leaves them out.)
    ours = outputs.results_in(folder)
    if (folder / outputs.RECORD).is_file():
        ours |= outputs.written(folder)
    return [p for p in files if p.name not in ours]


def _subfolders(root: Path, strict: bool = False, problems: Problems | None = None) -> list[Path]:
    """The visible folders in ``root``. ``strict`` (observer and channel folders): a
    broken link among them is an error, not a folder silently missing, which would
    drop an observer or a channel from every case without a word (listed in
    ``problems`` where given)."""
    if strict:
        for p in root.iterdir():
            if p.name.lower().endswith(io.IMAGE_SUFFIXES):
                continue  # named as an image: data_files names it, and check lists it once
            try:
                _refuse_broken_link(p)
            except DataError as error:
                _fault(problems, error)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_broken_link(path: Path) -> None:
    if path.is_symlink() and not path.exists() and not path.name.startswith("."):
        raise DataError(path, "is a broken symbolic link, or one that loops (a folder on a disk "
                        "not mounted?); point it at its target or remove it")


def _discover_images_masks(root: Path, problems: Problems | None = None) -> list[Case]:
    # channels.json, images/ and the channel folders are the layout: their problems are
    # raised, as one line; a problem of one file in them is the file's (see _fault)
    names = channel_files.read_channel_names(root)
    images = data_files(root / "images", problems)
    # each folder's files read once, so that a broken link in one is listed once
    in_folders = {d: data_files(d, problems) for d in _subfolders(root / "images", strict=True,
                                                                 problems=problems)}
    folders = [d for d, files in in_folders.items() if files]
    if images and folders:  # which is the case: the loose file, or the channel folders?
        raise DataError(root / "images", f"holds both images ({images[0].name}, ...) and channel "
                        f"folders ({', '.join(d.name for d in folders)}); keep one layout: move "
                        "the loose images into a channel folder, or the folders out")
    if not images and folders:
        cases = _channel_folder_cases(root, {d: in_folders[d] for d in folders}, names, problems)
    elif not images:
        if problems:  # every image set aside (broken links): those are the problems to list
            return []
        raise DataError(root / "images", "folder holds no images")
    elif names is not None:
        cases = _named_channel_cases(root, images, names, problems)
    else:
        cases = [Case(id=io.file_stem(p), image=p, group=io.file_stem(p)) for p in images]
    observers = _observer_files(root, problems)
    cases = [replace(c, masks={obs: (files[_form(c.id)],) for obs, files in observers.items()
                               if _form(c.id) in files})
             for c in cases]
    cases = _check_unique_ids(cases, root, problems)
    _refuse_shared_masks(cases, root, problems=problems)  # a mask linked to another's
    return cases


def _channel_folder_cases(root: Path, folders: dict[Path, list[Path]], names: list[str] | None,
                          problems: Problems | None = None) -> list[Case]:
    """``images/<channel>/<stem>``: one case per stem, with the channels that have it.
    ``folders``: each channel folder with its data files."""
    found = {d.name: _by_stem(files, problems) for d, files in folders.items()}
    for name in found:
        channel_files.check_channel_name(name, root / "images" / name)
    channel_files.check_channel_names(sorted(found), root / "images")
    if names is not None and set(names) != set(found):
        raise DataError(root / channel_files.CHANNELS_FILE,
                        f"names channels {', '.join(names)}, but images/ holds folders "
                        f"{', '.join(sorted(found))}")
    order = names or sorted(found)
    stems = sorted({stem for files in found.values() for stem in files})
    cases = []
    for stem in stems:
        channels = tuple(Channel(n, found[n][stem]) for n in order if stem in found[n])
        repeated = _repeated_channel_file(channels)
        if repeated:  # images/pa/S01.tif a link to images/us/S01.tif
            _fault(problems, DataError(*repeated), stem)
            continue
        cases.append(Case(id=stem, image=channels[0].path, group=stem, channels=channels))
    return cases


def _repeated_channel_file(channels: tuple[Channel, ...]) -> tuple[Path, str] | None:
    """The later of two channels of a case that are one image, and why that is refused;
    or None. One file (through a link, or the same plane of a C axis) given as two
    channels trains and segments an ultrasound as its own photoacoustic image, and
    nothing else would say so. The later channel is the link to name: with three
    channels it is not always the last."""
    seen: dict[tuple, str] = {}
    for channel in channels:
        first = seen.setdefault((real_path(channel.path), channel.index), channel.name)
        if first != channel.name:
            return channel.path, (f"channels '{first}' and '{channel.name}' are one file "
                                  f"({channel.path.name}); give each channel its own image")
    return None


def _named_channel_cases(root: Path, images: list[Path], names: list[str],
                         problems: Problems | None = None) -> list[Case]:
    """Channels named by channels.json: nnU-Net ``_0000`` suffixes, or TIFFs with a C axis."""
    where = root / channel_files.CHANNELS_FILE
    unsuffixed = [p for p in images if not channel_files.SUFFIX.match(io.file_stem(p))]
    if unsuffixed and len(unsuffixed) < len(images):  # some _0000 files, some not
        for path in unsuffixed:  # each one listed by check; the suffixed files are the layout
            _fault(problems, DataError(path, "has no channel suffix (_0000, _0001, ...), unlike "
                                       "other images in its folder; rename it or move it out"),
                   io.file_stem(path))
        images, unsuffixed = [p for p in images if p not in unsuffixed], []
    if not unsuffixed:
        # s0_0001.tif and s0_0001.nii.gz: one channel, two files (check goes on with the first)
        images = list(_by_stem(images, problems).values())
        grouped: dict[str, dict[int, Path]] = {}
        for path in images:
            match = channel_files.SUFFIX.match(io.file_stem(path))
            index = int(match["index"])
            if index >= len(names):
                _fault(problems, DataError(path, f"is channel {index}, but {where} names "
                                           f"{len(names)} channel(s)"), match["case"])
                continue
            grouped.setdefault(match["case"], {})[index] = path
        cases = [Case(id=stem, image=files[min(files)], group=stem,
                      channels=tuple(Channel(names[i], files[i]) for i in sorted(files)))
                 for stem, files in sorted(grouped.items())]
        kept = []
        for case in cases:  # S01_0001.tif a link to S01_0000.tif, as in channel folders
            repeated = _repeated_channel_file(case.channels)
            if repeated:
                _fault(problems, DataError(*repeated), case.id)
                continue
            kept.append(case)
        return kept
    cases = []
    for path in images:
        stem = io.file_stem(path)
        try:  # a damaged header or a wrong channel count is this file's, not the layout's
            count, stored = io.channel_header(path)
            if count != len(names):
                raise DataError(path, f"has {count} channel(s), but {where} names {len(names)}; "
                                "use images/<channel>/ folders or _0000 suffixes for one file per "
                                "channel")
            _refuse_reordered(path, stored, names, where)
        except DataError as error:
            _fault(problems, error, stem)
            continue
        # One channel named in channels.json: the whole file, which has no C axis to index.
        channels = (Channel(names[0], path),) if count == 1 else tuple(
            Channel(n, path, i) for i, n in enumerate(names))
        cases.append(Case(id=stem, image=path, group=stem, channels=channels))
    return cases


def _refuse_reordered(path: Path, stored: list[str] | None, names: list[str], where: Path) -> None:
    """Refuse a file whose own metadata (OME channel names) puts a channel that
    channels.json names at another index: one of the two has the order wrong, and
    reading by channels.json would give the model PA as ultrasound. Names the file's
    metadata does not share with channels.json (a scanner's "Channel 1") are no conflict."""
    if stored is None:
        return
    own = [name.casefold() for name in stored]
    for index, name in enumerate(names):
        if name.casefold() in own and own.index(name.casefold()) != index:
            raise DataError(path, f"names its channels {', '.join(stored)} in its OME metadata, but "
                            f"{where} names them {', '.join(names)}: channel '{name}' is number "
                            f"{own.index(name.casefold()) + 1} in the file; put channels.json in the "
                            "file's order")


def _observer_files(root: Path, problems: Problems | None = None) -> dict[str, dict[str, Path]]:
    mask_root = root / "masks"
    observers: dict[str, dict[str, Path]] = {}
    if mask_root.is_dir():
        loose = data_files(mask_root, problems)
        if loose:  # masks/ with files directly: one unnamed observer
            observers["mask"] = _by_stem(loose, problems)
        for folder in _subfolders(mask_root, strict=True, problems=problems):
            check_observer_name(folder.name, folder)  # the observer's name: the layout's
            observers[folder.name] = _by_stem(data_files(folder, problems), problems)
    return observers


def _by_stem(files: list[Path], problems: Problems | None = None) -> dict[str, Path]:
    """The files of one folder by stem, in one Unicode form. Two files of one stem
    (``s0.tif`` and ``s0.nii.gz``) are refused, as two loose images of one id are:
    keyed by stem, the later one would silently stand in for the other. (Listed in
    ``problems``, the first is kept.)"""
    found: dict[str, Path] = {}
    for path in files:
        stem = _form(io.file_stem(path))
        if stem in found:
            _fault(problems, DataError(path.parent, f"holds two files for one case, {found[stem].name} "
                                       f"and {path.name}; keep one (the other would be ignored)"), stem)
            continue
        found[stem] = path
    return found


def _form(stem: str) -> str:
    """A file stem in one Unicode form (NFC), to pair an image with its mask: 'café' typed
    as one code point on one machine and as 'e' plus an accent on another (macOS) is one
    name, and its mask must not be left an orphan."""
    return unicodedata.normalize("NFC", stem)


def check_observer_name(name: str, where: Path) -> None:
    """Refuse an observer named like a consensus (``union``, ...): ``--observer union``
    could then mean either, and every score against it would be ambiguous."""
    from bcseg.data.consensus import METHODS

    if name in METHODS:
        raise DataError(where, f"names an observer '{name}', which is the name of a consensus "
                        f"of observers ({', '.join(METHODS)}); rename the observer")


def require_every_observer(cases: list[Case], target: str) -> None:
    """A target combining the observers' masks (``target``: union, intersection, staple,
    or all observers) needs every observer's mask in every case: a case lacking one
    would silently get a different consensus from the others."""
    names = sorted({o for case in cases for o in case.masks})
    for case in cases:
        missing = [name for name in names if name not in case.masks]
        if missing:
            raise DataError(case.image, f"case '{case.id}' has no mask from observer(s) "
                            f"{', '.join(missing)}; {target} needs every observer's mask in "
                            "every case: add it, or name one observer")


def _discover_busi(root: Path, problems: Problems | None = None) -> list[Case]:
    groups = _busi_groups(root / "folds.csv")  # one file for the whole dataset: raised
    cases = []
    for folder in _subfolders(root):
        files = data_files(folder, problems)
        masks: dict[str, list[Path]] = {}
        for path in files:
            match = BUSI_MASK.match(io.file_stem(path))
            if match:
                masks.setdefault(_form(match["name"]), []).append(path)
        for path in files:
            stem = io.file_stem(path)
            if BUSI_MASK.match(stem):
                continue
            found = tuple(sorted(masks.get(_form(stem), [])))
            cases.append(Case(
                id=stem, image=path, masks={BUSI_OBSERVER: found} if found else {},
                group=groups.get(stem, stem), label_class=folder.name))
    if not cases and problems:  # every image set aside (broken links): listed already
        return []
    if not cases:
        raise DataError(root, "class folders hold no images")
    if groups and not any(c.id in groups for c in cases):  # every image its own group: leakage
        raise DataError(root / "folds.csv", "names none of the images in the class folders "
                        "(its 'image' column: class/NAME.png, as BUSI's download has them)")
    unlisted = [c for c in cases if groups and c.id not in groups]
    if unlisted:  # each would be a group of its own, apart from its near-duplicates: the same leak
        shown = ", ".join(f"{c.label_class}/{c.image.name}" for c in unlisted[:5])
        raise DataError(root / "folds.csv", f"lists no row for {len(unlisted)} image(s) of the class "
                        f"folders: {shown}{' ...' if len(unlisted) > 5 else ''}; add a row with its "
                        "near-duplicate group for each, or move it out")
    cases = _check_unique_ids(cases, root, problems)
    _refuse_shared_masks(cases, root, problems=problems)
    return cases


def _busi_groups(folds_csv: Path) -> dict[str, str]:
    """Near-duplicate groups by image stem (as ``folds_from_file`` matches rows): a
    path written another way (``./benign/...``, ``benign\\...``, no folder) is the
    same image, not one left in a group of its own, which would leak into test folds.

    Without a folds.csv each image is its own group. One that is there but unusable (a
    broken link, a pipe, a folder, no ``group`` column, no rows) is refused: ignored,
    it would leave near-duplicates in groups of their own, free to leak across folds.
    """
    if not (folds_csv.exists() or folds_csv.is_symlink()):
        return {}
    columns, numbered = read_csv_lines(folds_csv, "folds.csv")  # refuses a link, pipe or folder
    # a row of empty cells (",,,": cells a spreadsheet cleared) is no row
    numbered = [(line, row) for line, row in numbered if any((v or "").strip() for v in row.values()
                                                             if isinstance(v, str))]
    rows = [row for _, row in numbered]
    for column in ("image", "group"):
        if column not in columns:
            other = next((c for c in columns if c.lower() == column), None)
            hint = f" (it has '{other}'; rename it '{column}')" if other else ""
            raise DataError(folds_csv, f"folds.csv lacks column '{column}'{hint}; expected columns "
                            "image,class,group,fold as BUSI's download has them")
    if not rows:
        raise DataError(folds_csv, "folds.csv has no rows, so no near-duplicate groups; restore "
                        "it from BUSI's download, or remove it to make each image its own group")
    groups: dict[str, str] = {}
    for line, row in numbered:
        stem = io.file_stem((row["image"] or "").strip().replace("\\", "/"))
        group = (row["group"] or "").strip()
        if not stem or not group:  # all blank groups would read as one group, "g"
            raise DataError(folds_csv, f"line {line}: no {'image' if not stem else 'group'}; every "
                            "row names an image and its near-duplicate group")
        if groups.get(stem, f"g{group}") != f"g{group}":  # the last would win, silently
            raise DataError(folds_csv, f"line {line}: names image '{stem}' again, in group {group} "
                            f"after group {groups[stem][1:]}; keep one row per image")
        groups[stem] = f"g{group}"
    return groups


# A case id names its output files (ID_mask.tif, ID_quicklook.png, ...), so it must be
# one plain file name: no folder part, nothing that climbs out of the output folder,
# not hidden, and short enough that the longest output name still fits in 255 bytes.
ID_MAX_BYTES = 200


def name_key(name: str) -> str:
    """What tells two file names apart on every file system users have: not letter case
    (macOS, Windows) and not the Unicode form ('café' typed as one code point or as 'e'
    plus an accent are one name on macOS). Names with the same key would overwrite each
    other's outputs there."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def id_problem(case_id: str, max_bytes: int | None = ID_MAX_BYTES) -> str | None:
    """Why ``case_id`` cannot name output files, or None. ``predict`` passes
    ``max_bytes=None``: it checks the full length of each output name instead."""
    if case_id in (".", "..") or any(c in case_id for c in "/\\") or "\0" in case_id:
        return "is not a plain file name (no '/', '\\', '.' or '..'): bcseg names output files after it"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return "holds a control character; bcseg names output files after it"
    if case_id.startswith("."):
        return "starts with '.', which would hide the output files named after it"
    if max_bytes is not None and len(os.fsencode(case_id)) > max_bytes:
        return (f"is {len(os.fsencode(case_id))} bytes long, more than {max_bytes}: output files "
                "are named after it and a file name may have at most 255 bytes")
    return None


def _check_unique_ids(cases: list[Case], where: Path, problems: Problems | None = None) -> list[Case]:
    """The cases, refusing an id that cannot name output files or that clashes with an
    earlier one (listed in ``problems`` where given, and the case left out)."""
    seen: dict[str, tuple[str, Path]] = {}
    kept = []
    for case in cases:
        problem = id_problem(case.id)
        if problem:
            _fault(problems, DataError(where if where.is_file() else case.image,
                                       f"case id '{case.id[:60]}{'...' if len(case.id) > 60 else ''}' "
                                       f"{problem}"), case.id)
            continue
        # Letter case and Unicode form do not tell ids apart: outputs named after them
        # (predicted masks, nnU-Net files) would overwrite each other on macOS and Windows.
        key = name_key(case.id)
        if key in seen:
            first, image = seen[key]
            if first == case.id:
                error = DataError(where, f"two images share the id '{case.id}': {image} and {case.image}")
            else:
                error = DataError(where, f"two images have ids that differ only in letter case or "
                                  f"Unicode form, '{ascii(first)[1:-1]}' and '{ascii(case.id)[1:-1]}' "
                                  f"({image} and {case.image}); their outputs would overwrite each "
                                  "other on macOS and Windows, so rename one")
            _fault(problems, error, case.id)
            continue
        seen[key] = (case.id, case.image)
        kept.append(case)
    return kept


def _refuse_shared_masks(cases: list[Case], where: Path, lines: dict[str, int] | None = None,
                         problems: Problems | None = None) -> None:
    """Refuse a mask file that is also another case's mask, or any case's image.

    A mask is drawn on one image. A manifest row that names the row above's mask (a
    cell copied down), or a mask linked to another case's, pairs a tumour with the
    wrong image: of the same size, it trained and scored without a word. An image
    given as a mask (a binary image passes as one) is the same slip. A mask shared by
    two cases of one image (a copy listed twice) is right for both; whether the copy
    may be there is :func:`duplicate_images`' to judge, by group. Two observers of one
    case given one file are left to ``evaluate``, which refuses them only when both
    are scored. ``lines`` (case id to manifest line) places each use in the file;
    ``problems`` lists each such file rather than raising at the first.
    """
    first_use: dict[Path, tuple[Case, str]] = {}
    for case in cases:
        images = dict.fromkeys([case.image, *(c.path for c in case.channels)])
        uses = [(path, "the image") for path in images]
        uses += [(path, f"observer {observer}'s mask") for observer, files in case.masks.items()
                 for path in files]
        for path, role in uses:
            first, first_role = first_use.setdefault(real_path(path), (case, role))
            if first is case and (first_role == role or "the image" not in (role, first_role)):
                continue  # one file twice for one observer, or two observers (see above)
            if role == first_role == "the image" or "the image" not in (role, first_role) \
                    and _same_content(case.image, first.image):
                continue  # one image in two cases (with its mask): duplicate_images judges them
            other = f"{first_role} of case '{first.id}'"
            if lines is None:
                _fault(problems, DataError(path, f"is {role} of case '{case.id}', but also {other} "
                                           "(one file through a link); a mask belongs to the one "
                                           "image it was drawn on: give each its own file"))
                continue
            try:
                shown = path.relative_to(where.parent)
            except ValueError:
                shown = path
            _fault(problems, DataError(where, f"line {lines[case.id]}: '{shown}' is {role} of case "
                                       f"'{case.id}', but also {other} (line {lines[first.id]}); a "
                                       "mask belongs to the one image it was drawn on: give each "
                                       "its own file"))


def _same_content(a: Path, b: Path) -> bool:
    """Whether two files are one, or byte for byte alike (sizes compared first)."""
    if real_path(a) == real_path(b):
        return True
    try:
        return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)
    except OSError:  # reading it later says what is wrong
        return False


def case_digest(case: Case) -> str:
    """One SHA-256 over a case's files: its image (every channel) and every observer's
    masks. A run records it for its validation cases, so that tuning them again later
    (``bcseg ensemble``) can tell another dataset that reuses the same case ids."""
    files = [("image", case.image), *((f"channel {c.name}", c.path) for c in case.channels),
             *((f"mask {name}", f) for name in sorted(case.masks) for f in case.masks[name])]
    lines = "".join(f"{role}\t{file_sha256(path)}\n" for role, path in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def changed_case(recorded: dict[str, str], by_id: dict[str, Case],
                 digests: dict[str, str] | None = None) -> Case | None:
    """The first case whose files differ from the ``recorded`` digests (case id ->
    :func:`case_digest`), or None; ids not in ``by_id`` are skipped. ``digests`` caches
    the digests computed, for callers that compare several records."""
    digests = {} if digests is None else digests
    for case_id, digest in sorted(recorded.items()):
        case = by_id.get(case_id)
        if case is None:
            continue
        if case_id not in digests:
            digests[case_id] = case_digest(case)
        if digests[case_id] != digest:
            return case
    return None


def duplicate_images(cases: list[Case], channels: Sequence[str] | None = None
                     ) -> list[tuple[Case, Path, Case, Path]]:
    """``(first, its file, other, its file)`` for image files of cases in different groups
    that are byte-identical, every channel's file compared (a photoacoustic channel copied
    from another specimen's leaks as an ultrasound one would); with ``channels``, those
    channels' files only (a channel left out is not read, and may be a blank stand-in).

    One image in two groups can land in both the training and the test fold, which
    inflates every score. Files are compared by size first and only files of equal
    size are hashed (SHA-256), so a study of distinct stacks is not read in full.
    Duplicates within one group are harmless to splits and are not reported.
    """
    by_size: dict[int, list[tuple[Case, Path]]] = defaultdict(list)
    for case in cases:
        files = [c.path for c in case.channels if c.name in channels] if channels and case.channels \
            else [case.image, *(c.path for c in case.channels)]
        for path in dict.fromkeys(files):
            try:
                by_size[path.stat().st_size].append((case, path))
            except OSError:  # missing files are reported by whoever reads them
                continue
    pairs = []
    for same_size in by_size.values():
        if len(same_size) < 2 or len({case.group for case, _ in same_size}) < 2:
            continue
        first: dict[str, tuple[Case, Path]] = {}
        for case, path in same_size:
            kept = first.setdefault(file_sha256(path), (case, path))
            if kept[0].group != case.group:
                pairs.append((*kept, case, path))
    return pairs


def duplicate_problem(first: Case, first_file: Path, other: Case) -> str:
    """The one-line problem for a pair from :func:`duplicate_images` (of ``other``'s file)."""
    return (f"has the same content as {first_file} (case '{first.id}', group '{first.group}'), "
            f"yet is case '{other.id}' in group '{other.group}'; a duplicate in two groups can "
            "land in both training and test: remove it or give both the same group")


def case_files(case: Case) -> set[Path]:
    """Every file a case is read from: its image, each observer's masks, its channels."""
    return {case.image, *(p for paths in case.masks.values() for p in paths),
            *(channel.path for channel in case.channels)}


def refuse_duplicate_images(cases: list[Case], channels: Sequence[str] | None = None) -> None:
    """Raise :class:`DataError` naming the first image found twice in different groups
    (of ``channels``' files only, where given: see :func:`duplicate_images`)."""
    for first, first_file, other, other_file in duplicate_images(cases, channels)[:1]:
        raise DataError(other_file, duplicate_problem(first, first_file, other))


# --------------------------------------------------------------------------- manifest

def _manifest_path(value: str, base: Path, manifest: Path, line: int) -> Path:
    if not value:
        raise DataError(manifest, f"line {line}: empty path")
    path = Path(value)
    resolved = real_path(path) if path.is_absolute() else real_path(base / path)
    try:
        # real_path does not raise at a loop (Path.resolve() did): strict, it does, so
        # a loop is still named as one rather than as "a broken symbolic link"
        os.path.realpath(resolved, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(manifest, f"line {line}: '{value}' is a symbolic link that loops; "
                            "point it at the file itself") from None
    if not path.is_absolute():
        path = base / path
        # A relative path must stay inside the manifest's folder: '..' escapes are
        # usually a mistake and make a dataset impossible to move as a whole.
        if not resolved.is_relative_to(real_path(base)):
            raise DataError(manifest, f"line {line}: '{value}' points outside the manifest's "
                            "folder; use an absolute path if that is intended")
    if path.is_symlink() and not path.exists():
        raise DataError(manifest, f"line {line}: '{value}' is a broken symbolic link")
    if not path.is_file():
        # a manifest made on Windows: '\\' is a character of a file name here, no folder
        hint = ("; it is written with '\\' between folders, as on Windows: write '/'"
                if "\\" in value else "")
        raise DataError(manifest, f"line {line}: file '{value}' not found{hint}")
    return path


def read_csv_lines(path: str | Path, what: str = "manifest") -> tuple[list[str], list[tuple[int, dict]]]:
    """Column names and rows of a comma-separated file, as spreadsheet programs save
    them, with each row's line in the file.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") and CRLF line ends are accepted;
    a file delimited by semicolons or tabs (Excel in many locales), or not in UTF-8,
    is refused with a line saying how to save it. Column names are stripped.

    Rows are dictionaries as :class:`csv.DictReader` makes them (extra cells under
    ``None``, missing ones ``None``) and blank lines are skipped, but the number
    given with each row is its physical line (the header is line 1; a row with quoted
    line breaks gets its last line), so a message about it points at the line an
    editor shows, blank lines included.
    """
    path = Path(path)
    problem = io.not_a_file(path, "a CSV file")
    if problem:  # opened, a pipe would wait forever and a device read without end
        raise DataError(path, problem)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            # line_num, read after each row, is the file line the row ends on
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise DataError(path, f"{what} is not UTF-8 text; save it as 'CSV UTF-8 (comma delimited)'") from None
    except (OSError, csv.Error) as exc:
        raise DataError(path, f"cannot read {what} ({exc})") from None
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:  # csv.DictReader would keep the last and drop the others silently
        raise DataError(path, f"{what} has column(s) {', '.join(repeated)} more than once; "
                        "keep one of each")
    if len(columns) == 1:
        for name, delimiter in (("semicolons", ";"), ("tabs", "\t")):
            if delimiter in columns[0]:
                raise DataError(path, f"{what} is delimited by {name}, not commas; save it as "
                                "'CSV UTF-8 (comma delimited)'")
    for line, row in rows:  # a value with an unquoted comma shifts every cell after it
        extra = [cell for cell in row.get(None) or [] if cell.strip()]
        if extra:
            raise DataError(path, f"line {line} has {len(columns) + len(row[None])} cells, more "
                            f"than the {len(columns)} columns of the header ({extra[0]!r} is "
                            "beyond them); quote a value that holds a comma")
    return columns, rows


MANIFEST_COLUMNS = ("id", "image", "group", "class")
MANIFEST_PREFIXES = ("image_", "mask_")  # image_<channel>, mask_<observer>


# Columns users add expecting bcseg to read them, which it does not: ignored, each would
# change the result without a word.
_FOLDS_HINT = "folds are given with --folds-file (a CSV of id,fold)"
_SPACING_HINT = "spacing is read from each image file (or --spacing for predict)"
_MASKS_HINT = "each observer's masks are a column mask_<observer>"
MANIFEST_MISREAD = {"fold": _FOLDS_HINT, "folds": _FOLDS_HINT, "spacing": _SPACING_HINT,
                    "spacing_mm": _SPACING_HINT, "mask": _MASKS_HINT, "masks": _MASKS_HINT}


def _check_manifest_columns(path: Path, columns: list[str]) -> None:
    """Refuse a column that looks meant for bcseg but is not read as meant: ignored,
    ``Mask_obs2`` or ``masks_obs2`` would drop an observer, ``Group`` the grouping and
    ``fold`` the folds, without a word. Other columns (a study's own notes, ages, ...)
    are kept out of the way and named in one warning."""
    unread = []
    for column in columns:
        if not column or column in MANIFEST_COLUMNS or column.startswith(MANIFEST_PREFIXES):
            continue  # a blank header cell is the trailing comma spreadsheets save
        lower = column.lower()
        known = next((prefix + column[len(prefix):] for prefix in MANIFEST_PREFIXES
                      if lower.startswith(prefix)), lower if lower in MANIFEST_COLUMNS else None)
        if known:
            hint = f"column names are lower case: rename it '{known}'"
        elif re.match(r"(masks?|images?)[-_]", lower) or lower in MANIFEST_MISREAD:
            # masks_obs2, mask-obs2: meant as mask_obs2 (not "Mask drawn by", "Image ID")
            hint = MANIFEST_MISREAD.get(lower, "images are columns image or image_<channel>, masks "
                                        "mask_<observer>")
        else:
            unread.append(column)
            continue
        raise DataError(path, f"manifest has a column '{column}' that bcseg does not read ({hint}); "
                        "its columns are id, image, image_<channel>, mask_<observer>, group and class")
    if unread:
        warnings.warn(f"{path}: column(s) {', '.join(repr(c) for c in unread)} are not read by bcseg "
                      "(its columns are id, image, image_<channel>, mask_<observer>, group and class)")


def read_manifest(path: str | Path, problems: Problems | None = None) -> list[Case]:
    """Cases from a CSV with columns ``id,image,mask_<observer>...,group[,class]``.

    Columns ``image_<channel>`` give a case named channels (``image`` is then optional
    and an empty cell means the case lacks that channel). The header is the layout:
    its problems are raised. ``problems`` (``check``): a row's problem (a file not
    found, an empty id) is listed there and the row left out, as are clashing ids.
    """
    path = Path(path)
    columns, rows = read_csv_lines(path)
    _check_manifest_columns(path, columns)
    channel_columns = [c for c in columns if c.startswith("image_")]
    missing = {"id"} | ({"image"} if not channel_columns else set())
    missing -= set(columns)
    if missing:
        raise DataError(path, f"manifest lacks column(s) {', '.join(sorted(missing))}; "
                        "expected id,image,mask_<observer>...,group")
    if not rows:
        raise DataError(path, "manifest has no rows")
    channel_files.check_channel_names([c[len("image_"):] for c in channel_columns], path)
    mask_columns = [c for c in columns if c.startswith("mask_")]
    for column in mask_columns:
        if column == "mask_":  # an observer called '': scored as no reference, and unselectable
            raise DataError(path, "manifest has a column 'mask_' that names no observer; name it "
                            "mask_<observer> (mask_observer1, ...)")
        check_observer_name(column[len("mask_"):], path)
    cases = []
    lines: dict[str, int] = {}
    for number, row in rows:  # the line each row starts on; line 1 is the header
        try:
            case = _manifest_case(row, number, path, channel_columns, mask_columns)
        except DataError as error:  # one row's problem; check lists every row's
            _fault(problems, error)
            continue
        cases.append(case)
        lines.setdefault(case.id, number)  # a repeated id is the later row's problem
    cases = _check_unique_ids(cases, path, problems)
    _refuse_shared_masks(cases, path, lines, problems)
    return cases


def _manifest_case(row: dict, number: int, path: Path, channel_columns: list[str],
                   mask_columns: list[str]) -> Case:
    """The case of the manifest row on line ``number``; DataError naming the manifest
    and the line where a cell is unusable."""
    base = path.parent
    masks = {}
    for column in mask_columns:
        if (row.get(column) or "").strip():  # blanks are an empty cell, as in image_<channel>
            files = row[column].split(";")
            masks[column[len("mask_"):]] = tuple(
                _manifest_path(f.strip(), base, path, number) for f in files)
    case_id = (row.get("id") or "").strip()
    if not case_id:
        raise DataError(path, f"line {number}: empty id")
    channels = tuple(Channel(c[len("image_"):], _manifest_path(row[c].strip(), base, path, number))
                     for c in channel_columns if (row.get(c) or "").strip())
    repeated = _repeated_channel_file(channels)
    if repeated:
        raise DataError(path, f"line {number}: {repeated[1]}")
    image = (row.get("image") or "").strip()
    if channel_columns and not image and not channels:
        raise DataError(path, f"line {number}: no image in any of {', '.join(channel_columns)}")
    if channels and image:
        _check_image_is_a_channel(_manifest_path(image, base, path, number), channels, path, number)
    group = (row.get("group") or "").strip()
    return Case(
        id=case_id, image=channels[0].path if channels
        else _manifest_path(image, base, path, number),
        masks=masks, group=group or case_id, group_given=bool(group),
        label_class=(row.get("class") or "").strip() or None, channels=channels)


def _check_image_is_a_channel(image: Path, channels: tuple[Channel, ...], manifest: Path, line: int) -> None:
    """Beside ``image_<channel>`` cells, an ``image`` cell names one of those files.

    It names no channel of its own: one naming another file (the ultrasound given as
    ``image`` beside ``image_pa`` alone) was read by nothing that segments or trains, yet
    evaluate checked shapes against it and the report drew it as the case's image.
    """
    if real_path(image) not in {real_path(c.path) for c in channels}:
        names = ", ".join(f"image_{c.name}" for c in channels)
        raise DataError(manifest, f"line {line}: image '{image.name}' is none of the case's channel "
                        f"files ({names}); give each channel its image_<channel> column and leave "
                        "image empty")


def write_manifest(cases: list[Case], path: str | Path) -> Path:
    """Write cases as a manifest CSV (paths relative to its folder where possible)."""
    from bcseg.atomic import atomic_path

    path = Path(path)
    observers = sorted({obs for case in cases for obs in case.masks})
    channels = list(dict.fromkeys(c.name for case in cases for c in case.channels))
    for case in cases:
        if any(c.index is not None for c in case.channels):
            raise ValueError(f"case '{case.id}' keeps its channels in the C axis of {case.image}; "
                             "a manifest names one file per channel")

    def rel(p: Path) -> str:
        try:
            return str(real_path(p).relative_to(real_path(path.parent)))
        except ValueError:
            return str(real_path(p))

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image"] + [f"image_{c}" for c in channels]
                        + [f"mask_{o}" for o in observers] + ["group", "class"])
        for case in cases:
            files = {c.name: rel(c.path) for c in case.channels}
            writer.writerow([case.id, rel(case.image)] + [files.get(c, "") for c in channels]
                            + [";".join(rel(p) for p in case.masks.get(o, ())) for o in observers]
                            + [case.group if case.group_given else "", case.label_class or ""])
    return path
