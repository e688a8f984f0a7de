"""Finding a dataset's cases: folder layouts and manifest CSV files.

Three ways to build a dataset (a case is described in :mod:`bcseg.data.cases`):

- BUSI layout: ``CLASS/NAME.png`` with ``CLASS/NAME_mask.png`` (and ``_mask_1`` ...,
  OR-merged into one observer called ``reference``). A ``folds.csv`` beside the class
  folders supplies the near-duplicate groups.
- ``images/`` with ``masks/<observer>/`` holding files of the same stem (2D or 3D).
  Each stack is its own group (one specimen per file).
- A manifest CSV with columns ``id,image,mask_<observer>...,group`` and optionally
  ``class``; paths are relative to the manifest's folder (:mod:`bcseg.data.manifest`).

Named channels come as ``images/<channel>/``, nnU-Net ``_0000`` suffixes or a C axis
named by ``channels.json`` (see :mod:`bcseg.data.channels`), or manifest columns
``image_<channel>``.

No TensorFlow here.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from bcseg import outputs
from bcseg.data import channels as channel_files
from bcseg.data import io
from bcseg.data.case_checks import (Problems, check_observer_name, check_unique_ids, fault,
                                    refuse_shared_masks, repeated_channel_file, unicode_form)
from bcseg.data.cases import Case, Channel
from bcseg.data.manifest import read_csv_lines, read_manifest
from bcseg.errors import DataError, not_a_file


BUSI_OBSERVER = "reference"
BUSI_MASK = re.compile(r"^(?P<name>.+)_mask(_\d+)?$")


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
    for part, other in (("images", "masks"), ("masks", "images")):
        # a file (or pipe) named so beside the other folder: 'masks' a file read as a
        # dataset of images alone (0 problems), 'images' a file as no known layout
        if ((root / other).is_dir() and os.path.lexists(root / part)
                and not (root / part).is_dir()):
            expected = f"the folder of the dataset's {part} beside {other}/"
            raise DataError(root / part, not_a_file(root / part, expected)
                            or f"is a file, expected {expected}")
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
    stems = {unicode_form(io.file_stem(path)) for path in files}
    return [path for path in files
            if (match := BUSI_MASK.match(io.file_stem(path))) and unicode_form(match["name"]) in stems]


def data_files(folder: Path, problems: Problems | None = None) -> list[Path]:
    """The image files of ``folder`` that are data, not bcseg's outputs.

    A run's figures (``train --out`` inside the dataset) and masks or probability maps
    predicted into it are recorded as bcseg's in the folder; read as cases, they made
    a class folder of ``loss.png`` and ``examples.png``. Edited outputs stay outputs.
    ``problems``: a broken link named as an image is listed there (see :func:`fault`).
    """
    files = io.image_files(folder, None if problems is None else
                           lambda error: fault(problems, error, io.file_stem(Path(error.path))))
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
                fault(problems, error)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_broken_link(path: Path) -> None:
    if path.is_symlink() and not path.exists() and not path.name.startswith("."):
        raise DataError(path, "is a broken symbolic link, or one that loops (a folder on a disk "
                        "not mounted?); point it at its target or remove it")


def _discover_images_masks(root: Path, problems: Problems | None = None) -> list[Case]:
    # channels.json, images/ and the channel folders are the layout: their problems are
    # raised, as one line; a problem of one file in them is the file's (see fault)
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
    cases = [replace(c, masks={obs: (files[unicode_form(c.id)],) for obs, files in observers.items()
                               if unicode_form(c.id) in files})
             for c in cases]
    cases = check_unique_ids(cases, root, problems)
    refuse_shared_masks(cases, root, problems=problems)  # a mask linked to another's
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
        cases.append(Case(id=stem, image=channels[0].path, group=stem, channels=channels))
    return _without_repeated_files(cases, problems)  # images/pa/S01.tif a link to images/us/S01.tif


def _without_repeated_files(cases: list[Case], problems: Problems | None = None) -> list[Case]:
    """The cases, refusing one whose two channels are one file (see
    :func:`bcseg.data.case_checks.repeated_channel_file`; listed in ``problems`` where
    given, and the case left out)."""
    kept = []
    for case in cases:
        repeated = repeated_channel_file(case.channels)
        if repeated:
            fault(problems, DataError(*repeated), case.id)
            continue
        kept.append(case)
    return kept


def _named_channel_cases(root: Path, images: list[Path], names: list[str],
                         problems: Problems | None = None) -> list[Case]:
    """Channels named by channels.json: nnU-Net ``_0000`` suffixes, or TIFFs with a C axis."""
    where = root / channel_files.CHANNELS_FILE
    unsuffixed = [p for p in images if not channel_files.SUFFIX.match(io.file_stem(p))]
    if unsuffixed and len(unsuffixed) < len(images):  # some _0000 files, some not
        for path in unsuffixed:  # each one listed by check; the suffixed files are the layout
            fault(problems, DataError(path, "has no channel suffix (_0000, _0001, ...), unlike "
                                       "other images in its folder; rename it or move it out"),
                   io.file_stem(path))
        images, unsuffixed = [p for p in images if p not in unsuffixed], []
    if unsuffixed:
        return _c_axis_cases(images, names, where, problems)
    return _suffixed_channel_cases(images, names, where, problems)


def _suffixed_channel_cases(images: list[Path], names: list[str], where: Path,
                            problems: Problems | None = None) -> list[Case]:
    """``S01_0000.tif``, ``S01_0001.tif``: one case per stem, channel i from suffix i."""
    # s0_0001.tif and s0_0001.nii.gz: one channel, two files (check goes on with the first)
    images = list(_by_stem(images, problems).values())
    grouped: dict[str, dict[int, Path]] = {}
    for path in images:
        match = channel_files.SUFFIX.match(io.file_stem(path))
        index = int(match["index"])
        if index >= len(names):
            fault(problems, DataError(path, f"is channel {index}, but {where} names "
                                       f"{len(names)} channel(s)"), match["case"])
            continue
        grouped.setdefault(match["case"], {})[index] = path
    cases = [Case(id=stem, image=files[min(files)], group=stem,
                  channels=tuple(Channel(names[i], files[i]) for i in sorted(files)))
             for stem, files in sorted(grouped.items())]
    return _without_repeated_files(cases, problems)  # S01_0001.tif a link to S01_0000.tif


def _c_axis_cases(images: list[Path], names: list[str], where: Path,
                  problems: Problems | None = None) -> list[Case]:
    """One file per case holding the channels along its C axis, in channels.json's order."""
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
            fault(problems, error, stem)
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
        folders = {f: data_files(f, problems)
                   for f in _subfolders(mask_root, strict=True, problems=problems)}
        named = [f for f, files in folders.items() if files]
        if loose and named:
            # as images/ refuses loose files beside channel folders: the loose masks were
            # read as one more observer, "mask", beside masks/<observer>/ (a stray copy
            # counted as a second reader in training and agreement), and an observer
            # folder named "mask" silently replaced them
            raise DataError(mask_root, f"holds both masks ({loose[0].name}, ...) and observer "
                            f"folders ({', '.join(f.name for f in named)}); keep one layout: move "
                            "the loose masks into an observer folder (masks/<observer>/), or the "
                            "folders out")
        if loose:  # masks/ with files directly: one unnamed observer
            observers["mask"] = _by_stem(loose, problems)
        for folder, files in folders.items():
            check_observer_name(folder.name, folder)  # the observer's name: the layout's
            observers[folder.name] = _by_stem(files, problems)
    return observers


