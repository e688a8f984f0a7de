"""Figures of a run or an evaluation, drawn without pyplot and saved as PNG.

Every figure is drawn on a :class:`matplotlib.figure.Figure` (the Agg renderer,
without pyplot and its global state) and written atomically as PNG, so the same
pictures that the report (:mod:`bcseg.report.html`) embeds are on disk:

- :func:`plot_history`: loss and Dice curves, training against validation,
  ``loss.png`` and ``dice.png``; cheap enough to call after every epoch.
- :func:`plot_case_metrics`: Dice and HD95 per reference over cases (box + points),
  with the observers' agreement beside them, ``case_metrics.png``.
- :func:`plot_examples`: image, ground truth and prediction side by side for random
  slices and the worst cases.
- :func:`plot_channel_examples`: one channel of multi-channel cases on the same
  rows, ``examples_<channel>.png``.

No TensorFlow here.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter
from scipy import ndimage

from bcseg.atomic import atomic_path
from bcseg.errors import DataError
from bcseg.measure.evaluate import INTER_OBSERVER, OUTPUTS
from bcseg.measure.metrics import as_mask, dice
from bcseg.measure.observers import METHODS, mean_over_pairs

__all__ = ["plot_history", "plot_case_metrics", "plot_examples", "choose_examples",
           "plot_channel_examples", "TRUTH_RGB", "PRED_RGB"]

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


HISTORY_FIGURES = ("loss.png", "dice.png")  # what plot_history writes beside history.csv
HISTORY_NUMBERS = ("epoch", "loss", "dice", "iou", "val_loss", "val_dice", "val_iou", "lr")


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
    for (metric, label, better), name in zip((("loss", "loss", "min"), ("dice", "Dice", "max")),
                                             HISTORY_FIGURES):
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
    return {case: {m: mean_over_pairs([_float(r.get(m)) for r in rows]) for m in ("dice", "hd95")}
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
    reference's name. Where some cases are in mm and others in voxels (no spacing),
    no HD95 is drawn, the panel's title says so.

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
    units = sorted({r["unit"] for r in rows if r.get("level") in _CASE_LEVELS and r.get("unit")})
    # Cases in mm beside cases in voxels (some without spacing): their HD95 are of no one
    # axis, and a box over both would draw 2 voxels as 2 mm; summary.json averages neither.
    mixed = len(units) > 1
    unit = " and ".join(units) if mixed else (units[0] if units else "")
    refs = list(values)
    fig = Figure(figsize=(max(6.0, 1.1 * len(refs) + 1.5), 7.0), dpi=100, layout="constrained")
    rng = np.random.default_rng(seed)
    for panel, (metric, label) in enumerate((("dice", "Dice"), ("hd95", f"HD95 ({unit})"))):
        ax = fig.add_subplot(2, 1, panel + 1)
        ticks = []
        for x, ref in enumerate(refs):
            v = np.asarray(values[ref][metric], dtype=float)
            if mixed and metric == "hd95":
                v = v[:0]
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
        # observer names are folder names, not math ('o$^{$' failed the report)
        ax.set_xticks(range(len(refs)), ticks, fontsize=8, parse_math=False)
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
        ax.set_title(f"{label} per case, model against each reference"
                     + (": not drawn, the cases are not in one unit" if mixed and metric == "hd95" else ""),
                     fontsize=9)
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
    return _outline(rgb, mask, colour)


def _outline(rgb: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    """``rgb`` with the mask's boundary pixels painted in ``colour`` (in place)."""
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


def _row_title(case_id: str, z: int | None, shape: tuple[int, ...], kind: str) -> str:
    where = case_id if z is None else f"{case_id}, slice {z} of 0-{shape[0] - 1}"
    return where + (" (worst Dice)" if kind == "worst" else "")


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
        where = _row_title(case_id, z, image.shape, kind)
        scored = f"prediction: Dice {dice(p, t):.2f}"
        if z is not None:
            scored += f" (whole case {case_dice[index]:.2f})"
        panels = ((grey, where), (_overlay(grey, t, TRUTH_RGB), truth_label),
                  (_overlay(grey, p, PRED_RGB), scored))
        for col, (picture, title) in enumerate(panels):
            ax = fig.add_subplot(len(chosen), 3, 3 * row + col + 1)
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            # a case id is a file name, not math: 'a$^{$' failed the figure, 's$1$' read 's1'
            ax.set_title(title, fontsize=9, parse_math=False)
            ax.set_axis_off()
    fig.suptitle(f"blue: {truth_label}    orange: prediction", fontsize=10, parse_math=False)
    return _save(fig, Path(out_path))


def plot_channel_examples(pairs: Sequence, channel: str, images: Mapping[str, np.ndarray],
                          out_path: str | Path, n: int = 4, seed: int = 0, worst: int = 2) -> Path:
    """One channel of a multi-channel case, on the rows of :func:`plot_examples`.

    A narrow column, one panel per row that :func:`plot_examples` draws for the same
    ``pairs``, ``n``, ``seed`` and ``worst``: the channel's slice on its own grey
    scale (1st-99th percentile), with the truth outlined blue and the prediction
    orange, so a PA or Doppler channel can be read beside the overlay of the image.

    Parameters
    ----------
    pairs : sequence of (case_id, image, truth, pred)
        As for :func:`plot_examples`.
    channel : str
        The channel's name, the figure's title.
    images : dict of str to ndarray
        Case id to this channel's array, of the case's shape; a case missing here
        gets a blank panel that says so.
    out_path : str or Path
        PNG file (written atomically).

    Raises
    ------
    ValueError
        A channel array whose shape is not its case's; as :func:`plot_examples`.
    """
    checked = [_check_pair(p) for p in pairs]
    chosen, _ = _choose(checked, n, seed, worst)
    fig = Figure(figsize=(3.2, 3.0 * len(chosen) + 0.5), dpi=100, layout="constrained")
    for row, (index, z, kind) in enumerate(chosen):
        case_id, image, truth, pred = checked[index]
        ax = fig.add_subplot(len(chosen), 1, row + 1)
        ax.set_title(_row_title(case_id, z, image.shape, kind), fontsize=8, parse_math=False)
        ax.set_axis_off()
        if case_id not in images:
            ax.text(0.5, 0.5, f"no channel {channel}", ha="center", va="center", fontsize=9)
            continue
        picture = np.asarray(images[case_id])
        if picture.shape != image.shape:
            raise ValueError(f"{case_id}: channel {channel} has shape {picture.shape}, "
                             f"the case {image.shape}")
        take = (lambda a: a) if z is None else (lambda a: a[z])
        rgb = np.repeat(_grey(take(picture))[..., None], 3, axis=2)
        rgb = _outline(_outline(rgb, take(truth), TRUTH_RGB), take(pred), PRED_RGB)
        ax.imshow(rgb, vmin=0, vmax=1, interpolation="nearest")
    fig.suptitle(f"channel {channel}", fontsize=10)
    return _save(fig, Path(out_path))
