"""Cases compared by the content of their files (SHA-256): one image in two groups,
which can land in both training and test, and cases whose files changed since a run
recorded them.

No TensorFlow here.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from bcseg.atomic import file_sha256, real_path
from bcseg.data.cases import Case
from bcseg.errors import DataError


def same_content(a: Path, b: Path) -> bool:
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
