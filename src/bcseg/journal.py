"""The journal of an open claim: each file it writes, with the file's identity, one line
per file, appended as the claim writes (``.bcseg-outputs.journal`` in the folder).

A run killed outright (SIGKILL) cannot settle its record; what it wrote is then known
from this journal, not guessed from times, and only those files still as the run left
them are adopted by the next claim (see :mod:`bcseg.outputs`). A file of the user's that
merely has the journal's name is never read as one, appended to or deleted.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from bcseg.errors import UsageError

JOURNAL = ".bcseg-outputs.journal"


def append(folder: Path, name: str, identity) -> None:
    """One line of the journal: appended, so a kill cuts at most the line being written.
    Never through a link, and never into anything but a plain file (a pipe would block)."""
    line = (json.dumps([name, identity]) + "\n").encode("utf-8")
    handle = os.open(folder / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK, 0o644)
    try:
        if stat.S_ISREG(os.fstat(handle).st_mode):
            os.write(handle, line)
    finally:
        os.close(handle)


def _entry(line: str):
    """``(name, identity)`` of one journal line, or None when it is not one."""
    try:
        name, identity = json.loads(line)
    except (ValueError, TypeError, RecursionError):
        return None
    if isinstance(name, str) and isinstance(identity, list) and len(identity) == 3 \
            and all(isinstance(v, int) for v in identity):
        return name, tuple(identity)
    return None


def _entries(path: Path) -> list | None:
    """The entries of the journal at ``path``, or None when it is not one: a link, no
    plain file, or a line that is not an entry (a file of the user's that merely has the
    name is the user's, never hidden, appended to or deleted). The part after the last
    newline is left out: a line a kill cut short, or nothing."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        complete = path.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError):
        return None
    entries = [_entry(line) for line in complete]
    return entries if entries and None not in entries else None


def is_journal(path: Path) -> bool:
    return _entries(path) is not None


def read(folder: Path) -> dict:
    """What a claim wrote by its journal: name -> identity when written (the last line
    of a name wins); nothing when the file is not bcseg's journal."""
    return dict(_entries(folder / JOURNAL) or [])


def drop(folder: Path) -> None:
    if is_journal(folder / JOURNAL):
        (folder / JOURNAL).unlink(missing_ok=True)


def check_free(folder: Path) -> None:
    """Refuse a folder holding something named like bcseg's journal that is not one
    (a file of the user's, a link, a pipe): a claim would append to it or wait on it."""
    path = folder / JOURNAL
    if os.path.lexists(path) and not is_journal(path):
        raise UsageError(path, "is named like bcseg's journal of what it wrote but is not one; "
                         "move it away")
