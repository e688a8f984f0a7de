"""The self-contained HTML report of a run or an evaluation.

:func:`build_report` writes ``report.html`` with the figures of
:mod:`bcseg.report.figures` (training curves, per-case metrics, examples), the
ceiling table and the per-case table, PNGs embedded as data URIs (one file to mail
or print). For cases with several channels (``us``, ``pa``, ...), each channel has
its own narrow figure, named, beside the example overlay. The figures' functions are importable from here too.

No TensorFlow here.
"""

from __future__ import annotations

import base64
import csv
import datetime
import fnmatch
import html
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from bcseg.data import io
from bcseg.data.channels import read_files
from bcseg.atomic import read_json, real_path, write_text
from bcseg.errors import BcsegError, DataError
from bcseg.measure.evaluate import (CEILING_COLUMNS, HUMAN_LEVEL_NOTE, OUTPUTS, REPORT_FIGURES,
                                    REPORT_PAGE, ceiling_table, human_level_lines)
from bcseg.measure.observers import union
from bcseg.report.figures import (HISTORY_FIGURES, HISTORY_NUMBERS, PRED_RGB, TRUTH_RGB, _CASE_LEVELS,  # noqa: F401
                                  _agreement_by_case, _float, _read_csv, _reference_order, choose_examples,
                                  plot_case_metrics, plot_channel_examples, plot_examples,
                                  plot_history)

__all__ = ["plot_history", "plot_case_metrics", "plot_examples", "choose_examples", "build_report",
           "plot_channel_examples", "TRUTH_RGB", "PRED_RGB"]


# --------------------------------------------------------------------------- report

_CSS = """
body { font-family: "Helvetica Neue", Arial, sans-serif; font-size: 11pt; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.08em; margin-top: 1.5em; }
p.meta { color: #666; font-size: 0.9em; margin-top: 0; }
.howto { background: #f6f8fa; border-left: 4px solid #0072B2; padding: 0.6em 1em; }
.verdict { background: #fff8e6; border-left: 4px solid #E69F00; padding: 0.6em 1em; margin-top: 1em; }
.note { background: #fff8e6; border-left: 4px solid #D55E00; padding: 0.6em 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #e3e3e3; text-align: left; }
thead th { border-bottom: 2px solid #999; background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.ceiling td { font-weight: bold; background: #eef3f8; border-top: 2px solid #999; }
table.wide { font-size: 0.8em; }
figure { margin: 1em 0; page-break-inside: avoid; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.88em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; }
.row figure { flex: 1 1 420px; }
.row.channels figure { flex: 0 1 220px; }
.row.channels figure:first-child { flex: 3 1 560px; }
footer { margin-top: 3em; color: #888; font-size: 0.85em; }
@media print { body { margin: 0; max-width: none; } h2 { page-break-after: avoid; }
               table { page-break-inside: auto; } tr { page-break-inside: avoid; } }
@page { margin: 15mm; }
"""

_HOW_TO_READ = (
    "Every number below is computed per specimen (a whole 3D stack) or per 2D image, and "
    "then summarised over cases: n counts cases, never slices, and the 95% confidence "
    "intervals come from resampling cases. The model is compared with each observer on "
    "their own and with their union, intersection and STAPLE consensus. The agreement of "
    "the two observers with each other (the last, shaded row of the table) is the human "
    "ceiling: a model whose Dice against one observer is close to the observers' Dice with "
    "each other is as good as a second observer. HD95 and ASSD are surface distances "
    "(lower is better); 'inf' counts cases where one of the two masks was empty. "
    "pixel_soft_score, the figure the reference study reported as 'Dice', is not a Dice "
    "coefficient and is shown only for comparison with that study.")


def _e(value) -> str:
    # a folder named in another encoding holds surrogates, which no UTF-8 page can: the
    # report failed (UnicodeEncodeError, exit 1) after the evaluation; shown as \udcfd
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


