"""Checks over a list of cases that every layout shares: ids that can name output
files and do not clash, a mask file used by one image only, one file per channel,
observer names; and :class:`Problems`, where ``check`` lists each file's problem
instead of stopping at the first.

No TensorFlow here.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from bcseg.atomic import real_path
from bcseg.data.cases import Case, Channel
from bcseg.data.content import same_content
from bcseg.errors import DataError


class Problems(list):
    """Problems of single files that discovery lists instead of raising, for ``check``:
    ``(path, message)`` pairs, as :class:`bcseg.data.check.CheckReport` holds them.

    ``check`` lists every problem of a dataset; raised, the first bad hyperstack (a
    damaged header, a wrong channel count) hid every other file's. ``set_aside`` holds
    the ids (in :func:`unicode_form`) of cases left out for such a problem, so that their
    masks are not listed again as masks of no image.
    """

    def __init__(self):
        super().__init__()
        self.set_aside: set[str] = set()

    def left_out(self, case_id: str) -> bool:
        """Whether the case ``case_id`` (or a file of that stem) was left out for a problem."""
        return unicode_form(case_id) in self.set_aside


def fault(problems: Problems | None, error: DataError, case_id: str | None = None) -> None:
    """One file's problem found while building the case list: raised where ``problems``
    is None (``train``, ``predict``, ``evaluate`` refuse at the first), else listed,
    and the caller goes on without the file (and the case ``case_id``, if given)."""
    if problems is None:
        raise error
    problems.append((error.path, error.problem))
    if case_id is not None:
        problems.set_aside.add(unicode_form(case_id))


def repeated_channel_file(channels: tuple[Channel, ...]) -> tuple[Path, str] | None:
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


def unicode_form(stem: str) -> str:
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
    if problem := not_utf8(name):  # its name heads columns of metrics.csv and agreement.csv
        raise DataError(where, f"names an observer whose name {problem}; rename the "
                        "observer's folder")


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


def not_utf8(name: str) -> str | None:
    """Why ``name``, a file's name, cannot be written into a table, or None: bytes of
    another encoding (Latin-1 from an old disk) are kept in it as surrogates, and a CSV or
    JSON of bcseg's is UTF-8 (writing one failed: UnicodeEncodeError, exit 1)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return ("is not UTF-8 text (its name holds bytes of another encoding), and bcseg "
                "writes it into its tables, which are UTF-8")
    return None


def id_problem(case_id: str, max_bytes: int | None = ID_MAX_BYTES) -> str | None:
    """Why ``case_id`` cannot name output files, or None. ``predict`` passes
    ``max_bytes=None``: it checks the full length of each output name instead."""
    if case_id in (".", "..") or any(c in case_id for c in "/\\") or "\0" in case_id:
        return "is not a plain file name (no '/', '\\', '.' or '..'): bcseg names output files after it"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return "holds a control character; bcseg names output files after it"
    if case_id.startswith("."):
        return "starts with '.', which would hide the output files named after it"
    if problem := not_utf8(case_id):
        return problem
    if max_bytes is not None and len(os.fsencode(case_id)) > max_bytes:
        return (f"is {len(os.fsencode(case_id))} bytes long, more than {max_bytes}: output files "
                "are named after it and a file name may have at most 255 bytes")
    return None


def check_unique_ids(cases: list[Case], where: Path, problems: Problems | None = None) -> list[Case]:
    """The cases, refusing an id that cannot name output files or that clashes with an
    earlier one (listed in ``problems`` where given, and the case left out)."""
    seen: dict[str, tuple[str, Path]] = {}
    kept = []
    for case in cases:
        problem = id_problem(case.id)
        if problem:
            fault(problems, DataError(where if where.is_file() else case.image,
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
            fault(problems, error, case.id)
            continue
        seen[key] = (case.id, case.image)
        kept.append(case)
    return kept


def refuse_shared_masks(cases: list[Case], where: Path, lines: dict[str, int] | None = None,
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
                    and same_content(case.image, first.image):
                continue  # one image in two cases (with its mask): duplicate_images judges them
            other = f"{first_role} of case '{first.id}'"
            if lines is None:
                fault(problems, DataError(path, f"is {role} of case '{case.id}', but also {other} "
                                           "(one file through a link); a mask belongs to the one "
                                           "image it was drawn on: give each its own file"))
                continue
            try:
                shown = path.relative_to(where.parent)
            except ValueError:
                shown = path
            fault(problems, DataError(where, f"line {lines[case.id]}: '{shown}' is {role} of case "
                                       f"'{case.id}', but also {other} (line {lines[first.id]}); a "
                                       "mask belongs to the one image it was drawn on: give each "
                                       "its own file"))
