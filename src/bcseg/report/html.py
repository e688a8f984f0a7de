"""Plots and the self-contained HTML report of a run or an evaluation.

Every figure is drawn on a :class:`matplotlib.figure.Figure` (the Agg renderer,
without pyplot and its global state) and written atomically as PNG, so the same
pictures that the report embeds are on disk:

- :func:`plot_history`: loss and Dice curves, training against validation,
  ``loss.png`` and ``dice.png``; cheap enough to call after every epoch.
- :func:`plot_case_metrics`: Dice and HD95 per reference over cases (box + points),
  with the observers' agreement beside them, ``case_metrics.png``.
- :func:`plot_examples`: image, ground truth and prediction side by side for random
  slices and the worst cases.
- :func:`build_report`: ``report.html`` with everything above, the ceiling table
  and the per-case table, PNGs embedded as data URIs (one file to mail or print).

No TensorFlow here.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter
from scipy import ndimage

from bcseg.data import io
from bcseg.atomic import atomic_path, write_text
from bcseg.errors import BcsegError, DataError
from bcseg.measure.evaluate import (CEILING_COLUMNS, HUMAN_LEVEL_NOTE, INTER_OBSERVER, OUTPUTS, ceiling_table,
                            human_level_lines)
from bcseg.measure.metrics import as_mask, dice
from bcseg.measure.observers import METHODS, union

__all__ = ["plot_history", "plot_case_metrics", "plot_examples", "choose_examples", "build_report",
           "TRUTH_RGB", "PRED_RGB"]

# Sky blue and vermilion (Okabe-Ito): told apart with every common colour blindness.
TRUTH_RGB = (0.34, 0.71, 0.91)
PRED_RGB = (0.84, 0.37, 0.0)
_TRAIN, _VAL, _CEILING = "#0072B2", "#D55E00", "#7f7f7f"
_FILL_ALPHA = 0.35
_CASE_LEVELS = ("specimen", "image")


# --------------------------------------------------------------------------- csv

def _read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file; rows cut short (a file being written) keep what they have."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [{k: v for k, v in row.items() if k is not None and v is not None}
                    for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read CSV ({exc})") from None


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# --------------------------------------------------------------------------- history

def _series(rows: list[dict], column: str) -> np.ndarray | None:
    if not any(column in row for row in rows):
        return None
    values = np.array([_float(row.get(column)) for row in rows])
    return values if np.isfinite(values).any() else None


def _curve_figure(epochs: np.ndarray, rows: list[dict], metric: str, label: str,
                  better: str) -> Figure | None:
    names = [(metric, "-", 1.8)] + ([("iou", "--", 1.0)] if metric == "dice" else [])
    curves = [(prefix + name, colour, style, width) for name, style, width in names
              for prefix, colour in (("", _TRAIN), ("val_", _VAL))]
    found = [(c, _series(rows, c[0])) for c in curves]
    found = [(c, values) for c, values in found if values is not None]
    if not found:
        return None
    fig = Figure(figsize=(6, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    marker = "o" if len(epochs) <= 40 else None
    for (column, colour, style, width), values in found:
        name = "validation" if column.startswith("val_") else "training"
        ax.plot(epochs, values, style, color=colour, lw=width, marker=marker, ms=3,
                label=f"{column.removeprefix('val_')} ({name})")
    val = _series(rows, f"val_{metric}")
    if val is not None:
        best = int(np.nanargmin(val) if better == "min" else np.nanargmax(val))
        ax.plot(epochs[best], val[best], "*", color="black", ms=11, zorder=5,
                label=f"best validation: {val[best]:.4g} (epoch {epochs[best]:g})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    if metric == "dice":
        ax.set_ylim(-0.02, 1.02)
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    lr = _series(rows, "lr") if metric == "loss" else None
    if lr is not None and np.nanmax(lr) > 0:
        twin = ax.twinx()
        twin.plot(epochs, lr, ":", color=_CEILING, lw=1)
        if np.nanmax(lr) / np.nanmin(lr[lr > 0]) > 20:
            twin.set_yscale("log")
            twin.yaxis.set_minor_formatter(NullFormatter())
        twin.yaxis.set_major_formatter(FormatStrFormatter("%.1e"))
        twin.set_ylabel("learning rate", color=_CEILING, fontsize=8)
        twin.tick_params(axis="y", labelsize=7, colors=_CEILING)
    ax.set_title(f"{label}: training and validation", fontsize=10)
    return fig


def plot_history(history_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Loss and Dice curves, training against validation, as ``loss.png`` and ``dice.png``.

    Parameters
    ----------
    history_csv : str or Path
        Keras ``CSVLogger`` output: columns among ``epoch, loss, dice, iou,
        val_loss, val_dice, val_iou, lr``; any may be missing, cells may be empty.
    out_dir : str or Path
        Folder for the PNGs (written atomically, replacing earlier ones).

    Returns
    -------
    list of Path
        The PNGs written: none when the file has no data rows, only ``loss.png``
        when no Dice was logged. One row gives one point per curve.

    Raises
    ------
    DataError
        The file is missing or unreadable.
    """
    rows = _read_csv(history_csv)
    if not rows:
        return []
    epochs = _series(rows, "epoch")
    if epochs is None or not np.isfinite(epochs).all():
        epochs = np.arange(len(rows), dtype=float)
    written = []
    for metric, label, better, name in (("loss", "loss", "min", "loss.png"),
                                        ("dice", "Dice", "max", "dice.png")):
        fig = _curve_figure(epochs, rows, metric, label, better)
        if fig is not None:
            written.append(_save(fig, Path(out_dir) / name))
    return written


