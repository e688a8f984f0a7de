"""Evaluate predicted masks per specimen against each observer and their consensus.

A reviewer trusts a segmentation result when it is reported per specimen (a 3D
stack, or a 2D image), never per slice, against each observer on their own and
against the observers' consensus, and beside the agreement of the observers with
each other, which is the ceiling a model can be expected to reach.
:func:`evaluate` reads the predictions ``PRED_DIR/<case id>_mask.tif`` that
``bcseg predict`` writes, compares each with the case's observer masks and writes:

``metrics.csv``
    One row per (case, reference) with ``level`` ``specimen`` (3D) or ``image``
    (2D), then, for stacks, one row per (case, reference, slice) with ``level``
    ``slice``. Columns: ``case, reference, level, slice`` and every key of
    :func:`bcseg.measure.metrics.case_metrics`.
``agreement.csv``
    The observers against each other (:func:`bcseg.measure.observers.agreement`), one row
    per case and pair: ``case, level, observer_a, observer_b`` and the metrics.
``summary.json``
    Per reference and metric, :func:`bcseg.measure.metrics.summarise` over *cases*
    (mean, SD, median, bootstrap CI of the mean), plus the reference study's
    ``pixel_soft_score`` beside the true per-case Dice. See :func:`evaluate`.

Floats in the CSV files are written in full precision; ``inf`` marks a distance
to a mask that is empty and ``nan`` an undefined value (both masks empty). No
TensorFlow here.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import math
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from bcseg.data import io
from bcseg.atomic import write_text
from bcseg.data.dataset import Case, discover, read_case_image, read_case_masks
from bcseg.errors import DataError, ModelError, UsageError
from bcseg.measure.metrics import REFERENCE_EPS, batch_mean, case_metrics, dice, slice_metrics, soft_scores, summarise
from bcseg.measure.observers import MARGINS, METHODS, agreement, consensus, paired_comparison, union
from bcseg.outputs import check_output_folder, check_replaceable, claim

__all__ = ["evaluate", "find_predictions", "ceiling_table", "OUTPUTS", "METRIC_COLUMNS",
           "INTER_OBSERVER", "PIXEL_SOFT_NOTE"]

OUTPUTS = {"metrics": "metrics.csv", "agreement": "agreement.csv", "summary": "summary.json"}
TARGETS = ("each", "union", "intersection", "staple")
INTER_OBSERVER = "inter-observer"
SOFT_REDUCTION = "row"  # the reference study's score as it executed (bcseg.measure.metrics.pixel_soft_score)
MASK_SUFFIX, PROB_SUFFIX = "_mask", "_prob"
MAX_SHOWN = 10

# The columns of case_metrics, in its order, so the CSV follows metrics.py.
_EMPTY = np.zeros((2, 2), bool)
METRIC_COLUMNS = tuple(case_metrics(_EMPTY, _EMPTY))
NUMERIC_METRICS = tuple(k for k, v in case_metrics(_EMPTY, _EMPTY).items()
                        if isinstance(v, float))
METRICS_CSV_COLUMNS = ("case", "reference", "level", "slice") + METRIC_COLUMNS
AGREEMENT_CSV_COLUMNS = ("case", "level", "observer_a", "observer_b") + METRIC_COLUMNS

HUMAN_LEVEL_NOTE = (
    "For each specimen and each observer A, the model's agreement with A is set against the "
    "other observer's agreement with A, and the mean paired difference (model minus observer, "
    "with a 95% bootstrap CI over specimens) is read against a margin: 0.05 Dice, 1 mm HD95. "
    "'As well as' means the CI stays on the good side of the margin; 'below' that it lies "
    "wholly beyond it; anything else needs more specimens.")
PIXEL_SOFT_NOTE = (
    "pixel_soft_score is the reference study's 'Dice' as it executed under tf.keras 2: a soft "
    "Dice (2*sum(y*p) + 1e-7) / (sum(y) + sum(p) + 1e-7) along each image row, averaged over "
    "every row of every case, against the union of the observers. Rows without tumour score 1 "
    "when the prediction there is exactly empty and about 0 otherwise. It is NOT the Dice "
    "coefficient; compare models with the per-specimen Dice reported beside it.")


# --------------------------------------------------------------------------- inputs

def find_predictions(pred_dir: str | Path) -> dict[str, dict[str, Path | None]]:
    """Prediction files in ``pred_dir``: case id -> ``{"mask": path, "prob": path or None}``.

    Masks are ``<case id>_mask.<suffix>`` and probability maps
    ``<case id>_prob.<suffix>``, with any suffix of :data:`bcseg.data.io.IMAGE_SUFFIXES`.
    Other files are ignored.

    Raises
    ------
    DataError
        ``pred_dir`` is not a folder, holds no ``*_mask`` file, holds one case's
        mask twice (two suffixes), or a probability map without its mask.
    """
    pred_dir = Path(pred_dir)
    files = io.image_files(pred_dir)
    found: dict[str, dict[str, list[Path]]] = {}
    for path in files:
        stem = io.file_stem(path)
        for kind, suffix in (("mask", MASK_SUFFIX), ("prob", PROB_SUFFIX)):
            if stem.endswith(suffix) and len(stem) > len(suffix):
                found.setdefault(stem[: -len(suffix)], {"mask": [], "prob": []})[kind].append(path)
    problems = []
    for case_id, kinds in sorted(found.items()):
        for kind in ("mask", "prob"):
            if len(kinds[kind]) > 1:
                problems.append(f"{case_id}: several {kind} files "
                                f"({', '.join(p.name for p in kinds[kind])}); keep one")
        if not kinds["mask"]:
            problems.append(f"{case_id}: probability map {kinds['prob'][0].name} has no "
                            f"{case_id}{MASK_SUFFIX} file beside it")
    _raise_all(pred_dir, problems)
    if not found:
        raise DataError(pred_dir, f"holds no predictions (files named <case id>{MASK_SUFFIX}.tif, "
                        "as written by 'bcseg predict')")
    return {case_id: {"mask": kinds["mask"][0], "prob": kinds["prob"][0] if kinds["prob"] else None}
            for case_id, kinds in sorted(found.items())}


def _raise_all(where, problems: list[str]) -> None:
    """One DataError listing every problem (the first MAX_SHOWN of them)."""
    if not problems:
        return
    shown = "; ".join(problems[:MAX_SHOWN])
    more = f"; and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    raise DataError(where, f"{len(problems)} problem(s) with the predictions: {shown}{more}")


def _shape(path: Path) -> tuple[int, ...]:
    return tuple(io.open_volume(path)[0].shape)


def _select_observers(cases: Sequence[Case], wanted) -> list[str] | None:
    """None for all observers, else the requested names (checked against the cases)."""
    if wanted is None or wanted == "all":
        return None
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    known = sorted({o for case in cases for o in case.masks})
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(None, f"unknown observer(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"the cases have {', '.join(map(repr, known)) or 'no observers'}")
    return names


def _match(pred_dir: Path, cases: Sequence[Case], predictions: Mapping, wanted: list[str] | None):
    """Pair predictions with cases; one DataError with every mismatch."""
    by_id = {case.id: case for case in cases}
    problems, matched = [], []
    for case_id, files in predictions.items():
        case = by_id.get(case_id)
        if case is None:
            problems.append(f"{files['mask'].name}: no case '{case_id}' in the dataset")
            continue
        names = case.observers if wanted is None else wanted
        missing = [n for n in names if n not in case.masks]
        if missing:
            problems.append(f"{case_id}: no mask from observer(s) {', '.join(missing)}")
            continue
        if not names:
            problems.append(f"{case_id}: has no observer masks to compare with")
            continue
        try:
            shape = _shape(case.image)
            for kind in ("mask", "prob"):
                other = None if files[kind] is None else _shape(files[kind])
                if other is not None and other != shape:
                    problems.append(f"{files[kind].name}: shape {other} differs from "
                                    f"the image {case.image.name} {shape}")
            for name in names:
                for path in case.masks[name]:
                    other = _shape(path)
                    if other != shape:
                        problems.append(f"{case_id}: observer {name}'s mask {path.name} has shape "
                                        f"{other}, the image {shape}")
        except DataError as error:
            problems.append(str(error))
            continue
        matched.append((case, files, names))
    _raise_all(pred_dir, problems)
    return matched


# --------------------------------------------------------------------------- one case

def _references(case_id: str, masks: Mapping[str, np.ndarray], targets: Sequence[str]) -> dict[str, np.ndarray]:
    refs: dict[str, np.ndarray] = {}
    if "each" in targets:
        refs.update(masks)
    if len(masks) >= 2:
        for method in METHODS:
            if method in targets:
                try:
                    refs[method] = consensus(masks, method)
                except RuntimeError as error:  # STAPLE undefined: say so, keep the rest
                    warnings.warn(f"{case_id}: {method} reference skipped ({error})", stacklevel=4)
    return refs


def _case_rows(case: Case, files: Mapping, names: list[str], targets, slices: bool):
    """metrics rows, slice rows, agreement rows and pixel-score sums of one case."""
    image, spacing = read_case_image(case, mmap=True)
    shape = tuple(image.shape)
    del image
    masks = read_case_masks(Case(case.id, case.image, {n: case.masks[n] for n in names}), shape)
    masks = {n: masks[n] for n in names}
    pred = io.read_mask(files["mask"], expected_shape=shape)
    level = "specimen" if len(shape) == 3 else "image"
    rows, slice_rows = [], []
    for reference, truth in _references(case.id, masks, targets).items():
        rows.append({"case": case.id, "reference": reference, "level": level, "slice": "",
                     **case_metrics(pred, truth, spacing)})
        if slices and len(shape) == 3:
            slice_rows += [{"case": case.id, "reference": reference, "level": "slice", **row}
                           for row in slice_metrics(pred, truth, spacing)]
    agree = [{"case": case.id, "level": level, **row} for row in agreement(masks, spacing)]
    # The reference study scored every pixel against the union of the observers.
    everyone = union(list(masks.values()))
    if files["prob"] is not None:
        prob, _ = io.read_image(files["prob"])
        try:
            scores = soft_scores(everyone, prob, SOFT_REDUCTION)
        except ValueError as error:
            raise DataError(files["prob"], f"not a probability map ({error})") from None
    else:
        scores = soft_scores(everyone, pred.astype(float), SOFT_REDUCTION)
    soft = {"sum": float(scores.sum()), "rows": scores.size, "pixels": everyone.size,
            "prob": files["prob"] is not None, "dice": dice(pred, everyone)}
    info = {"id": case.id, "image": _absolute(case.image), "prediction": _absolute(files["mask"]),
            "probability": None if files["prob"] is None else _absolute(files["prob"]),
            "observers": {n: [_absolute(p) for p in case.masks[n]] for n in names},
            "shape": list(shape), "spacing_mm": None if spacing is None else list(spacing),
            "level": level}
    return rows, slice_rows, agree, soft, info


# --------------------------------------------------------------------------- outputs

def _absolute(path) -> str:
    return str(Path(path).resolve())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # full precision; 'inf' and 'nan' as Python writes them
    return str(value)


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping]) -> str:
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _json_safe(value):
    """NaN -> null (JSON has no NaN); inf -> the string "inf"."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _per_case_agreement(agree_rows: list[dict]) -> list[dict]:
    """One inter-observer row per case (the mean over pairs when there are >2 observers)."""
    by_case: dict[str, list[dict]] = {}
    for row in agree_rows:
        by_case.setdefault(row["case"], []).append(row)
    out = []
    for case_id, rows in by_case.items():
        merged = {"case": case_id, "pred_empty": any(r["pred_empty"] for r in rows),
                  "truth_empty": any(r["truth_empty"] for r in rows)}
        for key in NUMERIC_METRICS:
            merged[key] = float(np.mean([r[key] for r in rows]))
        out.append(merged)
    return out


