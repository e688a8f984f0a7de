"""After segmenting: surgical margins of the stacks ``bcseg predict`` just wrote.

:func:`bcseg.infer.segment.predict_files` segments and checks every input first
(voxel spacing included, when margins are asked for); measuring belongs to the later
stage, :mod:`bcseg.measure.margins`, so ``bcseg predict --margins`` hands this step to
``predict_files`` as its ``after`` hook, run inside the output folder's claim.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Sequence

from bcseg import outputs
from bcseg.data import io
from bcseg.data.channels import ULTRASOUND, is_modality
from bcseg.data.cases import Case
from bcseg.errors import BcsegError
from bcseg.infer.segment import MARGINS_TABLE, case_spacing, input_file, output_name


def margins_step(out_dir: Path, margins: bool, spacing_mm: Sequence[float] | None, force: bool,
                 keep_going: bool):
    """The ``after`` hook of :func:`~bcseg.infer.segment.predict_files` for ``bcseg predict``."""
    return partial(_margins_table, out_dir=Path(out_dir), margins=margins, spacing_mm=spacing_mm,
                   force=force, keep_going=keep_going)


def _margin_channels(item: Path | Case):
    """What :func:`bcseg.measure.margins.margins_for_files` reads: a file, or a case's
    channels by name (the first, ``us`` where the case has it, finds the specimen)."""
    if not isinstance(item, Case) or not item.channels:  # a file, or a case of one file
        return input_file(item)
    # ``us`` first wherever the layout put it: channel folders without channels.json are
    # read in name order, pa before us, and the specimen was found in the PA signal.
    ordered = sorted(item.channels, key=lambda c: not is_modality(c.name, ULTRASOUND))
    return {c.name: c.path if c.index is None else (c.path, c.index) for c in ordered}


def _margins_table(files: list, records: list[dict], *, out_dir: Path, margins: bool, spacing_mm,
                   force: bool, keep_going: bool) -> None:
    """Margins of the stacks just segmented, merged by case into ``margins.csv``.

    Rows of other cases stay; a case segmented again loses its old, stale row even
    without ``margins``. Each case's margins files and row take the name of its mask.
    """
    from bcseg.measure.margins import margins_for_files, merge_margins_csv

    rows = []
    for item, record in zip(files, records) if margins else ():
        name = output_name(item)
        if record["mask"] is None:
            continue  # failed
        if record["status"] == "skipped" and _measured(out_dir, name):
            # measured by the run --resume continues, which stopped before it merged the
            # table: its row comes from its own table, or margins.csv lacked every case
            # the stopped run had measured (and a case stopped between its table and its
            # figure, holding no figure, is measured again)
            rows += _case_rows(out_dir / f"{name}_margins.csv")
            continue
        if io.open_volume(record["mask"])[0].ndim != 3:
            warnings.warn(f"{input_file(item)}: is a 2D image; no margins (they need a 3D stack)")
            continue
        try:
            rows.append(margins_for_files(_margin_channels(item), record["mask"], out_dir,
                                          spacing_mm=case_spacing(item, spacing_mm), force=force,
                                          case=name))
        except BcsegError as exc:
            if not keep_going:
                raise
            record["error"] = str(exc)  # the mask stands; its margins failed
    table = out_dir / MARGINS_TABLE
    # A table of yours is left alone, and so is another command's file of that name (a
    # splits file saved as margins.csv was rewritten as an empty table, without --force).
    if rows or (table.exists() and outputs.writers(out_dir).get(MARGINS_TABLE) == "predict"):
        if merge_margins_csv(rows, table, replace_cases=[output_name(item) for item, record
                                                         in zip(files, records) if record["status"] == "ok"]) is None:
            outputs.remove_owned([table])  # every row was stale: the table goes, as each case's files did


def _measured(out_dir: Path, name: str) -> bool:
    """Whether every margins file of case ``name`` is there (predict computes the specimen)."""
    return all((out_dir / f"{name}{suffix}").is_file()
               for suffix in ("_margins.csv", "_margins.png", "_specimen.tif"))


def _case_rows(table: Path) -> list[dict]:
    """The rows of a case's own ``<name>_margins.csv``, as merge_margins_csv takes them."""
    import csv

    from bcseg.errors import DataError

    try:
        with open(table, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(table, f"cannot be read to add its row to {MARGINS_TABLE} ({exc}); "
                        "segment the case again with --force") from None