# --------------------------------------------------------------------------- per case

def _reference_order(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in names if n not in METHODS] + [m for m in METHODS if m in names]


def _agreement_by_case(agreement_csv: Path) -> dict[str, dict[str, float]]:
    """case -> Dice and HD95 of the observers against each other (mean over pairs)."""
    if not agreement_csv.is_file():
        return {}
    by_case: dict[str, list[dict]] = {}
    for row in _read_csv(agreement_csv):
        by_case.setdefault(row["case"], []).append(row)
    return {case: {m: float(np.mean([_float(r.get(m)) for r in rows])) for m in ("dice", "hd95")}
            for case, rows in by_case.items()}


def _case_values(metrics_csv: Path, agreement_csv: Path) -> dict[str, dict[str, list[float]]]:
    """reference -> metric -> per-case values (specimen or image level only)."""
    rows = [r for r in _read_csv(metrics_csv) if r.get("level") in _CASE_LEVELS]
    out: dict[str, dict[str, list[float]]] = {}
    for ref in _reference_order(r["reference"] for r in rows):
        chosen = [r for r in rows if r["reference"] == ref]
        out[ref] = {m: [_float(r.get(m)) for r in chosen] for m in ("dice", "hd95")}
    agree = _agreement_by_case(agreement_csv)
    if agree:
        out[INTER_OBSERVER] = {m: [v[m] for v in agree.values()] for m in ("dice", "hd95")}
    return out