def _img(path: Path, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">{cap}</figure>'


def _table(headers: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[bool] | None = None,
           classes: Sequence[str] | None = None, wide: bool = False) -> str:
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{_e(classes[r])}"' if classes and classes[r] else ""
        cells = "".join(f'<td class="num">{_e(v)}</td>' if numeric[c] else f"<td>{_e(v)}</td>"
                        for c, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    attrs = ' class="wide"' if wide else ""
    return (f"<table{attrs}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _fmt(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


# A report's folder is a run, an evaluation or a folder of them: far fewer entries than
# this below it. Past it the folder is taken for what it is (a home folder, a disk, `/`),
# refused after seconds rather than walked for hours to say "nothing to report".
MOST_ENTRIES_BELOW = 200_000


def _find(root: Path, name: str) -> list[Path]:
    """Files called ``name`` (a glob pattern) in ``root`` and below, root's first. Hidden
    files and folders are skipped and not entered, links to folders not followed."""
    found, entries = [], 0
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        entries += len(subfolders) + len(files)
        if entries > MOST_ENTRIES_BELOW:
            raise DataError(root, f"holds over {MOST_ENTRIES_BELOW:,} files and folders below it: "
                            "not a run or evaluation folder; give the folder of the run or "
                            "evaluation to report")
        found += [Path(folder, f) for f in fnmatch.filter(files, name)
                  if not f.startswith(".") and Path(folder, f).is_file()]
    return sorted(found, key=lambda p: (len(p.relative_to(root).parts), str(p)))


def _ceiling_html(summary: Mapping) -> str:
    table = ceiling_table(summary)
    headers = [title for _, title in CEILING_COLUMNS]
    rows = [[row[key] for key, _ in CEILING_COLUMNS] for row in table]
    numeric = [key != "comparison" for key, _ in CEILING_COLUMNS]
    classes = ["ceiling" if row["is_ceiling"] else "" for row in table]
    return _table(headers, rows, numeric, classes)


def _per_case_html(eval_dir: Path) -> str:
    rows = [r for r in _read_csv(eval_dir / OUTPUTS["metrics"]) if r.get("level") in _CASE_LEVELS]
    refs = _reference_order(r["reference"] for r in rows)
    agree = _agreement_by_case(eval_dir / OUTPUTS["agreement"])
    cases = list(dict.fromkeys(r["case"] for r in rows))
    cell = {(r["case"], r["reference"]): r for r in rows}
    headers = ["case"] + [f"Dice {ref}" for ref in refs] + (["Dice inter-observer"] if agree else []) \
        + [f"HD95 {ref}" for ref in refs] + (["HD95 inter-observer"] if agree else [])
    body = []
    for case in cases:
        line = [case]
        for metric in ("dice", "hd95"):
            digits = 3 if metric == "dice" else 2
            line += [_fmt(_float(cell[(case, ref)][metric]), digits) if (case, ref) in cell else ""
                     for ref in refs]
            if agree:
                line.append(_fmt(agree[case][metric], digits) if case in agree else "")
        body.append(line)
    return _table(headers, body, [False] + [True] * (len(headers) - 1), wide=True)


def _example_pairs(eval_dir: Path, summary: Mapping, n: int, worst: int, seed: int):
    """Load the few cases the example figure needs; truth is the union of observers."""
    cases = summary.get("inputs", {}).get("cases", [])
    if not cases:
        return [], ""
    reference = "union" if any(len(c["observers"]) >= 2 for c in cases) else next(iter(cases[0]["observers"]))
    rows = [r for r in _read_csv(eval_dir / OUTPUTS["metrics"])
            if r.get("level") in _CASE_LEVELS and r.get("reference") == reference]
    by_dice = [r["case"] for r in sorted(rows, key=lambda r: _float(r["dice"]))]
    wanted = by_dice[:worst]
    rest = [c["id"] for c in cases if c["id"] not in wanted]
    rng = np.random.default_rng(seed)
    wanted += [rest[k] for k in sorted(rng.choice(len(rest), size=min(n, len(rest)), replace=False))]
    pairs, channels = [], {}
    for info in (c for c in cases if c["id"] in wanted):
        image, arrays = _case_channels(info)
        truth = union([io.read_mask(p, image.shape) for files in info["observers"].values() for p in files])
        pred = io.read_mask(info["prediction"], image.shape)
        pairs.append((info["id"], image, truth, pred))
        for name, array in arrays.items():
            channels.setdefault(name, {})[info["id"]] = array
    label = "union of observers" if reference == "union" else f"observer {reference}"
    return pairs, label, channels


def _case_channels(info: Mapping) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image shown in the overlay (the first channel), and every channel of a
    case with two or more (none for a case of one image)."""
    recorded = info.get("channels") or []
    if not recorded:
        return io.read_image(info["image"], mmap=True)[0], {}
    arrays, _ = read_files([(c["name"], Path(c["path"]), c["index"]) for c in recorded])
    named = {c["name"]: array for c, array in zip(recorded, arrays)}
    return arrays[0], (named if len(named) > 1 else {})


def _human_level_verdicts(evaluations: list[Path], root: Path) -> str:
    """The paired human-level verdicts of every evaluation, shown first in the report."""
    items = []
    for eval_dir in evaluations:
        summary = read_summary(eval_dir)
        where = "" if eval_dir == root else f" ({eval_dir.relative_to(root)})"
        items += [f"<li>model{_e(where)} {_e(text)}</li>" for text in human_level_lines(summary)]
    if not items:
        return ""
    return ('<div class="verdict"><b>Human level: does the model agree with each observer as well '
            f'as the other observer does?</b><ul>{"".join(items)}</ul>'
            f'<p class="note">{_e(HUMAN_LEVEL_NOTE)}</p></div>')


def _paired_html(summary: Mapping) -> str:
    comparisons = (summary.get("human_level") or {}).get("comparisons", [])
    headers = ["reference (A)", "other (B)", "metric", "n", "model vs A", "B vs A",
               "Δ mean", "Δ 95% CI", "verdict"]
    body = []
    for c in comparisons:
        delta, digits = c["delta"], 3 if c["metric"] == "dice" else 2
        ci = ("n too small" if math.isnan(_nan(delta.get("ci_low")))
              else f"{_fmt(delta['ci_low'], digits)} – {_fmt(delta['ci_high'], digits)}")
        # inf (one mask empty) or NaN (both empty: undefined), as paired_comparison leaves out
        left = f" ({c['n_left_out']} left out, a mask empty)" if c.get("n_left_out") else ""
        body.append([c["reference"], c["other"], f"{c['metric']} {c.get('unit') or ''}".strip(),
                     f"{delta['n_finite']}{left}", _fmt(_nan(c["model_mean"]), digits),
                     _fmt(_nan(c["human_mean"]), digits), _fmt(_nan(delta["mean"]), digits), ci,
                     c["verdict"].replace("_", " ")])
    return _table(headers, body, [False, False, False] + [True] * 5 + [False])


def _summary_html(eval_dir: Path, root: Path, summary: Mapping) -> list[str]:
    """The evaluation's heading, tables and notes from ``summary.json``: no figure."""
    where = "." if eval_dir == root else str(eval_dir.relative_to(root))
    parts = [f"<h2>Evaluation{'' if where == '.' else f' ({_e(where)})'}</h2>"]
    inputs = summary.get("inputs", {})
    parts.append(f"<p>{_e(summary.get('n_cases'))} cases ({_e(summary.get('level'))} level), "
                 f"observers: {_e(', '.join(summary.get('observers', [])))}; distances in "
                 f"{_e(summary.get('unit'))}. Predictions: {_e(inputs.get('pred_dir', '?'))}.</p>")
    if (summary.get("human_level") or {}).get("comparisons"):
        parts.append("<h3>Paired human-level test: model vs A against observer B vs A</h3>")
        parts.append(_paired_html(summary))
    parts.append("<h3>Model against each observer, and the observers against each other</h3>")
    parts.append(_ceiling_html(summary))
    parts.append("<p>Mean ± SD, median and 95% bootstrap CI of the mean over cases. "
                 "The shaded row is the inter-observer agreement: the human ceiling.</p>")
    soft = summary.get("pixel_soft_score")
    if soft:
        value = soft.get("value")
        parts.append(
            f'<p class="note"><b>pixel_soft_score = {_e(_fmt(value if value is not None else math.nan))}</b> '
            f"against the {_e(soft.get('reference'))} of the observers, beside the per-case Dice "
            f"against the same reference, <b>mean {_e(_fmt(_nan(soft.get('dice_mean'))))}</b>. "
            f"{_e(soft.get('note', ''))}</p>")
    return parts


def _evaluation_html(eval_dir: Path, root: Path, n: int, worst: int, seed: int) -> str:
    summary = read_summary(eval_dir)
    parts = _summary_html(eval_dir, root, summary)
    parts.append("<h3>Per-case distribution</h3>")
    parts.append(_img(plot_case_metrics(eval_dir / OUTPUTS["metrics"], eval_dir), "per-case Dice and HD95",
                      "One point per case. Grey: the observers against each other."))
    parts.append("<h3>Examples</h3>")
    parts.append(_examples_html(eval_dir, summary, n, worst, seed))
    parts.append("<h3>Per-case metrics</h3>")
    parts.append(_per_case_html(eval_dir))
    return "\n".join(parts)


def _examples_html(eval_dir: Path, summary: Mapping, n: int, worst: int, seed: int) -> str:
    """The example figure and, for multi-channel cases, one narrow figure per channel beside it."""
    try:
        pairs, label, channels = _example_pairs(eval_dir, summary, n, worst, seed)
        if not pairs:
            return "<p>No case files recorded; no examples drawn.</p>"
        path = plot_examples(pairs, eval_dir / "examples.png", n=n, seed=seed, worst=worst,
                             truth_label=label)
        overlay = _img(path, "example slices", f"{n} random slices with tumour, then the "
                       f"{worst} cases with the lowest Dice against the {label}.")
        if not channels:
            return overlay
        figures = [_img(plot_channel_examples(pairs, name, images, eval_dir / f"examples_{name}.png",
                                              n=n, seed=seed, worst=worst),
                        f"channel {name}", f"channel {name}: the same slices; outlines: blue "
                        f"{label}, orange prediction")
                   for name, images in channels.items()]
        return f'<div class="row channels">{overlay}{"".join(figures)}</div>'
    except (BcsegError, OSError, ValueError) as error:
        return f"<p>Examples not drawn: {_e(error)}</p>"


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _margins_html(files: list[Path]) -> str:
    rows = []
    for path in files:
        for row in _read_csv(path):
            rows.append({"file": path.name, **row})
    if not rows:
        return ""
    preferred = ["case", "distance_mm", "closest_face", "ink_on_tumour", "close_margin",
                 "tumour_volume_mm3", "warnings"]
    columns = [c for c in preferred if any(c in r for r in rows)] or list(rows[0])
    if "case" not in columns:
        columns = ["file"] + columns
    numeric = [c.endswith(("_mm", "_mm3")) for c in columns]
    return ("<h2>Surgical margins</h2><p>Closest distance from the tumour to the specimen "
            "surface, from the margins CSV files found.</p>"
            + _table(columns, [[r.get(c, "") for c in columns] for r in rows], numeric))


def build_report(run_or_eval_dir: str | Path, out: str | Path | None = None,
                 title: str = "bcseg segmentation report", n_examples: int = 4, worst: int = 2,
                 seed: int = 0) -> Path:
    """Write a self-contained ``report.html`` for a run or an evaluation folder.

    Looks in the folder and below for ``history.csv`` (training curves),
    evaluations (folders holding ``summary.json`` and ``metrics.csv`` from
    :func:`bcseg.measure.evaluate.evaluate`) and ``*_margins.csv`` files, redraws the
    figures (the PNGs are written beside their sources) and embeds them as data
    URIs, so the HTML has no external resources. Rebuilding replaces the report.

    Parameters
    ----------
    run_or_eval_dir : str or Path
        A run directory or an evaluation output folder.
    out : str or Path, optional
        The HTML file, or a folder to put ``report.html`` in; default
        ``run_or_eval_dir/report.html``.
    title : str
        The report's heading.
    n_examples, worst, seed : int
        Rows of the example figure (:func:`plot_examples`).

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    DataError
        The folder is missing or holds nothing to report.
    """
    root = Path(run_or_eval_dir)
    if not root.is_dir():
        raise DataError(root, "is not a folder")
    out = root / REPORT_PAGE if out is None else Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / REPORT_PAGE
    histories, evaluations, margins = report_sources(root)  # every table checked: nothing drawn yet
    bcseg_version = _bcseg_version()
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="meta">{_e(real_path(root))} · generated {_e(now)} · bcseg {_e(bcseg_version)}</p>',
             f'<div class="howto"><b>How to read this report.</b> {_e(_HOW_TO_READ)}</div>',
             _human_level_verdicts(evaluations, root)]
    parts += [part for part in (_training_html(h, root) for h in histories) if part]
    for eval_dir in evaluations:
        parts.append(_evaluation_html(eval_dir, root, n_examples, worst, seed))
    if margins:
        parts.append(_margins_html(margins))
    parts.append(f"<footer>Written by bcseg {_e(bcseg_version)}. Figures are also saved as PNG "
                 "files beside their data.</footer>")
    document = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                + "\n".join(parts) + "\n</body>\n</html>\n")
    return write_text(out, document)


def report_sources(root: Path, evaluating: Path | None = None) -> tuple[list[Path], list[Path], list[Path]]:
    """The training histories, evaluation folders and margins tables in ``root`` and below.

    A folder with none of them, or a table among them that the report cannot draw
    from, is a :class:`DataError`; ``bcseg report`` asks first, so that such a folder
    is refused before anything is written into it. ``evaluating`` is an evaluation
    folder about to be written (``bcseg evaluate`` asks before it writes): its own
    tables are not checked yet, and it counts as something to report.
    """
    odd = _tables_not_files(root)
    if odd:
        raise DataError(odd[0], f"{io.not_a_file(odd[0], 'a table bcseg wrote')}; the report reads it: "
                        "restore the file, or move this away")
    histories = _find(root, "history.csv")
    evaluations = [p.parent for p in _find(root, OUTPUTS["summary"])
                   if (p.parent / OUTPUTS["metrics"]).is_file()]
    margins = _find(root, "*_margins.csv")
    if not histories and not evaluations and not margins and evaluating is None:
        raise DataError(root, "nothing to report: no history.csv, evaluation (summary.json + "
                        "metrics.csv) or *_margins.csv found")
    # Every table the report reads is checked before anything is written: a damaged
    # one is one line naming it, not a crash after the figures were redrawn.
    fresh = real_path(evaluating) if evaluating is not None else None
    for eval_dir in evaluations:
        if real_path(eval_dir) == fresh:
            continue  # about to be written again: checked as the report is built
        summary = read_summary(eval_dir)
        check_summary_fields(eval_dir, summary)
        check_metrics_table(eval_dir / OUTPUTS["metrics"])
        check_agreement_table(eval_dir / OUTPUTS["agreement"])
        _check_current(eval_dir, summary)
    for history in histories:
        check_history_table(history)
    for table in margins:
        check_margins_table(table)
    return histories, evaluations, margins


def _tables_not_files(root: Path) -> list[Path]:
    """The tables the report reads that are there but no file: a folder or a broken link
    would be passed over without a word (the page rebuilt without that part), and a named
    pipe would block the read forever."""
    named = [p for name in ("history.csv", OUTPUTS["summary"], "*_margins.csv") for p in root.rglob(name)
             if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    beside = [p.parent / name for p in named if p.name == OUTPUTS["summary"]
              for name in (OUTPUTS["metrics"], OUTPUTS["agreement"])]
    return [p for p in named + beside if (p.exists() or p.is_symlink()) and io.not_a_file(p) is not None]


def _check_current(eval_dir: Path, summary: dict) -> None:
    """Refuse an evaluation whose predictions changed after it was written: the report
    would print the old numbers beside pictures drawn from the new masks."""
    from bcseg.measure.evaluate import find_predictions

    pred_dir = Path((summary.get("inputs") or {}).get("pred_dir") or "")
    if not pred_dir.is_dir():
        return  # gone: the examples figure says it cannot be drawn
    written = (eval_dir / OUTPUTS["metrics"]).stat().st_mtime_ns
    try:
        predictions = find_predictions(pred_dir)
    except DataError:
        return
    for files in predictions.values():
        for path in filter(None, files.values()):
            if path.stat().st_mtime_ns > written:
                raise DataError(path, f"changed after the evaluation in {eval_dir} was written; "
                                "evaluate again (with --force) so that the report's numbers and "
                                "pictures agree")


def report_files(root: Path) -> list[Path]:
    """The existing files that :func:`build_report` of ``root`` may replace.

    The page, the curves beside every ``history.csv`` and the figures beside every
    evaluation (and in ``root``, which ``bcseg evaluate`` is about to make one); a
    figure name bcseg uses (``examples_*.png``) counts even where no channel of
    that name will be drawn, so the check never depends on what is drawn.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    files = [root / REPORT_PAGE]
    for history in _find(root, "history.csv"):
        files += [history.parent / name for name in HISTORY_FIGURES]
    for folder in {root, *(p.parent for p in _find(root, OUTPUTS["summary"]))}:
        files += [f for pattern in REPORT_FIGURES for f in sorted(folder.glob(pattern))]
    return [f for f in files if f.exists() or f.is_symlink()]


def figure_folders(root: Path) -> list[Path]:
    """The folders below ``root`` where :func:`build_report` draws figures: beside every
    ``history.csv`` (curves) and every evaluation (``summary.json``)."""
    root = Path(root)
    found = _find(root, "history.csv") + _find(root, OUTPUTS["summary"])
    return sorted({path.parent for path in found} - {root})


# The commands whose files a report may replace: those that draw reports, and those whose
# files share the report's pattern examples_*.png alone (predict's quick look and the
# margins figure of a case named "examples"), never drawn by the report.
REPORT_WRITERS = ("train", "demo", "evaluate", "report", "bcseg", "predict", "margins")


def check_report_files(root: Path) -> None:
    """Refuse to build a report of ``root`` over a file bcseg did not write.

    Report files are bcseg's derived outputs and are rebuilt without ``--force``,
    but only where bcseg wrote them: a user's ``examples.png`` beside an evaluation
    is never replaced. Called before anything is written.
    """
    from bcseg.errors import UsageError
    from bcseg.outputs import owned, writer_above, writer_of

    known: dict = {}
    mine_below_root = None
    for path in report_files(root):
        # a fold's report is recorded in its k-fold run's record, the folder above
        writer = writer_of(path, known) or writer_above(path)
        if writer is not None:
            if writer not in REPORT_WRITERS:  # split writes any name: a splits file as report.html
                raise UsageError(path, f"is the output of 'bcseg {writer}', and the report would "
                                 "replace it; move it away (train and evaluate can also skip the "
                                 "report with --no-report)")
            continue
        if mine_below_root is None:  # a report of a folder above records its figures there
            mine_below_root = owned(root)
        if path.relative_to(root).as_posix() not in mine_below_root:
            raise UsageError(path, "was not written by bcseg, or was changed after it was, and the "
                             "report would replace it; move it away (train and evaluate can also skip "
                             "the report with --no-report)")


def check_metrics_table(path: Path) -> None:
    """Refuse an evaluation's ``metrics.csv`` that lacks a column, has a row cut short
    (or with cells beyond the header), or a metric that is no number: the report would
    fail half-way, after redrawing figures, or draw a table of blanks."""
    from bcseg.measure.evaluate import METRICS_CSV_COLUMNS

    _check_table(path, METRICS_CSV_COLUMNS, ("dice", "hd95"), "run 'bcseg evaluate' again to rewrite it")


def check_agreement_table(path: Path) -> None:
    """As :func:`check_metrics_table`, for the observers' ``agreement.csv`` (absent with
    one observer): its Dice and HD95 are the grey ceiling of the figure and the table."""
    from bcseg.measure.evaluate import AGREEMENT_CSV_COLUMNS

    if path.exists():
        _check_table(path, AGREEMENT_CSV_COLUMNS, ("dice", "hd95"),
                     "run 'bcseg evaluate' again to rewrite it")


def check_history_table(path: Path) -> None:
    """Refuse a ``history.csv`` that is not a training log: the curves would be drawn
    from blanks, or silently left out. Empty cells are fine (no validation, say)."""
    _check_table(path, ("epoch", "loss"), HISTORY_NUMBERS,
                 "it is the log 'bcseg train' writes; restore it, or move it away")


def check_margins_table(path: Path) -> None:
    """Refuse a ``*_margins.csv`` whose distances the report would print as they are."""
    _check_table(path, ("case", "distance_mm"), _MARGIN_NUMBERS,
                 "measure the margins again to rewrite it, or move it away")


_MARGIN_NUMBERS = ("distance_mm", "tumour_volume_mm3")  # the numbers the margins table shows


def _check_table(path: Path, columns: Sequence[str], numbers: Sequence[str], again: str) -> None:
    """Refuse a CSV table the report reads that lacks one of ``columns``, names a
    column twice, has a row cut short (or with cells beyond the header), or holds text
    that is no number in one of ``numbers`` ("nan", "inf" and empty cells are numbers
    missing or infinite, as bcseg writes them)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:  # csv keeps the last of the two and drops the other
                raise DataError(path, f"names column(s) {', '.join(twice)} twice; {again}")
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(path, f"lacks column(s) {', '.join(missing)}; {again}")
            for row in reader:
                if None in row or None in row.values():
                    raise DataError(path, f"line {reader.line_num} is cut short or has cells beyond "
                                    f"the header; {again}")
                for column in numbers:
                    text = (row.get(column) or "").strip()
                    if text and math.isnan(_float(text)) and text.lower() != "nan":
                        raise DataError(path, f"line {reader.line_num}: {column} {text!r} is not a "
                                        f"number; {again}")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot be read ({exc}); {again}") from None


def check_summary_fields(eval_dir: Path, summary: Mapping) -> None:
    """Refuse a ``summary.json`` that reads as JSON but lacks, or mistypes, a field the
    report shows: it failed with a bare KeyError or AttributeError after redrawing the
    figures. The text parts are built here and thrown away; nothing is drawn."""
    path = eval_dir / OUTPUTS["summary"]
    again = "run 'bcseg evaluate' again to rewrite it"
    missing = [key for key in _SUMMARY_FIELDS if key not in summary]
    if missing:
        raise DataError(path, f"lacks the field(s) {', '.join(missing)}; {again}")
    try:
        _summary_html(eval_dir, eval_dir, summary)
        human_level_lines(summary)
        _check_case_records(summary["inputs"])
    except KeyError as exc:
        raise DataError(path, f"lacks the field {exc.args[0]!r} where the report reads it; "
                        f"{again}") from None
    except (TypeError, AttributeError, ValueError, IndexError) as exc:
        raise DataError(path, f"holds a field of the wrong kind ({exc}); {again}") from None


_SUMMARY_FIELDS = ("n_cases", "level", "unit", "observers", "references", "inputs")  # what evaluate writes


def _check_case_records(inputs: Mapping) -> None:
    """The case records the example figure reads its files from (see :func:`_example_pairs`)."""
    cases = inputs.get("cases", [])
    if not isinstance(cases, list):
        raise TypeError("inputs.cases is not a list")
    for info in cases:
        if not isinstance(info, dict) or not isinstance(info["id"], str):
            raise TypeError("a record of inputs.cases is not an object with an id")
        observers = info["observers"]
        if not isinstance(observers, dict) or not observers or not all(
                isinstance(files, list) and all(isinstance(f, str) for f in files)
                for files in observers.values()):
            raise TypeError(f"case {info['id']}: observers is not a list of files per observer")
        paths = [info["prediction"]] + ([c["path"] for c in info["channels"]] if info.get("channels")
                                        else [info["image"]])
        if not all(isinstance(p, str) for p in paths):
            raise TypeError(f"case {info['id']}: a file is not a path")


def read_summary(eval_dir: Path) -> dict:
    """An evaluation's ``summary.json``; a DataError naming it when it cannot be read."""
    path = eval_dir / OUTPUTS["summary"]
    try:
        summary = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(path, f"cannot be read as JSON ({exc}); run 'bcseg evaluate' again "
                        "to rewrite it") from None
    if not isinstance(summary, dict):
        raise DataError(path, "holds no evaluation summary (a JSON object was expected); run "
                        "'bcseg evaluate' again to rewrite it")
    return summary


def _bcseg_version() -> str:
    try:
        from importlib.metadata import version
        return version("bcseg")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def _training_html(history: Path, root: Path) -> str:
    """The training curves of one ``history.csv``; empty when it holds no epoch."""
    pngs = plot_history(history, history.parent)
    if not pngs:
        return ""
    where = "" if history.parent == root else f" ({history.parent.relative_to(root)})"
    return (f"<h2>Training{_e(where)}</h2>\n" + '<div class="row">' + "".join(
        _img(p, p.stem, f"{p.stem}: training (blue) and validation (orange); "
             "the star marks the best validation epoch") for p in pngs) + "</div>")
