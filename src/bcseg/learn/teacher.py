"""Distillation: a trained model or ensemble teaches a new one (``bcseg train --teacher``).

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
honest test figure the teacher must not have seen the test fold.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bcseg.data.dataset import Case
from bcseg.errors import ConfigError, DataError, ModelError

log = logging.getLogger("bcseg")


def check_recipe(cfg: dict, source) -> None:
    """A teacher needs a mask to blend with and the on-the-fly augmentation."""
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
    if theirs != ours:
        raise ModelError(Path(paths[0]), f"the teacher reads channel(s) {list(theirs) or 'one grey image'}, "
                         f"this run trains on {list(ours) or 'one grey image'}; a teacher must see "
                         "what its student sees")
    return models, settings


def teacher_probabilities(models, settings, cases: list[Case]) -> dict[str, np.ndarray]:
    """The teacher's probability for every case, as uint8 (255 = 1) at the case's shape.

    One byte a pixel: a 1/255 step is far finer than the 1/8 the targets keep.
    A case the teacher cannot segment is a :class:`DataError` naming its image.
    """
    from bcseg.after_fit import segment_case

    log.info("teacher: segmenting %d case(s) for the soft targets", len(cases))
    probs = {}
    for case in cases:
        try:
            _, _, _, prob = segment_case(models, case, settings, keep_prob=True)
        except (DataError, ModelError, ValueError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise DataError(case.image, f"the teacher cannot segment it: {problem}") from None
        probs[case.id] = np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    return probs