def plot_case_metrics(metrics_csv: str | Path, out_dir: str | Path,
                      agreement_csv: str | Path | None = None, seed: int = 0) -> Path:
    """Box and strip plots of per-case Dice and HD95 for every reference.

    One box per reference, one point per case (specimen or image; slice rows are
    ignored), with the observers' agreement (``agreement.csv`` beside
    ``metrics_csv`` unless given) drawn in grey as the ceiling. Cases with an
    infinite HD95 (one mask empty) cannot be drawn; their count is under the
    reference's name.

    Returns
    -------
    Path
        ``out_dir/case_metrics.png``.
    """
    metrics_csv = Path(metrics_csv)
    agreement_csv = metrics_csv.with_name(OUTPUTS["agreement"]) if agreement_csv is None else Path(agreement_csv)
    values = _case_values(metrics_csv, agreement_csv)
    if not values:
        raise DataError(metrics_csv, "has no specimen- or image-level rows to plot")
    rows = _read_csv(metrics_csv)
    unit = next((r.get("unit") for r in rows if r.get("unit")), "")
    refs = list(values)
    fig = Figure(figsize=(max(6.0, 1.1 * len(refs) + 1.5), 7.0), dpi=100, layout="constrained")
    rng = np.random.default_rng(seed)
    for panel, (metric, label) in enumerate((("dice", "Dice"), ("hd95", f"HD95 ({unit})"))):
        ax = fig.add_subplot(2, 1, panel + 1)
        ticks = []
        for x, ref in enumerate(refs):
            v = np.asarray(values[ref][metric], dtype=float)
            finite = v[np.isfinite(v)]
            n_inf = int(np.isinf(v).sum())
            colour = _CEILING if ref == INTER_OBSERVER else _TRAIN
            if finite.size:
                box = ax.boxplot([finite], positions=[x], widths=0.55, showfliers=False,
                                 patch_artist=True, medianprops={"color": "black"})
                for patch in box["boxes"]:
                    patch.set(facecolor=colour, alpha=0.25, edgecolor=colour)
                ax.scatter(x + rng.uniform(-0.15, 0.15, finite.size), finite, s=20,
                           color=colour, edgecolor="white", linewidth=0.4, zorder=3)
            name = "observers" if ref == INTER_OBSERVER else ref
            ticks.append(name + (f"\n({n_inf} inf)" if n_inf else ""))
        ax.set_xticks(range(len(refs)), ticks, fontsize=8)
        ax.set_xlim(-0.6, len(refs) - 0.4)
        ax.set_ylabel(label)
        if metric == "dice":
            ax.set_ylim(-0.02, 1.02)
            ceiling = values.get(INTER_OBSERVER, {}).get("dice")
            if ceiling and np.isfinite(ceiling).any():
                level = float(np.nanmean(ceiling))
                ax.axhline(level, color=_CEILING, ls="--", lw=1)
                ax.text(len(refs) - 0.45, level, "mean inter-observer Dice", color=_CEILING,
                        fontsize=7, ha="right", va="bottom")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{label} per case, model against each reference", fontsize=9)
    return _save(fig, Path(out_dir) / "case_metrics.png")


# --------------------------------------------------------------------------- examples

def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=float)
    low, high = np.percentile(image, (1, 99))
    if high <= low:
        return np.zeros(image.shape) if high <= 0 else np.full(image.shape, 0.5)
    return np.clip((image - low) / (high - low), 0, 1)


