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
    ``pixel_soft_score`` beside the true per-case Dice. It holds first
    ``human_level`` (null with one observer, or without ``"each"`` among the targets):
    the paired test of :func:`human_level` (``margins``, ``comparisons``: one
    :func:`bcseg.measure.observers.paired_comparison` dict per reference observer and
    metric, with its ``verdict`` and ``text``, and ``note``); then ``n_cases``, ``level`` (``specimen``, ``image`` or ``mixed``),
    ``unit`` (``mm``, ``voxel`` or ``mixed``), ``observers``, ``references`` (name ->
    ``n_cases``, ``n_pred_empty``, ``n_truth_empty``, ``metrics``: metric -> ``n,
    n_finite, n_inf, mean, sd, median, ci_low, ci_high``), with one entry per
    observer, ``union``, ``intersection``, ``staple`` and ``inter-observer``
    (observers against each other; the mean over pairs per case when there are more
    than two), ``pixel_soft_score`` (``value``, ``reference``, ``reduction`` "row",
    ``eps`` 1e-7, ``dice_mean`` against the same reference, ``n_cases``, ``n_rows``,
    ``n_pixels``, ``n_cases_with_probability``, ``note``), ``reference_protocol``
    (with ``protocol="reference"``), ``settings`` and ``inputs`` (the files of every
    case, which :func:`bcseg.report.html.build_report` reads to draw examples; a case
    with named channels lists them under ``channels``: ``name``, ``path`` and
    ``index``, the plane of a file's C axis or null). NaN
    is written as ``null``. Statistics are over cases, never slices: ``n`` is a case
    count.

Cases may hold several channels (``us``, ``pa``, ...): the masks are compared as
for one, and the shapes are checked against the case's first channel.

A forced re-evaluation (``force=True``) first deletes the report that bcseg built
from the earlier evaluation in the same folder (``report.html``, ``case_metrics.png``,
``examples.png``, ``examples_<channel>.png``; only files recorded as bcseg's), so no
page is left describing other numbers; ``bcseg report`` or ``evaluate`` without
``--no-report`` builds it again. A report of a folder above, which embeds this
evaluation too, is named in a warning.

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

from bcseg.config import is_whole, shorten
from bcseg.data import io
from bcseg.data.image_rules import same_spacing, spacing_text
from bcseg.atomic import real_path, write_text
from bcseg.data.check import refuse_orphan_masks
from bcseg.data.content import case_files
from bcseg.data.cases import Case, read_case_image, read_case_masks
from bcseg.data.dataset import discover
from bcseg.errors import DataError, UsageError
from bcseg.measure.metrics import REFERENCE_EPS, case_metrics, dice, slice_metrics, soft_scores, summarise
from bcseg.measure.observers import (INTER_OBSERVER, MARGINS, METHODS, agreement, consensus,
                                     mean_over_pairs, paired_comparison, union)
from bcseg.measure.reference_score import PROTOCOLS, SOFT_REDUCTION, reference_model, reference_protocol
# The tables and headline of an evaluation, importable from here as before.
from bcseg.measure.tables import (CEILING_COLUMNS, ceiling_table, ci_phrase, headline_lines,  # noqa: F401
                                  human_level_lines)
from bcseg.outputs import (check_output_folder, check_replaceable, claim, held_here, is_owned,
                           refuse_dataset_folder, refuse_whole_result, remove_owned,
                           unfinished_claim, unfinished_output)
from bcseg.rundir import FOLD_FILE, PREDICTIONS_DIR, SETTINGS_FILE

__all__ = ["evaluate", "find_predictions", "ceiling_table", "OUTPUTS", "METRIC_COLUMNS",
           "INTER_OBSERVER", "PIXEL_SOFT_NOTE"]

OUTPUTS = {"metrics": "metrics.csv", "agreement": "agreement.csv", "summary": "summary.json"}
# What bcseg.report.html.build_report draws from an evaluation into its folder.
REPORT_PAGE = "report.html"
REPORT_FIGURES = ("case_metrics.png", "examples.png", "examples_*.png")
TARGETS = ("each", "union", "intersection", "staple")
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
    problems = []
    for path in files:
        stem = io.file_stem(path)
        for kind, suffix in (("mask", MASK_SUFFIX), ("prob", PROB_SUFFIX)):
            if stem.endswith(suffix) and len(stem) > len(suffix):
                found.setdefault(stem[: -len(suffix)], {"mask": [], "prob": []})[kind].append(path)
            elif stem.lower().endswith(suffix) and len(stem) > len(suffix):  # _Mask: left out unseen
                problems.append(f"{path.name}: ends in '{stem[-len(suffix):]}', not '{suffix}'; "
                                f"rename it <case id>{suffix}")
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


def _case_shape(case: Case) -> tuple[int, ...]:
    """The shape of the case's image: its first channel, which may be a plane of a C axis."""
    if case.channels and case.channels[0].index is not None:
        return tuple(read_case_image(case, mmap=True)[0].shape)
    return _shape(case.image)


def _select_observers(cases: Sequence[Case], wanted) -> list[str] | None:
    """None for all observers, else the requested names (checked against the cases)."""
    if wanted is None or wanted == "all":
        return None
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    known = sorted({o for case in cases for o in case.masks})
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        # named as train names it: the one line says which option to change
        asked = ", ".join(shorten(repr(n)) for n in unknown) or "(none given)"  # 5000 characters
        raise UsageError("--observer", f"unknown observer(s) {asked}; the cases have "
                         f"{', '.join(map(repr, known)) or 'no observers'}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # recorded as asked in summary.json, as if a third observer had been scored
        raise UsageError(None, f"observer {twice[0]!r} is named twice; name each observer once")
    return names


def _match(pred_dir: Path, cases: Sequence[Case], predictions: Mapping, wanted: list[str] | None):
    """Pair predictions with cases; one DataError with every mismatch."""
    by_id = {case.id: case for case in cases}
    # "All observers" means the dataset's, not each case's own: a case lacking one would
    # otherwise be scored against a different consensus from the others, unseen.
    everyone = sorted({o for case in cases for o in case.masks})
    problems, matched = [], []
    # --pred pointed into the dataset (BUSI keeps masks as NAME_mask.png beside the
    # images): each "prediction" would be scored against itself, Dice 1.
    truth_files = {real_path(path): (case.id, name) for case in cases
                   for name, paths in case.masks.items() for path in paths}
    for case_id, files in predictions.items():
        case = by_id.get(case_id)
        if real_path(files["mask"]) in truth_files:
            owner, name = truth_files[real_path(files["mask"])]
            problems.append(f"{files['mask'].name}: is observer {name}'s mask of case '{owner}' "
                            "in the dataset, not a prediction; give --pred the folder bcseg predict wrote")
            continue
        if case is None:
            problems.append(f"{files['mask'].name}: no case '{case_id}' in the dataset")
            continue
        names = everyone if wanted is None else wanted
        if not case.masks:  # an unlabelled image that predict segmented with the rest
            problems.append(f"{case_id}: no observer drew a mask of this case, so nothing scores its "
                            f"prediction; move {files['mask'].name} out of the folder")
            continue
        missing = [n for n in names if n not in case.masks]
        if missing:
            problems.append(f"{case_id}: no mask from observer(s) {', '.join(missing)}"
                            + (" (name the others with --observer)" if wanted is None else ""))
            continue
        shared = _shared_mask_file(case, names)
        if shared:
            problems.append(shared)
            continue
        made = [io.recorded_made_with(path) for path in (files["mask"], files["prob"]) if path is not None]
        if len(made) == 2 and None not in made and made[0] != made[1]:
            # a map left from another run: its pixel_soft_score is of another model than the Dice
            problems.append(f"{files['prob'].name}: was made by another model or settings than "
                            f"{files['mask'].name} beside it; delete it, or segment the case again "
                            "with --save-prob")
            continue
        try:
            shape = _case_shape(case)
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


def _shared_mask_file(case: Case, names: list[str]) -> str | None:
    """The problem when two observers of ``case`` are given one file (a manifest cell
    copied into the next column, a folder linked to another's): that mask's agreement
    with itself, Dice 1, would pass for theirs and raise the human ceiling."""
    owner: dict[Path, str] = {}
    for name in names:
        for path in case.masks[name]:
            first = owner.setdefault(real_path(path), name)
            if first != name:
                return (f"{case.id}: observers {first} and {name} are given one file, {path.name}; "
                        "each observer's mask is their own delineation")
    return None


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
    own = None if case.spacing_mm else spacing  # a manifest's spacing overrides the files'
    masks = read_case_masks(Case(case.id, case.image, {n: case.masks[n] for n in names}), shape, own)
    masks = {n: masks[n] for n in names}
    pred = io.read_mask(files["mask"], expected_shape=shape, spacings=(own,), image=case.image)
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
        prob = _read_probability(files["prob"], own)
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
    if case.channels:  # named channels, in order: the report draws each
        info["channels"] = [{"name": c.name, "path": _absolute(c.path), "index": c.index}
                            for c in case.channels]
    return rows, slice_rows, agree, soft, info


def _read_probability(path: Path, spacing) -> np.ndarray:
    """A probability map, refused as its mask would be when it states another spacing than
    its image's (``spacing``; None: unknown, or the manifest's, which overrides the files'):
    it was made from another stack, or a resampled one, and scores the wrong voxels."""
    prob, own = io.read_image(path)
    if own is not None and spacing is not None and not same_spacing(own, spacing):
        raise DataError(path, f"probability map spacing {spacing_text(own)} mm differs from its "
                        f"image's {spacing_text(spacing)} mm; segment the image again, or re-save "
                        "the map with its image's spacing")
    return prob


# --------------------------------------------------------------------------- outputs

def _absolute(path) -> str:
    return str(real_path(path))


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
            merged[key] = mean_over_pairs([r[key] for r in rows])
        out.append(merged)
    return out


# The square the reference protocol scores a model of any input size at (the study's).
REFERENCE_SIZE = 128
# The metrics in mm (mm^2, mm^3), or in voxels where a case has no spacing.
UNIT_METRICS = ("hd95", "assd", "volume_pred", "volume_truth", "abs_volume_diff")
# The metrics that are areas of a 2D image (mm^2, pixels) but volumes of a stack (mm^3, voxels).
VOLUME_METRICS = ("volume_pred", "volume_truth", "abs_volume_diff")


def _summarise_rows(rows: list[dict], n_boot: int, seed: int, unmixable: Sequence[str] = ()) -> dict:
    """Summaries over ``rows``; the metrics in ``unmixable`` are not averaged, their cases
    being in different units (mm beside voxels, or areas of images beside volumes of
    stacks): a mean of 0.2 mm and 2 voxels, or of 1 mm^2 and 4 mm^3, is of no unit. Every
    value of those counts as undefined (NaN), and metrics.csv keeps each case's own."""
    def values(key):
        return [math.nan if key in unmixable else r[key] for r in rows]
    return {"n_cases": len(rows),
            "n_pred_empty": int(sum(bool(r["pred_empty"]) for r in rows)),
            "n_truth_empty": int(sum(bool(r["truth_empty"]) for r in rows)),
            "metrics": {key: summarise(values(key), n_boot=n_boot, seed=seed)
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


def human_level(rows: list[dict], agree_rows: list[dict], unit: str, n_boot: int,
                seed: int) -> dict | None:
    """The paired human-level test per reference observer, for Dice and HD95.

    For every case and observer A: the model against A, paired with the other
    observer(s) against A (the mean over them when there are several);
    :func:`bcseg.measure.observers.paired_comparison` reads the differences. An observer
    the model was not scored against (``"each"`` not among the targets) has no pairs and
    no comparison; None when no observer has one.
    """
    pairs: dict[str, list[dict]] = {}
    for row in agree_rows:
        pairs.setdefault(row["case"], []).append(row)
    model = {(r["case"], r["reference"]): r for r in rows}
    comparisons = []
    references = sorted({r["observer_a"] for r in agree_rows} | {r["observer_b"] for r in agree_rows})
    # Some cases in mm and others in voxels: their HD95 differences are of no one unit,
    # and no margin (1 mm or 1 voxel) can be read against their mean. Dice has no unit.
    metrics = [m for m in MARGINS if m != "hd95" or unit in ("mm", "voxel")]
    for reference in references:
        for metric in metrics:
            model_scores, human_scores, others = [], [], set()
            for case_id, case_pairs in pairs.items():
                names, value = _other_observers(case_pairs, reference, metric)
                if not names or (case_id, reference) not in model:
                    continue
                others.update(names)
                model_scores.append(model[(case_id, reference)][metric])
                human_scores.append(value)
            if not model_scores:  # nothing paired: a verdict of "n = 0" would be no test
                continue
            other = next(iter(others)) if len(others) == 1 else "the other observers (mean)"
            comparisons.append(paired_comparison(
                model_scores, human_scores, metric, names=(reference, other),
                unit=unit if metric == "hd95" else "",
                n_boot=n_boot, seed=seed))
    if not comparisons:
        return None
    return {"margins": dict(MARGINS), "comparisons": comparisons,
            "note": HUMAN_LEVEL_NOTE}


# --------------------------------------------------------------------------- evaluate

def evaluate(pred_dir: str | Path, truth, out_dir: str | Path, observers: str | Sequence[str] = "all",
             targets: Sequence[str] = TARGETS, force: bool = False, slices: bool = True,
             n_boot: int = 2000, seed: int = 0, progress: bool = False,
             protocol: str = "honest", model=None, reference_size: int = REFERENCE_SIZE) -> dict:
    """Compare predicted masks with every observer and consensus, per specimen.

    Parameters
    ----------
    pred_dir : str or Path
        Folder of ``<case id>_mask.tif`` predictions (any image suffix), optionally with
        ``<case id>_prob.tif`` probability maps, used for ``pixel_soft_score``.
    truth : str, Path or list of Case
        A dataset folder or manifest (:func:`bcseg.data.dataset.discover`) or the
        cases; only cases with a prediction are evaluated, and a warning names how
        many of the dataset's are left out.
    out_dir : str or Path
        Where ``metrics.csv``, ``agreement.csv`` and ``summary.json`` (see the module) go.
    observers : "all", str or sequence of str
        The observers to use; every evaluated case must have them.
    targets : sequence of str
        References besides the inter-observer agreement: ``"each"`` observer on its
        own, ``"union"``, ``"intersection"``, ``"staple"`` (these need two observers).
    force, slices, progress : bool
        Replace bcseg's earlier outputs; also write per-slice rows for 3D stacks
        (never summarised); show a progress bar over the cases.
    n_boot, seed : int
        Bootstrap resamples and seed for the CIs (:func:`bcseg.measure.metrics.summarise`).
    protocol, model, reference_size
        ``protocol="reference"`` also scores ``model`` (the run folder or ``.keras``
        file the predictions came from) as the reference study did, at
        ``reference_size`` px when the model takes any size and its run records no
        input size (:func:`bcseg.measure.reference_score.reference_protocol`).

    Returns
    -------
    dict
        ``metrics_csv``, ``agreement_csv``, ``summary_json`` (Paths), ``n_cases``,
        ``human_level`` (the verdict lines, Dice first), ``headline`` (the numbers
        :func:`headline_lines` prints) and ``dice`` (mean per-case Dice per reference).

    Raises
    ------
    DataError
        Every prediction without a case, case lacking an observer, shape mismatch
        and unreadable file, listed in one error.
    UsageError
        Outputs exist and not ``force`` (or bcseg did not write them), the output
        folder is a file, unknown targets, observers or protocol, or consensus targets
        without ``"each"`` where one observer is selected.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    settings = _check_settings(targets, observers, n_boot, seed, protocol, model)
    _check_reference_size(reference_size, protocol)
    outputs = _check_outputs(out_dir, force)
    _refuse_unfinished(pred_dir)
    cases = discover(truth) if isinstance(truth, (str, Path)) else list(truth)
    refuse_orphan_masks(truth, cases)
    if isinstance(truth, (str, Path)) and not held_here(out_dir):  # train: inside its run
        # its tables, figures and record never go among the dataset's scans and masks
        refuse_dataset_folder(out_dir, truth, {f for c in cases for f in case_files(c)}, "evaluate")
    wanted = _select_observers(cases, observers)
    matched = _match(pred_dir, cases, find_predictions(pred_dir), wanted)
    _refuse_lone_consensus(matched, settings["targets"])
    _say_left_out(pred_dir, cases, matched)
    _say_mixed_models(pred_dir, matched)
    # The protocol's model is loaded and checked before the scoring it would follow
    study_model = None if protocol == "honest" else reference_model(model, [case for case, _, _ in matched])
    scored = _score_cases(matched, settings["targets"], slices, progress)
    study_style = None if study_model is None else reference_protocol(
        model, matched, size=reference_size, seed=seed, loaded=study_model)
    summary = _summary(scored, matched, study_style, settings, pred_dir, truth)
    _write_outputs(out_dir, outputs, force, scored, summary)
    return _result(outputs, summary, study_style)


def _check_reference_size(size, protocol: str) -> None:
    """Refuse a reference_size the reference protocol cannot use, or one the honest
    protocol would drop unread. Unchecked, 0 failed as a ZeroDivisionError, 10**6 as a
    3.6 TiB MemoryError, both after the model loaded. Its crops trim up to 10 pixels a
    side (as data.offline_augment = 'reference' in training), so 20 or less leaves none."""
    if protocol != "reference":
        if size != REFERENCE_SIZE:
            raise UsageError(None, f"reference_size={size!r} is read by protocol 'reference' alone; "
                             "the honest protocol scores the predictions as they are")
        return
    from bcseg.learn.augment import REFERENCE_MAX_TRIM_LR, REFERENCE_MAX_TRIM_TB  # TensorFlow
    from bcseg.rundir import MAX_INPUT_SIZE

    low = 2 * max(REFERENCE_MAX_TRIM_TB, REFERENCE_MAX_TRIM_LR) + 1
    if not (is_whole(size, low) and size <= MAX_INPUT_SIZE):
        raise UsageError(None, f"reference_size must be a whole number of pixels from {low} to "
                         f"{MAX_INPUT_SIZE}, got {size!r}")


def _refuse_unfinished(pred_dir: Path) -> None:
    """Refuse the predictions of a 'bcseg predict' that was stopped part-way (Ctrl-C,
    SIGTERM, a kill) or is still writing: scored, its cases so far would pass for the
    whole study, the missing ones only "left out" as a run's test fold leaves cases out."""
    unfinished = unfinished_claim(pred_dir)
    if unfinished is not None:
        finish = "finish it (predict --resume)" if unfinished.get("command") == "predict" else "let it finish"
        raise DataError(pred_dir, f"holds {unfinished_output(unfinished)}; {finish} before evaluating it")
    # A run's test fold: inference.json, written once the fold was segmented and scored,
    # marks it whole. Without it the run was stopped while segmenting (or is segmenting
    # now, in another process), and its masks so far are not the test fold.
    run = pred_dir.parent
    if pred_dir.name == PREDICTIONS_DIR and (run / FOLD_FILE).is_file() \
            and not (run / SETTINGS_FILE).exists() and not held_here(run):
        raise DataError(pred_dir, f"is the test fold of a training run that has not finished ({run} has "
                        f"no {SETTINGS_FILE}: stopped, or still running); finish it with "
                        "'bcseg train ... --resume' before evaluating it")


def _refuse_lone_consensus(matched, targets: Sequence[str]) -> None:
    """Refuse consensus targets alone where one observer is selected: a consensus needs two,
    so no reference would be scored, and the summary would hold none (it failed after
    writing the tables, with a bare StopIteration)."""
    if "each" in targets:
        return
    for _, _, names in matched:
        if len(names) < 2:
            raise UsageError(None, f"the consensus target(s) {', '.join(targets)} need two or more "
                             f"observers; {len(names)} selected ({', '.join(names)}), so nothing would "
                             "be scored; add the target 'each' to score the prediction against it")


def _say_left_out(pred_dir: Path, cases: Sequence[Case], matched) -> None:
    """Warn, naming one, when dataset cases have no prediction: a run's predictions/
    holds its test fold only, which is fine, but a folder missing a case by mistake
    would otherwise shrink the study without a word."""
    scored = {case.id for case, _, _ in matched}
    left = sorted(case.id for case in cases if case.id not in scored)
    if left:
        warnings.warn(f"{pred_dir}: {len(scored)} of the dataset's {len(cases)} case(s) have a "
                      f"prediction and are scored; {len(left)} are left out (e.g. {left[0]})",
                      stacklevel=3)


def _say_mixed_models(pred_dir: Path, matched) -> None:
    """Warn, naming two cases, when the masks were made by different models or settings
    (each mask predict writes records a digest of both): scored together they are one
    figure of no one model. Pooled test folds of a k-fold run differ by design, so this
    is said, not refused."""
    made: dict[str, str] = {}
    for case, files, _ in matched:
        digest = io.recorded_made_with(files["mask"])
        if digest is not None:
            made.setdefault(digest, case.id)
    if len(made) > 1:
        first, second = list(made.values())[:2]
        warnings.warn(f"{pred_dir}: its masks were made by {len(made)} different models or settings "
                      f"(case {first} by one, {second} by another), scored here as one result; "
                      "fine for the pooled test folds of a k-fold run, otherwise segment them "
                      "again with one --model", stacklevel=3)


def _check_outputs(out_dir: Path, force: bool) -> dict[str, Path]:
    """The output files, after refusing those that may not be replaced."""
    check_output_folder(out_dir, command="evaluate")
    outputs = {key: out_dir / name for key, name in OUTPUTS.items()}
    check_replaceable(outputs.values(), force, command="evaluate")
    if not held_here(out_dir):  # train evaluates its test fold inside its own run
        refuse_whole_result(out_dir, "evaluate")  # as predict: never into a run's folders
    return outputs


def _summary(scored: dict, matched, study_style: dict | None, settings: dict, pred_dir: Path,
             truth) -> dict:
    """The content of ``summary.json`` (see the module docstring)."""
    n_boot, seed = settings["n_boot"], settings["seed"]
    inputs = {"pred_dir": str(real_path(pred_dir)),
              "truth": str(real_path(truth)) if isinstance(truth, (str, Path)) else None}
    ordered = sorted({n for _, _, names in matched for n in names})
    soft_ref = "union" if any(len(n) >= 2 for _, _, n in matched) else ordered[0]
    unit = _one_of({r["unit"] for r in scored["rows"]}, "mixed")
    return {
        "human_level": (human_level(scored["rows"], scored["agree"], unit, n_boot, seed)
                        if scored["agree"] else None),
        "n_cases": len(scored["infos"]),
        "level": _one_of({i["level"] for i in scored["infos"]}, "mixed"),
        "unit": unit,
        "observers": ordered,
        "references": _reference_summaries(scored, ordered, n_boot, seed),
        "pixel_soft_score": _pixel_soft(scored, soft_ref),
        **({"reference_protocol": study_style} if study_style else {}),
        "settings": settings,
        "inputs": {**inputs, "cases": scored["infos"]},
    }


def _check_settings(targets, observers, n_boot: int, seed: int, protocol: str, model) -> dict:
    """The settings recorded in ``summary.json``, after checking them by name."""
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise UsageError(None, f"unknown target(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(TARGETS)}")
    if len(set(targets)) < len(targets):  # recorded in summary.json as asked
        raise UsageError(None, f"targets {', '.join(map(repr, targets))} name a target twice; name each once")
    # whole numbers: int() cut n_boot=2.5 to 2 and seed=1.5 to 1 without a word, and a
    # negative seed failed inside NumPy's bootstrap, naming nothing
    if not is_whole(n_boot, 1):
        raise UsageError(None, f"n_boot must be a whole number, at least 1, not {n_boot!r}")
    if not is_whole(seed, 0):
        raise UsageError(None, f"seed must be a whole number >= 0, not {seed!r}")
    if protocol not in PROTOCOLS:
        raise UsageError(None, f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol == "reference" and model is None:
        raise UsageError(None, "protocol 'reference' scores a model: give the model the predictions "
                         "came from")
    return {"protocol": protocol, "targets": list(targets),
            "observers": observers if isinstance(observers, str) else list(observers),
            "n_boot": int(n_boot), "seed": int(seed), "ci": 0.95, "statistics_over": "cases"}


def _score_cases(matched, targets, slices: bool, progress: bool) -> dict:
    """Every case's rows, with the running sums of the pixel soft score."""
    scored = {"rows": [], "slices": [], "agree": [], "infos": [], "soft": []}
    iterator = matched
    if progress:
        from tqdm import tqdm
        iterator = tqdm(matched, desc="evaluate", unit="case")
    for case, files, names in iterator:
        r, s, a, soft, info = _case_rows(case, files, names, targets, slices)
        scored["rows"] += r
        scored["slices"] += s
        scored["agree"] += a
        scored["infos"].append(info)
        scored["soft"].append(soft)
    infos = scored["infos"]
    no_spacing = [i["id"] for i in infos if i["spacing_mm"] is None]
    if no_spacing:
        beside = ("; beside the others' in mm they are not averaged in the summary"
                  if len(no_spacing) < len(infos) else "")
        warnings.warn(f"{len(no_spacing)} of {len(infos)} case(s) have no spacing "
                      f"(e.g. {no_spacing[0]}): their distances and volumes are in voxels, not mm"
                      f"{beside}", stacklevel=3)
    return scored


def _reference_summaries(scored: dict, ordered: list[str], n_boot: int, seed: int) -> dict[str, dict]:
    """Summaries over cases: one value per case and reference, never per slice."""
    references: dict[str, dict] = {}
    unmixable: tuple[str, ...] = ()
    if len({r["unit"] for r in scored["rows"]}) > 1:  # mm beside voxels
        unmixable = UNIT_METRICS
    elif len({i["level"] for i in scored["infos"]}) > 1:  # 2D images beside 3D stacks
        # distances are in mm (or voxels) in both, but an image's "volume" is an area
        unmixable = VOLUME_METRICS
    for name in ordered + list(METHODS):
        chosen = [r for r in scored["rows"] if r["reference"] == name]
        if chosen:
            references[name] = _summarise_rows(chosen, n_boot, seed, unmixable)
    per_case_agree = _per_case_agreement(scored["agree"])
    if per_case_agree:
        references[INTER_OBSERVER] = _summarise_rows(per_case_agree, n_boot, seed, unmixable)
    return references


def _pixel_soft(scored: dict, soft_ref: str) -> dict:
    """The reference study's pixel_soft_score over every row of every case."""
    soft_sum = soft_rows = soft_pixels = soft_prob = 0.0
    for soft in scored["soft"]:
        soft_sum += soft["sum"]
        soft_rows += soft["rows"]
        soft_pixels += soft["pixels"]
        soft_prob += soft["prob"]
    return {"value": soft_sum / soft_rows, "reference": soft_ref,
            "reduction": SOFT_REDUCTION, "eps": REFERENCE_EPS,
            "dice_mean": float(np.mean([soft["dice"] for soft in scored["soft"]])),
            "n_cases": len(scored["infos"]), "n_rows": int(soft_rows), "n_pixels": int(soft_pixels),
            "n_cases_with_probability": int(soft_prob), "note": PIXEL_SOFT_NOTE}


def _write_outputs(out_dir: Path, outputs: dict[str, Path], force: bool, scored: dict, summary: dict) -> None:
    # All or nothing: a Ctrl-C between the tables must not leave new metrics beside the
    # old summary, which a report would then show as one evaluation.
    with claim(out_dir, "evaluate", all_or_nothing=True):
        check_replaceable(outputs.values(), force, command="evaluate")  # again, now that it is ours
        # Only where an earlier evaluation is replaced (check_replaceable: evaluate's own) is
        # a report built from it stale; a report in a folder holding none is another's.
        if force and any(path.exists() for path in outputs.values()):
            _remove_stale_report(out_dir)  # before the new numbers: a kill leaves no page of other ones
            remove_owned(outputs.values(), by=("evaluate",))  # no old table beside new ones
        write_text(outputs["metrics"], _csv_text(METRICS_CSV_COLUMNS, scored["rows"] + scored["slices"]))
        write_text(outputs["agreement"], _csv_text(AGREEMENT_CSV_COLUMNS, scored["agree"]))
        write_text(outputs["summary"], json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")


def _remove_stale_report(out_dir: Path) -> None:
    """Delete the report bcseg built from the evaluation being replaced; warn of reports above.

    Files of the report that bcseg did not write are left alone, as is a report in a
    folder above (its folder is not claimed here): that one is named in a warning.
    """
    figures = [p for pattern in REPORT_FIGURES for p in sorted(out_dir.glob(pattern))]
    # by the report's writers only: examples_overlay.png may be predict's quick look of a
    # case named "examples", in the same folder
    remove_owned([out_dir / REPORT_PAGE, *figures], by=("evaluate", "report"))
    for folder in real_path(out_dir).parents:
        page = folder / REPORT_PAGE
        if page.is_file() and is_owned(page):
            warnings.warn(f"{page}: describes the evaluation in {out_dir} being replaced; "
                          f"rebuild it with 'bcseg report {folder}'", stacklevel=4)


def _result(outputs: dict[str, Path], summary: dict, study_style: dict | None) -> dict:
    """:func:`evaluate`'s return value: the output files and the headline numbers.

    ``headline`` holds ``reference``, ``dice_mean``, ``dice_ci``, ``dice_ci_note``,
    ``hd95`` (its :func:`~bcseg.measure.metrics.summarise` dict), ``unit``,
    ``inter_observer_dice_mean``, ``pixel_soft_score``, ``reference_protocol`` and
    ``reference_protocol_size``; ``dice`` includes ``inter-observer``.
    """
    references = summary["references"]
    soft_ref = summary["pixel_soft_score"]["reference"]
    headline_ref = soft_ref if soft_ref in references else next(iter(references))
    dice_stats = {name: entry["metrics"]["dice"] for name, entry in references.items()}
    headline = dice_stats[headline_ref]
    ceiling = dice_stats.get(INTER_OBSERVER)
    return {
        "metrics_csv": outputs["metrics"], "agreement_csv": outputs["agreement"],
        "summary_json": outputs["summary"], "n_cases": summary["n_cases"],
        "human_level": human_level_lines(summary),
        "headline": {"reference": headline_ref, "dice_mean": headline["mean"],
                     "dice_ci": (headline["ci_low"], headline["ci_high"]),
                     "dice_ci_note": headline.get("ci_note", ""),
                     "hd95": references[headline_ref]["metrics"]["hd95"], "unit": summary["unit"],
                     "inter_observer_dice_mean": None if ceiling is None else ceiling["mean"],
                     "pixel_soft_score": summary["pixel_soft_score"]["value"],
                     "reference_protocol": None if study_style is None else study_style["value"],
                     "reference_protocol_size": None if study_style is None else study_style["size"]},
        "dice": {name: stats["mean"] for name, stats in dice_stats.items()},
    }
