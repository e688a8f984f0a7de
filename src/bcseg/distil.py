"""Distillation: a trained model or ensemble teaches a new one (``bcseg train --teacher``).

Orchestration over the stages: the teacher runs through inference (:mod:`bcseg.infer`)
to make training targets (:mod:`bcseg.learn`); :func:`bcseg.after_fit.train_and_evaluate`
hands :func:`teacher_targets` to :func:`bcseg.learn.train.train`, as it hands the step
after fitting.

A fold ensemble is more accurate than its members, but it runs once per member. A
student of one model's cost learns from the ensemble's probabilities (its "soft
targets", Hinton et al. 2015; nnU-Net-style ensembles distilled into one network in
medical segmentation): where the ensemble is unsure, so is the target, and the student
is no longer pushed to a hard edge the observers themselves would not agree on.

The teacher segments every case once, before the run folder is touched (so a teacher
that cannot read the data stops the command with nothing written); each training
target is then the observers' mask blended with the teacher's probability,
``(1 - w) * mask + w * teacher`` with ``w = train.teacher_weight`` (see
:mod:`bcseg.learn.pipeline` for how the probability travels through augmentation).
Validation, tuning and the test fold are scored against the observers' masks alone.

A teacher that was trained on a run's test cases leaks them into its score: for an
honest test figure the teacher must not have seen the test fold. Teachers trained by
bcseg record the cases they saw (``fold.json`` beside each model), and a run whose
test cases are among them says so.

``teacher.json`` in the run folder records a fingerprint of the teacher (each model
file's SHA-256 and the settings it runs with), so that ``--resume`` refuses a teacher
that changed since the run started: the targets would no longer be the same.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from bcseg.atomic import file_sha256, read_json
from bcseg.data.cases import Case
from bcseg.errors import ConfigError, DataError, ModelError, UsageError, naming
from bcseg.rundir import FOLD_FILE, TEACHER_FILE, load_run

log = logging.getLogger("bcseg")


def teacher_targets(out: Path, cfg: dict, cases: list[Case], test_ids: set[str], channels,
                    resume: bool, observer_source) -> tuple[dict[str, np.ndarray], dict]:
    """Everything a run needs from its teacher (``cfg["train"]["teacher"]``), before its
    folder is touched: the probabilities of ``cases`` and the fingerprint to record.

    Refuses a recipe a teacher cannot join, an unusable teacher, and on ``resume`` one
    that changed since the run started; warns when the teacher saw ``test_ids``.
    """
    paths = cfg["train"]["teacher"]
    check_recipe(cfg, observer_source)
    models, settings = load_teacher(paths, channels)
    files, _ = load_run(paths[0] if len(paths) == 1 else paths)  # read once, for both checks
    now = fingerprint(paths, files, settings)
    if resume:  # the same targets as before the interruption, or none
        check_fingerprint(Path(out) / TEACHER_FILE, now)
    warn_if_seen(files, test_ids)
    return teacher_probabilities(models, settings, cases, paths), now


def check_recipe(cfg: dict, source) -> None:
    """A teacher needs a mask to blend with and the on-the-fly augmentation
    (``source``: where ``data.observer`` came from, for the message)."""
    if not cfg["train"]["teacher"]:
        return
    if cfg["data"]["observer"] == "random":  # it would draw one plane: a teacher's level
        raise ConfigError(source, "a teacher's soft target is blended with the observers' mask; "
                          "data.observer = 'random' trains on one observer at a time; choose "
                          "another target (union, soft, an observer's name)")
    if cfg["data"]["offline_augment"] != "none":
        raise ConfigError(source, "a teacher's soft target needs the on-the-fly augmentation, "
                          f"not data.offline_augment = {cfg['data']['offline_augment']!r}")


def load_teacher(paths: list[str], channels: list[str] | None):
    """The teacher's models and settings (a run, a k-fold run, ``.keras`` files).

    Refused before anything is written: an unusable model (named by
    :func:`bcseg.infer.segment.load_models`), or one that reads other channels than
    the run trains on (it would segment other images than the student sees).
    """
    from bcseg.infer.segment import load_models

    models, settings = load_models(paths[0] if len(paths) == 1 else paths)
    theirs, ours = tuple(settings.input_channels() or ()), tuple(channels or ())
    if sorted(theirs) != sorted(ours):  # the order is each model's own: it reads by name
        raise ModelError(Path(paths[0]), f"the teacher reads channel(s) {list(theirs) or 'one grey image'}, "
                         f"this run trains on {list(ours) or 'one grey image'}; a teacher must see "
                         "what its student sees")
    return models, settings


def fingerprint(paths: list[str], files: list[Path], settings) -> dict:
    """What the teacher's probabilities depend on: each model file's SHA-256 and the
    settings it runs with (input size, flips, TTA, channels)."""
    record = {"teacher": list(paths),
              "models": [{"file": str(f), "sha256": file_sha256(f)} for f in files],
              "settings": [{"input_size": v.input_size, "patch_size": v.patch_size, "flips": v.flips,
                            "channel_names": v.channel_names, "normalisation": v.normalisation,
                            "tta": settings.tta} for v in settings.member_views()]}
    # tuples as lists and mappings as dicts, as teacher.json reads back
    return json.loads(json.dumps(record, default=lambda o: dict(o) if hasattr(o, "items") else list(o)))


def check_fingerprint(recorded: Path, now: dict) -> None:
    """A resumed run refuses a teacher that is not the one it started with."""
    try:
        before = read_json(recorded)
    except (OSError, ValueError):
        raise UsageError(recorded, "is missing or unreadable: the teacher this run started with "
                         "cannot be checked, so resuming could train on other targets; start a new "
                         "run") from None
    if before.get("models") != now["models"] or before.get("settings") != now["settings"]:
        raise UsageError(recorded, f"the teacher ({', '.join(now['teacher'])}) changed since the run "
                         "started (other model files or settings): resuming would train on other "
                         "targets; put the old teacher back, or start a new run")


def warn_if_seen(files: list[Path], test_ids: set[str]) -> None:
    """Say so when the teacher's model ``files`` were trained or validated on the run's
    test cases (bcseg runs record them in ``fold.json`` beside each model)."""
    seen = set()
    for model in files:
        record = model.parent / FOLD_FILE
        try:
            fold = read_json(record)
            seen |= set(fold.get("train", [])) | set(fold.get("validation", []))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # not a bcseg run (a bare .keras file): nothing is known
    leaked = sorted(seen & test_ids)
    if leaked:
        message = (f"the teacher saw {len(leaked)} of this run's {len(test_ids)} test case(s) in training "
                   f"(e.g. {leaked[0]}): the test figures are not held out; use a teacher trained "
                   "without them (for --folds all: one per fold) for an honest score")
        # A warning only: the command line holds it until every check has passed, so a
        # run refused later (an --out that is not bcseg's) prints its one error alone.
        warnings.warn(message, stacklevel=2)


def teacher_probabilities(models, settings, cases: list[Case], paths=()) -> dict[str, np.ndarray]:
    """The teacher's probability for every case, as uint8 (255 = 1) at the case's shape.

    One byte a pixel: a 1/255 step is far finer than the 1/8 the targets keep.
    A case the teacher cannot segment is a :class:`DataError` naming its image and
    the teacher (``paths``).
    """
    from bcseg.infer.segment import segment_case

    log.info("teacher: segmenting %d case(s) for the soft targets", len(cases))
    probs = {}
    for case in cases:
        try:
            # The model's own fault (no probabilities: NaN weights), whatever the case:
            # named as the teacher's, exit 4, not blamed on the image.
            with naming(", ".join(str(p) for p in paths) or None):
                _, _, _, prob = segment_case(models, case, settings, keep_prob=True)
        except (DataError, ValueError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            teacher = ", ".join(str(p) for p in paths) or "the teacher"
            raise DataError(case.image, f"the teacher ({teacher}) cannot segment it: {problem}") from None
        probs[case.id] = np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    return probs
