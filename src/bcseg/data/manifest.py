"""Manifest CSV files: reading a dataset from one, and writing one.

Columns ``id,image,mask_<observer>...,group`` and optionally ``class``; columns
``image_<channel>`` give named channels. Paths are relative to the manifest's folder.
:func:`read_csv_lines` reads any comma-separated file as spreadsheet programs save
it (BUSI's ``folds.csv`` too).

No TensorFlow here.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import warnings
from pathlib import Path

from bcseg.atomic import real_path
from bcseg.data import channels as channel_files
from bcseg.data import io
from bcseg.data.case_checks import (Problems, check_observer_name, check_unique_ids, fault,
                                    refuse_shared_masks, repeated_channel_file)
from bcseg.data.cases import Case, Channel
from bcseg.errors import DataError


def _manifest_path(value: str, base: Path, manifest: Path, line: int) -> Path:
    if not value:
        raise DataError(manifest, f"line {line}: empty path")
    if "\0" in value:  # no file name holds one: os.path.realpath raised ValueError (exit 1)
        raise DataError(manifest, f"line {line}: path {value!r} holds a NUL character, which "
                        "no file name can; save the manifest again as plain text")
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
            fault(problems, error)
            continue
        cases.append(case)
        lines.setdefault(case.id, number)  # a repeated id is the later row's problem
    cases = check_unique_ids(cases, path, problems)
    refuse_shared_masks(cases, path, lines, problems)
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
    repeated = repeated_channel_file(channels)
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
