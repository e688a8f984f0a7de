"""Training: run directories, the epoch loop, resume, and the k-fold driver.

This module fits models; the step after each fit (tuning, test-fold prediction,
evaluation, report) is :mod:`bcseg.after_fit`, passed in as ``after_fit``.

A run directory holds everything about one run: ``config.toml``, ``splits.json``,
``model_best.keras`` (best validation Dice) and ``model_last.keras`` (with the
optimiser, for ``--resume``), ``state.json``, ``history.csv``, ``loss.png`` and
``dice.png`` (redrawn every epoch), ``inference.json`` (threshold and
post-processing chosen on the validation split), ``train.log``, and after the run
the test fold's ``predictions/`` with its evaluation and ``report.html``.

Each epoch is its own ``fit`` call on data drawn from ``(seed, epoch)``, and the
learning rate is a function of the epoch, so a run stopped after epoch k and resumed
reaches the same weights as one that never stopped. The test fold is never used to
choose anything: early stopping, the best model, the threshold and post-processing
all come from a validation split of whole groups taken from the training folds.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import re
import shutil
import signal
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from bcseg import outputs
from bcseg import rundir
from bcseg.learn import pipeline
from bcseg.atomic import atomic_path, partial_name, read_json, remove_partials, write_text
from bcseg.learn.augment import AugmentConfig
from bcseg.config import (is_whole, k_beside_folds_file, load_config, save_config, shorten,
                          unused_keys)
from bcseg.data.consensus import METHODS
from bcseg.data.channels import check_channel_name
from bcseg.data.case_checks import require_every_observer
from bcseg.data.cases import IMAGE_CHANNEL, Case, dataset_channels
from bcseg.data.content import case_digest, case_files, changed_case, refuse_duplicate_images
from bcseg.data.dataset import discover
from bcseg.data.intensity import check_methods
from bcseg.data.splits import (check_groups_whole, folds_from_file, group_note, kfold_by_group, load_splits,
                               require_groups, save_splits, validation_ids)
from bcseg.errors import STOPS_ASKED, ConfigError, DataError, ModelError, UsageError
from bcseg.learn.losses import DiceMetric, IoUMetric, get_loss
from bcseg.learn.machine import (cache_memory, check_epoch_memory, check_memory, distribution,
                                  mixed_policy)
from bcseg.learn.models import unet, unet_options
from bcseg.learn.starting_model import initial_model, started_from

HISTORY_COLUMNS = ["epoch", "loss", "dice", "iou", "val_loss", "val_dice", "val_iou", "lr"]
log = logging.getLogger("bcseg.learn.train")


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM.

    A KeyboardInterrupt, not an Exception: a handler for a bad model or file (``except
    Exception``) that happens to be running must not report it as one, and every
    command that trains (``demo`` too) ends on it as on Ctrl-C, in one line.

    ``saved_epoch`` is the last epoch whose checkpoint is on disk (0: none), so the
    message can say exactly what a ``--resume`` continues from.
    """

    def __init__(self, message: str, saved_epoch: int = 0):
        super().__init__(message)
        self.saved_epoch = saved_epoch


# --------------------------------------------------------------------------- run directory

def _replaces_run(out: Path, resume: bool, force: bool) -> bool:
    """Whether this run replaces an earlier one in ``out``; refuses without --force."""
    if resume:
        _check_resumable(out)
        return False
    if not out.exists() or not any(out.iterdir()):
        return False
    try:  # a run that --resume may continue (an interrupted one): say so, whatever --force could do
        _check_resumable(out)
        resume_hint = "pass resume=True to continue it"
    except UsageError:
        resume_hint = None
    return outputs.require_new_folder(out, force, "train", "a run", resume_hint)


def _check_resumable(out: Path) -> None:
    """``--resume`` writes into a run that ``train`` wrote and nothing else: it redraws
    the curves and appends to the log, so a plot or notes of the user's there would be
    overwritten."""
    # Results of other commands in subfolders of their own (predictions of the run)
    # are left alone by --resume, so they may stay.
    foreign = [name for name in (outputs.foreign(out) if out.is_dir() else [])
               if outputs.nested_writer(out, name) is None]
    if foreign:
        raise UsageError(out / foreign[0], "was not written by bcseg, or was changed after it was; "
                         "resume=True continues only a run folder that holds bcseg's files "
                         "alone: move it away")
    outputs.check_one_writer(out, "train")


def _inputs(data, cases: list[Case], *others) -> list:
    """Every file the run reads, which replacing the run folder must never remove."""
    reads = [data] if isinstance(data, (str, Path)) else []
    # Every channel, not only the first: a manifest may take a case's PA channel from an
    # earlier run's probability maps, which --force moved aside and then failed to read.
    reads += [p for c in cases for p in sorted(case_files(c))]
    return reads + [p for p in others if isinstance(p, (str, Path)) and Path(p).exists()]


def _config_source(out: Path, config, overrides: dict | None, resume: bool, section: str, key: str):
    """Where ``section.key`` came from, for messages: the run's ``config.toml`` when
    resuming, None when a command-line flag set it, else the ``--config`` file or preset.
    (The built-in defaults are always valid, so a bad value never comes from them.)"""
    if resume:
        return out / "config.toml"
    if (overrides or {}).get(section, {}).get(key):
        return None
    return config


def check_observer(cases: list[Case], observer: str, source=None) -> None:
    """The training target must exist in every case, checked before the run starts.
    ``source``: the configuration file that named it (None: ``--observer``)."""
    if observer in METHODS or observer in pipeline.KEEP_ALL:  # random, soft: every observer
        require_every_observer(cases, f"the training target '{observer}'")
        return
    lacking = [c for c in cases if observer not in c.masks]
    if len(lacking) == len(cases):
        names = sorted({o for c in cases for o in c.masks})
        problem = (f"unknown observer {shorten(repr(observer))}; choose one of "
                   f"{', '.join([*METHODS, *pipeline.KEEP_ALL, *names])}")
        if source is None:
            raise UsageError("--observer", problem)
        raise ConfigError(source, f"'data.observer': {problem}")
    if lacking:
        raise DataError(lacking[0].image, f"has no mask by observer {observer!r}, the training target")


