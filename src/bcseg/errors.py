"""Errors that the command line turns into one line on stderr.

Every user-facing failure is a :class:`BcsegError` naming the file at fault (when
there is one) and what to do about it. The exit code says which kind of failure it
was, so scripts that drive bcseg over a whole study can tell them apart:

====  ==========================================
code  meaning
====  ==========================================
1     anything else (a bug, a full disk, ...)
2     usage: bad arguments, output already there
3     bad data: unreadable file, shape mismatch
4     model or configuration problem
====  ==========================================
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import unicodedata
from pathlib import Path


# The stops (Ctrl-C, SIGTERM) asked of the running command, by signal number, appended
# by the handlers that turn them into exceptions. An error that surfaces after one is
# the stop's doing, and the command line reports it as the interruption it is (exit
# 130): Python runs a handler wherever the main thread happens to be, and code there may
# turn the KeyboardInterrupt into an error of its own (a library's cleanup failing on
# what the interruption left half done; an input read half-way then looks damaged).
STOPS_ASKED: list[int] = []


def printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\n``, ``\\x1b``, ``\\u202e``).

    A file name may hold a newline, an escape sequence or a right-to-left override;
    printed raw, it would split a one-line error in two or rewrite the terminal. A byte
    of another encoding (a surrogate) is escaped too: printed, it failed where the output
    is strict UTF-8 (UnicodeEncodeError).
    """
    escaped = ("Cc", "Cf", "Zl", "Zp", "Cs")
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in escaped else c for c in text)


class BcsegError(Exception):
    """A failure the user can act on.

    Parameters
    ----------
    path : str or Path or None
        The file or folder at fault, or None when no single file is.
    problem : str
        What is wrong and, where it helps, what to do.
    """

    exit_code = 1

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem if path is None else _with_dangling_link(self.path, problem)
        super().__init__(str(self))

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.problem}" if self.path else self.problem)


def _with_dangling_link(path: str, problem: str) -> str:
    """``problem``, saying so where ``path`` is a symbolic link to nothing.

    Such a link does not exist to ``Path.exists()``, so every check reports it as "not
    found" or "not a folder", while the user sees the name in their folder: the link,
    and where it points, is what they must mend. Said here once for every error.
    """
    if "link" in problem or not os.path.islink(path) or os.path.exists(path):
        return problem
    try:
        target = os.readlink(path)
    except OSError:  # the link itself went meanwhile: nothing to add
        return problem
    try:
        os.path.realpath(path, strict=True)
    except OSError as exc:
        why = "which loops" if exc.errno == errno.ELOOP else "which does not exist"
    else:
        return problem  # it resolves after all: its target was made meanwhile
    head, sep, rest = problem.partition("; ")
    return f"{head} (it is a symbolic link to '{target}', {why}){sep}{rest}"


@contextlib.contextmanager
def naming(path: str | Path):
    """A :class:`ModelError` raised inside, that names no file, names ``path``: errors
    about a model's output come from arrays ("gives values from nan to nan"), and the
    one line must say which model."""
    try:
        yield
    except ModelError as exc:
        if exc.path is not None:
            raise
        raise ModelError(path, exc.problem) from None


class UsageError(BcsegError):
    """Bad command-line use, or an output that would overwrite a result."""

    exit_code = 2


class DataError(BcsegError):
    """An input image, mask, manifest or folder that cannot be used."""

    exit_code = 3


class ModelError(BcsegError):
    """A model file or configuration that cannot be used."""

    exit_code = 4


class ConfigError(ModelError):
    """A configuration file or key that is unknown or wrongly typed."""


class DiskFullError(BcsegError):
    """An output that could not be written: the disk or a size limit is full."""

    exit_code = 1


def not_a_file(path: Path, expected: str = "an image file") -> str | None:
    """Why ``path`` (which exists, or is a link) is no file to read, or None for a file.

    A broken or looping link, a folder, a named pipe (reading one waits forever), a
    socket or a device (a link to /dev/zero reads without end) is no image, nor any
    other input; ``expected`` says what should be there.
    """
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link, or one that loops; point it at {expected} or remove it"
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # reading it says what is wrong (permission denied, ...)
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"is {kind}, expected {expected}"