def _summarise_rows(rows: list[dict], n_boot: int, seed: int) -> dict:
    return {"n_cases": len(rows),
            "n_pred_empty": int(sum(bool(r["pred_empty"]) for r in rows)),
            "n_truth_empty": int(sum(bool(r["truth_empty"]) for r in rows)),
            "metrics": {key: summarise([r[key] for r in rows], n_boot=n_boot, seed=seed)
                        for key in NUMERIC_METRICS}}


def _one_of(values: set, several: str) -> str:
    return next(iter(values)) if len(values) == 1 else several


def _other_observers(case_pairs: list[dict], reference: str, metric: str) -> tuple[list[str], float]:
    """The other observers of one case against ``reference``, and their mean ``metric``."""
    values, others = [], []
    for row in case_pairs:
        if reference in (row["observer_a"], row["observer_b"]):
            others.append(row["observer_b"] if row["observer_a"] == reference else row["observer_a"])
            values.append(row[metric])
    return others, (float(np.mean(values)) if values else math.nan)


def human_level(rows: list[dict], agree_rows: list[dict], unit: str, n_boot: int, seed: int) -> dict:
    """The paired human-level test per reference observer, for Dice and HD95.

    For every case and observer A: the model against A, paired with the other
    observer(s) against A (the mean over them when there are several);
    :func:`bcseg.measure.observers.paired_comparison` reads the differences.
    """
    pairs: dict[str, list[dict]] = {}
    for row in agree_rows:
        pairs.setdefault(row["case"], []).append(row)
    model = {(r["case"], r["reference"]): r for r in rows}
    comparisons = []
    references = sorted({r["observer_a"] for r in agree_rows} | {r["observer_b"] for r in agree_rows})
    for reference in references:
        for metric in MARGINS:
            model_scores, human_scores, others = [], [], set()
            for case_id, case_pairs in pairs.items():
                names, value = _other_observers(case_pairs, reference, metric)
                if not names or (case_id, reference) not in model:
                    continue
                others.update(names)
                model_scores.append(model[(case_id, reference)][metric])
                human_scores.append(value)
            other = next(iter(others)) if len(others) == 1 else "the other observers (mean)"
            comparisons.append(paired_comparison(
                model_scores, human_scores, metric, names=(reference, other),
                unit=unit if metric == "hd95" and unit in ("mm", "voxel") else "",
                n_boot=n_boot, seed=seed))
    return {"margins": dict(MARGINS), "comparisons": comparisons,
            "note": HUMAN_LEVEL_NOTE}


