"""What this machine can take, asked before a run folder is made: memory for one
batch and one epoch's samples, the mixed-precision policy its CPU or GPU runs fast,
and the distribution strategy over its devices.

Keras and TensorFlow imported here: this is :mod:`bcseg.learn`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import tensorflow as tf

from bcseg.config import shorten
from bcseg.errors import ConfigError
from bcseg.learn.models import activation_values, unet_options


# Bytes one training step holds at its peak per value its model's layers output
# (activation_values, times the batch), by precision and by whether every block is
# normalised (normalisation keeps more than its outputs for the backward pass).
# Measured by benchmarks/train_memory.py (docs/benchmarks.md, "Training memory") as the
# growth between two batch sizes of one recipe, the fixed part apart. Normalised
# (default, instance, busi, 3D): 3.1 to 4.0 in float32, 2.7 to 3.7 under mixed bfloat16
# (variables, normalisation and loss stay float32); without: 2.6 and 2.0. The lowest
# of each, less about a seventh (a peak moves by up to 70 MB from run to run), so that
# no recipe that fits is refused: the bound is three fifths to three quarters of each
# measured peak. It was 16 bytes per value of one map per level, under a fifth of
# those peaks: a 4096-pixel batch passed, and was killed for memory at 19 GB after the
# run folder existed.
KEPT_BYTES_PER_VALUE = {("float32", True): 2.6, ("mixed_bfloat16", True): 2.3,
                        ("float32", False): 2.3, ("mixed_bfloat16", False): 1.7}
# What training holds beside the batch: TensorFlow's libraries and a small compiled
# model, 740-770 MB measured before the first step, counted as 512 MiB (less, for any
# build). The cached samples are counted by cache_memory, an epoch's by
# check_epoch_memory.
FIXED_BYTES = 512 * 2**20


def _machine_memory() -> int | None:
    """This machine's memory in bytes; None where the system does not tell (Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def sample_shape(cfg: dict) -> tuple[int, ...]:
    """One training sample's spatial shape: a 2D square or a 3D patch."""
    d = cfg["data"]
    return (d["size"],) * 2 if cfg["model"]["ndim"] == 2 else (d["patch_depth"], d["size"], d["size"])


def check_epoch_memory(cfg: dict, source, in_channels: int = 1, cached: int = 0) -> None:
    """Refuse, before the run folder exists, a ``steps_per_epoch`` whose samples cannot
    fit in this machine's memory (1e12 asked for 64 TiB): an epoch's augmented samples
    are held in memory at once, float32 images and targets
    (:func:`bcseg.learn.pipeline.epoch_arrays`), on the host even when training on a GPU,
    beside the ``cached`` bytes of :func:`cache_memory` and what a training step takes
    there (:func:`batch_memory`). With ``steps_per_epoch = 0`` (one pass over the
    training slices) they are not counted: the validation split, which decides how
    many slices that is, is drawn later, from the cases cached."""
    have = _machine_memory()
    d, t = cfg["data"], cfg["train"]
    shape = sample_shape(cfg)
    per_step = t["batch_size"] * math.prod(shape) * (max(1, len(d["channels"])) + 1) * 4
    if have is None:
        return
    # each check alone against the whole memory let samples and a batch that each fit
    # pass together; check_memory has refused a batch that does not fit alone
    room = have - cached - _step_memory(cfg, in_channels)
    if t["steps_per_epoch"] * per_step > room:
        most = max(0, room) // per_step
        # the value shortened: TOML integers have no size limit here (10**400 was echoed whole)
        raise ConfigError(source, f"'train.steps_per_epoch' must be at most {most} on this "
                          f"machine (0 for one pass over the data): an epoch's samples are held in "
                          f"memory, and {most} batches of {t['batch_size']} x {' x '.join(map(str, shape))} "
                          f"fill the {_size(max(0, room))} of its {_size(have)} "
                          f"that training leaves, got {shorten(repr(t['steps_per_epoch']))}")


