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
from bcseg.learn.models import feature_values


# Bytes training keeps per value of one feature map of each level, at the least: the
# convolution, normalisation and activation outputs of each block's two convolutions,
# in the encoder and the decoder, are kept for the backward pass (8 maps), at 2 bytes
# (bfloat16; float32 keeps twice as much). A lower bound, so that no recipe that fits
# is refused.
KEPT_BYTES_PER_VALUE = 16


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


def check_epoch_memory(cfg: dict, source) -> None:
    """Refuse, before the run folder exists, a ``steps_per_epoch`` whose samples cannot
    fit in this machine's memory (1e12 asked for 64 TiB): an epoch's augmented samples
    are held in memory at once, float32 images and targets
    (:func:`bcseg.learn.pipeline.epoch_arrays`), on the host even when training on a GPU."""
    have = _machine_memory()
    d, t = cfg["data"], cfg["train"]
    shape = sample_shape(cfg)
    per_step = t["batch_size"] * math.prod(shape) * (max(1, len(d["channels"])) + 1) * 4
    if have is not None and t["steps_per_epoch"] * per_step > have:
        most = have // per_step
        # the value shortened: TOML integers have no size limit here (10**400 was echoed whole)
        raise ConfigError(source, f"'train.steps_per_epoch' must be at most {most} on this "
                          f"machine (0 for one pass over the data): an epoch's samples are held in "
                          f"memory, and {most} batches of {t['batch_size']} x {' x '.join(map(str, shape))} "
                          f"fill its {have / 2**30:.0f} GiB, "
                          f"got {shorten(repr(t['steps_per_epoch']))}")


def check_memory(cfg: dict, source) -> None:
    """Refuse, before the run folder exists, a batch whose activations alone cannot fit
    in this machine's memory (data.size 4096 with batch_size 4096 is in range for each
    key, and used to be killed for memory after the run folder was made)."""
    if tf.config.list_physical_devices("GPU"):  # activations live there, split over devices
        return
    have = _machine_memory()
    if have is None:
        return
    m, t = cfg["model"], cfg["train"]
    shape = sample_shape(cfg)
    need = t["batch_size"] * KEPT_BYTES_PER_VALUE * feature_values(
        shape, m["base_filters"], m["depth"], m["max_filters"] or None, m["stem_stride"])
    if need > have:
        raise ConfigError(source, f"one training batch ({t['batch_size']} x {' x '.join(map(str, shape))}, "
                          f"{m['base_filters']} base filters) needs at least {need / 2**30:.0f} GiB, more "
                          f"than this machine's {have / 2**30:.0f} GiB; lower train.batch_size "
                          "(--batch-size), data.size or model.base_filters")


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