# --------------------------------------------------------------------------- evaluate

def evaluate(pred_dir: str | Path, truth, out_dir: str | Path, observers: str | Sequence[str] = "all",
             targets: Sequence[str] = TARGETS, force: bool = False, slices: bool = True,
             n_boot: int = 2000, seed: int = 0, progress: bool = False,
             protocol: str = "honest", model=None, reference_size: int = 128) -> dict:
    """Compare predicted masks with every observer and consensus, per specimen.

    Parameters
    ----------
    pred_dir : str or Path
        Folder of ``<case id>_mask.tif`` predictions (any suffix of
        :data:`bcseg.data.io.IMAGE_SUFFIXES`), optionally with ``<case id>_prob.tif``
        probability maps, used for ``pixel_soft_score`` when present.
    truth : str, Path or list of Case
        A dataset folder or manifest (:func:`bcseg.data.dataset.discover`) or the cases.
        Only cases with a prediction are evaluated.
    out_dir : str or Path
        Where ``metrics.csv``, ``agreement.csv`` and ``summary.json`` go.
    observers : "all", str or sequence of str
        The observers to use; every evaluated case must have them.
    targets : sequence of str
        References besides the inter-observer agreement: ``"each"`` (every
        observer on its own), ``"union"``, ``"intersection"``, ``"staple"``. The
        consensus references need at least two observers in a case.
    force : bool
        Overwrite existing outputs; otherwise they raise :class:`UsageError`.
    slices : bool
        Also write per-slice rows for 3D stacks (never used in the summary).
    n_boot, seed : int
        Bootstrap resamples and seed for the CIs (:func:`bcseg.measure.metrics.summarise`).
    progress : bool
        Show a progress bar over the cases.
    protocol : {"honest", "reference"}
        ``"reference"`` also scores ``model`` the way the reference study did
        (:func:`reference_protocol`) and puts that figure beside the honest one
        in ``summary.json`` (``reference_protocol``) and the headline.
    model : str or Path, optional
        The run folder or ``.keras`` file the predictions came from; needed by
        ``protocol="reference"``.
    reference_size : int
        Slice size of the reference protocol when the model takes any size.

    Returns
    -------
    dict
        ``metrics_csv``, ``agreement_csv``, ``summary_json`` (Paths), ``n_cases``,
        ``human_level`` (the verdict lines of the paired test, Dice first),
        ``headline`` (``reference``, ``dice_mean``, ``dice_ci``, ``dice_ci_note``,
        ``hd95`` (its :func:`~bcseg.measure.metrics.summarise` dict), ``unit``,
        ``inter_observer_dice_mean``, ``pixel_soft_score``,
        ``reference_protocol``) and ``dice`` (mean per-case Dice per reference,
        with ``inter-observer``).

    Raises
    ------
    DataError
        Predictions without a case, cases lacking a requested observer, shapes that
        differ, unreadable files: all of them listed in one error.
    UsageError
        Outputs exist and not ``force``, or bcseg did not write them; the output
        folder is a file; unknown targets or observers.

    Notes
    -----
    ``summary.json`` holds first ``human_level`` (null with one observer): the
    paired test of :func:`human_level` (``margins``, ``comparisons``: one
    :func:`bcseg.measure.observers.paired_comparison` dict per reference observer and
    metric, with its ``verdict`` and ``text``, and ``note``); then ``n_cases``, ``level`` (``specimen``, ``image`` or
    ``mixed``), ``unit`` (``mm``, ``voxel`` or ``mixed``), ``observers``,
    ``references`` (name -> ``n_cases``, ``n_pred_empty``, ``n_truth_empty``,
    ``metrics``: metric -> ``n, n_finite, n_inf, mean, sd, median, ci_low,
    ci_high``), with one entry per observer, ``union``, ``intersection``,
    ``staple`` and ``inter-observer`` (observers against each other; the mean
    over pairs per case when there are more than two), ``pixel_soft_score``
    (``value``, ``reference``, ``reduction`` "row", ``eps`` 1e-7, ``dice_mean``
    against the same reference, ``n_cases``, ``n_rows``, ``n_pixels``, ``n_cases_with_probability``, ``note``),
    ``settings`` and ``inputs`` (the files of every case, which
    :func:`bcseg.report.html.build_report` reads to draw examples). NaN is written as
    ``null``. Statistics are over cases, never slices: ``n`` is a case count.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise UsageError(None, f"unknown target(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(TARGETS)}")
    if int(n_boot) < 1:
        raise UsageError(None, f"n_boot must be at least 1, not {n_boot}")
    if protocol not in PROTOCOLS:
        raise UsageError(None, f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol == "reference" and model is None:
        raise UsageError(None, "protocol 'reference' scores a model: give the model the predictions "
                         "came from")
    check_output_folder(out_dir)
    outputs = {key: out_dir / name for key, name in OUTPUTS.items()}
    check_replaceable(outputs.values(), force)
    cases = discover(truth) if isinstance(truth, (str, Path)) else list(truth)
    wanted = _select_observers(cases, observers)
    predictions = find_predictions(pred_dir)
    matched = _match(pred_dir, cases, predictions, wanted)

    rows, slice_rows, agree_rows, infos = [], [], [], []
    soft_sum = soft_rows = soft_pixels = soft_prob = 0.0
    soft_dice = []
    iterator = matched
    if progress:
        from tqdm import tqdm
        iterator = tqdm(matched, desc="evaluate", unit="case")
    for case, files, names in iterator:
        r, s, a, soft, info = _case_rows(case, files, names, targets, slices)
        rows += r
        slice_rows += s
        agree_rows += a
        infos.append(info)
        soft_sum += soft["sum"]
        soft_rows += soft["rows"]
        soft_pixels += soft["pixels"]
        soft_prob += soft["prob"]
        soft_dice.append(soft["dice"])
    no_spacing = [i["id"] for i in infos if i["spacing_mm"] is None]
    if no_spacing:
        warnings.warn(f"{len(no_spacing)} of {len(infos)} case(s) have no spacing "
                      f"(e.g. {no_spacing[0]}): their distances and volumes are in voxels, not mm",
                      stacklevel=2)

    # Summaries over cases: one value per case and reference, never per slice.
    ordered = sorted({n for _, _, names in matched for n in names})
    references: dict[str, dict] = {}
    for name in ordered + list(METHODS):
        chosen = [r for r in rows if r["reference"] == name]
        if chosen:
            references[name] = _summarise_rows(chosen, n_boot, seed)
    per_case_agree = _per_case_agreement(agree_rows)
    if per_case_agree:
        references[INTER_OBSERVER] = _summarise_rows(per_case_agree, n_boot, seed)

    soft_ref = "union" if any(len(n) >= 2 for _, _, n in matched) else ordered[0]
    pixel_soft = {"value": soft_sum / soft_rows, "reference": soft_ref,
                  "reduction": SOFT_REDUCTION, "eps": REFERENCE_EPS,
                  "dice_mean": float(np.mean(soft_dice)),
                  "n_cases": len(infos), "n_rows": int(soft_rows), "n_pixels": int(soft_pixels),
                  "n_cases_with_probability": int(soft_prob), "note": PIXEL_SOFT_NOTE}
    study_style = None if protocol == "honest" else reference_protocol(
        model, matched, size=reference_size, seed=seed)
    units = {r["unit"] for r in rows}
    unit = _one_of(units, "mixed")
    summary = {
        "human_level": human_level(rows, agree_rows, unit, n_boot, seed) if agree_rows else None,
        "n_cases": len(infos),
        "level": _one_of({i["level"] for i in infos}, "mixed"),
        "unit": unit,
        "observers": ordered,
        "references": references,
        "pixel_soft_score": pixel_soft,
        **({"reference_protocol": study_style} if study_style else {}),
        "settings": {"protocol": protocol, "targets": list(targets), "observers": observers if isinstance(observers, str)
                     else list(observers), "n_boot": int(n_boot), "seed": int(seed), "ci": 0.95,
                     "statistics_over": "cases"},
        "inputs": {"pred_dir": str(pred_dir.resolve()),
                   "truth": str(Path(truth).resolve()) if isinstance(truth, (str, Path)) else None,
                   "cases": infos},
    }
    with claim(out_dir, "evaluate"):
        check_replaceable(outputs.values(), force)  # again, now that no other run writes here
        write_text(outputs["metrics"], _csv_text(METRICS_CSV_COLUMNS, rows + slice_rows))
        write_text(outputs["agreement"], _csv_text(AGREEMENT_CSV_COLUMNS, agree_rows))
        write_text(outputs["summary"], json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")

    headline_ref = soft_ref if soft_ref in references else next(iter(references))
    dice_stats = {name: entry["metrics"]["dice"] for name, entry in references.items()}
    headline = dice_stats[headline_ref]
    ceiling = dice_stats.get(INTER_OBSERVER)
    return {
        "metrics_csv": outputs["metrics"], "agreement_csv": outputs["agreement"],
        "summary_json": outputs["summary"], "n_cases": len(infos),
        "human_level": human_level_lines(summary),
        "headline": {"reference": headline_ref, "dice_mean": headline["mean"],
                     "dice_ci": (headline["ci_low"], headline["ci_high"]),
                     "dice_ci_note": headline.get("ci_note", ""),
                     "hd95": references[headline_ref]["metrics"]["hd95"], "unit": unit,
                     "inter_observer_dice_mean": None if ceiling is None else ceiling["mean"],
                     "pixel_soft_score": pixel_soft["value"],
                     "reference_protocol": None if study_style is None else study_style["value"],
                     "reference_protocol_size": None if study_style is None else study_style["size"]},
        "dice": {name: stats["mean"] for name, stats in dice_stats.items()},
    }


# --------------------------------------------------------------------------- reference protocol

PROTOCOLS = ("honest", "reference")
REFERENCE_BATCH = 32  # the default batch of tf.keras 2's model.evaluate
REFERENCE_PROTOCOL_NOTE = (
    "Scored the way the reference study did: every slice of every evaluated case fitted to "
    "the model's input size, augmented offline into 24 copies (12 rotations x 2 random "
    "trims), predicted as probabilities, and scored with the study's dice_coef as it "
    "executed (a soft Dice per image row, smooth=1e-7) against the union of the observers, "
    "averaged per batch of 32 augmented slices and then over batches, as model.evaluate "
    "did. Augmented copies of one slice are near-duplicates and rows, not specimens, are "
    "averaged: this is not an estimate of per-specimen Dice.")


def _model_input_size(model, default: int) -> int:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(None, f"the reference protocol needs a 2D model (input (B, H, W, C)), "
                         f"not one with input shape {shape}")
    return int(shape[1]) if shape[1] is not None else default


def _augmented_slices(case: Case, names: list[str], size: int, rng):
    """The study's test inputs for one case: 24 augmented copies of every slice."""
    from bcseg.learn.augment import reference_offline_augment
    from bcseg.data.intensity import normalise
    from bcseg.learn.pipeline import to_square

    image, _ = read_case_image(case)
    masks = read_case_masks(Case(case.id, case.image, {n: case.masks[n] for n in names}), image.shape)
    truth = union([masks[n] for n in names])
    image = normalise(image)
    stack, truth = (image[None], truth[None]) if image.ndim == 2 else (image, truth)
    for z in range(stack.shape[0]):
        square = to_square(stack[z], size)
        mask = to_square(truth[z].astype(np.float32), size, order=0) > 0.5
        yield reference_offline_augment(square, mask, size=size, rng=rng)