def cache_memory(cfg: dict, units: int, in_channels: int = 1) -> int:
    """Bytes the cached samples of ``units`` slices (2D, each fitted to ``data.size``;
    24 copies under ``offline_augment = "reference"``) or voxels (3D, whole volumes)
    take at the least: float32 images and one uint8 target plane
    (:func:`bcseg.learn.pipeline.slice_samples`, ``volume_samples``).

    Uncounted, 4096-pixel slices passed the check of the batch alone: each takes 80 MiB
    cached, and a dataset of a few hundred fills any laptop."""
    per_value = 4 * in_channels + 1
    if cfg["model"]["ndim"] == 3:
        return units * per_value
    copies = 24 if cfg["data"]["offline_augment"] == "reference" else 1
    return units * copies * cfg["data"]["size"] ** 2 * per_value


def batch_memory(cfg: dict, in_channels: int = 1) -> int:
    """Bytes a training step on this machine's CPU needs at the least: one batch's
    activations at the precision the run takes, and TensorFlow's own."""
    m = cfg["model"]
    policy = mixed_policy() if cfg["train"]["mixed_precision"] else "float32"
    normalised = m["norm"] != "none" and not m["decoder_norm_only"]
    values = activation_values(sample_shape(cfg), in_channels, **unet_options(m))
    per_value = KEPT_BYTES_PER_VALUE.get((policy, normalised),
                                         KEPT_BYTES_PER_VALUE["float32", normalised])
    return math.ceil(cfg["train"]["batch_size"] * values * per_value) + FIXED_BYTES


def _step_memory(cfg: dict, in_channels: int) -> int:
    """:func:`batch_memory` where the step runs on this machine's CPU; 0 on a GPU,
    where the activations live (split over its devices)."""
    return 0 if tf.config.list_physical_devices("GPU") else batch_memory(cfg, in_channels)


def check_memory(cfg: dict, source, in_channels: int = 1, cached: int = 0) -> None:
    """Refuse, before the run folder exists, a batch whose training step cannot fit in
    this machine's memory beside the ``cached`` bytes of the training samples
    (:func:`batch_memory`, :func:`cache_memory`; data.size 4096 is in range, and a
    batch of 1 at that size was killed for memory after the run folder was made).

    The machine's total memory counts, not what is free now: that changes from one
    moment to the next, and a refusal should not depend on what else runs."""
    have = _machine_memory()
    if have is None:
        return
    need = cached + _step_memory(cfg, in_channels)
    if need > have:
        m, t = cfg["model"], cfg["train"]
        shape = " x ".join(map(str, sample_shape(cfg)))
        beside = f" with its {_size(cached)} of cached samples" if cached else ""
        raise ConfigError(source, f"one training batch ({t['batch_size']} x {shape}, "
                          f"{m['base_filters']} base filters) needs at least "
                          f"{_size(need, up=True)}{beside}, more than this machine's "
                          f"{_size(have)}; lower train.batch_size "
                          "(--batch-size), data.size or model.base_filters")


def _size(n: int, up: bool = False) -> str:
    """Bytes for a refusal: GiB to a tenth, MiB below one; a need rounded up, memory
    down, so that the need always reads larger. Whole GiB said 'needs at least 8 GiB,
    more than this machine's 8 GiB' of 8.3 and 8.0, and '0.0 GiB of cached samples'."""
    unit, name = (2**30 / 10, "GiB") if n >= 2**30 else (2**20, "MiB")
    steps = math.ceil(n / unit) if up else math.floor(n / unit)
    return f"{steps / 10:.1f} GiB" if name == "GiB" else f"{steps} MiB"


def distribution(strategy: str | None):
    if strategy in (None, "", "none"):
        return tf.distribute.get_strategy()  # the default, no-op strategy
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(None, f"unknown strategy '{strategy}'; use mirrored or multiworker")


def mixed_policy() -> str:
    """The mixed-precision policy for this machine: float16 on a GPU, bfloat16 on a
    CPU with bfloat16 instructions, else plain float32.

    GPUs have float16 tensor cores; recent x86 CPUs (AVX512-BF16, AMX) have bfloat16
    instructions that oneDNN uses, and bfloat16 needs no loss scaling. Elsewhere
    bfloat16 is emulated and slower than float32, so mixed precision is skipped.
    Variables stay float32 under either policy, and the output layer computes in float32.
    """
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if _cpu_has_bfloat16() else "float32"


def _cpu_has_bfloat16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no cheap way to tell, so stay safe
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