class _RunLog(logging.FileHandler):
    """train.log, appended line by line rather than written whole, so each line marks
    the run alive as a finished file does (:func:`bcseg.outputs.beat`)."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        outputs.beat(self.baseFilename)


def _start_log(out: Path) -> logging.Handler:
    handler = _RunLog(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _say(message: str) -> None:
    log.info(message)
    print(message, flush=True)


# --------------------------------------------------------------------------- splits

def choose_folds(cases: list[Case], cfg: dict, folds_file=None,
                 data=None) -> tuple[dict[str, int], str]:
    """Fold per case id from a fold file, the ``last`` rule, or group k-fold.

    Cases without a group are flagged in one warning; per-slice rows of a stack
    without groups are refused (:func:`bcseg.data.splits.require_groups`), naming ``data``.
    """
    train_cfg = cfg["train"]
    if folds_file:
        return folds_from_file(folds_file, cases), str(folds_file)
    note = group_note(cases)
    if note:
        warnings.warn(note)
    require_groups(cases, data)
    if train_cfg["split"] == "last":
        groups = sorted({c.group for c in cases})
        if len(groups) < 2:  # the last 0 would be the test set: a run with nothing tested
            raise DataError(data, f"only {len(groups)} specimen/group: a test set of the last "
                            "specimens needs at least 2 (one to train on, one to test)")
        n_test = min(train_cfg["test_last"], len(groups) - 1)
        if n_test < train_cfg["test_last"]:
            warnings.warn(f"only {len(groups)} specimens: the last {n_test} form the test set")
        test = set(groups[len(groups) - n_test:])
        return {c.id: 0 if c.group in test else 1 for c in cases}, "last"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = kfold_by_group(cases, k=train_cfg["k"], seed=train_cfg["seed"], source=data)
    for warning in caught:
        warnings.warn(str(warning.message))
    return folds, "kfold_by_group"


def _test_folds(folds: dict[str, int], fold, split: str) -> list[int]:
    available = sorted(set(folds.values()))
    if split == "last":
        available = [0]
    if fold == "all":
        return available
    if int(fold) not in available:
        # shortened: --fold takes any whole number, and 4000 digits made a 4000-character line
        raise UsageError("--fold", f"fold {shorten(str(fold))} does not exist; folds are "
                         f"{available[0]}-{available[-1]}")
    return [int(fold)]


# --------------------------------------------------------------------------- model

def build_model(cfg: dict, in_channels: int = 1) -> keras.Model:
    return unet(ndim=cfg["model"]["ndim"], in_channels=in_channels, **unet_options(cfg["model"]))


def compile_model(model: keras.Model, cfg: dict) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(cfg["train"]["learning_rate"]),
                  loss=get_loss(cfg["train"]["loss"]), metrics=[DiceMetric(), IoUMetric()])
    return model


def planned_epochs(cfg: dict, state: dict) -> int:
    """Epochs this run will train: the configured number, or fewer under a time budget."""
    return int(state.get("epochs_planned", cfg["train"]["epochs"]))


def _plan_budget(cfg: dict, state: dict, epoch_seconds: float) -> None:
    """Under ``train.budget_minutes``, fix the epoch count after timing epoch 2.

    The first epoch also traces the graphs, so the second one is timed. The count
    is then kept in ``state.json``, so the schedule stays a function of the epoch
    and a resumed run follows the same plan.
    """
    budget = cfg["train"]["budget_minutes"] * 60
    state["train_seconds"] = state.get("train_seconds", 0.0) + epoch_seconds
    if budget > 0 and "epochs_planned" not in state and state["epoch"] + 1 >= 2:
        fits = state["epoch"] + 1 + int((budget - state["train_seconds"]) // max(epoch_seconds, 1e-3))
        state["epochs_planned"] = max(2, min(cfg["train"]["epochs"], fits))
        _say(f"time budget {cfg['train']['budget_minutes']:g} min: "
             f"{state['epochs_planned']} epochs at {epoch_seconds:.1f} s each")


def learning_rate(cfg: dict, epoch: int, state: dict) -> float:
    """Learning rate for ``epoch`` (0-based): a pure function of the epoch and state."""
    base, total = cfg["train"]["learning_rate"], planned_epochs(cfg, state)
    schedule = cfg["train"]["lr_schedule"]
    if schedule == "cosine":  # warm-free cosine decay to 5% of the base rate
        return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / max(1, total))))
    if schedule == "plateau":
        return base * 0.5 ** state.get("plateau_drops", 0)
    return base


# --------------------------------------------------------------------------- fitting

def _append_history(path: Path, row: dict) -> None:
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < row["epoch"]]
    rows.append({k: row.get(k, "") for k in HISTORY_COLUMNS})
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _save_model(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def _save_checkpoint(model: keras.Model, out: Path, state: dict) -> None:
    """Save the epoch's model (with optimiser) and then ``state.json`` pointing at it.

    ``state.json`` is written last, so a run killed half-way through saving still
    resumes from a consistent pair; ``model_last.keras`` is a hard link to the same
    file.
    """
    folder = out / rundir.CHECKPOINTS_DIR
    name = f"epoch_{state['epoch']:04d}.keras"
    _save_model(model, folder / name)
    state["checkpoint"] = f"{rundir.CHECKPOINTS_DIR}/{name}"
    write_text(out / rundir.STATE_FILE, json.dumps(state, indent=1) + "\n")
    # The run's earlier checkpoints go (one left by a kill between these lines too), but
    # only files the run wrote, unchanged: a copy the user kept of a good epoch
    # (epoch_0040_best.keras) is theirs, whatever its name.
    for old in folder.glob("epoch_*.keras"):
        if old.name != name and outputs.still_as_written(old):
            old.unlink()
    link = partial_name(out / "model_last.keras")  # recognisably temporary if a kill strikes
    link.unlink(missing_ok=True)
    try:
        link.hardlink_to(folder / name)
    except OSError:  # file systems without hard links
        shutil.copyfile(folder / name, link)
    link.replace(out / "model_last.keras")
    outputs.beat(out / "model_last.keras")  # linked, not written through atomic_path: the claim's file


def fit(model: keras.Model, cfg: dict, train: pipeline.Samples, val: pipeline.Samples | None,
        out: Path, state: dict, plot: Callable[..., object] | None = None) -> dict:
    """Train epoch by epoch from ``state['epoch']``; checkpoint after every epoch.

    ``plot``, if given, is called with ``out`` after every epoch (to redraw the curves;
    it may skip some), and with ``final=True`` when the run stops part-way, so that the
    curves show every saved epoch.
    """
    t = cfg["train"]
    augment = AugmentConfig.from_dict(cfg["augment"])
    val_data = pipeline.validation_arrays(val, _patch_shape(cfg), t["seed"]) if val is not None else None
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum
        model.stop_training = True

    done = {"batches": 0}  # training batches finished in this epoch
    halt = _halt_callback(model, stop, done)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # an early-stopped run resumed (stopped while it was tested) has no epoch left
        while state["epoch"] < planned_epochs(cfg, state) and not state.get("stopped_early"):
            epoch = state["epoch"]
            if stop["signal"] is not None:
                raise Interrupted(f"stopped before epoch {epoch + 1}", state["epoch"])
            started = time.perf_counter()
            row, batches = _train_epoch(model, cfg, train, val_data, epoch, state, halt, augment)
            # A signal during validation stops nothing: every batch was trained, so the
            # epoch is complete and is saved like any other before stopping.
            if stop["signal"] is not None and done["batches"] < batches:
                raise Interrupted(f"stopped during epoch {epoch + 1}, which is discarded",
                                  state["epoch"])
            _plan_budget(cfg, state, time.perf_counter() - started)
            state = _after_epoch(model, cfg, out, state, row, plot)
            if stop["signal"] is not None:
                raise Interrupted(f"stopped after epoch {epoch + 1}", state["epoch"])
            if state.get("stopped_early"):
                _say(f"early stopping: no better validation Dice for "
                     f"{t['early_stopping']} epochs")
                break
        if stop["signal"] is not None:  # came while the last epoch was being saved
            raise Interrupted(f"stopped after epoch {state['epoch']}", state["epoch"])
    except Interrupted:
        if plot is not None and state["epoch"] > 0:
            plot(out, final=True)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return state


def _patch_shape(cfg: dict) -> tuple[int, int, int] | None:
    """The 3D training patch; None for a 2D model, which trains on whole slices."""
    d = cfg["data"]
    return (d["patch_depth"], d["size"], d["size"]) if cfg["model"]["ndim"] == 3 else None


def _epoch_samples(cfg: dict, train: pipeline.Samples) -> int:
    """Samples drawn per epoch: ``steps_per_epoch`` batches, else one pass over the
    slices (2D) or four patches per volume (3D), at least two batches."""
    t = cfg["train"]
    if t["steps_per_epoch"]:
        return t["steps_per_epoch"] * t["batch_size"]
    if cfg["model"]["ndim"] == 2:
        return len(train.images)
    return max(4 * len(train.images), 2 * t["batch_size"])


def _halt_callback(model: keras.Model, stop: dict, done: dict) -> keras.callbacks.Callback:
    """The callback that stops ``fit`` on a signal and counts the finished batches.

    fit() clears model.stop_training when it starts, which would forget a signal that
    came between epochs (while saving a checkpoint): the caller checks before each
    epoch, and this re-asserts it at every batch (at its start, which keeps Keras's
    batch-end async).
    """
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: done.update(batches=0),
        on_train_batch_begin=lambda batch, logs: setattr(
            model, "stop_training", model.stop_training or stop["signal"] is not None),
        on_train_batch_end=lambda batch, logs: done.update(batches=done["batches"] + 1))


def draw_seed(train_cfg: dict) -> int:
    """Seed of the weights' initialisation and of each epoch's draws and augmentation:
    ``member_seed`` where set (>= 0), else ``seed``. Folds and the validation split
    always come from ``seed``, so that the members of a seed ensemble share them."""
    return train_cfg["seed"] if train_cfg["member_seed"] < 0 else train_cfg["member_seed"]


def _train_epoch(model: keras.Model, cfg: dict, train: pipeline.Samples, val_data, epoch: int,
                 state: dict, halt, augment: AugmentConfig) -> tuple[dict, int]:
    """Fit one epoch on data drawn from ``(seed, epoch)``; return its history row and
    the number of batches it holds."""
    t, d = cfg["train"], cfg["data"]
    seed = draw_seed(t)
    keras.utils.set_random_seed(seed + epoch)  # dropout etc. repeat per epoch
    lr = learning_rate(cfg, epoch, state)
    model.optimizer.learning_rate.assign(lr)
    images, targets = pipeline.epoch_arrays(train, epoch, seed, _epoch_samples(cfg, train),
                                            d["tumour_fraction"], _patch_shape(cfg))
    dataset = pipeline.epoch_dataset(images, targets, t["batch_size"], seed, epoch, augment,
                                     train.channels, train.weights)
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _build_locally(model, dataset)
    _say(f"epoch {epoch + 1}/{planned_epochs(cfg, state)}  lr {lr:.2e}")
    result = model.fit(dataset, epochs=1, verbose=1 if sys.stdout.isatty() else 2, shuffle=False,
                       callbacks=[halt], validation_data=val_data,
                       validation_batch_size=t["batch_size"])
    row = {k: float(v[-1]) for k, v in result.history.items()}
    row.update(epoch=epoch + 1, lr=lr)
    return row, -(-len(images) // t["batch_size"])


def _build_locally(model: keras.Model, dataset) -> None:
    """Work around Keras 3's ``fit`` under MultiWorkerMirroredStrategy; call before ``fit``.

    Two steps of Keras 3.15's ``fit`` fail under that strategy (keras-team/keras#20585):
    it builds the model from its first distributed batch averaged across workers
    ("Attempt to convert a value (PerReplica...) to a Tensor"), and it averages the
    logged metrics with ``strategy.reduce("MEAN", v, axis=0)``, an error for scalars.
    The build needs only the batch's shapes, so it is done from a local batch; the
    metrics are averaged over all workers with ``axis=None`` instead.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not getattr(tf_trainer.reduce_per_replica, "bcseg_multiworker", False):
        keras_reduce = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction == "auto" and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
                return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return keras_reduce(values, strategy, reduction)

        reduce_per_replica.bcseg_multiworker = True
        tf_trainer.reduce_per_replica = reduce_per_replica
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None



