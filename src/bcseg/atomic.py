"""Atomic output files: write to a temporary name, rename when complete.

A run that is killed, fails or fills the disk must never leave a file that looks
valid but is truncated. Every writer in bcseg goes through :func:`atomic_path`.
The temporary name keeps the real suffix, because tifffile, matplotlib and Keras
choose the format from it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterator

from bcseg.errors import DiskFullError, UsageError

PARTIAL_MARK = ".bcseg-partial-"
# Exactly what partial_name makes: hidden, the mark, a process id, then the real suffix
# (none, one like ".tif", or ".nii.gz"). The mark names bcseg: a user's
# "notes.partial-2.txt", "chapter.partial-draft.docx" or an editor's or another tool's
# ".thesis.partial-4242.docx" is not bcseg's and must never be treated as a leftover.
_PARTIAL_NAME = re.compile(r"^\..+\.bcseg-partial-(?P<pid>\d+)(\.nii\.gz|\.[^./]+)?$")
# Called with each file once it is complete (bcseg.outputs marks its claim alive), and
# with each folder made for one, once made.
WRITE_HOOKS: list[Callable[[Path], None]] = []
NAME_MAX = 255  # bytes in one file name on every common file system
FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "larger than the file system or the file size limit allows"}


def partial_name(path: Path) -> Path:
    """The temporary name used while ``path`` is being written.

    A legal name near the length limit would overflow it once the temporary mark
    is added, so such a stem is cut and a hash of the full name keeps it unique.
    """
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tail = f"{PARTIAL_MARK}{os.getpid()}{suffix}"
    if len(os.fsencode(f".{stem}{tail}")) > NAME_MAX:
        digest = "~" + hashlib.sha1(os.fsencode(path.name)).hexdigest()[:10]
        room = NAME_MAX - len(os.fsencode(f".{digest}{tail}"))
        stem = os.fsencode(stem)[:room].decode("utf-8", "ignore") + digest
    return path.with_name(f".{stem}{tail}")


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` on success.

    Parameters
    ----------
    path : str or Path
        The final file name.
    force : bool
        When False and ``path`` exists, raise :class:`UsageError` instead of
        overwriting it.

    Examples
    --------
    >>> with atomic_path(out / "metrics.csv") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("id,dice\\n")
    """
    path = Path(path)
    if not force and path.exists():
        raise UsageError(path, "already exists; pass force=True to overwrite it")
    # The folders made for the file go again if it is never written: left empty, they were
    # nobody's (bcseg records the folders holding its files), and --force refused them.
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in reversed(made):  # the outermost first
        for hook in WRITE_HOOKS:
            hook(folder)
    tmp = partial_name(path)
    written = False
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{tmp}: writer produced no file")
        with open(tmp, "rb+") as handle:  # flush to disk before the rename
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        written = True
        for hook in WRITE_HOOKS:
            hook(path)
    except OSError as exc:
        problem = full_disk_problem(exc)
        if problem:  # named after the file, not the hidden temporary one
            raise DiskFullError(path, f"cannot be written: {problem}; free some space "
                                "and run again") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
        if not written:
            for folder in made:  # the deepest first; one in use stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


def full_disk_problem(error: OSError) -> str | None:
    """What an OSError says about a full disk, or None when it is about something else.

    NumPy reports a short write (what a full disk gives part-way through a file)
    without an errno, as "N requested and M written".
    """
    if error.errno in FULL:
        return FULL[error.errno]
    short = re.fullmatch(r"(\d+) requested and (\d+) written", str(error))
    if error.errno is None and short:
        return (f"only {short[2]} of {short[1]} bytes could be written (the disk is full "
                "or a file size limit is reached)")
    return None


def write_text(path: str | Path, text: str, force: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def real_path(path: str | Path) -> Path:
    """``path`` absolute, with symbolic links and ``..`` resolved as far as they go.

    ``Path.resolve()`` raises RuntimeError at a link that loops (Python 3.11), an error
    no caller expects, so a looping link given as an input or output crashed the command
    instead of being named; ``os.path.realpath`` leaves such a link as it is, and the
    check that reads the path then says what it is.
    """
    return Path(os.path.realpath(path))


def parse_json(text: str):
    """The JSON value in ``text``, as every JSON file bcseg reads is read.

    A leading byte-order mark is dropped (Windows Notepad and Excel put one in front of
    UTF-8 text a user edits), a key given twice in one object is refused (Python's
    parser would keep the last silently, so an edited ``"threshold"`` could be the one
    not used), and JSON nested deeper than the parser recurses raises ValueError rather
    than RecursionError, which no caller catches.
    """
    try:
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_no_repeated_keys)
    except RecursionError:
        raise ValueError("its JSON is nested too deeply to be read") from None


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    # Counted in one pass: keys.count() per key made a record of 30000 outputs take
    # seconds to read (quadratic), and bcseg reads its records often.
    seen, repeated = set(), set()
    for key, _ in pairs:
        (repeated if key in seen else seen).add(key)
    repeated = sorted(repeated)
    if repeated:
        raise ValueError(f"key {', '.join(map(repr, repeated))} appears more than once in one object")
    return dict(pairs)


def read_json(path: str | Path):
    """The JSON value in ``path`` (see :func:`parse_json`), for the callers that catch
    ``(OSError, ValueError)``.

    A folder, named pipe or device there raises OSError without being opened (reading a
    pipe would wait forever), so a damaged file is one line naming it rather than a hang
    or an unexpected error.
    """
    path = Path(path)
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(f"{path.name} is not a regular file (a folder, a named pipe or a device)")
    return parse_json(path.read_text(encoding="utf-8"))


def partial_pid(name: str) -> int | None:
    """The process id in a temporary name made by :func:`partial_name`, else None."""
    match = _PARTIAL_NAME.match(name)
    return int(match["pid"]) if match else None


def process_alive(pid) -> bool:
    """Whether process ``pid`` runs; a value that is no process id at all counts as dead."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process, or too large a number to ask about: keep
    return True


def remove_partials(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed run left in ``folder``; return them.

    Only files named exactly as :func:`partial_name` names them, by a process that is
    no longer running (or by this one): a live run's temporaries are its own.
    """
    removed = []
    for leftover in Path(folder).rglob(f"*{PARTIAL_MARK}*"):
        pid = partial_pid(leftover.name)
        if pid is None or not leftover.is_file() or leftover.is_symlink():
            continue
        if pid != os.getpid() and process_alive(pid):
            continue
        leftover.unlink()
        removed.append(leftover)
    return removed


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (models and stacks can be large)."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