def _by_stem(files: list[Path], problems: Problems | None = None) -> dict[str, Path]:
    """The files of one folder by stem, in one Unicode form. Two files of one stem
    (``s0.tif`` and ``s0.nii.gz``) are refused, as two loose images of one id are:
    keyed by stem, the later one would silently stand in for the other. (Listed in
    ``problems``, the first is kept.)"""
    found: dict[str, Path] = {}
    for path in files:
        stem = unicode_form(io.file_stem(path))
        if stem in found:
            fault(problems, DataError(path.parent, f"holds two files for one case, {found[stem].name} "
                                       f"and {path.name}; keep one (the other would be ignored)"), stem)
            continue
        found[stem] = path
    return found


def _discover_busi(root: Path, problems: Problems | None = None) -> list[Case]:
    groups = _busi_groups(root / "folds.csv")  # one file for the whole dataset: raised
    cases = []
    for folder in _subfolders(root):
        files = data_files(folder, problems)
        masks: dict[str, list[Path]] = {}
        for path in files:
            match = BUSI_MASK.match(io.file_stem(path))
            if match:
                masks.setdefault(unicode_form(match["name"]), []).append(path)
        for path in files:
            stem = io.file_stem(path)
            if BUSI_MASK.match(stem):
                continue
            found = tuple(sorted(masks.get(unicode_form(stem), [])))
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
    cases = check_unique_ids(cases, root, problems)
    refuse_shared_masks(cases, root, problems=problems)
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