def _overlay(grey: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    """RGB picture: the mask tinted in ``colour`` over the image, its outline in full colour."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colour = np.asarray(colour, dtype=float)
    rgb[mask] = (1 - _FILL_ALPHA) * rgb[mask] + _FILL_ALPHA * colour
    outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rgb[outline] = colour
    return rgb


def _check_pair(pair) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    try:
        case_id, image, truth, pred = pair
    except (TypeError, ValueError):
        raise ValueError("each pair must be (case_id, image, truth, pred)") from None
    image, truth, pred = np.asarray(image), as_mask(truth), as_mask(pred)
    if not image.shape == truth.shape == pred.shape or image.ndim not in (2, 3):
        raise ValueError(f"{case_id}: image {image.shape}, truth {truth.shape} and prediction "
                         f"{pred.shape} must share one 2D or 3D shape")
    return str(case_id), image, truth, pred


def _worst_slice(truth: np.ndarray, pred: np.ndarray) -> int | None:
    """The slice where prediction and truth disagree most (most tumour on ties)."""
    if truth.ndim == 2:
        return None
    wrong = (truth ^ pred).sum(axis=(1, 2))
    if wrong.max() > 0:
        return int(np.argmax(wrong))
    return int(np.argmax(truth.sum(axis=(1, 2))))


def _choose(checked: list, n: int, seed: int, worst: int) -> tuple[list, list[float]]:
    if n < 0 or worst < 0:
        raise ValueError(f"n and worst must be >= 0, not {n} and {worst}")
    if not checked:
        raise ValueError("no (case_id, image, truth, pred) pairs given")
    case_dice = [dice(pred, truth) for _, _, truth, pred in checked]
    worst_rows = [(int(i), _worst_slice(checked[i][2], checked[i][3]), "worst")
                  for i in np.argsort(case_dice, kind="stable")[:worst]]
    taken = {(i, z) for i, z, _ in worst_rows}
    pool = []
    for index, (_, image, truth, pred) in enumerate(checked):
        if image.ndim == 2:
            pool.append((index, None))
        else:
            pool += [(index, int(z)) for z in np.flatnonzero((truth | pred).any(axis=(1, 2)))]
    pool = [p for p in pool if p not in taken]
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False)) if pool else []
    chosen = [(*pool[k], "random") for k in picks] + worst_rows
    if not chosen:
        raise ValueError("no slice holds tumour in the truth or the prediction")
    return chosen, case_dice


def choose_examples(pairs: Sequence, n: int = 4, seed: int = 0, worst: int = 2) -> list[tuple]:
    """The rows :func:`plot_examples` draws: ``(case_id, slice or None, "random" | "worst")``.

    ``n`` random picks (seeded) among the 2D images and the stack slices holding
    tumour in the truth or the prediction, then the ``worst`` cases with the lowest
    Dice over the whole case, each at the slice where truth and prediction disagree
    most. A slice is never shown twice.
    """
    checked = [_check_pair(p) for p in pairs]
    chosen, _ = _choose(checked, n, seed, worst)
    return [(checked[i][0], z, kind) for i, z, kind in chosen]


def plot_examples(pairs: Sequence, out_path: str | Path, n: int = 4, seed: int = 0, worst: int = 2,
                  truth_label: str = "ground truth") -> Path:
    """Image, ground truth and prediction side by side, for random slices and the worst cases.

    Each row shows one 2D image or one slice of a stack: the image alone, the ground
    truth tinted blue over it, and the *prediction* tinted orange over it (the
    reference study's figure showed the ground truth where the prediction belonged).
    The rows are those of :func:`choose_examples`: ``n`` random slices with tumour in
    the truth or the prediction, then the ``worst`` cases by Dice.

    Parameters
    ----------
    pairs : sequence of (case_id, image, truth, pred)
        Arrays of one shape per case, ``(H, W)`` or ``(Z, H, W)``; masks are > 0.
    out_path : str or Path
        PNG file (written atomically).
    n, seed, worst : int
        Random rows, their seed, and rows for the lowest-Dice cases.
    truth_label : str
        What the truth is (e.g. "union of observers"), used in the titles.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        Shapes differ, no pairs, or nothing to show.
    """
    checked = [_check_pair(p) for p in pairs]
    chosen, case_dice = _choose(checked, n, seed, worst)
    fig = Figure(figsize=(9.0, 3.0 * len(chosen) + 0.5), dpi=100, layout="constrained")
    for row, (index, z, kind) in enumerate(chosen):
        case_id, image, truth, pred = checked[index]
        take = (lambda a: a) if z is None else (lambda a: a[z])
        grey, t, p = _grey(take(image)), take(truth), take(pred)
        where = case_id if z is None else f"{case_id}, slice {z} of 0-{image.shape[0] - 1}"
        if kind == "worst":
            where += " (worst Dice)"
        scored = f"prediction: Dice {dice(p, t):.2f}"
        if z is not None:
            scored += f" (whole case {case_dice[index]:.2f})"
        panels = ((grey, where), (_overlay(grey, t, TRUTH_RGB), truth_label),
                  (_overlay(grey, p, PRED_RGB), scored))
        for col, (picture, title) in enumerate(panels):
            ax = fig.add_subplot(len(chosen), 3, 3 * row + col + 1)
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    fig.suptitle(f"blue: {truth_label}    orange: prediction", fontsize=10)
    return _save(fig, Path(out_path))


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
    return html.escape(str(value), quote=True)


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


def _find(root: Path, name: str) -> list[Path]:
    """Files called ``name`` in ``root`` and below (hidden folders skipped), root's first."""
    found = [p for p in root.rglob(name)
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
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
    pairs = []
    for info in (c for c in cases if c["id"] in wanted):
        image, _ = io.read_image(info["image"], mmap=True)
        truth = union([io.read_mask(p, image.shape) for files in info["observers"].values() for p in files])
        pred = io.read_mask(info["prediction"], image.shape)
        pairs.append((info["id"], image, truth, pred))
    label = "union of observers" if reference == "union" else f"observer {reference}"
    return pairs, label


def _human_level_verdicts(evaluations: list[Path], root: Path) -> str:
    """The paired human-level verdicts of every evaluation, shown first in the report."""
    items = []
    for eval_dir in evaluations:
        summary = json.loads((eval_dir / OUTPUTS["summary"]).read_text(encoding="utf-8"))
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
        left = f" ({c['n_left_out']} inf left out)" if c.get("n_left_out") else ""
        body.append([c["reference"], c["other"], f"{c['metric']} {c.get('unit') or ''}".strip(),
                     f"{delta['n_finite']}{left}", _fmt(_nan(c["model_mean"]), digits),
                     _fmt(_nan(c["human_mean"]), digits), _fmt(_nan(delta["mean"]), digits), ci,
                     c["verdict"].replace("_", " ")])
    return _table(headers, body, [False, False, False] + [True] * 5 + [False])


def _evaluation_html(eval_dir: Path, root: Path, n: int, worst: int, seed: int) -> str:
    summary = json.loads((eval_dir / OUTPUTS["summary"]).read_text(encoding="utf-8"))
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
    parts.append("<h3>Per-case distribution</h3>")
    parts.append(_img(plot_case_metrics(eval_dir / OUTPUTS["metrics"], eval_dir), "per-case Dice and HD95",
                      "One point per case. Grey: the observers against each other."))
    parts.append("<h3>Examples</h3>")
    try:
        pairs, label = _example_pairs(eval_dir, summary, n, worst, seed)
        if pairs:
            path = plot_examples(pairs, eval_dir / "examples.png", n=n, seed=seed, worst=worst,
                                 truth_label=label)
            parts.append(_img(path, "example slices", f"{n} random slices with tumour, then the "
                              f"{worst} cases with the lowest Dice against the {label}."))
        else:
            parts.append("<p>No case files recorded; no examples drawn.</p>")
    except (BcsegError, OSError, ValueError) as error:
        parts.append(f"<p>Examples not drawn: {_e(error)}</p>")
    parts.append("<h3>Per-case metrics</h3>")
    parts.append(_per_case_html(eval_dir))
    return "\n".join(parts)


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
    out = root / "report.html" if out is None else Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "report.html"
    histories = _find(root, "history.csv")
    evaluations = [p.parent for p in _find(root, OUTPUTS["summary"])
                   if (p.parent / OUTPUTS["metrics"]).is_file()]
    margins = _find(root, "*_margins.csv")
    if not histories and not evaluations and not margins:
        raise DataError(root, "nothing to report: no history.csv, evaluation (summary.json + "
                        "metrics.csv) or *_margins.csv found")
    try:
        from importlib.metadata import version
        bcseg_version = version("bcseg")
    except Exception:  # not installed (running from a source tree)
        bcseg_version = "unknown"
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="meta">{_e(root.resolve())} · generated {_e(now)} · bcseg {_e(bcseg_version)}</p>',
             f'<div class="howto"><b>How to read this report.</b> {_e(_HOW_TO_READ)}</div>',
             _human_level_verdicts(evaluations, root)]
    for history in histories:
        pngs = plot_history(history, history.parent)
        if pngs:
            where = "" if history.parent == root else f" ({history.parent.relative_to(root)})"
            parts.append(f"<h2>Training{_e(where)}</h2>")
            parts.append('<div class="row">' + "".join(
                _img(p, p.stem, f"{p.stem}: training (blue) and validation (orange); "
                     "the star marks the best validation epoch") for p in pngs) + "</div>")
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
