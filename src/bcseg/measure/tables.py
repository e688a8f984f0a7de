"""Tables and lines of an evaluation for people: the ceiling table and the headline.

:func:`ceiling_table` sets the model against every reference beside the observers'
agreement (the human ceiling); :func:`headline_lines` and :func:`human_level_lines`
are the few lines a user reads first. They read :func:`bcseg.measure.evaluate.evaluate`'s
``summary.json`` and result. No TensorFlow here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from bcseg.measure.observers import INTER_OBSERVER, METHODS

__all__ = ["ceiling_table", "human_level_lines", "headline_lines", "ci_phrase", "CEILING_COLUMNS"]

CEILING_COLUMNS = (("comparison", "Comparison"), ("n", "n"), ("dice", "Dice mean ± SD"),
                   ("dice_median", "Dice median"), ("dice_ci", "Dice 95% CI"),
                   ("hd95", "HD95"), ("assd", "ASSD"))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value, digits: int) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _mean_sd(stats: Mapping, digits: int, unit: str = "") -> str:
    """``mean ± sd unit (k inf)``; the parts that are missing are left out."""
    text = _number(stats.get("mean"), digits)
    if not _missing(stats.get("sd")):
        text += f" ± {_number(stats['sd'], digits)}"
    if unit and not _missing(stats.get("mean")):
        text += f" {unit}"
    if stats.get("n_inf"):
        text += f" ({_inf_left_out(stats)})"
    return text


def _inf_left_out(stats: Mapping) -> str:
    """``mean of 2; 1 inf left out``: what a mean that skips infinite values stands on."""
    return f"mean of {stats['n_finite']}; {stats['n_inf']} inf left out"


def ci_phrase(stats: Mapping) -> str:
    """``95% CI 0.712-0.804``, or ``no CI: n too small`` (a :func:`summarise` dict)."""
    if stats.get("ci_note"):
        return f"no CI: {stats['ci_note']}"
    return f"95% CI {stats['ci_low']:.3f}-{stats['ci_high']:.3f}"


def _ci_text(stats: Mapping, digits: int = 3, sep: str = "–") -> str:
    """``low–high``, or why there is no CI (fewer than 5 finite values)."""
    if stats.get("ci_note"):
        return stats["ci_note"]
    return f"{_number(stats.get('ci_low'), digits)}{sep}{_number(stats.get('ci_high'), digits)}"


def ceiling_table(summary: Mapping) -> list[dict]:
    """The model against every reference, with the observers' agreement as the ceiling.

    Parameters
    ----------
    summary : dict
        The content of ``summary.json`` (or a path to it).

    Returns
    -------
    list of dict
        One row per comparison, in order: model vs each observer, vs union,
        intersection, STAPLE, then the observers against each other (the
        ceiling, ``is_ceiling`` True). The display columns,
        :data:`CEILING_COLUMNS`, are formatted strings: ``dice`` "mean ± SD",
        ``dice_median``, ``dice_ci`` "low–high" (or "n too small" with fewer
        than 5 cases), ``hd95`` and ``assd`` "mean ± SD unit", with "(mean of
        m; k inf left out)" when k cases had exactly one empty mask. The raw numbers are under ``stats``
        (``dice``, ``hd95``, ``assd`` -> the :func:`bcseg.measure.metrics.summarise`
        dict); ``reference`` and ``unit`` name the reference and the unit.
    """
    if isinstance(summary, (str, Path)):
        summary = json.loads(Path(summary).read_text(encoding="utf-8"))
    refs = summary.get("references", {})
    names = list(summary.get("observers", []))
    unit = summary.get("unit", "")
    order = [(n, f"model vs {n}") for n in names] + [
        (m, f"model vs {m}" if m != "staple" else "model vs STAPLE") for m in METHODS]
    if INTER_OBSERVER in refs:
        label = (f"{names[0]} vs {names[1]} (ceiling)" if len(names) == 2
                 else "observers vs each other, mean of pairs (ceiling)")
        order.append((INTER_OBSERVER, label))
    table = []
    for key, label in order:
        if key not in refs:
            continue
        m = refs[key]["metrics"]
        ds, hd, asd = m["dice"], m["hd95"], m["assd"]
        suffix = unit if unit in ("mm", "voxel") else ""
        row = {"comparison": label, "reference": key, "is_ceiling": key == INTER_OBSERVER,
               "n": refs[key]["n_cases"], "unit": unit,
               "dice": _mean_sd(ds, 3), "dice_median": _number(ds["median"], 3),
               "dice_ci": _ci_text(ds),
               "hd95": _mean_sd(hd, 2, suffix), "assd": _mean_sd(asd, 2, suffix)}
        row["stats"] = {"dice": dict(ds), "hd95": dict(hd), "assd": dict(asd)}
        table.append(row)
    return table


def human_level_lines(summary: Mapping) -> list[str]:
    """The paired human-level verdicts of ``summary.json``, Dice first, then HD95."""
    comparisons = (summary.get("human_level") or {}).get("comparisons", [])
    return [c["text"] for c in sorted(comparisons, key=lambda c: c["metric"] != "dice")]


def headline_lines(result: Mapping) -> list[str]:
    """The few numbers a user reads first, from :func:`evaluate`'s result."""
    head = result.get("headline") if result else None
    if not head:
        return []
    low, high = head["dice_ci"]
    ci = ci_phrase({"ci_low": low, "ci_high": high, "ci_note": head.get("dice_ci_note")})
    lines = [f"human level: model {text}" for text in result.get("human_level", [])]
    lines += [f"test Dice vs {head['reference']}: {head['dice_mean']:.3f} "
              f"({ci}) per case over {result['n_cases']} case(s)"]
    hd95 = head.get("hd95")
    if hd95 and hd95.get("n_finite"):
        left_out = f" ({_inf_left_out(hd95)})" if hd95.get("n_inf") else ""
        lines.append(f"test HD95 vs {head['reference']}: {hd95['mean']:.2f} {head.get('unit', '')}"
                     f"{left_out}".replace("  ", " "))
    elif hd95 and hd95.get("n_inf"):  # inf in every case (no tumour found): said, not left unsaid
        lines.append(f"test HD95 vs {head['reference']}: none finite ({_inf_left_out(hd95)})")
    if head.get("inter_observer_dice_mean") is not None:
        lines.append(f"inter-observer Dice (the ceiling): {head['inter_observer_dice_mean']:.3f}")
    lines.append(f"pixel_soft_score (the reference study's 'Dice'; not a Dice): "
                 f"{head['pixel_soft_score']:.4f}")
    if head.get("reference_protocol") is not None:
        lines.append(f"study-style score (--protocol reference: 24 augmented "
                     f"{head['reference_protocol_size']} px copies of every slice, per-row soft "
                     f"Dice; not a Dice): {head['reference_protocol']:.4f}")
    return lines
