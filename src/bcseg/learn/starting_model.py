"""The model a run starts from (``train --init``): a ``.keras`` file or the bundled
``busi`` model, refused before the run folder exists where it cannot train on the
run's samples and channels, widened to the run's channels, and recorded
(``init.json``) so that a resumed run starts its later folds from the same model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
import numpy as np

from bcseg import rundir
from bcseg.atomic import read_json
from bcseg.data.cases import IMAGE_CHANNEL
from bcseg.data.channels import ULTRASOUND, is_modality
from bcseg.data.io import not_a_file
from bcseg.errors import ConfigError, DataError, ModelError, UsageError
from bcseg.learn.machine import sample_shape
from bcseg.learn.models import with_input_channels


def initial_model(path: Path, channels: list[str] | None) -> keras.Model:
    """The ``init`` model, its first convolution widened to the run's channels (the
    ``us`` channel, or the first, keeps its weights; see :func:`with_input_channels`)."""
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    if channels and model.inputs[0].shape[-1] != len(channels):
        own = init_channel_names(path)  # a model of one named channel keeps that channel
        ultrasound = [i for i, name in enumerate(channels) if is_modality(name, ULTRASOUND)]
        keep = channels.index(own[0]) if own else (ultrasound or [0])[0]
        model = with_input_channels(model, len(channels), keep)
    return model


def started_from(out: Path, init, resume: bool, cfg: dict, channels) -> tuple[Path | None, dict | None]:
    """The model a run's folds start from, and what the run records of it.

    A resumed run starts its folds still to come from the model it began with, recorded
    in ``init.json``: without the record, `--folds all --init busi` resumed without
    --init trained its later folds from scratch, and with another --init from another
    model, a run of mixed starts. A model that changed since (a new bundled model) is
    refused, as is an --init on resuming a run begun without one.
    """
    recorded_file = out / rundir.INIT_FILE
    recorded = None
    if resume and recorded_file.is_file():
        try:
            recorded = read_json(recorded_file)
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict) or not {"init", "weights"} <= recorded.keys():
            raise DataError(recorded_file, "is damaged (not the JSON bcseg wrote); the model the "
                            "run started from is unknown: start the run again")
    if resume and recorded is None and init:
        raise UsageError("--init", f"{out} records no model it started from ({rundir.INIT_FILE}): it was "
                         "started without --init, or by a bcseg before 2026-12-07; resume it without "
                         "--init (its folds still to come start from scratch), or start it again")
    given = init if init or recorded is None else recorded["init"]
    model = checked_init(given, cfg, len(channels or [IMAGE_CHANNEL]), channels)
    if model is None:
        return None, None
    record = {"init": given if given == "busi" else str(model.absolute()),
              "weights": rundir.weights_digest(model)}
    if recorded is not None and recorded["weights"] != record["weights"]:
        raise UsageError("--init" if init else recorded_file,
                         f"{model} is not the model the run started from ({recorded['init']}, recorded "
                         f"in {recorded_file}: its weights differ); a resumed run continues as it began")
    return model, record


def checked_init(init, cfg: dict, in_channels: int = 1, channels: list[str] | None = None
                ) -> Path | None:
    """The initial model's file, loaded once (safely) to refuse an unusable one early.

    A model of one channel can start a run of several (its first convolution is
    widened); any other count must be the run's. A model that records its channels
    must have been trained on the run's, in the run's order (one of them, to be widened).
    """
    if not init:
        return None
    if init == "busi":
        # The bundled model goes through the same checks as a user's file: returned
        # unchecked, `--init busi --model unet3d` (or a data.size its stride-2 stem and
        # depth 4 do not divide) failed in the first batch with a raw ValueError (exit 1),
        # the run folder already written.
        from bcseg.pretrained import pretrained_path
        path = pretrained_path()
    else:
        path = Path(init)
    if path.is_dir():  # a run folder: "not found" while it is there misled
        inside = path / rundir.MODEL_FILE
        raise ConfigError(path, "is a folder; --init takes a .keras file" +
                          (f", e.g. {inside}" if inside.is_file() else ""))
    if not path.is_file():
        raise ConfigError(path, not_a_file(path, "a .keras file") if os.path.lexists(path)
                          else "initial model not found")
    from bcseg.learn.saved import load_model, model_spec

    try:
        model = load_model(path)
        spec = model_spec(model)  # ModelError naming the file: unsafe, corrupt, ...
    except ModelError as exc:
        raise (exc if exc.path else ModelError(path, exc.problem)) from None
    if spec.ndim != cfg["model"]["ndim"]:
        raise ModelError(path, f"is a {spec.ndim}D model; this run trains a "
                         f"{cfg['model']['ndim']}D one")
    if spec.channels not in (1, in_channels):
        raise ModelError(path, f"takes {spec.channels} input channels; this run trains on "
                         f"{in_channels}")
    _check_init_output(path, model, spec, cfg)
    # Only the count was checked: a pa,us model started a us,pa run reading us as pa, and
    # a pa model was widened onto us. The names recorded with the model must fit the run.
    own = init_channel_names(path)
    if own and channels and (list(own) != channels if spec.channels == len(channels)
                             else own[0] not in channels):
        raise ModelError(path, f"was trained on channel(s) {', '.join(own)}; this run trains on "
                         f"{', '.join(channels)}, so its first layer would read one channel as "
                         "another; train on the model's channels in its order (--channels "
                         f"{','.join(own)})")
    return path


def _check_init_output(path: Path, model, spec, cfg: dict) -> None:
    """Refuse an ``--init`` model that cannot train on this run's samples: one of a fixed
    input size or a size divisor the samples do not fit, or one whose output is not one
    probability per pixel (several channels, another size, no sigmoid). Loading such a
    model succeeded, and it failed in the first epoch (an unexpected ValueError, exit 1)
    or, without its sigmoid, at tuning after a whole run, each time with the run folder
    already written. One sample through the model says it before the folder exists."""
    from bcseg.learn.saved import probabilities

    shape = sample_shape(cfg)
    keys = "data.size" if len(shape) == 2 else "data.patch_depth, data.size"
    trains = f"this run trains on {' x '.join(map(str, shape))} ({keys})"
    if any(f is not None and f != n for f, n in zip(spec.fixed, shape)):
        raise ModelError(path, f"takes inputs of spatial size {spec.fixed}; {trains}")
    if any(n % spec.divisor for n, f in zip(shape, spec.fixed) if f is None):
        raise ModelError(path, f"takes sizes that are multiples of {spec.divisor}; {trains}")
    sample = np.random.default_rng(0).standard_normal((1, *shape, spec.channels), dtype=np.float32)
    try:
        probabilities(model, sample)  # one probability channel of the input's size, in 0..1
    except ModelError as exc:
        raise ModelError(path, f"{exc.problem}; --init takes a bcseg segmentation model") from None


def init_channel_names(path: Path) -> tuple[str, ...]:
    """The channels an ``--init`` model was trained on, in input order, as recorded with
    it (inside it, or its run's settings); () for a grey model or one recording none."""
    with warnings.catch_warnings():  # 'holds no inference settings': then it names none
        warnings.simplefilter("ignore")
        return rundir.model_settings(path, given_as_file=True).channel_names