def reference_protocol(model_path, matched, size: int = 128, seed: int = 0,
                       batch_size: int = REFERENCE_BATCH) -> dict:
    """The reference study's test score of a model on the matched cases.

    Parameters
    ----------
    model_path : str or Path
        A training run folder or a ``.keras`` file of a 2D model.
    matched : list of (Case, files, observer names)
        The evaluated cases, as :func:`evaluate` pairs them.
    size : int
        Slice size when the model takes any size (the study's was 128).
    seed : int
        Seed of the random trims.
    batch_size : int
        Images per batch of the averaging (``model.evaluate``'s default, 32).

    Returns
    -------
    dict
        ``value``, ``reduction``, ``eps``, ``batch_size``, ``size``, ``seed``,
        ``n_cases``, ``n_slices``, ``n_images``, ``model`` and ``note``.
    """
    from bcseg.learn.saved import load_model
    from bcseg.rundir import load_run

    path = load_run(model_path)[0][0]  # a k-fold run: its first member
    model = load_model(path)
    size = _model_input_size(model, size)
    rng = np.random.default_rng(seed)
    row_scores, n_slices = [], 0
    for case, _, names in matched:
        for images, masks in _augmented_slices(case, names, size, rng):
            prob = model.predict(images[..., None], batch_size=batch_size, verbose=0)
            row_scores.append(soft_scores(masks, prob, SOFT_REDUCTION))  # (24, size)
            n_slices += 1
    scores = np.concatenate(row_scores)
    return {"value": batch_mean(scores, batch_size), "reduction": SOFT_REDUCTION, "eps": REFERENCE_EPS,
            "batch_size": int(batch_size), "size": int(size), "seed": int(seed),
            "n_cases": len(matched), "n_slices": n_slices, "n_images": len(scores),
            "model": _absolute(path), "note": REFERENCE_PROTOCOL_NOTE}


# --------------------------------------------------------------------------- tables

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
    if head.get("inter_observer_dice_mean") is not None:
        lines.append(f"inter-observer Dice (the ceiling): {head['inter_observer_dice_mean']:.3f}")
    lines.append(f"pixel_soft_score (the reference study's 'Dice'; not a Dice): "
                 f"{head['pixel_soft_score']:.4f}")
    if head.get("reference_protocol") is not None:
        lines.append(f"study-style score (--protocol reference: 24 augmented "
                     f"{head['reference_protocol_size']} px copies of every slice, per-row soft "
                     f"Dice; not a Dice): {head['reference_protocol']:.4f}")
    return lines
