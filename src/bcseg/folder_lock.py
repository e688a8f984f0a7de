"""The lock of an output folder: ``fcntl.flock`` on ``.<folder>.bcseg-lock`` beside it
(inside it when the parent cannot be written).

The kernel releases the lock when its process dies, so a lock left by a killed run is
taken over without guessing from process ids, and it stays valid while the folder
itself is moved aside and replaced. The file holds the holder's process id, which is
how a file of the user's with that name is told from a lock and left alone. The folder
itself, where it exists, is locked too, so that another path to it (a bind mount) meets
the same lock.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from bcseg.errors import UsageError

LOCK_SUFFIX = ".bcseg-lock"
_LOCK_TEXT = re.compile(rb"\d*\n?")  # what hold() writes: its process id


def is_a_lock(path: Path) -> bool:
    """Whether ``path`` holds what a lock holds (a process id), not the user's text."""
    try:
        return path.stat().st_size <= 32 and bool(_LOCK_TEXT.fullmatch(path.read_bytes()))
    except OSError:
        return False


def lock_path(folder: Path) -> Path:
    """Beside the folder; inside it where its parent cannot be written (``--out ~``),
    which also rules out moving it aside, so the lock cannot be moved with it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if os.access(folder.parent, os.W_OK):
        return folder.parent / f".{folder.name}{LOCK_SUFFIX}"
    folder.mkdir(exist_ok=True)
    return folder / LOCK_SUFFIX


def hold(folder: Path, shown: Path) -> tuple[int, Path]:
    """Hold the lock of ``folder`` (resolved); ``shown`` is the name given by the user."""
    try:
        path = lock_path(folder)
    except OSError as exc:
        raise _unwritable(shown, exc) from None
    while True:
        try:  # never through a link: the lock is truncated, and a link's target is not bcseg's
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if os.path.lexists(path):  # a link, a folder, ... of that name: the user's
                raise _not_a_lock(path) from None
            raise _unwritable(shown, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(shown, f"is being written by another bcseg run (process {holder}); "
                             "wait for it to finish or choose another output folder") from None
        held_text = os.pread(fd, 64, 0)
        if held_text and not _LOCK_TEXT.fullmatch(held_text):  # a file of the user's of that name
            os.close(fd)
            raise _not_a_lock(path)
        try:  # the file may have been unlinked by a run that finished meanwhile
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                _hold_folder(folder, fd, shown)
            except UsageError:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd, path
        os.close(fd)


# The folders themselves, locked beside their lock files (by the lock file's descriptor).
_FOLDERS: dict[int, int] = {}


def _hold_folder(folder: Path, fd: int, shown: Path) -> None:
    """Lock the folder itself too, where it exists. The lock file beside it is found by
    the folder's path, and another path to the same folder (a bind mount, a container's
    volume, which no resolving of links sees through) has another lock file beside it:
    two runs wrote the folder at once, each taking the other's open record for a dead
    run's. A lock on the folder's own inode is the same lock under every path."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # not there yet (made under this lock), or not readable: the file lock serves
        return
    try:
        fcntl.flock(folder_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(folder_fd)
        raise UsageError(shown, "is being written by another bcseg run (under another path to the "
                         "same folder, such as a second mount of it); wait for it to finish or "
                         "choose another output folder") from None
    except OSError:  # a file system without locks on folders: the file lock serves
        os.close(folder_fd)
        return
    _FOLDERS[fd] = folder_fd


def _unwritable(shown: Path, error: OSError) -> Exception:
    """Why the lock of an output cannot be made (no permission, a read-only file system,
    a folder under /proc), as one line naming the output, not bcseg's hidden lock file."""
    reason = (error.strerror or str(error)).lower()
    return UsageError(shown, f"cannot be written there ({reason}); choose another place for the outputs")


def _not_a_lock(path: Path) -> UsageError:
    return UsageError(path, "is where bcseg keeps its lock for the folder beside it, but it is not "
                      "bcseg's (it holds other text, or is no plain file); move it away")


def live_holder(path: Path) -> str | None:
    """The process id in ``path`` when it is a lock another live run holds, else None.
    Only tested (a shared lock, at once released): never created, never truncated."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return None
    finally:
        os.close(fd)  # closing releases a shared lock we took
    return None


def release(lock: tuple[int, Path]) -> None:
    """Remove the lock file (while still holding it: a waiter then sees a new inode) and
    let go. Only the file this lock is: one put at its name meanwhile is not bcseg's."""
    fd, path = lock
    try:
        if os.lstat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except FileNotFoundError:
        pass
    finally:
        folder_fd = _FOLDERS.pop(fd, None)
        if folder_fd is not None:
            os.close(folder_fd)
        os.close(fd)