def _stop_on_signal(saved_epoch: int, said: str = "") -> list[int]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` while the trained run is tested
    (or, with ``said``, the message, between one fold and the next).

    Without this, SIGTERM after the last epoch would end the process with no word
    and no cleanup of half-written predictions. :func:`train` restores the handlers.
    Returns the signals caught: a handler that runs inside a finaliser (a ``__del__``,
    a weakref callback) has its exception printed and dropped by Python, so the fold
    loop checks this list once the fold is tested and stops there.
    """
    caught: list[int] = []

    def on_signal(signum, frame):
        caught.append(signum)
        STOPS_ASKED.append(signum)
        raise Interrupted(said or f"stopped after epoch {saved_epoch}, before the run was tested",
                          saved_epoch)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    return caught


def _after_epoch(model, cfg: dict, out: Path, state: dict, row: dict, plot=None) -> dict:
    """Record the epoch, keep the best model, update schedules; save the checkpoint."""
    t = cfg["train"]
    score = row.get("val_dice")
    state = dict(state, epoch=row["epoch"])
    # Without a validation split (one training group) the last epoch's model is kept, as
    # the warning says: choosing by the training Dice kept whichever epoch fit the
    # training images best, and the run reported that Dice as its validation Dice.
    if score is None or score > state.get("best_score", -1.0):
        state.update(best_score=score, best_epoch=row["epoch"], waited=0)
        _save_model(model, out / rundir.MODEL_FILE)
    else:
        state["waited"] = state.get("waited", 0) + 1
    if t["lr_schedule"] == "plateau" and state["waited"] and state["waited"] % 5 == 0:
        state["plateau_drops"] = state.get("plateau_drops", 0) + 1
    if t["early_stopping"] and state["waited"] >= t["early_stopping"]:
        state["stopped_early"] = True
    _append_history(out / "history.csv", row)
    _save_checkpoint(model, out, state)
    if plot is not None:
        plot(out)
    log.info("epoch %d %s", row["epoch"], {k: round(v, 4) for k, v in row.items() if k != "epoch"})
    return state


# --------------------------------------------------------------------------- one fold

def run_fold(cases: list[Case], folds: dict[str, int], fold: int, cfg: dict, out: Path,
             resume: bool = False, init_model: Path | None = None,
             strategy: str | None = None, plot: Callable[..., object] | None = None,
             validation: list[str] | None = None, teacher: dict[str, np.ndarray] | None = None,
             before_fit: Callable[[], None] | None = None) -> dict:
    """Fit on every fold but ``fold``, validating on held-out groups of them, or on
    the training folds' cases whose ids are in ``validation`` where it is given.
    With ``teacher`` (probabilities per case id, see :func:`teacher_probabilities`)
    the training targets blend in the teacher's; validation stays on the masks.

    Returns
    -------
    dict
        ``fold``, ``best_epoch``, ``best_val_dice``, and for the step after fitting
        (:func:`bcseg.after_fit.finish_fold`) ``out``, ``cfg`` and the ``validation``
        and ``test`` cases.
    """
    t = cfg["train"]
    out.mkdir(parents=True, exist_ok=True)
    test = [c for c in cases if folds[c.id] == fold]
    pool = [c for c in cases if folds[c.id] != fold]
    val_ids = set(validation_ids(pool, t["val_fraction"], t["seed"]) if validation is None
                  else {c.id for c in pool if c.id in set(validation)})
    train_cases = [c for c in pool if c.id not in val_ids]
    val_cases = [c for c in pool if c.id in val_ids]
    _say(f"fold {fold}: {len(train_cases)} training, {len(val_cases)} validation, "
         f"{len(test)} test case(s) ({len({c.group for c in test})} test group(s))")
    # The validation cases' files by digest: an ensemble tuned on them later re-reads
    # them from a dataset it is given, and must know it is this one.
    write_text(out / rundir.FOLD_FILE, json.dumps({"fold": fold, "train": [c.id for c in train_cases],
                                              "validation": sorted(val_ids),
                                              "test": [c.id for c in test],
                                              "validation_sha256": {c.id: case_digest(c) for c in
                                                                    sorted(val_cases, key=lambda c: c.id)}},
                                             indent=1) + "\n")

    d, ndim = cfg["data"], cfg["model"]["ndim"]
    channels, methods = run_channels(cases, cfg)
    named = {"channels": channels, "methods": methods}
    taught = {"teacher": teacher, "teacher_weight": t["teacher_weight"]}
    if ndim == 2:
        train_set = pipeline.slice_samples(train_cases, d["observer"], d["size"], d["offline_augment"],
                                           draw_seed(t), **named, **taught)
        val_set = pipeline.slice_samples(val_cases, validation_target(d), d["size"], **named) \
            if val_cases else None
    else:
        train_set = pipeline.volume_samples(train_cases, d["observer"], **named, **taught)
        val_set = pipeline.volume_samples(val_cases, validation_target(d), **named) if val_cases else None
    _say(f"cached {len(train_set.images)} training {'slices' if ndim == 2 else 'volumes'} "
         f"({int(train_set.has_tumour.sum())} with tumour)")
    if teacher is not None:
        _say(f"distilling: each training target is {1 - t['teacher_weight']:g} x the mask + "
             f"{t['teacher_weight']:g} x the teacher's probability ({', '.join(t['teacher'])})")

    scope = distribution(strategy)
    state = {"epoch": 0}
    with scope.scope():
        if resume and (out / rundir.STATE_FILE).is_file():
            state, checkpoint = _resume_state(out)
            model = _load_checkpoint(checkpoint)
            _say(f"resuming after epoch {state['epoch']}")
        else:
            # Seeded afresh for each fold: a fold starts as it would trained alone (whatever
            # earlier folds drew), and a seed ensemble's members start apart.
            keras.utils.set_random_seed(draw_seed(t))
            model = initial_model(init_model, channels) if init_model else \
                build_model(cfg, len(channels or [IMAGE_CHANNEL]))
            compile_model(model, cfg)
    if before_fit is not None:  # the data are read: the last moment to stop before fitting
        before_fit()
    state = fit(model, cfg, train_set, val_set, out, state, plot)
    caught = _stop_on_signal(state["epoch"])  # until train() restores the handlers
    return {"fold": fold, "best_epoch": state.get("best_epoch"), "best_val_dice": state.get("best_score"),
            "saved_epoch": state["epoch"], "signals_caught": caught,
            "out": out, "cfg": cfg, "validation": val_cases, "test": test,
            "channels": channels, "normalisation": methods}


def run_channels(cases: list[Case], cfg: dict, source=None) -> tuple[list[str] | None, dict[str, str]]:
    """The named channels a run trains on, in order, and each one's normalisation.

    ``data.channels`` chooses them; empty, every channel of the dataset in
    :func:`bcseg.data.cases.dataset_channels` order. A dataset of grey images that
    names no channels gives ``(None, {})``: one grey image per case, as always.

    Raises
    ------
    ConfigError
        For an unusable channel name or normalisation method, or a normalisation for a
        channel the run does not train on (naming ``source``, the configuration file,
        where given).
    DataError
        Naming the first case that lacks one of the channels.
    """
    wanted = list(cfg["data"]["channels"])
    chosen = cfg["data"]["normalisation"]
    if not any(c.channels for c in cases) and wanted in ([], [IMAGE_CHANNEL]):
        if chosen:  # it would be ignored: a grey image is normalised as it always was
            raise ConfigError(source, f"'data.normalisation' names channel(s) {', '.join(chosen)}, but "
                              "the dataset has one unnamed image per case; remove the table")
        return None, {}
    names = wanted or dataset_channels(cases)
    try:
        methods = check_methods(chosen, [check_channel_name(n, None) for n in names])
    except (DataError, ValueError) as exc:
        raise ConfigError(source, f"data.channels / data.normalisation: "
                          f"{exc.problem if isinstance(exc, DataError) else exc}") from None
    known = names + [n for n in dataset_channels(cases) if n not in names]
    unknown = [n for n in chosen if n not in known]
    if unknown:  # a misspelt channel would silently keep its default normalisation
        raise ConfigError(source, f"'data.normalisation' names channel(s) {', '.join(unknown)}, which "
                          f"the dataset does not have (its channels: {', '.join(known)})")
    for case in cases:
        missing = [n for n in names if n not in case.channel_names]
        if missing:
            raise DataError(case.image, f"case '{case.id}' has no channel {', '.join(missing)} "
                            f"(data.channels: {', '.join(names)}); it has {', '.join(case.channel_names)}")
    return names, methods


def _resume_state(out: Path) -> tuple[dict, Path]:
    """The saved ``state.json`` and the checkpoint it names, checked.

    When the checkpoint is missing but ``model_last.keras`` (a link to the same
    file) is there, the run resumes from that, and says so.
    """
    path = out / rundir.STATE_FILE
    try:
        state = read_json(path)
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or JSON
        raise ModelError(path, f"is corrupt ({exc}); the run cannot be resumed, start it again") from None
    if not (isinstance(state, dict) and isinstance(state.get("epoch"), int)
            and isinstance(state.get("checkpoint"), str)):
        raise ModelError(path, "is corrupt (no epoch and checkpoint); the run cannot be resumed, "
                         "start it again")
    checkpoint = out / state["checkpoint"]
    if not checkpoint.is_file():
        if not (out / "model_last.keras").is_file():
            raise ModelError(checkpoint, "the checkpoint named in state.json is missing and so is "
                             "model_last.keras; the run cannot be resumed, start it again")
        warnings.warn(f"{checkpoint} is missing; resuming from model_last.keras")
        checkpoint = out / "model_last.keras"
    return state, checkpoint


def _check_checkpoints(out: Path, targets: list[int]) -> None:
    """Every fold still to resume has its state and a checkpoint that reads whole, checked
    before the run folder is touched: a checkpoint damaged on the disk, which its record
    cannot tell (size and time unchanged), failed only as its fold began, naming no file."""
    for k in targets:
        folder = _fold_dir(out, k, targets)
        rundir.check_finished_model(folder)  # "already finished" though its model is gone
        if (folder / rundir.SETTINGS_FILE).is_file() or not (folder / rundir.STATE_FILE).is_file():
            continue  # finished, or not begun: nothing to resume from
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing checkpoint's fallback is said as it resumes
            _, checkpoint = _resume_state(folder)
        try:
            with zipfile.ZipFile(checkpoint) as archive:
                bad = archive.testzip()
        except rundir.ZIP_ERRORS as exc:
            bad = str(exc) or type(exc).__name__
        else:
            bad = bad and f"its entry {bad} fails its checksum"
        if bad:
            raise ModelError(checkpoint, f"is damaged ({bad}); the run cannot be resumed from it, "
                             "start it again (--force)")


def _load_checkpoint(checkpoint: Path) -> keras.Model:
    """The model and optimiser to resume from; one that Keras cannot load is named."""
    try:
        return keras.saving.load_model(checkpoint, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, zipfile/OSError, TypeError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(checkpoint, f"cannot be loaded ({reason}); the run cannot be resumed "
                         "from it, start it again (--force)") from None


def validation_target(d: dict) -> str:
    # A random observer per sample, or their mean, makes no yardstick: validate against the union.
    return pipeline.evaluation_target(d["observer"])


# --------------------------------------------------------------------------- driver

def train(data, out, config=None, overrides: dict | None = None, fold="0", folds_file=None,
          resume: bool = False, force: bool = False, init=None, strategy: str | None = None,
          mixed_precision: bool = False, after_fit: Callable[[dict], dict] | None = None,
          plot: Callable[..., object] | None = None, validation: list[str] | None = None,
          teach: Callable[..., tuple[dict, dict]] | None = None) -> list[dict]:
    """Train a U-Net on the cases under ``data``; write the run directory ``out``.

    This fits the models and drives the folds; what follows each fit (tuning,
    test-fold prediction, evaluation, report) is ``after_fit``, which
    :func:`bcseg.after_fit.train_and_evaluate` passes in.

    Parameters
    ----------
    data : str or Path or list of Case
        Dataset folder or manifest (see :func:`bcseg.data.dataset.discover`), or cases.
    out : str or Path
        Run directory. With ``fold="all"``, one ``fold_K`` folder per fold.
    config : str or Path, optional
        A preset name (``seed``, ``demo``) or a TOML file laid over the defaults.
    overrides : dict, optional
        ``{"train": {"epochs": 3}}``-style values from the command line.
    fold : str or int
        The test fold, or ``"all"``.
    resume : bool
        Continue an interrupted run from its last completed epoch.
    after_fit : callable, optional
        Called with each fold's :func:`run_fold` record once it is fitted; what it
        returns is added to the fold's summary. A fold counts as finished once its
        ``inference.json`` exists (``--resume`` skips it).
    plot : callable, optional
        Called with the fold's folder after every epoch (to redraw the curves), and
        with ``final=True`` when the run stops part-way (see :func:`fit`).
    validation : list of str, optional
        Case ids to validate on instead of whole groups drawn by ``train.val_fraction``
        (those of a test fold are ignored): a fixed validation set, so that two runs
        on different case lists are tuned on the same images.
    teach : callable, optional
        For a recipe with a ``train.teacher``: :func:`bcseg.distil.teacher_targets`,
        which :func:`bcseg.after_fit.train_and_evaluate` passes in.

    Returns
    -------
    list of dict
        One summary per fold trained.
    """
    _check_arguments(fold, init, folds_file)
    # never in a dataset's images or masks, but a run of its own there continues
    out = outputs.check_output_folder(out, command="train")
    outputs.settle(out)  # a killed --force run's earlier run is back before anything reads it
    cfg = _run_config(out, config, overrides, resume, mixed_precision)
    # checked on the recipe, not the flags alone: a recipe's train.teacher takes a weight too
    if ((overrides or {}).get("train") or {}).get("teacher_weight") is not None and not cfg["train"]["teacher"]:
        raise UsageError(None, "--teacher-weight needs --teacher or a recipe's train.teacher "
                         "(the model to distil); without one it would be ignored")
    if not resume:  # the run's own config.toml was checked when the run began
        for section, key, why in unused_keys(cfg, bool(folds_file)):
            source = _config_source(out, config, overrides, resume, section, key)
            raise ConfigError(source or "command line", f"'{section}.{key}' = {cfg[section][key]!r} "
                              f"{why}; remove one of the two")
    cases = _read_cases(data, cfg)
    _check_validation(validation, cases)
    # Folds are chosen and the fold checked before the run directory is touched, so a
    # wrong --fold leaves nothing behind that a corrected command would trip over.
    folds, source, targets = _plan_folds(out, cases, cfg, fold, folds_file, resume,
                                         None if isinstance(data, (list, tuple)) else data)
    if folds_file and source is not None:  # the file's folds, not a resumed run's splits.json
        problem = k_beside_folds_file(cfg, max(folds.values()) + 1)
        if problem:
            where = _config_source(out, config, overrides, resume, "train", "k")
            raise ConfigError(where or "command line", f"'train.k' = {cfg['train']['k']} {problem}")
    check_observer(cases, cfg["data"]["observer"],
                    _config_source(out, config, overrides, resume, "data", "observer"))
    channels, methods = run_channels(cases, cfg, _config_source(out, config, overrides, resume, "data", "channels"))
    if cfg["model"]["ndim"] == 2:  # 3D runs do not augment offline
        pipeline.check_offline_augment(cfg["data"], channels, _config_source(
            out, config, overrides, resume, "data", "offline_augment"))
    shapes = _check_cases(cases, channels, methods)
    in_channels = len(channels or [IMAGE_CHANNEL])
    cached = cache_memory(cfg, _cached_units(cases, folds, targets, shapes, cfg["model"]["ndim"]),
                          in_channels)
    for check, key in ((check_memory, "batch_size"), (check_epoch_memory, "steps_per_epoch")):
        check(cfg, _config_source(out, config, overrides, resume, "train", key), in_channels,
              cached)
    # an unusable model is refused before the run dir is touched
    init_model, init_record = started_from(out, init, resume, cfg, channels)
    inputs = _inputs(data, cases, config, folds_file, init_model) + _inputs(None, [], *cfg["train"]["teacher"])
    if force:  # an input inside the folder is the refusal to name, before what else --force meets
        outputs.check_not_inputs(out, inputs)
    replace = _replaces_run(out, resume, force)  # cheap refusals before the teacher's long step
    if resume:  # the folder holds bcseg's files alone: are those to resume from whole?
        _check_checkpoints(out, targets)
    taught = _teacher(teach, out, cfg, cases, folds, targets, channels, resume,
                      _config_source(out, config, overrides, resume, "data", "observer"))
    # Interrupted: keep the new run, which --resume continues, once it has saved an epoch;
    # before that (caching the data, the first epoch: minutes on real data), and after
    # any failure, the old run is put back.
    with outputs.claim(out, "train", replace=replace, keep_on=(KeyboardInterrupt,),  # Interrupted is one
                       keep_if=_has_saved_epoch, inputs=inputs, new=not resume, what="a run"):
        if resume:
            remove_partials(out)
        if taught is not None and not resume:
            write_text(out / rundir.TEACHER_FILE, json.dumps(taught[1], indent=1) + "\n")
        if init_record is not None and not resume:
            write_text(out / rundir.INIT_FILE, json.dumps(init_record, indent=1) + "\n")
        return _train_in(out, cfg, cases, folds, source, targets, resume, init_model, strategy,
                         after_fit, plot, validation, taught and taught[0])


def _check_arguments(fold, init, folds_file) -> None:
    """Refuse arguments of the wrong kind by name, before anything is read: int(fold)
    cut 1.5 to 1 and took True for 1, and an empty ``init`` or ``folds_file`` was
    dropped by the ``if init:`` that reads it (the command line refuses empty values
    while parsing; a negative fold is refused with the folds there are)."""
    if not (fold == "all" or is_whole(fold) or (isinstance(fold, str) and re.fullmatch("[0-9]+", fold))):
        raise UsageError(None, f"fold must be 'all' or a whole number, got {fold!r}")
    for name, value in (("init", init), ("folds_file", folds_file)):
        if isinstance(value, (str, Path)) and not str(value).strip():
            raise UsageError(None, f"{name} must not be empty, got {str(value)!r}; give a file, or None")


def _check_validation(validation, cases: list[Case]) -> None:
    """Refuse validation ids that name no case, or a case twice: an id matching no case
    was dropped, and with none left the run trained with no validation split at all."""
    if validation is None:
        return
    names = [validation] if isinstance(validation, str) else list(validation)
    known = {case.id for case in cases}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(None, f"validation names case(s) the data lacks: {', '.join(map(repr, unknown[:5]))}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(None, f"validation names case {twice[0]!r} twice; name each case once")


def _has_saved_epoch(out: Path) -> bool:
    """Whether a run folder (or one of its fold folders) holds a checkpoint to resume."""
    return any(path.is_file() for path in (out / rundir.STATE_FILE, *out.glob(f"fold_*/{rundir.STATE_FILE}")))


def _teacher(teach, out: Path, cfg: dict, cases: list[Case], folds: dict, targets: list[int], channels,
             resume: bool, observer_source) -> tuple[dict[str, np.ndarray], dict] | None:
    """The teacher's probabilities of every case a fold still to train learns from, and
    the teacher's fingerprint, from ``teach`` (:func:`bcseg.distil.teacher_targets`)
    before the run folder is touched. None without a teacher."""
    if not cfg["train"]["teacher"]:
        return None
    if teach is None:
        raise ConfigError(None, "train.teacher needs the distillation step: train through "
                          "bcseg.after_fit.train_and_evaluate (bcseg train), not train() alone")
    left = [k for k in targets if not (resume and _fold_dir(out, k, targets).joinpath(
        rundir.SETTINGS_FILE).is_file())]
    trained = [c for c in cases if any(folds.get(c.id) != k for k in left)]
    return teach(out, cfg, trained, {c.id for c in cases if folds.get(c.id) in left}, channels,
                 resume, observer_source)


def _fold_dir(out: Path, k: int, targets: list[int]) -> Path:
    return out if len(targets) == 1 else out / f"fold_{k}"


def _run_config(out: Path, config, overrides: dict | None, resume: bool, mixed_precision: bool) -> dict:
    """The run's configuration: the one it was started with when resuming (refusing
    changes), else the preset or file with the overrides laid over it."""
    if not resume:
        cfg = load_config(config, overrides)
        if mixed_precision:  # recorded in config.toml, so --resume keeps it
            cfg["train"]["mixed_precision"] = True
        return cfg
    if not (out / "config.toml").is_file():  # before load_config: a usage error, not a config one
        raise UsageError(out, "has no run to resume (config.toml missing)")
    cfg = load_config(out / "config.toml")
    if overrides and overrides.get("model", {}).get("ndim") not in (None, cfg["model"]["ndim"]):
        # a usage error (2), as any other flag changing a resumed run is: it was exit 4,
        # naming the run's config.toml, as if that file were bad
        raise UsageError("--model", f"the run in {out} was trained with a {cfg['model']['ndim']}D "
                         f"model (unet{cfg['model']['ndim']}d); a resumed run keeps its model: "
                         "resume without --model, or start a new run")
    _refuse_changed_settings(cfg, config, overrides, mixed_precision, out / "config.toml")
    return cfg


def _read_cases(data, cfg: dict) -> list[Case]:
    """The cases to train on, without duplicate images; a 3D model refuses 2D images."""
    from bcseg.data.check import refuse_orphan_masks

    cases = list(data) if isinstance(data, (list, tuple)) else discover(data)
    refuse_orphan_masks(data, cases)
    refuse_duplicate_images(cases, cfg["data"]["channels"] or None)
    if cfg["model"]["ndim"] == 3:
        from bcseg.data import io
        flat = [c.image for c in cases[:50] if io.read_image(c.image, mmap=True)[0].ndim == 2]
        if flat:
            raise DataError(flat[0], "is a 2D image; a 3D model trains on 3D stacks only "
                            "(use --model unet2d)")
    return cases


def _plan_folds(out: Path, cases: list[Case], cfg: dict, fold, folds_file, resume: bool,
                data) -> tuple[dict[str, int], str | None, list[int]]:
    """Folds per case, their source (None: the resumed run's splits.json) and the test
    folds to train; a resumed run keeps its splits and refuses a fold file that differs."""
    if resume and (out / "splits.json").is_file():
        folds, source = load_splits(out / "splits.json"), None
    else:
        folds, source = choose_folds(cases, cfg, folds_file, data)
    targets = _test_folds(folds, fold, cfg["train"]["split"])
    for k in targets:
        if all(f == k for f in folds.values()):
            raise DataError(folds_file or data, f"puts every case in fold {k}, the test fold: "
                            "none is left to train on; spread the cases over at least 2 folds")
    if resume and folds_file and source is None and folds_from_file(folds_file, cases) != folds:
        raise UsageError(folds_file, "assigns other folds than the run's splits.json; a resumed "
                         "run keeps its splits")
    if resume:
        _refuse_other_test_folds(out, targets)
    if resume and source is None:
        _check_same_cases(out, cases, folds, targets, data)
        # the groups as the dataset gives them now: one corrected since the run started
        # (a slice moved into its specimen's group) would leak across the kept folds
        check_groups_whole(cases, folds, out / "splits.json")
    return folds, source, targets


def _refuse_other_test_folds(out: Path, targets: list[int]) -> None:
    """A resumed run keeps the test fold(s) it was started with. Fold 0's checkpoint
    resumed as --fold 1 went on training, and was scored on fold 1's test cases, which
    fold 0 had trained on; a one-fold run resumed with --folds all grew fold folders
    beside its own model."""
    if (out / rundir.FOLD_FILE).is_file():  # one test fold: fold.json in the run folder itself
        try:
            started = read_json(out / rundir.FOLD_FILE).get("fold")
        except (OSError, ValueError, AttributeError):
            return  # a damaged fold.json: _check_same_cases reads it again
        if isinstance(started, int) and targets != [started]:
            asked = "--folds all" if len(targets) > 1 else f"--fold {targets[0]}"
            raise UsageError(out, f"the run was started with test fold {started}, not {asked}; a "
                             f"resumed run keeps its test fold: resume with --fold {started}")
    elif len(targets) == 1 and any(p.is_dir() for p in out.glob("fold_*")):
        raise UsageError(out, f"the run was started with --folds all, not --fold {targets[0]}; a "
                         "resumed run keeps its test folds: resume with --folds all")


def _check_same_cases(out: Path, cases: list[Case], folds: dict[str, int], targets: list[int], data) -> None:
    """A resumed run trains on the cases it started with: the ids of its splits.json,
    and the validation cases' files as each fold.json recorded them. A case deleted or
    added since (a KeyError before), or a stack replaced, would mix two datasets in one
    model without a word."""
    ids = {c.id for c in cases}
    gone, new = sorted(set(folds) - ids), sorted(ids - set(folds))
    if gone or new:
        what = f"case '{gone[0]}' is gone" if gone else f"case '{new[0]}' is new"
        raise DataError(data, f"is not the dataset the run started with ({what} since; "
                        f"{len(gone)} gone, {len(new)} new): a resumed run trains on the same cases; "
                        "give that dataset, or start a new run")
    by_id, digests = {c.id: c for c in cases}, {}
    for k in targets:
        case = changed_case(_recorded_digests(_fold_dir(out, k, targets) / rundir.FOLD_FILE), by_id, digests)
        if case is not None:
            raise DataError(case.image, f"case '{case.id}' changed since the run started (its "
                            "files differ from those fold.json recorded): a resumed run trains on "
                            "the same data; restore them, or start a new run")


def _recorded_digests(fold_file: Path) -> dict[str, str]:
    """The validation cases' digests a fold.json recorded (none: not there, or a run of
    a bcseg before they were recorded)."""
    try:
        recorded = read_json(fold_file).get("validation_sha256")
    except (OSError, ValueError, AttributeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _train_in(out: Path, cfg: dict, cases: list[Case], folds: dict, source, targets: list[int],
              resume: bool, init_model, strategy, after_fit, plot, validation=None,
              teacher=None) -> list[dict]:
    """Train every fold in ``targets`` into the claimed run folder ``out``."""
    handler = _start_log(out)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with training_precision(cfg):
            tf.config.experimental.enable_op_determinism()
            keras.utils.set_random_seed(cfg["train"]["seed"])
            if not resume:
                save_config(cfg, out / "config.toml")
            if source is not None:
                save_splits(out / "splits.json", cases, folds, seed=cfg["train"]["seed"], source=source)
            results, check = [], None
            for k in targets:
                fold_dir = _fold_dir(out, k, targets)
                if resume and (fold_dir / rundir.SETTINGS_FILE).is_file():
                    _say(f"fold {k} already finished")
                    continue
                # A fold's folder is train's, as a one-fold run's is: what runs inside it
                # (the test fold's evaluation) is recorded as train's, so 'evaluate --out
                # kf/fold_0 --force' cannot pass the run's metrics off as an earlier evaluation.
                with outputs.claim(fold_dir, "train"):
                    fitted = run_fold(cases, folds, k, cfg, fold_dir, resume, init_model, strategy, plot,
                                      validation, teacher, check)
                    results.append(_summary(fitted, after_fit))
                _raise_if_caught(fitted["signals_caught"], f"stopped after fold {k} was tested",
                                 fitted["saved_epoch"])
                # until the next fold's training takes over (its data are read and cached
                # first), or the run ends: fold k's "before the run was tested" is past
                said = f"stopped after fold {k} finished"
                check = functools.partial(_raise_if_caught, _stop_on_signal(fitted["saved_epoch"], said),
                                          said, fitted["saved_epoch"])
            if len(targets) > 1:
                write_text(out / "folds_summary.json", json.dumps(results, indent=1, default=str) + "\n")
            return results
    finally:
        for s, previous in handlers.items():
            signal.signal(s, previous)
        log.removeHandler(handler)
        handler.close()


def _raise_if_caught(caught: list[int], said: str, saved_epoch: int) -> None:
    """Stop where a handler of :func:`_stop_on_signal` caught a signal whose exception
    Python dropped (it ran inside a finaliser): the user asked to stop all the same."""
    if caught:
        raise Interrupted(said, saved_epoch)


def _summary(fitted: dict, after_fit) -> dict:
    """A fold's summary: its fit, and what the step after fitting reports."""
    result = {k: fitted[k] for k in ("fold", "best_epoch", "best_val_dice")}
    if after_fit is not None:
        result.update(after_fit(fitted))
    return result


@contextlib.contextmanager
def training_precision(cfg: dict):
    """Keras's global dtype policy as ``train.mixed_precision`` asks, restored on exit."""
    previous = keras.mixed_precision.global_policy()
    if cfg["train"]["mixed_precision"]:
        keras.mixed_precision.set_global_policy(mixed_policy())
        _say(f"mixed precision: {keras.mixed_precision.global_policy().name}")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _refuse_changed_settings(saved: dict, config, overrides: dict | None, mixed_precision: bool,
                             path: Path) -> None:
    """A resumed run continues with the settings it was started with: refuse others.

    ``config`` and ``overrides`` are compared with the run's ``config.toml`` (``path``);
    giving the same ones again, as when a command is repeated with ``--resume``, is fine.
    """
    wanted = load_config(config, overrides) if config else {}
    for section, values in (overrides or {}).items():
        wanted.setdefault(section, {}).update(values)
    if mixed_precision:
        wanted.setdefault("train", {})["mixed_precision"] = True
    elif config:  # not asked for now: keep what the run recorded
        wanted["train"]["mixed_precision"] = saved["train"]["mixed_precision"]
    for section, values in wanted.items():
        for key, value in values.items():
            if saved.get(section, {}).get(key) != value:
                # the values cut short: a list of teachers' paths made a line of any length
                raise UsageError(path, f"the run was started with {section}.{key} = "
                                 f"{shorten(repr(saved.get(section, {}).get(key)))}, "
                                 f"not {shorten(repr(value))}; a resumed run keeps its "
                                 "settings: resume without the change, or start a new run")


def _check_cases(cases: list[Case], channels: list[str] | None = None,
                 methods: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Read every case's images and masks before the run folder is created; return
    each case's image shape by id.

    A bad file found later (when the training cases are cached, or the test fold
    is predicted after training) would leave a run folder behind that the corrected
    command trips over, or cost the whole run. Images are memory-mapped where they
    can be, so this reads the masks and the headers, not every stack in full.
    """
    from bcseg.data.check import refuse_bad_cases

    return refuse_bad_cases(cases, channels, "training", methods)


def _cached_units(cases: list[Case], folds: dict[str, int], targets: list[int],
                  shapes: dict[str, tuple[int, ...]], ndim: int) -> int:
    """What the smallest of the folds to train caches: the slices (2D: a stack's each,
    an image's one) or voxels (3D) of its cases outside the test fold, training and
    validation alike (:func:`run_fold`)."""
    def units(shape: tuple[int, ...]) -> int:
        if ndim == 3:
            return math.prod(shape[:3])
        return shape[0] if len(shape) == 3 else 1
    return min(sum(units(shapes[c.id]) for c in cases if folds.get(c.id) != k) for k in targets)
