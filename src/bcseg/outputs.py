"""Output folders bcseg owns: a record of what it wrote, a lock, and safe replacement.

Every command that writes into a folder first checks it with :func:`check_output_folder`,
before it loads anything: the path, a file in its way, a place it may not write, and a
folder inside a dataset's ``images/`` or ``masks/``, all in that one call. It then writes
inside :func:`claim`, which

* takes an exclusive lock beside the folder, so two runs cannot write it at once
  (the loser gets a :class:`UsageError` naming the folder);
* keeps ``.bcseg-outputs.json`` in the folder: the files bcseg wrote there, by
  which command, and each file's size and modification time as bcseg left it.
  ``--force`` removes or replaces only files listed there and unchanged since (a
  mask the user corrected by hand is the user's now), and a folder holding
  anything else is refused, naming the first such file;
* with ``replace=True`` (a command that replaces a whole folder: train, demo,
  phantom) moves the old result aside, writes the new one, and deletes the old
  one only when the new one is complete; a failure puts the old one back.

The record is written when a claim starts (listing the files already there that
bcseg did not write) and settled when it ends. A run killed outright (SIGKILL)
cannot settle it, so the run also appends each file it writes, with the file's
identity, to ``.bcseg-outputs.journal`` as it goes: the next claim adopts exactly
those files still as the dead run left them, and the folders holding them; a file
or folder the user added or swapped in meanwhile stays the user's.

A forced replacement killed outright leaves the old content beside the folder as
``.<folder>.bcseg-old-PID``. The next claim of the folder, or of the folder holding it,
settles it under the folder's lock (so no live run is replacing it): when the new
content finished (its record is settled) the leftover is deleted; otherwise (no
folder, no record, or a record still open by the killed run) the unfinished new
content is deleted and the old one is put back.

The lock is :mod:`bcseg.folder_lock`'s and the journal :mod:`bcseg.journal`'s; this
module holds the record and the claims built on both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import os
import re
import secrets
import signal
import stat
import threading
import unicodedata
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

from bcseg import folder_lock, journal
from bcseg.atomic import WRITE_HOOKS, partial_pid, process_alive, read_json, real_path, write_text
from bcseg.folder_lock import LOCK_SUFFIX
from bcseg.journal import JOURNAL
from bcseg.errors import UsageError

RECORD = ".bcseg-outputs.json"
# The old content during a replacement; the mark names bcseg, so that a user's own
# ".result.old-2" (a backup copy, say) is never taken for one and settled away.
ASIDE_MARK = ".bcseg-old-"
# What an output folder's path must leave of the system's limit on a whole path, for the
# names bcseg writes in it (a file name may have 255 bytes) and its own subfolders.
NAME_ROOM = 300
ASIDE = re.compile(r"^\.(?P<name>.+)\.bcseg-old-(?P<pid>\d+)$")


@dataclasses.dataclass
class _Held:
    """A folder this process has claimed: by which command, how deeply nested, and the
    files it wrote (relative names), which are its own when it ends even where a file
    of that name was there before (a report rebuilt over a fold's figures). Each name
    maps to the file's :func:`_identity` just after bcseg wrote it: a file the user put
    in its place while the run went on is theirs, not the run's."""
    command: str
    depth: int = 1
    wrote: dict = dataclasses.field(default_factory=dict)


_held: dict[Path, _Held] = {}  # the folders this process holds
# Called once a claim has passed its checks, before its first write: the command line
# holds its warnings back until then, so that input a later check refuses is one line.
CLAIM_HOOKS: list[Callable[[], None]] = []
# Tells this process's claims from a dead one's with the same process id (in a container
# every run may be process 1).
_TOKEN = secrets.token_hex(8)


# --------------------------------------------------------------------------- checks

def check_output_folder(folder: str | Path, *, command: str) -> Path:
    """Refuse an output folder that is a file, or lies under one, or lies in the
    ``images/`` or ``masks/`` of a dataset above it; return it as a Path.

    Cheap and touching nothing, so every command that writes calls it first, before
    loading any model, and before any other check that looks at the disk. ``command``
    (the command writing there, as in ``bcseg <command>``) decides what the dataset
    refusal allows (``images/`` for :data:`BESIDE_IMAGES`) and names it in the message.
    The dataset refusal is part of this check, not a second call beside it: a writer
    that forgot that call wrote among a dataset's masks. The path's own checks come
    first (a path too long for the system fails every look at the disk). A folder this
    process already holds (a command run inside another's claim: train's evaluation of
    its test fold, ``predict --margins``) was checked by the command that claimed it,
    and, written by it now, need not look like a folder bcseg wrote whole: its dataset
    refusal is not looked at again. The dataset a command reads is compared with its
    output by :func:`refuse_dataset_folder`.
    """
    folder = Path(folder)
    # 'new/sub/..' is 'new' to the lock and the record, but making it (or a file in it)
    # makes new/sub as well: an empty folder nobody recorded, left beside the result.
    for i, part in enumerate(folder.parts):
        if part == ".." and i and not Path(*folder.parts[:i]).is_dir():
            raise UsageError(folder, f"goes up ('..') out of {Path(*folder.parts[:i])}, which does not "
                             "exist, and would be made; name the output folder without it")
        # 'lk/..' with lk a link is the folder above lk's target to the system, but the one
        # holding lk to the record's paths (and a shell's cd): a replacement moved the result
        # aside, the link then led nowhere, and the new result could not be made nor the old
        # one put back. Which folder is meant is not clear either, so neither is guessed.
        if part == ".." and i and real_path(Path(*folder.parts[:i + 1])) != \
                real_path(os.path.normpath(Path(*folder.parts[:i + 1]))):
            raise UsageError(folder, f"goes up ('..') out of {Path(*folder.parts[:i])}, which is a "
                             "link or passes through one, so '..' is not the folder it seems; "
                             "name the output folder without it")
    limit = _name_max(folder)
    for part in folder.parts:  # any look at the path, or mkdir after the work, would fail
        if len(os.fsencode(part)) > limit:
            raise UsageError(folder, f"the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, "
                             f"more than the {limit} a file name may have here; choose a shorter name")
    # The folder's lock and, during --force, its old content sit beside it under longer
    # names (".NAME.bcseg-old-PID", a process id of up to 7 digits).
    room = limit - len(f".{ASIDE_MARK}") - 7
    if folder.name and len(os.fsencode(folder.name)) > room:
        raise UsageError(folder, f"the name is {len(os.fsencode(folder.name))} bytes; an output folder's "
                         f"name may have {room} here (bcseg keeps hidden companions beside it under "
                         "longer names); choose a shorter name")
    # The whole path too: bcseg names its folders absolutely (locks, records), and over the
    # system's limit every look at it failed as 'OSError: [Errno 36] File name too long',
    # exit 1, with the whole path in the line. Room is kept for the names inside.
    whole, path_max = len(os.fsencode(os.path.abspath(folder))), _path_max(folder)
    if whole > path_max - NAME_ROOM:
        raise UsageError(f"{str(folder)[:40]}...", f"the output folder's path is {whole} bytes; it may "
                         f"have {path_max - NAME_ROOM} here ({path_max} with the names of the files in "
                         "it); choose a shorter path")
    existing = _nearest_folder(folder)
    if existing is not None and _read_only(existing):
        raise UsageError(folder, "is on a read-only file system; choose another place for the outputs")
    # The folder itself, or where it is to be made: an existing folder of the user's that
    # may not be written failed only at the claim, after the model loaded, named by the
    # record's hidden temporary file ('out/..bcseg-outputs.bcseg-partial-4242.json').
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == folder else f" (in {existing})"
        raise UsageError(folder, f"cannot be written: permission denied for this user{where}; "
                         "fix its permissions or choose another place for the outputs")
    record = folder / RECORD
    if (record.exists() or record.is_symlink()) and not record.is_file():
        # bcseg rewrites its record when it writes: onto a folder that fails after the
        # outputs exist, and reading a named pipe there would wait forever
        raise UsageError(record, "is not a file, but bcseg keeps its record of the files it "
                         "wrote under this name; move it away")
    if not held_here(folder):
        _refuse_inside_a_layout(folder, command)
    return folder


def _nearest_folder(folder: Path) -> Path | None:
    """``folder`` or the nearest of its parents that exists (None: none does); refuses a
    file or a broken link where a folder must be."""
    for path in (folder, *folder.parents):
        if path.is_symlink() and not path.exists():
            raise UsageError(path, "is a broken link; choose a folder for the outputs")
        if path.exists():
            if not path.is_dir():
                raise UsageError(path, "is a file, not a folder; choose a folder for the outputs")
            return path
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_name_lengths(paths: Iterable[Path], culprit: Path | None = None) -> None:
    """Refuse output names longer than the file system allows, before writing any."""
    for path in paths:
        limit = _name_max(path.parent)
        if len(os.fsencode(path.name)) > limit:
            raise UsageError(culprit or path, f"its output name {path.name!r} would be "
                             f"{len(os.fsencode(path.name))} bytes, more than the {limit} a file "
                             "name may have here; rename the input or shorten it")


def _path_max(folder: Path) -> int:
    for path in (folder, *folder.parents):
        try:
            return os.pathconf(path, "PC_PATH_MAX")
        except (OSError, ValueError):  # not there (or too long): ask its parent
            continue
    return 4096


def _name_max(folder: Path) -> int:
    for path in (folder, *folder.parents):
        try:
            return os.pathconf(path, "PC_NAME_MAX")
        except (OSError, ValueError):  # not there (or a name too long): ask its parent
            continue
    return 255


def check_not_inputs(folder: Path, inputs: Iterable) -> None:
    """Refuse to replace a folder that is, or contains, one of the inputs."""
    target = real_path(folder)
    try:  # which folder it is on the disk: a path is not enough (see below)
        info = os.stat(target)
        identity = (info.st_dev, info.st_ino)
    except OSError:  # not there yet: it holds nothing to replace
        identity = None
    seen: dict[Path, tuple[int, int] | None] = {}  # every case's files share their folders
    for item in inputs:
        if item is None:
            continue
        source = real_path(item)
        # By the folder itself too, not only by its path: the input named through another
        # path to the same folder (a bind mount, a container's volume), which no resolving
        # of links sees, passed, and the folder holding it was replaced, the input deleted.
        if source == target or target in source.parents or (
                identity is not None and identity in _identities((source, *source.parents), seen)):
            raise UsageError(folder, f"contains the input {item}; bcseg never replaces a folder "
                             "holding its inputs: choose another output folder")


def _identities(paths: Iterable[Path], seen: dict) -> set[tuple[int, int]]:
    """The (device, inode) of those of ``paths`` that exist; ``seen`` caches them."""
    for path in paths:
        if path not in seen:
            try:
                info = os.stat(path)
                seen[path] = (info.st_dev, info.st_ino)
            except OSError:
                seen[path] = None
    return {seen[path] for path in paths if seen[path] is not None}


def refuse_dataset_folder(folder: Path, data: str | Path, files: Iterable[Path],
                          command: str) -> None:
    """Refuse as the output folder one of the folders of ``data``, the dataset the
    command reads (its folder or manifest), whose case files are ``files``.

    One of the folders holding its images or masks (``images/``, ``images/us/``,
    ``masks/observer1/``, a BUSI class folder) or one between those and the dataset
    (``masks/``): ``split --out data/images/s.json`` and ``evaluate --out
    data/masks/observer1`` wrote their JSON, tables, figures and record among the user's
    scans and annotations. The dataset folder itself (a manifest's folder) and a new
    subfolder beside ``images/`` (``data/split``) stay fine. Compared as folders on the
    disk, so a link, a bind mount, '..' or another letter case on a file system that
    ignores it names the same folder.

    An output inside the ``images/`` or ``masks/`` of any dataset above it, whatever the
    command reads, is :func:`check_output_folder`'s to refuse
    (:func:`_refuse_inside_a_layout`), which the command calls on ``folder`` first; this
    adds only the comparison with the dataset read.
    """
    if not Path(folder).is_dir():  # a folder still to be made is no dataset's
        return
    shown = Path(data) if Path(data).is_dir() else Path(data).parent
    root = real_path(shown)
    files = list(files)  # the folder holding each file, named or through its link
    parents = {real_path(Path(f).parent) for f in files} | {real_path(f).parent for f in files}
    layout: set[Path] = set()
    for parent in parents:  # and the folders above it, up to the dataset's own
        for level in (parent, *parent.parents):
            if level == root or root not in level.parents and level != parent:
                break
            layout.add(level)
    if _identities([real_path(folder)], {}) & _identities(layout, {}):
        raise _dataset_refusal(folder, shown, command)


def _dataset_refusal(folder: Path, shown: Path, command: str) -> UsageError:
    return UsageError(folder, f"is a folder of the dataset {shown} (its images or masks, or a "
                      f"folder in them); bcseg writes no {command} output among a dataset's "
                      f"files: choose another output folder (a new one, such as "
                      f"{shown / command}, will do)")


def _refuse_inside_a_layout(folder: Path, command: str) -> None:
    """Refuse ``folder`` (made yet or not) when it lies in the ``images/`` or ``masks/``
    of a dataset above it; part of :func:`check_output_folder`.

    Whatever the command reads, an output inside the ``images/`` or ``masks/`` of a
    folder above it that has the dataset layout (:func:`_layout_dataset`) is refused, new
    or not: 'phantom data/masks/observer3' made a dataset that 'check data' read as masks
    without images, and 'margins --out data/masks/observer1' (its inputs plain files)
    put a specimen mask among an observer's. Not refused there: a folder bcseg wrote
    whole (a run or predictions inside the dataset, :func:`_bcseg_folder_between`), and
    ``images/`` for the commands that write beside the images (:data:`BESIDE_IMAGES`:
    masks predicted into ``images/`` are documented, recorded and never read as cases).

    By the folder on the disk, and by the path as given: a link to
    ``data/masks/observer1``, or ``lk/masks/x`` with ``lk`` a link to the dataset, is
    that dataset's folder, and so is ``data/images/x`` where ``images`` is a link to
    another disk (on the disk, x lies in no dataset)."""
    for inside in dict.fromkeys((real_path(folder), Path(os.path.abspath(folder)))):
        for root in inside.parents:
            part = inside.relative_to(root).parts[0]
            if part not in ("images", "masks") or not (
                    _layout_dataset(root) or _masks_to_come(inside, root, part, command)):
                continue
            if part == "images" and _beside_images(command, "images/"):
                continue
            # bcseg's own folder, by either path; but a dataset written anywhere in masks/
            # is data, read as an observer's masks ('phantom data/masks/x' after 'predict
            # images/ --out masks/' made check refuse the dataset)
            if command not in DATASET_MAKERS and (_bcseg_folder_between(
                    inside, root / part) or _masks_of_bcseg_folders(inside, root, part, command)):
                break
            raise _dataset_refusal(folder, _as_named(folder, root), command)


def _layout_dataset(folder: Path) -> bool:
    """Whether ``folder`` has the layout of a dataset of stacks (docs/layouts.md):
    ``images/`` and ``masks/``, with a file in either (or in a folder in them:
    ``images/us/``, ``masks/observer1/``). Any file, not only images by their suffix:
    the readers' suffixes are the data stage's, which this basic module may not import,
    and two empty folders so named are no dataset yet."""
    if not ((folder / "images").is_dir() and (folder / "masks").is_dir()):
        return False
    return _holds_a_file(folder / "images") or _holds_a_file(folder / "masks")


def _holds_a_file(folder: Path) -> bool:
    """Whether ``folder`` or a folder in it (``images/us/``, ``masks/observer1/``) holds a
    file that is not hidden."""
    return any(not path.name.startswith(".") and path.is_file()
               for pattern in ("*", "*/*") for path in folder.glob(pattern))


# Commands whose output is or holds a dataset (images/ and masks/, nnU-Net's folders, the
# demo's phantom): written in a dataset's masks/, its images/ read as an observer's masks.
# Not DATASET_WRITERS below (whose files only the same command's --force replaces): the
# demo's own files are results that demo --force replaces.
DATASET_MAKERS = ("phantom", "export-nnunet", "demo")


def _masks_to_come(inside: Path, root: Path, part: str, command: str) -> bool:
    """Whether ``inside`` would make the ``masks/`` of ``root``, a dataset of images alone
    (``images/`` holding a file, no ``masks/`` yet): 'phantom data/masks/x' made ``x`` an
    observer whose masks match no image, and 'phantom data/masks' an observer 'images'
    of every case, so 'check data' refused the dataset. ``masks/`` itself stays open to
    the commands that write masks there (the README's 'predict images/ --out masks/')."""
    if part != "masks" or (root / "masks").exists() or (root / "masks").is_symlink():
        return False
    if inside == root / "masks" and command not in DATASET_MAKERS:
        return False
    return (root / "images").is_dir() and _holds_a_file(root / "images")


def _masks_of_bcseg_folders(inside: Path, root: Path, part: str, command: str) -> bool:
    """Whether ``inside`` is the ``masks/`` of ``root`` and holds only folders bcseg wrote
    whole (a run trained into ``data/masks/run``), no observer's masks and no record of its
    own: 'predict images/ --out masks/' (the README's tour) was refused there as a folder
    of the dataset, though nothing in it is the user's. Open to the commands that write
    masks there, as a ``masks/`` still to come is (:func:`_masks_to_come`)."""
    if part != "masks" or inside != root / "masks" or command in DATASET_MAKERS:
        return False
    try:
        entries = [path for path in inside.iterdir() if not _ours(path)]
    except OSError:  # not there, or not readable: nothing known to be bcseg's
        return False
    return bool(entries) and all(path.is_dir() and not path.is_symlink() and _written_whole(path)
                                 for path in entries)


def _bcseg_folder_between(inside: Path, top: Path) -> bool:
    """Whether ``inside``, or a folder between it and ``top`` (a dataset's ``images/``
    or ``masks/``) or ``top`` itself, is a folder bcseg wrote whole: its record is there
    and it holds nothing else (a run's or predictions' folder; an observer's folder of
    masks that merely holds a record is the dataset's). ``top`` too: 'predict images/
    --out masks/' (the README's tour with the new stacks in images/) made its folder
    look like a dataset, and its own --force re-run, margins and report were refused.
    What a bcseg folder holds in a subfolder by that one's record (``margins --out
    masks/margins``) is bcseg's too: it kept 'report masks' from the folder it reports."""
    for level in (inside, *inside.parents):
        if _written_whole(level):
            return True
        if level == top:
            return False
    return False


def _written_whole(folder: Path) -> bool:
    """Whether bcseg wrote all of ``folder``: its record is there, and each file it does
    not list lies in a subfolder (not a link) that bcseg wrote whole in turn. One listing
    per folder: asking each file's nested record listed a subfolder once per file."""
    if not (folder / RECORD).is_file():
        return False
    tops = {name.split("/", 1)[0] for name in foreign(folder)}
    return all((folder / top).is_dir() and not (folder / top).is_symlink()
               and _written_whole(folder / top) for top in tops)


def _as_named(folder: Path, target: Path) -> Path:
    """``target``, a folder above ``folder`` on the disk, by the path the user gave
    (``data`` rather than /home/u/data) where one of the given parents is it."""
    for above in Path(folder).parents:
        if str(above) != "." and real_path(above) == target:
            # 'data/images/..' is data: check_output_folder refused a '..' out of a link
            return Path(os.path.normpath(above))
    return target


# --------------------------------------------------------------------------- the record

def _ours(path: Path) -> bool:
    """Records, and the locks and temporary files bcseg left: never the user's.

    A name alone does not make a file bcseg's: a user's ``.thesis.bcseg-lock`` or
    ``.draft.bcseg-partial-1.txt`` (process 1 runs) would be invisible to every check
    and deleted with the folder by ``--force``. So a lock must hold what bcseg writes
    into one (a process id), and a temporary must be a file of this process or of one
    that has ended. Folders are never hidden: the records list what is in them.
    """
    name = path.name
    if name == RECORD:
        return True
    if path.is_symlink() or not path.is_file():
        return False
    if name == JOURNAL:
        return journal.is_journal(path)
    if name.startswith(".") and name.endswith(LOCK_SUFFIX):
        return folder_lock.is_a_lock(path)
    pid = partial_pid(name)
    return pid is not None and (pid == os.getpid() or not process_alive(pid))


def check_not_bookkeeping(path: Path) -> None:
    """An output file never takes one of bcseg's own hidden names (the record, the
    journal, a lock, a temporary or an old result put aside): 'split --out
    run/.bcseg-outputs.journal' wrote the splits over the folder's journal, and every
    later command into the folder refused it as no journal."""
    name = folded(path.name)  # '.BCSEG-OUTPUTS.json' is the record where case is ignored
    if (name in (RECORD, JOURNAL) or (name.startswith(".") and name.endswith(LOCK_SUFFIX))
            or partial_pid(name) is not None or ASIDE.match(name)):
        raise UsageError(path, "is a name bcseg keeps for its own records, locks and "
                         "temporary files; choose another name for the output")


def folded(name: str) -> str:
    """``name`` as a file system that ignores letter case and Unicode form (macOS's and
    Windows's by default) sees it: 'Channels.json' is the file 'channels.json' there.
    Names bcseg keeps for itself or reads a dataset by are compared so."""
    return unicodedata.normalize("NFC", name).casefold()


def listing(folder: str | Path, strict: bool = True) -> set[str]:
    """What lies under ``folder`` (relative, '/'-separated), without records, locks and
    temporaries: every file, link, pipe or other entry, and every folder with a
    trailing '/'.

    Folders count, even empty ones, so that ``--force`` never removes a tree of the
    user's folders; links are entries, never followed. With ``strict`` a folder that
    cannot be read is a :class:`UsageError`: what it holds cannot be known, so it
    cannot be known to be bcseg's. Without it, such a folder is simply not looked into.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return set()

    def unreadable(error: OSError) -> None:
        if strict:
            raise UsageError(error.filename, "cannot be read, so bcseg cannot tell whether it "
                             "holds files it did not write; fix its permissions or move it away")

    found = set()
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        base = Path(root)
        for name in dirs:
            relative = (base / name).relative_to(folder).as_posix()
            found.add(relative if (base / name).is_symlink() else relative + "/")
        found.update((base / name).relative_to(folder).as_posix() for name in files
                     if not _ours(base / name))
    return found


def _with_folders(files: set[str]) -> set[str]:
    """``files`` and every folder that holds one of them ('a/b.csv' -> 'a/')."""
    folders = set()
    for name in files:
        parts = name.rstrip("/").split("/")[:-1]
        folders.update("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
    return files | folders


def _load(folder: Path) -> dict:
    try:
        record = read_json(folder / RECORD)
    except (OSError, UnicodeDecodeError, ValueError):
        return {"files": {}}  # none, or unreadable: nothing is known to be ours
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return {"files": {}}
    return record


def _settle(folder: Path, record: dict, present: set[str], wrote: dict | None = None) -> dict:
    """Adopt the files an open (finished or dead) claim wrote; forget removed files.

    A killed run's claim adopts the files its journal lists, where each is still the
    file it wrote (:func:`_identity`), and the folders holding them: what the user put
    in the folder, or in place of its files, before or after the kill stays the user's.
    A claim of a bcseg before the journal adopts the files changed no later than its
    last sign of life (the record's modification time, see :func:`beat`), and every
    folder. A live claim adopts what it wrote, as it is, and the folders holding it.

    The claim's files are fingerprinted as it left them (:func:`_fingerprint`), except
    those the user had edited before it started (its ``edited`` list), whose old
    fingerprint stays so that they remain the user's.
    """
    claim = record.pop("open", None)
    files = {k: v for k, v in record["files"].items() if k in present}
    stats = {k: v for k, v in _stats(record).items() if k in files}
    if isinstance(claim, dict):
        new = present - set(claim.get("foreign", [])) - set(files)
        written = (set(files) | new) - set(claim.get("edited", []))
        if _mine(claim):  # a live claim knows its files: one the user added meanwhile stays theirs
            wrote = {} if wrote is None else wrote
            # and the folders holding them: a tree of empty folders the user made meanwhile
            # was adopted whole, and a later --force deleted it
            made = _with_folders(set(wrote))
            new = {name for name in new
                   if (name in made if name.endswith("/") else _as_written(folder, name, wrote))}
            written = {name for name in written if _as_written(folder, name, wrote)}
        elif claim.get("journal"):  # what the dead run wrote, file by file
            wrote = journal.read(folder)
            made = _with_folders(set(wrote))  # and the folders holding it
            new = {name for name in new if (name in made if name.endswith("/") else _as_written(folder, name, wrote))}
            written = {name for name in written if name.endswith("/") or _as_written(folder, name, wrote)}
        else:  # a run of a bcseg before the journal: by time
            last = _last_beat(folder)
            new = {name for name in new if name.endswith("/") or _changed(folder / name) <= last}
            written = {name for name in written if _changed(folder / name) <= last}
        files.update({name: str(claim.get("command", "bcseg")) for name in sorted(new)})
        for name in written & set(files):
            if not name.endswith("/"):
                stats[name] = _fingerprint(folder / name)
    record["files"] = dict(sorted(files.items()))
    record["stats"] = dict(sorted((k, v) for k, v in stats.items() if v is not None))
    return record


def _stats(record: dict) -> dict:
    stats = record.get("stats")
    return stats if isinstance(stats, dict) else {}  # none in records of older versions


def _fingerprint(path: Path) -> list[int] | None:
    """Size and modification time: what any edit of the file changes."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file is at ``path`` and as what: inode, size and modification time. A file
    copied or moved over it has another inode, one edited in place another size or time."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _as_written(folder: Path, name: str, wrote: dict) -> bool:
    """Whether entry ``name`` is still what this process's claim wrote there (a folder
    it made: always; the files in it are judged one by one)."""
    if name.endswith("/"):
        return True
    return name in wrote and _identity(folder / name) == wrote[name]


def _edited(folder: Path, record: dict) -> set[str]:
    """The recorded files that changed since bcseg wrote them: the user's work now. So is
    a file listed with no size and time to tell (a record edited by hand, or written by a
    bcseg before it kept them): whether the user changed it cannot be known, and --force
    deleted a table the user had edited once the record's "stats" were gone."""
    stats = _stats(record)
    return {name for name in record["files"] if not name.endswith("/")
            and _fingerprint(folder / name) not in (None, stats.get(name))}


def unfinished_claim(folder: str | Path) -> dict | None:
    """The open claim on ``folder`` of another process (a run killed while writing it, or
    one writing it now), or of this one where it no longer holds the folder (a command
    of this process stopped part-way: an API user's ``predict_files`` that failed), or
    None: a folder whose record is closed, or has none, or that this process writes now."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    claim = _load(Path(folder)).get("open")
    return claim if isinstance(claim, dict) and not (_mine(claim) and held_here(folder)) else None


def held_here(folder: str | Path) -> bool:
    """Whether this process holds a claim on ``folder`` (a command run inside another's
    claim, as train runs evaluate on its test fold)."""
    return real_path(folder) in _held


def unfinished_output(claim: dict) -> str:
    """How a refusal names what an open ``claim`` (from :func:`unfinished_claim`) left."""
    return (f"the unfinished output of a 'bcseg {claim.get('command', '?')}' run (process "
            f"{claim.get('pid', '?')}) that was stopped or is still writing")


def _mine(claim: dict) -> bool:
    """Whether an open claim is this process's (a dead run may have had its id)."""
    return claim.get("pid") == os.getpid() and claim.get("token") == _TOKEN


def _last_beat(folder: Path) -> int:
    try:
        return (folder / RECORD).stat().st_mtime_ns
    except OSError:
        return -1


def _changed(path: Path) -> float:
    """When the entry was last changed: its ctime, which no copy or touch can set back."""
    try:
        return path.lstat().st_ctime_ns
    except OSError:
        return float("inf")


def beat(path: str | Path) -> None:
    """Mark the claims of the folders holding ``path`` alive now, after bcseg wrote it.

    Every file bcseg writes goes through :func:`bcseg.atomic.atomic_path`, which calls
    this; so a killed run's last write is never later than its record's modification
    time, and what changed after that is not its work.
    """
    if not _held:  # every atomic write calls this; most are outside any claim
        return
    try:
        resolved = real_path(path)
    except OSError:
        return
    identity = _identity(resolved)
    # a folder made for a file (see atomic_path) is noted as one: a run killed before the
    # file was complete left it empty and unjournaled, and the next run refused it as the
    # user's instead of putting back the result the run was replacing
    made = resolved.is_dir() and not resolved.is_symlink()
    for key, held in list(_held.items()):
        if key in resolved.parents or (key == resolved and not made):
            name = resolved.relative_to(key).as_posix() + ("/" if made else "")
            held.wrote[name] = identity
            with contextlib.suppress(OSError):  # unjournaled, the file is not adopted after a kill
                journal.append(key, name, identity)
            with contextlib.suppress(OSError):
                os.utime(key / RECORD)


WRITE_HOOKS.append(beat)


def writers(folder: str | Path) -> dict[str, str]:
    """The files under ``folder`` that bcseg wrote, unchanged since, and the command that
    wrote each (relative, '/'-separated names; folders not included)."""
    folder = Path(folder)
    record = _load(folder)
    claim = record.get("open")
    present = listing(folder, strict=False)
    if isinstance(claim, dict) and (_mine(claim) or not process_alive(claim.get("pid"))):
        record = _settle(folder, record, present)
    edited = _edited(folder, record)
    return {name: str(command) for name, command in record["files"].items()
            if name in present and name not in edited}


def still_as_written(path: str | Path) -> bool:
    """Whether ``path`` is a file bcseg wrote, unchanged since, in a folder this process
    holds: written by this claim (the same file, by identity), or by an earlier run of
    the folder's record (a resumed run's checkpoint). What a running command deletes of
    its own work (last epoch's checkpoint) is asked here first: a file of that kind of
    name that the user made, copied or saved over it is theirs."""
    resolved = real_path(path)
    for key, held in _held.items():
        if key in resolved.parents:
            name = resolved.relative_to(key).as_posix()
            if name in held.wrote:
                return _as_written(key, name, held.wrote)
            record = _load(key)
            return name in record["files"] and name not in _edited(key, record)
    return False


def nested_writer(folder: str | Path, name: str) -> str | None:
    """The command that wrote entry ``name`` of ``folder`` by the record of a subfolder
    (``run/peek/`` that ``predict --out run/peek`` wrote): None when no record below
    ``folder`` lists it."""
    folder = Path(folder)
    path = folder / name.rstrip("/")
    for sub in (path, *path.parents):
        if sub == folder or folder not in sub.parents:
            break
        if not (sub / RECORD).is_file():
            continue
        found = writers(sub)
        rest = path.relative_to(sub).as_posix()
        inside = [command for key, command in found.items() if rest == "." or key.startswith(rest + "/")]
        if rest in found or inside:
            return found.get(rest) or inside[0]
    return None


def owned(folder: str | Path) -> set[str]:
    """The files under ``folder`` that bcseg wrote (relative, '/'-separated)."""
    # A folder holding one of bcseg's files is bcseg's too (records from before folders
    # were listed name only the files).
    return _with_folders(set(writers(folder))) & listing(folder, strict=False)


def written(folder: str | Path) -> set[str]:
    """The files under ``folder`` that bcseg wrote, whether or not the user changed them
    since: a corrected mask is the user's to keep, but still a mask, never an input."""
    folder = Path(folder)
    present = listing(folder, strict=False)
    return set(_load(folder)["files"]) & present | owned(folder)


def results_in(folder: str | Path, levels: int = 3) -> set[str]:
    """Names of the files directly in ``folder`` that a bcseg command wrote as its result
    (edited since or not), by the folder's record or one up to ``levels`` folders above
    (``run/predictions/`` is recorded in the run's). A dataset that ``phantom`` or
    ``export-nnunet`` wrote is data, not a result, and is not listed."""
    folder = Path(folder).absolute()
    names, judged = set(), set()
    for record_folder in (folder, *list(folder.parents)[:levels]):
        if not (record_folder / RECORD).is_file():
            continue
        prefix = folder.relative_to(record_folder).as_posix()
        recorded = {**_load(record_folder)["files"], **writers(record_folder)}
        for name, command in recorded.items():
            inside = name if prefix == "." else name.removeprefix(prefix + "/")
            # The nearest record that lists a file decides: demo writes its phantom inside
            # its own claim, so the demo's record lists the phantom's images too, as 'demo'.
            if (prefix == "." or name.startswith(prefix + "/")) and "/" not in inside \
                    and inside not in judged:
                judged.add(inside)
                if command not in DATASET_WRITERS:
                    names.add(inside)
    return names


def foreign(folder: str | Path) -> list[str]:
    """Files under ``folder`` that bcseg did not write, sorted."""
    return sorted(listing(folder) - owned(folder))


def is_owned(path: Path, known: dict[Path, dict[str, str]] | None = None) -> bool:
    """Whether bcseg wrote the file ``path``; ``known`` caches :func:`writers` per folder."""
    return writer_of(path, {} if known is None else known) is not None


def check_replaceable(paths: Iterable[Path], force: bool,
                      known: dict[Path, dict[str, str]] | None = None, *, command: str | None = None,
                      inputs: Iterable = ()) -> None:
    """Refuse to replace what is not an earlier output of this command.

    An existing output is refused without ``force``; with it, one that bcseg did not
    write, one that ``command`` did not write (another command's result: a run's
    metrics are not ``evaluate``'s to replace; commands running inside another's
    claim, as ``train`` runs ``evaluate``, may replace that command's files), one that
    belongs to a dataset bcseg wrote (see :data:`DATASET_WRITERS`), and always one of
    the command's ``inputs``.
    """
    known = {} if known is None else known
    is_input = input_test(inputs)
    for path in paths:
        if not (path.exists() or path.is_symlink()):
            continue
        if is_input(path):
            raise UsageError(path, "is an input of this command; choose another output")
        # What force cannot replace is refused as such first: suggesting force=True for
        # it only led to a second refusal.
        if not is_owned(path, known):
            above = writer_above(path)
            if above is not None:  # train's predictions/ hold files that run/'s record lists
                raise UsageError(path, f"is the output of 'bcseg {above}'; force=True replaces "
                                 "only an earlier output of the same command: choose another output")
            raise UsageError(path, "was not written by bcseg, or was changed after it was, so "
                             "force=True will not replace it; "
                             "move it away or choose another output folder")
        writer = writer_of(path, known)
        if writer in DATASET_WRITERS:
            raise UsageError(path, f"is data that 'bcseg {writer}' wrote; force=True replaces "
                             f"only results, never a dataset: choose another output")
        if command and writer not in (command, "bcseg", *(held.command for held in _held.values())):
            raise UsageError(path, f"is the output of 'bcseg {writer}'; {command} with force=True "
                             f"replaces only an earlier {command} output: choose another output")
        if not force:
            raise UsageError(path, "already exists; pass force=True to overwrite it")


def input_test(inputs: Iterable) -> Callable[[Path], bool]:
    """A test of whether a path is one of ``inputs`` (None among them ignored), by any
    name: its link resolved, or the same file on the disk. The latter catches one named
    through another path to its folder (a bind mount, a container's volume), which no
    resolving of links sees: it was removed as a stale companion ('predict a.tif
    mnt/a_prob.tif --out out --force', mnt a bind mount of out) and then failed as 'file
    not found', or replaced before it was read."""
    sources = {real_path(item) for item in inputs if item is not None}
    files = _identities(sources, {})
    return lambda path: (real_path(path) in sources or Path(path).absolute() in sources
                         or bool(_identities([Path(path)], {}) & files))


def writer_above(path: Path, levels: int = 3) -> str | None:
    """The command that wrote ``path`` by the record of a folder above its own."""
    for folder in list(path.absolute().parents)[1:1 + levels]:
        if (folder / RECORD).is_file():
            return writers(folder).get(path.absolute().relative_to(folder).as_posix())
    return None


def writer_of(path: Path, known: dict[Path, dict[str, str]]) -> str | None:
    """The command that wrote ``path``, by its folder's record (cached in ``known``)."""
    if path.parent not in known:
        known[path.parent] = writers(path.parent)
    return known[path.parent].get(path.name)


# Commands whose output is a dataset, the input of other commands: their files are
# replaced only by the same command rerun on the whole folder (phantom --force).
DATASET_WRITERS = ("phantom", "export-nnunet")
# What other commands add to a command's result, and is replaced with it: a report
# rebuilt in a run folder, a run exported to ONNX beside its model. Never to a dataset.
ADDED_TO = {"train": ("report", "export-onnx"), "demo": ("report", "export-onnx")}


# Commands whose result is a whole folder, which their --force replaces (and train's
# --resume continues) only while it holds their own files and what ADDED_TO lets in.
WHOLE_FOLDER_WRITERS = ("train", "demo", "ensemble", *DATASET_WRITERS)


def refuse_whole_result(folder: Path, command: str, instead: str | None = None) -> None:
    """Refuse to write ``command``'s files into the folder of another command's whole
    result (a run, a phantom): ``predict --out RUN`` put its masks beside the run's
    files, and ``train --resume`` and ``--force`` then refused the run as holding
    predict's output, until the masks were deleted by hand. A subfolder is fine.
    ``instead`` says what to do, where the command has no output folder to choose."""
    if not Path(folder).is_dir():
        return
    for name, writer in sorted(writers(folder).items()):
        if _kept_from(writer, command):
            raise UsageError(folder, f"holds the output of 'bcseg {writer}' ({name}); the files of "
                             f"'bcseg {command}' there would keep '{writer}' from replacing or "
                             f"continuing it: " + (instead or f"choose another output folder (a new "
                                                   f"subfolder, such as {Path(folder) / command}, will do)"))
    # A folder of a run (run/predictions, run/checkpoints) is the run's as much as the
    # run's top folder: 'evaluate --out run/predictions' kept 'train --force' from
    # replacing the run; so is an nnU-Net dataset's imagesTr/, where nnU-Net reads every
    # file as a case. A phantom's images/ is left out for predict (and the margins and
    # report that follow it there): masks predicted into images/ are documented
    # (docs/safety.md), and recorded as predict's. Its masks/ and truth/ are not: 'split
    # --out data/truth/s.json' or 'evaluate --out data/truth/tumour' put their files
    # among the true masks, and 'phantom --force' then refused the dataset.
    # The folder as it is on the disk: 'lk', a link to run/predictions, was looked up by
    # the link's own path, found no run's record above it, and took evaluate's tables.
    inside, given = real_path(folder), list(Path(folder).parents)
    as_named = inside == Path(folder).absolute()  # no link on the way: show the user's path
    for level, above in enumerate(list(inside.parents)[:3]):
        if not (above / RECORD).is_file():
            continue
        prefix = inside.relative_to(above).as_posix() + "/"
        shown = given[level] if as_named and level < len(given) and str(given[level]) != "." \
            else above
        recorded = writers(above)
        prefixes = {prefix, *_same_folders(above, recorded, prefix, inside)}
        for name, writer in sorted(recorded.items()):
            if name.startswith(tuple(prefixes)) and _kept_from(writer, command) \
                    and not (writer == "phantom" and _beside_images(command, prefix)):
                raise UsageError(folder, f"is a folder of the output of 'bcseg {writer}' in {shown} "
                                 f"({name}); the files of 'bcseg {command}' there would keep "
                                 f"'{writer}' from replacing or continuing it: choose another "
                                 f"output folder (a new subfolder of "
                                 f"{shown}, such as {shown / command}, will do)")
        break  # the nearest record decides, as for the files in it


# The commands that may write into a phantom's images/: predict's masks beside the images.
BESIDE_IMAGES = ("predict", "margins", "report")


def _beside_images(command: str, prefix: str) -> bool:
    """Whether ``command`` may write into the folder ``prefix`` of a dataset (relative,
    ending in '/'): into its images/ (see :data:`BESIDE_IMAGES`), never into its masks/."""
    return command in BESIDE_IMAGES and prefix.startswith("images/")


def _same_folders(above: Path, names: Iterable[str], prefix: str, inside: Path) -> set[str]:
    """The folders of the recorded ``names`` (relative to ``above``, at the depth of
    ``prefix``) that are the folder ``inside`` on the disk, under another name: where letter
    case is ignored (macOS, Windows) 'run/Predictions' is the 'run/predictions' the record
    names, as is a second mount of it."""
    depth = prefix.count("/")
    folders = {"/".join(Path(name).parts[:depth]) + "/" for name in names
               if len(Path(name).parts) > depth}
    same = set()
    for folder in folders - {prefix}:
        try:
            if os.path.samefile(above / folder, inside):
                same.add(folder)
        except OSError:  # not there (any more): not the folder
            continue
    return same


def _kept_from(writer: str, command: str) -> bool:
    """Whether ``command``'s files in ``writer``'s whole result keep ``writer`` from
    replacing or continuing it."""
    return writer in WHOLE_FOLDER_WRITERS and writer != command and command not in ADDED_TO.get(writer, ())


def check_one_writer(folder: Path, command: str) -> None:
    """Refuse to replace ``folder`` when another command wrote it.

    ``--force`` replaces an earlier result of the same command: ``train --force``
    an earlier run, ``phantom --force`` an earlier phantom. A mistyped ``--out``
    naming a dataset that ``phantom`` wrote, or a trained run, is refused instead.
    """
    found = writers(folder)
    # A report or an ONNX export goes with the run it was made from, and is replaced
    # with it; in a folder holding no result of this command it is nobody's to replace.
    own = any(writer in (command, "bcseg") for writer in found.values())
    for name, writer in sorted(found.items()):
        if writer not in (command, "bcseg", *(ADDED_TO.get(command, ()) if own else ())):
            raise UsageError(folder, f"holds the output of 'bcseg {writer}' ({name}), not of "
                             f"{command}: {command} replaces or continues only its own earlier "
                             "result; choose another output folder")


def remove_owned(paths: Iterable[Path], by: Iterable[str] | None = None) -> list[Path]:
    """Delete those of ``paths`` that exist and bcseg wrote (with ``by``: one of those
    commands wrote; a name shared with another command's output is not enough);
    return them."""
    removed, known = [], {}
    commands = None if by is None else set(by)
    for path in paths:
        writer = writer_of(path, known) if path.is_file() else None
        if writer is not None and (commands is None or writer in commands):
            path.unlink()
            removed.append(path)
    return removed


# --------------------------------------------------------------------------- the lock

def _refuse_nested_writers(key: Path, shown: Path) -> None:
    """Refuse a folder inside one another live run is writing (a fold folder of a
    running k-fold run), or holding one (its fold folders, two levels down): each run
    locks only its own folder, so they would write into each other's unseen."""
    for above in key.parents:
        if above in _held or above.parent == above:
            continue
        for lock in (above.parent / f".{above.name}{LOCK_SUFFIX}", above / LOCK_SUFFIX):
            holder = folder_lock.live_holder(lock)
            if holder is not None:
                raise UsageError(shown, f"is inside {above}, which another bcseg run (process {holder}) "
                                 "is writing; wait for it to finish or choose another output folder")
    if key.is_dir():
        for lock in (*key.glob(f".*{LOCK_SUFFIX}"), *key.glob(f"*/.*{LOCK_SUFFIX}")):
            inner = lock.parent / lock.name[1:-len(LOCK_SUFFIX)]
            holder = None if real_path(inner) in _held else folder_lock.live_holder(lock)
            if holder is not None:
                raise UsageError(shown, f"holds {inner}, which another bcseg run (process {holder}) is "
                                 "writing; wait for it to finish or choose another output folder")


# --------------------------------------------------------------------------- claim

def _start(folder: Path, command: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    present = listing(folder, strict=False)
    record = _settle(folder, _load(folder), present)  # adopts what a killed run left
    record["open"] = {"pid": os.getpid(), "token": _TOKEN, "command": command,
                      "foreign": sorted(present - set(record["files"])),
                      "edited": sorted(_edited(folder, record)), "journal": True}
    write_text(folder / RECORD, json.dumps(record, indent=1) + "\n")
    # The killed run's journal goes only now that the record holding what it settled is
    # written: a kill before this leaves that run's record and journal as they were.
    journal.drop(folder)


def _finish(folder: Path, held: _Held | None = None, still_open: bool = False) -> None:
    """Settle the folder's record: what this claim wrote is its own. ``still_open``
    keeps the claim open, so that the next claim takes the folder for unfinished work."""
    if folder.is_dir():
        present = listing(folder, strict=False)
        record = _settle(folder, _load(folder), present, None if held is None else held.wrote)
        if held is not None:  # what this claim wrote is its own, whoever's name was there before
            for name in sorted(n for n in held.wrote.keys() & present if _as_written(folder, n, held.wrote)):
                record["files"][name] = held.command
                if not name.endswith("/"):  # a folder has no size and time to keep
                    record["stats"][name] = _fingerprint(folder / name)
            record["files"] = dict(sorted(record["files"].items()))
            record["stats"] = dict(sorted((k, v) for k, v in record["stats"].items() if v is not None))
        if still_open:  # its journal stays: the next claim settles the rest from it
            record["open"] = {"pid": os.getpid(), "token": _TOKEN, "command": held.command if held else "bcseg",
                              "foreign": sorted(present - set(record["files"])), "edited": [],
                              "journal": True}
        write_text(folder / RECORD, json.dumps(record, indent=1) + "\n")
        if not still_open:  # the record holds it all now
            journal.drop(folder)


@contextlib.contextmanager
def claim(folder: str | Path, command: str, *, replace: bool = False, inputs: Iterable = (),
          keep_on: tuple[type[BaseException], ...] = (), keep_if: Callable[[Path], bool] | None = None,
          new: bool = False, what: str = "a result", all_or_nothing: bool = False,
          open_on_failure: bool = False) -> Iterator[Path]:
    """Lock ``folder``, create it, record what ``command`` writes into it.

    Parameters
    ----------
    folder : str or Path
        The output folder.
    command : str
        Recorded beside every file written (``predict``, ``train``, ...).
    replace : bool
        Replace the folder's whole content (a ``--force`` of a command that owns the
        folder). Refused when it holds a file bcseg did not write, or an input.
        The old content is moved aside and put back if the block fails.
    inputs : iterable of paths
        The command's inputs, which ``replace`` must never remove.
    keep_on : tuple of exception types
        Failures after which the new, partial result is kept anyway (an interrupted
        training run, which ``--resume`` continues); the old one is then deleted.
    keep_if : callable, optional
        Called with the folder after such a failure: the new result is kept only when
        it returns True (a training run with a saved epoch). Otherwise the old result
        is put back: an interruption before the new one holds anything worth resuming
        must not cost the old one.
    new : bool
        The command makes a whole result in a folder that held none (checked first
        with :func:`require_new_folder`): without ``replace``, refuse it, under the
        lock, when it holds ``what`` by now. Another run may have finished there, or
        the user put files there, while this one worked before claiming it.
    all_or_nothing : bool
        When the block fails (an error, Ctrl-C, SIGTERM) and nothing was moved aside,
        delete what this claim wrote: a half-written result is never left looking like
        a finished one.
    open_on_failure : bool
        When the block fails and nothing was moved aside, keep what this claim wrote
        but leave its record open, as a killed run's is (:func:`unfinished_claim`): a
        command whose output is many files written one by one (``predict``), stopped
        part-way, leaves a folder that says it is unfinished, never one that looks like
        its whole result. Not when it wrote nothing into a folder whose record was closed.

    Raises
    ------
    UsageError
        Another run holds the folder; or ``replace`` would delete what is not bcseg's.
    """
    folder = Path(folder)
    if replace and folder.is_symlink():  # moving a link aside and back is not replacing a folder
        raise UsageError(folder, f"is a link to {os.readlink(folder)}; give the folder itself "
                         "as the output to replace it")
    key = real_path(folder)
    if key in _held:  # a command run by another inside its claim (train -> evaluate)
        with _nested(key):
            yield folder
        return
    # Not only --out: a folder a command names itself (export-nnunet's DatasetNNN_NAME, a
    # fold folder) may be a file of the user's, kept, and refused before the lock exists.
    _nearest_folder(folder)
    _refuse_nested_writers(key, folder)
    created = _first_missing(key)
    had_record = (key / RECORD).is_file()
    lock = folder_lock.hold(key, folder)
    try:
        _recover(key)
        _recover_inside(key)
        if replace:
            check_one_writer(folder, command)  # named as the user gave it
        elif new and key.is_dir():  # what require_new_folder saw may have changed since
            _refuse_a_result(folder, command, what, None)
        if key.is_dir():
            journal.check_free(key)
        unfinished_before = key.is_dir() and unfinished_claim(key) is not None  # a killed run's
        aside = _move_aside(key, inputs, folder, command) if replace else None
        _held[key] = _Held(command)
        try:
            _start(folder, command)
            for hook in CLAIM_HOOKS:
                hook()
            yield folder
        except BaseException as exc:
            held = _held.pop(key)
            keep = isinstance(exc, keep_on) and (keep_if is None or keep_if(key))
            with _signals_deferred():  # a second Ctrl-C must not cut the putting back short
                if all_or_nothing and aside is None and not keep:
                    _remove_written(key, held.wrote)
                # the record is written through the same hook as the results: not a result
                wrote_results = any(name not in (RECORD, JOURNAL) for name in held.wrote)
                if open_on_failure and aside is None and (wrote_results or unfinished_before):
                    restored = False  # kept, and recorded as unfinished
                    with contextlib.suppress(Exception):  # the failure itself is what to report
                        _finish(folder, held, still_open=True)
                else:
                    # When putting the old result back fails, _undo raises and the old result
                    # stays aside, where the next claim of the folder puts it back: never deleted.
                    restored = _undo(folder, aside, restore=not keep, held=held)
                    if not restored and aside is not None:
                        _drop_aside(aside)  # the new, partial result is kept (keep_on)
            # what the command line says: the old result is back (True), or the new kept
            # (not when a file put in meanwhile kept the old result aside: it is not back)
            exc.bcseg_old_result_back = restored and aside is not None and not aside.exists()
            raise
        # A Ctrl-C while the finished result is recorded would leave it looking unfinished
        # (and a forced train's next run would put the old run back over it): held until done.
        with _signals_deferred():
            held = _held.pop(key)
            _finish(folder, held)
            if aside is not None:
                _drop_aside(aside)
    finally:
        try:
            if not had_record:  # a claim that wrote nothing leaves no record in a folder of yours
                _drop_empty_record(key)
        finally:  # whatever failed above, the lock is never left behind
            folder_lock.release(lock)
        if created is not None:
            _remove_if_empty(key, created)


def _drop_aside(aside: Path) -> None:
    """Delete the old result a replacement moved aside, now replaced. It held only
    bcseg's files when moved (checked then); a file put into it since is the user's, so
    the folder is then kept, named in a warning, as a killed replacement's would be."""
    judged = files_now(aside)
    stray = foreign(aside)
    if stray:
        warnings.warn(f"{aside / stray[0]}: was put into the replaced result, which is kept "
                      f"as {aside}; move what you need out of it and delete it", stacklevel=4)
        return
    kept = delete_judged(aside, judged)
    if kept:
        warnings.warn(f"{aside / kept[0]}: was put into the replaced result while it was "
                      f"deleted; it is kept in {aside}", stacklevel=4)


def files_now(folder: Path) -> dict[str, tuple[int, int, int] | None]:
    """Every entry under ``folder`` but its folders (files, links, pipes), by relative
    name, with its identity now (:func:`_identity`): bcseg's records, locks and
    temporaries included. Taken *before* the folder is judged to hold only bcseg's
    files, it is what :func:`delete_judged` may delete."""
    folder = Path(folder)
    found = {}
    for root, dirs, files in os.walk(folder):  # links are entries, never followed
        base = Path(root)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            found[(base / name).relative_to(folder).as_posix()] = _identity(base / name)
    return found


def delete_judged(folder: Path, judged: dict) -> list[str]:
    """Delete ``folder``, judged to hold only bcseg's files, as they were in ``judged``
    (:func:`files_now`); keep anything else. A record, journal or lock that was not
    there when judged came with what the user put in (a result of theirs moved in), and
    stays with it.

    Not ``shutil.rmtree``, which deletes whatever it finds: a file the user saved into
    the folder, or over one of its files, between the judgement and the deletion would
    go with it. Here such a file (a name not judged, or another inode, size or time)
    stays, with the folders that hold it. Returns what was kept (none: the folder is gone).
    """
    folder = Path(folder)
    # By the folders' descriptors, as shutil.rmtree does: a folder (``folder`` itself
    # included) moved away and replaced by a link meanwhile is never walked through.
    for root, dirs, files, fd in os.fwalk(folder, topdown=False, follow_symlinks=False):
        base = Path(root)
        for name in files + dirs:  # a link to a folder is among dirs: deleted, not followed
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if name in dirs and not stat.S_ISLNK(info.st_mode):
                continue
            relative = (base / name).relative_to(folder).as_posix()
            if judged.get(relative, False) == (info.st_ino, info.st_size, info.st_mtime_ns):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: it holds what is kept (or a link)
                os.rmdir(name, dir_fd=fd)
    if not folder.is_symlink():
        with contextlib.suppress(OSError):
            folder.rmdir()
    return sorted(listing(folder, strict=False))


def remove_if_ours(folder: Path) -> list[str]:
    """Delete ``folder`` if it holds only what bcseg wrote; return what was kept (the
    first of the user's files, when it holds any: then nothing is deleted)."""
    judged = files_now(folder)
    stray = foreign(folder)
    return stray[:1] if stray else delete_judged(folder, judged)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them as they came: for
    the few steps that record or put back a result, which a signal must not cut in half.
    (Python runs signal handlers in the main thread only, so elsewhere there is nothing
    to hold; blocking the signal would not do, since another thread may take it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.signal(number, lambda got, frame: caught.append(got))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])  # to the handler that was there: Ctrl-C as ever


@contextlib.contextmanager
def _nested(key: Path) -> Iterator[None]:
    """A claim inside a claim of the same folder: count it, hold no second lock."""
    _held[key].depth += 1
    try:
        yield
    finally:
        _held[key].depth -= 1


def _undo(folder: Path, aside: Path | None, restore: bool, held: _Held) -> bool:
    """After a failed block: put the old result back (True), or settle the record of
    the new, partial one (False) where there is nothing to restore or it is kept.

    A file that someone else put into the folder while the block ran is not deleted to
    put the old result back: the old result then stays aside (``.NAME.bcseg-old-PID``),
    and the next claim of the folder names both (True: it is kept, not deleted)."""
    judged = files_now(folder) if aside is not None and restore else {}
    if aside is not None and restore and _added_meanwhile(folder, held.wrote):
        with contextlib.suppress(Exception):  # still open: the replacement did not finish
            _finish(folder, held, still_open=True)
        return True
    if aside is not None and restore:
        # Not settled first: a kill during this leaves the record open, so the next
        # claim puts the old result back rather than keep this one. A file put in as
        # this deletes is kept, and so is the old result, aside: the next claim names both.
        if not delete_judged(folder, judged):
            os.replace(aside, folder)  # the old result, as it was
        return True
    with contextlib.suppress(Exception):  # the failure itself is what to report
        _finish(folder, held)
    return False


def _added_meanwhile(folder: Path, wrote: dict) -> bool:
    """Whether ``folder`` holds a file that neither this claim nor bcseg before it wrote
    (a file put in place of one this claim wrote included)."""
    if not folder.is_dir():
        return False
    before = set(_load(folder)["files"]) - set(wrote)
    return any(not name.endswith("/") and name not in before and not _as_written(folder, name, wrote)
               for name in listing(folder, strict=False))


def _remove_written(folder: Path, wrote: dict) -> None:
    """Delete the files a failed claim wrote (relative names), and the folders it made
    for them that are empty now; nothing else: a file the user put in place of one it
    wrote is kept (see :func:`_identity`)."""
    for name in sorted(wrote, key=lambda n: n.count("/"), reverse=True):
        path = folder / name
        if not _as_written(folder, name, wrote):
            continue
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == folder or folder not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty: someone else's files are in it too
                break


def _drop_empty_record(folder: Path) -> None:
    record = _load(folder)
    if not record["files"] and "open" not in record:
        (folder / RECORD).unlink(missing_ok=True)
        journal.drop(folder)


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _remove_if_empty(folder: Path, created: Path) -> None:
    """Remove the folders a claim created when nothing was written into them."""
    if folder.is_dir() and not listing(folder, strict=False):
        (folder / RECORD).unlink(missing_ok=True)
        journal.drop(folder)
    for path in (folder, *folder.parents):
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): nothing more to tidy
            return
        if path == created:
            return


def require_new_folder(folder: Path, force: bool, command: str, what: str = "a result",
                       other_way: str | None = None) -> bool:
    """Refuse an output folder that holds something, unless ``force`` may replace it.

    Without ``force``, what ``force`` would refuse too (a file of the user's, another
    command's result) is named first: suggesting ``force`` for it only led to a second
    refusal. ``other_way`` is another way out that works (``pass resume=True to
    continue it``), offered whether or not ``force`` would. With ``force``, what the
    replacement would refuse is refused now, before the command's work. Returns whether
    ``force`` replaces something (the claim's ``replace``).
    """
    folder = Path(folder)
    if folder.is_symlink():  # a link to an empty folder is fine; --force would not help else
        if not folder.is_dir() or _only_a_fresh_record(folder):
            return False
        raise UsageError(folder, f"is a link to {os.readlink(folder)}; give the folder itself "
                         "as the output to replace it")
    settle(folder)  # a killed replacement's earlier result is put back first
    return _judge(folder, force, command, what, other_way)


def settle(folder: str | Path) -> None:
    """Put back, or drop, what a killed ``--force`` replacement left beside ``folder``
    (``.NAME.bcseg-old-PID``), as its next claim would, so that a command reads the
    result the folder really holds (``train --resume`` its config and checkpoints).
    A folder that another live run is writing is refused here, by name."""
    folder = Path(folder)
    if folder.is_symlink():
        return
    aside = _has_leftover(folder)
    key = real_path(folder)
    if (not folder.is_dir() and not aside) or key in _held:
        return
    lock = folder_lock.hold(key, folder)
    try:
        _recover(key)
    finally:
        folder_lock.release(lock)


def _leftovers_beside(folder: Path) -> Iterator[Path]:
    """What killed replacements of ``folder`` may have left beside it: the paths named like
    ``.NAME.bcseg-old-PID`` (:func:`_recover` judges which really are)."""
    return folder.parent.glob(f".{glob.escape(folder.name)}{ASIDE_MARK}*")


def _has_leftover(folder: Path) -> bool:
    return folder.parent.is_dir() and any(_leftovers_beside(folder))


def settle_before_reading(path: str | Path, levels: int = 3) -> None:
    """Settle what a killed ``--force`` replacement left of the folders a command reads
    ``path`` from: ``path`` itself and the folders above it, ``levels`` in all (a model
    file in a fold of a k-fold run: the fold, the run, ...). ``predict --model RUN`` read
    the killed run's unfinished folder ("holds no model_best.keras") while the finished
    earlier run waited beside it under a hidden name. Only where such a leftover lies: a
    folder with none is not locked, so a model in a read-only folder still reads."""
    folder = Path(path).absolute()
    for _ in range(levels):
        if _has_leftover(folder):
            settle(folder)
        folder = folder.parent


def _judge(folder: Path, force: bool, command: str, what: str, other_way: str | None) -> bool:
    if not folder.is_dir() or _only_a_fresh_record(folder):
        return False
    if force:  # what the replacement will refuse, refused before the command's long work
        check_one_writer(folder, command)
        _check_only_ours(folder, command=command)
        _refuse_a_mount(folder, folder)
        return True
    _refuse_a_result(folder, command, what, other_way)
    return False


def _refuse_a_result(folder: Path, command: str, what: str, other_way: str | None) -> None:
    """Refuse ``folder`` as a new output unless it holds no result (see
    :func:`require_new_folder`): naming a file of the user's or another command's
    result first, then a killed run's unfinished output, then the result itself."""
    if _only_a_fresh_record(folder):
        return
    try:
        _check_only_ours(folder, command=command)
        check_one_writer(folder, command)
    except UsageError:
        if other_way is None:
            raise
        raise UsageError(folder, f"already holds {what}; {other_way}") from None
    ways = f"{other_way} or force=True to replace it" if other_way else "pass force=True to replace it"
    killed = _load(folder).get("open")
    if isinstance(killed, dict) and not _mine(killed):
        raise UsageError(folder, f"holds the unfinished output of a 'bcseg {killed.get('command', command)}' "
                         f"run that was killed (process {killed.get('pid', '?')}); {ways}")
    raise UsageError(folder, f"already holds {what}; {ways}")


def _only_a_fresh_record(folder: Path) -> bool:
    """Whether ``folder`` holds no result: nothing, or only the record a killed run
    opened before it wrote anything. Not when that run was a replacement, whose earlier
    result waits beside the folder to be put back (``.NAME.bcseg-old-PID``): that folder
    holds a result. A lock- or temporary-looking file of the user's counts as content,
    and so does anything else named like the record that is no plain file."""
    entries = [e for e in folder.iterdir() if not (e.name in (LOCK_SUFFIX, JOURNAL) and _ours(e))]
    if not entries:
        return True
    record = folder / RECORD
    if [e.name for e in entries] != [RECORD] or record.is_symlink() or not record.is_file():
        return False
    return not _has_leftover(folder)


def _check_only_ours(folder: Path, shown: Path | None = None, command: str | None = None) -> None:
    """Refuse ``folder`` when it holds anything bcseg did not write, naming it (under
    ``shown``, the folder as the user gave it). What other commands added to
    ``command``'s result in a subfolder (a report or an ONNX export of a fold of a
    k-fold run) goes with the result, as in :func:`check_one_writer`."""
    # A file rather than the folder holding it: "u/sub/notes.txt", not "u/sub/".
    unexpected = sorted(foreign(folder), key=lambda name: name.endswith("/"))
    shown = folder if shown is None else shown
    added = ADDED_TO.get(command, ()) if unexpected and any(
        writer in (command, "bcseg") for writer in writers(folder).values()) else ()
    for name in unexpected:
        writer = nested_writer(folder, name)
        if writer in added:
            continue
        # The folder may lie inside another command's result (phantom run/predictions
        # --force), whose record above lists the file: it was written by bcseg, by that one.
        writer = writer or writer_above(folder.absolute() / name.rstrip("/"))
        if writer is not None:  # another command's result inside (an evaluation of the run)
            raise UsageError(shown / name, f"is the output of 'bcseg {writer}', which "
                             "force=True will not delete; move it away or choose another output folder")
        raise UsageError(shown / name, "was not written by bcseg, or was changed after "
                         "it was, so force=True will not "
                         "delete it; move it away or choose another output folder")


def _move_aside(folder: Path, inputs: Iterable, shown: Path, command: str) -> Path | None:
    """Check that ``folder`` holds only bcseg's outputs and no input; move it aside.
    Messages name it as ``shown``, the folder as the user gave it."""
    # Nothing to move: an empty folder, or one holding only this claim's lock (inside it
    # where its parent may not be written, which also rules out moving it aside).
    if not folder.exists() or not any(e for e in folder.iterdir() if not (e.name == LOCK_SUFFIX and _ours(e))):
        return None
    check_not_inputs(shown, inputs)
    # By the folder itself too: named through another path to it (a bind mount of a
    # folder above), the current folder was moved aside and deleted from under the user.
    here = (Path.cwd(), *Path.cwd().parents)
    if real_path(folder) in here or _identities([folder], {}) & _identities(here, {}):
        raise UsageError(shown, "is the current folder or holds it; run bcseg from elsewhere "
                         "to replace it")
    _check_only_ours(folder, shown, command)
    aside = folder.with_name(f".{folder.name}{ASIDE_MARK}{os.getpid()}")
    if aside.exists() or aside.is_symlink():  # not a leftover _recover could settle: not ours
        raise UsageError(aside, "is in the way of replacing the folder beside it and was not "
                         "left by bcseg; move it away")
    _refuse_a_mount(folder, shown)
    try:
        os.replace(folder, aside)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        raise _mount_refusal(shown) from None  # a bind mount that ismount() does not see
    return aside


def _refuse_a_mount(folder: Path, shown: Path) -> None:
    """Refuse to replace a mount point (a disk, or a container's volume, mounted at the
    folder): it cannot be moved aside, and the rename failed as 'OSError: [Errno 16]
    Device or resource busy', exit 1, after the command's work (a training run). Nor a
    folder whose parent may not be written, where it cannot be moved aside either: that
    failed as the folder's own 'cannot be read or written', after the data were read."""
    if os.path.ismount(folder):
        raise _mount_refusal(shown)
    parent = real_path(folder).parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(shown, f"cannot be replaced: bcseg moves the old result aside in {parent} "
                         "until the new one is complete, and that folder may not be written; fix "
                         "its permissions or choose another output folder")


def _mount_refusal(shown: Path) -> UsageError:
    return UsageError(shown, "is a mount point (a disk or volume is mounted there), which bcseg "
                      "cannot move aside to replace its content; choose a folder inside it as the output")


# --------------------------------------------------------------------------- after a kill

def remove_abandoned(folder: Path) -> bool:
    """Delete ``folder`` when it is a killed run's unfinished work, such as a staging
    folder that only the run itself would have moved into place: a claimed folder whose
    claim is still open by a process that has ended (or by an earlier process that had
    this one's id, as every run may in a container), holding nothing bcseg did not write.
    Anything else, a user's folder that merely has such a name included, is left.
    Returns whether it was deleted."""
    if folder.is_symlink() or not folder.is_dir() or not (folder / RECORD).is_file():
        return False
    try:
        lock = folder_lock.hold(folder, folder)  # a live run holds it: not abandoned
    except UsageError:
        return False
    try:
        open_claim = _load(folder).get("open")
        if not isinstance(open_claim, dict) or _mine(open_claim):
            return False
        pid = open_claim.get("pid")
        if pid != os.getpid() and process_alive(pid):
            return False
        try:  # what the user put there after the kill stays
            return not remove_if_ours(folder)
        except UsageError:  # a subfolder bcseg cannot read: what it holds is unknown
            return False
    finally:
        folder_lock.release(lock)


def _finished(folder: Path, pid: int) -> bool:
    """Whether the replacement by ``pid`` completed: the new record is there and settled.

    A missing folder or record, or a record still open by ``pid``, is a replacement
    killed before its new content was complete.
    """
    try:  # unreadable counts as unfinished: the old content is the one known complete
        record = read_json(folder / RECORD)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    claim = record.get("open") if isinstance(record, dict) else None
    return isinstance(record, dict) and not (isinstance(claim, dict) and str(claim.get("pid")) == str(pid))


def _recover(folder: Path) -> None:
    """Settle the ``.NAME.bcseg-old-PID`` folders a killed replacement left beside ``folder``.

    The caller holds ``folder``'s lock, so no live run is replacing it. The latest
    leftover first: when the killed run's new content is complete the leftover is
    deleted, otherwise the new content is deleted and the leftover put back; an older
    leftover is then weighed against what that restored.
    """
    leftovers = []
    for path in _leftovers_beside(folder):
        match = ASIDE.match(path.name)
        if not (match and match["name"] == folder.name and path.is_dir() and not path.is_symlink()):
            continue
        if not (path / RECORD).exists():
            # A replaced result whose deletion was killed after its files (the record among
            # them) and before its emptied folders: folders alone, stayed forever. Only
            # empty folders go (delete_judged with nothing judged deletes no file).
            if all(name.endswith("/") for name in listing(path, strict=False)):
                delete_judged(path, {})
            continue
        # Only what a replacement moved aside: a real folder holding bcseg's record and
        # nothing bcseg did not write; anything else that merely matches the name is left.
        # (An own-id leftover is a dead run's too: this process's replacement of the
        # folder is a nested claim, which never gets here.)
        if (path / RECORD).is_file():
            judged = files_now(path)
            if not foreign(path):
                leftovers.append((path.lstat().st_ctime, int(match["pid"]), path, judged))
    for _, pid, path, judged in sorted(leftovers, key=lambda leftover: leftover[:2], reverse=True):
        if _finished(folder, pid):
            kept = delete_judged(path, judged)
            if kept:
                warnings.warn(f"{path / kept[0]}: was put into the result a killed replacement "
                              f"left beside {folder.name}; it is kept in {path}", stacklevel=4)
            continue
        # The killed replacement's unfinished content, deleted to put the old result back:
        # only bcseg's. A file or link at the folder's name is the user's (bcseg makes
        # neither there), as is any file in it that bcseg did not write.
        if folder.is_symlink() or folder.is_file():
            raise UsageError(folder, f"is not the folder bcseg wrote; a killed replacement left "
                             f"the earlier result in {path.name}: move one away")
        in_the_way = remove_if_ours(folder) if folder.exists() else []
        if in_the_way:
            raise UsageError(folder / in_the_way[0], f"was not written by bcseg; a killed "
                             f"replacement left the earlier result in {path.name}: move one away")
        os.replace(path, folder)


def _recover_inside(folder: Path) -> None:
    """Settle leftovers of killed replacements of folders inside ``folder``, each under
    its own lock; one whose lock another run holds is being replaced now and is skipped."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        match = ASIDE.match(path.name)
        if not match or not path.is_dir():
            continue
        inner = folder / match["name"]
        if real_path(inner) in _held:  # being replaced by this process now
            continue
        try:
            lock = folder_lock.hold(inner, inner)
        except UsageError:
            continue
        try:
            _recover(inner)
        finally:
            folder_lock.release(lock)
