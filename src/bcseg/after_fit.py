"""After fitting: tune inference on validation, predict the test fold, evaluate, report.

:mod:`bcseg.learn.train` fits models and drives the folds; this module is the step after
each fit, and :func:`train_and_evaluate` (what ``bcseg train`` and the demo run) puts
the two together. Every prediction goes through :func:`bcseg.infer.predict.segment_volume`
with one :class:`~bcseg.rundir.InferenceSettings`, the same path as ``bcseg
predict``, so a run's test-fold masks are exactly what ``bcseg predict`` makes with
the run's settings.

The test fold is never used to choose anything: threshold, post-processing and TTA
come from the validation split (whole groups taken from the training folds), and
for a k-fold ensemble from the pooled out-of-fold validation predictions of its
members.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bcseg import outputs, rundir
from bcseg.atomic import read_json
from bcseg.data.cases import Case, read_case_masks
from bcseg.errors import naming
from bcseg.rundir import InferenceSettings

log = logging.getLogger("bcseg.learn.train")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
STEP_CHOICES = ((), ("largest",), ("largest", "fill"))


def _say(message: str) -> None:
    log.info(message)
    print(message, flush=True)


# --------------------------------------------------------------------------- settings

def validation_target(cfg: dict) -> str:
    """The mask validation scores against (as training's validation does)."""
    from bcseg.learn.train import validation_target as target

    return target(cfg["data"])


def _probabilities(models, cases: list[Case], settings: InferenceSettings, target: str):
    """Validation probabilities without and with TTA, and the target masks."""
    from bcseg.infer.segment import segment_case
    from bcseg.learn.pipeline import training_target

    probs, truths = {False: [], True: []}, []
    for case in cases:
        for tta in (False, True):
            _, _, mask, prob = segment_case(models, case, settings.replace(tta=tta))
            probs[tta].append(prob)
        truths.append(training_target(read_case_masks(case, mask.shape), target, str(case.image)))
    return probs, truths


def choose_settings(probs: dict, truths: list, settings: InferenceSettings,
                    n_cases: int) -> InferenceSettings:
    """Threshold, post-processing and TTA that maximise the mean Dice per case.

    Both TTA settings are tuned and recorded (``tuned.with_tta``,
    ``tuned.without_tta``), so that a user who switches TTA gets a threshold tuned
    for it. Ties keep the cheaper choice: no TTA, fewer steps, the lower threshold.
    """
    tuned, scores = {}, {}
    for tta in (False, True):
        best = best_cut(probs[tta], truths, settings.threshold)
        scores[tta] = best[0]
        tuned["with_tta" if tta else "without_tta"] = {
            "threshold": best[1], "postprocess": list(best[2]), "validation_dice": round(best[0], 4)}
    off, on = tuned["without_tta"], tuned["with_tta"]
    tta = scores[True] > scores[False] + 1e-9
    chosen = on if tta else off
    _say(f"validation: TTA {'on' if tta else 'off'}, threshold {chosen['threshold']}, post-processing "
         f"{chosen['postprocess'] or 'none'} (mean Dice {chosen['validation_dice']:.3f} over "
         f"{n_cases} case(s); {off['validation_dice']:.3f} without TTA, "
         f"{on['validation_dice']:.3f} with TTA over flips {_flips_text(settings)})")
    return settings.replace(threshold=chosen["threshold"], postprocess=tuple(chosen["postprocess"]),
                            tta=tta, tuned=tuned,
                            info=dict(settings.info, validation_dice=chosen["validation_dice"]))


def best_cut(probs: list, truths: list, threshold: float) -> tuple[float, float, tuple]:
    """``(mean Dice, threshold, post-processing steps)`` that maximise the mean Dice per
    case over :data:`THRESHOLDS` and :data:`STEP_CHOICES` (``threshold`` where no choice
    scores). Ties keep the cheaper choice: fewer steps, the lower threshold."""
    from bcseg.measure.metrics import dice
    from bcseg.infer.postprocess import postprocess

    best = (-1.0, threshold, ())
    for cut in THRESHOLDS:
        for steps in STEP_CHOICES:
            score = float(np.mean([dice(postprocess(p > cut, list(steps)), t)
                                   for p, t in zip(probs, truths)]))
            if score > best[0] + 1e-9:
                best = (score, cut, steps)
    return best


def _flips_text(settings: InferenceSettings) -> str:
    """The mirror axes TTA uses: an ensemble's members' own (its top-level ``flips`` is
    only the default, ['z', 'lr'] even for 2D members)."""
    flips = sorted({tuple(m.flips) for m in settings.members}) if settings.members else [settings.flips]
    return " / ".join(str(list(f)) if f else "none" for f in flips)


def tune_inference(models, cases: list[Case], cfg: dict, settings: InferenceSettings) -> InferenceSettings:
    """Tune ``settings`` on the validation ``cases`` (never the test fold), as
    ``inference.tune`` asks; unchanged without cases or tuning."""
    if not cases or not cfg["inference"]["tune"]:
        return settings
    probs, truths = _probabilities(models, cases, settings, validation_target(cfg))
    return choose_settings(probs, truths, settings, len(cases))


# --------------------------------------------------------------------------- test fold

def predict_test(models, cases: list[Case], out: Path, settings: InferenceSettings) -> Path:
    """Segment the test cases into ``out/predictions`` with the tuned settings."""
    from bcseg.data import io
    from bcseg.infer.segment import segment_case

    folder = Path(out) / rundir.PREDICTIONS_DIR
    for case in cases:
        _, spacing, mask, prob = segment_case(models, case, settings)
        io.write_mask(folder / f"{case.id}_mask.tif", mask, spacing)
        io.write_probability(folder / f"{case.id}_prob.tif", prob, spacing)
    return folder


def evaluate_test(out: Path, predictions: Path, cases: list[Case],
                  report: Callable[[Path], object] | None = None) -> dict:
    """Score the predictions against every observer; then ``report(out)`` if given."""
    from bcseg.measure.evaluate import evaluate

    result = evaluate(predictions, cases, out, force=True)
    if report is not None:
        report(out)
    return result


def finish_fold(fitted: dict, report: Callable[[Path], object] | None = None) -> dict:
    """The step after fitting one fold: tune, predict, evaluate, then record the settings.

    Parameters
    ----------
    fitted : dict
        From :func:`bcseg.learn.train.run_fold`: ``out`` (the fold's run folder), ``cfg``,
        ``validation`` and ``test`` (lists of Case), ``best_epoch``.
    report : callable, optional
        Called with the fold's folder after evaluation (e.g.
        :func:`bcseg.report.html.build_report`).

    Returns
    -------
    dict
        The evaluation's headline numbers (empty without a test fold).
    """
    from bcseg.infer.predict import load_model

    out = Path(fitted["out"])
    model = load_model(out / rundir.MODEL_FILE)  # float32 compute, as inference will use
    settings = rundir.recipe_settings(fitted["cfg"], fitted["best_epoch"], fitted.get("channels"),
                               fitted.get("normalisation"))
    with naming(out / rundir.MODEL_FILE):
        settings = tune_inference(model, fitted["validation"], fitted["cfg"], settings)
    # inference.json is what marks a fold finished (--resume skips it, predict and ensemble
    # take it as a trained run): written last, so that a run stopped while its test fold
    # is segmented or scored is resumed to its evaluation, not taken for a finished one.
    result = {}
    if fitted["test"]:
        with naming(out / rundir.MODEL_FILE):
            predictions = predict_test(model, fitted["test"], out, settings)
        result = evaluate_test(out, predictions, fitted["test"], report)
    rundir.save_run_settings(out, settings)
    return result


# --------------------------------------------------------------------------- k-fold ensembles

def tune_ensemble(run_dir: str | Path, cases: list[Case], cfg: dict,
                  fold_dirs: list[Path] | None = None, write: bool = True) -> InferenceSettings:
    """Record a k-fold run's fold models as one ensemble with its own settings.

    The members keep their own input size and mirror flips; one threshold,
    post-processing and TTA choice is made on the pooled out-of-fold validation
    predictions (see :func:`tune_members`). Written to the run folder's
    ``inference.json`` unless ``write`` is False. ``fold_dirs`` chooses some of the
    run's folds (a smaller ensemble, for benchmarks/ensemble.py); by default all of them.
    """
    run_dir = Path(run_dir)
    folds = rundir.find_members(run_dir) if fold_dirs is None else fold_dirs
    settings = tune_members({str(Path(f.name) / rundir.MODEL_FILE): f / rundir.MODEL_FILE for f in folds},
                            cases, cfg)
    if write:  # with each fold model's digest: a fold's model swapped later is refused
        rundir.write_settings(run_dir, rundir.with_weights(settings, run_dir))
    return settings


def tune_members(members: dict[str, Path], cases: list[Case], cfg: dict) -> InferenceSettings:
    """One threshold, post-processing and TTA choice for an ensemble; ``members`` maps
    the path each member will have in the ensemble's folder to its model file, which
    lies in its training run's folder beside ``fold.json`` and ``inference.json``.

    Members trained on one split (the same training and validation cases: a seed
    ensemble, ``train.member_seed``) score each of its validation cases on their mean
    probability, the mean the ensemble will output. Members of different splits (a
    k-fold run's folds) are pooled: each fold model on its own validation cases, which
    it never trained on, a case in two folds' validation splits counted in each.
    """
    from bcseg.infer.predict import load_model

    by_id = {c.id: c for c in cases}
    splits: dict[tuple, dict] = {}  # (training ids, validation ids) -> its members' probabilities
    recorded = []
    for path, model_file in members.items():
        own = rundir.model_settings(model_file)
        recorded.append(rundir.member_settings(path, own))
        # read as ensemble's check read it (a byte-order mark is fine): json.loads
        # crashed on a fold.json that check had passed
        fold = read_json(model_file.parent / rundir.FOLD_FILE)
        # In the order of their ids, so that members of one split, whatever order their
        # fold.json lists it in, average each case's probabilities with its own.
        validation = [by_id[i] for i in sorted(fold["validation"]) if i in by_id]
        with naming(model_file):
            p, t = _probabilities(load_model(model_file), validation, own, validation_target(cfg))
        split = splits.setdefault((tuple(sorted(fold["train"])), tuple(sorted(fold["validation"]))),
                                  {False: [], True: [], "truths": t})
        for tta in (False, True):
            split[tta].append(p[tta])
    probs, truths = {False: [], True: []}, []
    for split in splits.values():
        for tta in (False, True):  # per case, the mean over the split's members
            probs[tta].extend(m[0] if len(m) == 1 else np.mean(m, axis=0) for m in zip(*split[tta]))
        truths.extend(split["truths"])
    settings = InferenceSettings(threshold=cfg["inference"]["threshold"], tta=cfg["inference"]["tta"],
                                 members=tuple(recorded), info={"pooled_validation_cases": len(truths)})
    if truths and cfg["inference"]["tune"]:
        shared = max(len(split[False]) for split in splits.values())
        _say(f"ensemble of {len(recorded)} models, tuned on {len(truths)} validation cases "
             + ("(their pooled out-of-fold predictions):" if shared == 1
                else f"(the mean of the {shared} members that share each validation split):"))
        settings = choose_settings(probs, truths, settings, len(truths))
    return settings


# --------------------------------------------------------------------------- the whole run

def _report(out: Path) -> None:
    from bcseg.report.html import build_report

    build_report(out)


CURVES_EVERY_S = 20.0  # the training curves are redrawn after an epoch at most this often


def curves_drawer(every_s: float = CURVES_EVERY_S) -> Callable[[Path, bool], None]:
    """The ``plot`` hook of :func:`bcseg.learn.train.train`: redraws ``loss.png`` and
    ``dice.png`` after the first epoch, then after an epoch once ``every_s`` seconds
    have passed since the last drawing, and whenever ``final`` (a run stopped part-way).

    Drawing both figures takes about half a second: after every epoch of a short one
    (the demo's 2-5 s epochs) that was a tenth of the training time, taken from the
    epochs a time-capped model gets. A BUSI epoch (20-40 s) is still drawn every time,
    and the report drawn after each fit draws the finished curves.
    """
    from bcseg.report.html import plot_history

    drawn = {}  # fold folder: when its curves were last drawn

    def draw(out: Path, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - drawn.get(out, -math.inf) >= every_s:
            plot_history(out / "history.csv", out)
            drawn[out] = time.monotonic()

    return draw


def train_and_evaluate(data, out, *, report: bool = True, **options) -> list[dict]:
    """``bcseg train``: fit every fold (:func:`bcseg.learn.train.train`), then after each fit
    tune, predict the test fold, evaluate and report; a k-fold run (``fold="all"``)
    is then recorded as an ensemble of its fold models (:func:`tune_ensemble`).

    ``options`` are those of :func:`bcseg.learn.train.train`; ``report=False`` skips the
    curves and the HTML report.
    """
    from bcseg.data.dataset import discover
    from bcseg.distil import teacher_targets
    from bcseg.learn.train import train

    cases = list(data) if isinstance(data, (list, tuple)) else None
    results = train(data, out, after_fit=lambda fitted: finish_fold(fitted, _report if report else None),
                    plot=curves_drawer() if report else None, teach=teacher_targets, **options)
    if options.get("fold") == "all" and len(rundir.find_members(out)) > 1:
        from bcseg.config import load_config

        cfg = load_config(Path(out) / rundir.CONFIG_FILE)
        with outputs.claim(out, "train"):  # recorded as the run's, so --force can replace it
            tune_ensemble(out, cases if cases is not None else discover(data), cfg)
    return results
