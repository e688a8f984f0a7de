"""Training speed: the bcseg input pipeline against arrays preloaded in memory.

For the default configuration (``load_config()``: the U-Net of
``train.build_model``, the configured batch size, the ``bce_dice`` loss) this
measures, on the same model and the same data size:

* **pipeline**: what ``train.fit`` does every epoch: ``pipeline.epoch_arrays``
  (draws from the cached samples), ``pipeline.epoch_dataset`` with the default
  augmentation (``AugmentConfig.from_dict(cfg["augment"])``) and one
  ``model.fit(dataset, epochs=1)`` call. The whole loop body is timed.
* **preloaded**: ``model.fit(x, y)`` on NumPy arrays already in memory, same batch
  size, no augmentation (the ideal input pipeline). Only the epoch itself is timed
  (from its first step to its last, by a callback), not the set-up of the fit call.

Configurations: 2D at 128² and 256² (images/s) and 3D (patches/s) with the default
patch ``patch_depth × size × size`` (16 × 128 × 128). Each one runs in a fresh
subprocess, so its peak RSS (``ru_maxrss``) is its own. The data are synthetic
phantom specimens (``bcseg.data.phantom.make_specimen``). Op determinism is enabled,
as ``train.train`` does.

The first fit call compiles the model; it and one pipeline epoch are run before
timing. Then the two measurements alternate epoch by epoch. For every epoch the
share of the CPU that other processes took is measured (from ``/proc/stat``); each
figure is the fastest epoch among the quiet ones (others took at most 5%), or
among all of them, with a warning, when either kind had no quiet epoch. The CPU
time per image of both is reported too; such load changes it much less, and on a
machine of its own, where the model keeps every core busy, the wall-time ratio
tends to it.

Requirement: the pipeline reaches at least 90% of the preloaded throughput (the
exit status is 1 when a configuration falls short).

Examples
--------
Proper measurement (about 5 minutes on 2 idle cores)::

    .venv/bin/python benchmarks/train_speed.py --out bench-out/train_speed.md

Smoke run (the 2D 128 px configuration, a few steps, about a minute; noisy)::

    .venv/bin/python benchmarks/train_speed.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# Steps per epoch and timed epochs of each kind, sized for about 5 minutes on 2 cores.
# size None: the configuration's own (3D patch = patch_depth x size x size).
CONFIGS = {
    "2d-128": {"ndim": 2, "size": 128, "steps": 16, "epochs": 4},
    "2d-256": {"ndim": 2, "size": 256, "steps": 6, "epochs": 3},
    "3d": {"ndim": 3, "size": None, "steps": 2, "epochs": 3},
}
QUICK = {"steps": 2, "epochs": 1}
# --quick measures the 2D 128 px configuration only: the default 3D patch
# (16x128x128, batch 16) alone takes minutes per step on a 2-core AVX2 CPU.
QUICK_CONFIGS = ("2d-128",)
QUIET = 0.05  # an epoch counts as quiet when other processes took at most 5% of the CPU
REQUIRED_RATIO = 0.90
MARKER = "TRAIN_SPEED_RESULT "


# --------------------------------------------------------------------------- machine

def usable_cpus() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_description() -> dict:
    """CPU model, core counts, platform and Python version."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model or "unknown", "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
            "platform": platform.platform(), "python": platform.python_version()}


def _busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (Linux), or None."""
    try:
        with open("/proc/stat", encoding="utf-8") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall and CPU seconds since creation, and the CPU share other processes took."""

    def __init__(self):
        self.start = (time.perf_counter(), sum(os.times()[:2]), _busy_seconds())

    def read(self) -> dict:
        wall = time.perf_counter() - self.start[0]
        own = sum(os.times()[:2]) - self.start[1]  # this process, all its threads
        busy = _busy_seconds()
        foreign = None if busy is None or self.start[2] is None else \
            max(0.0, (busy - self.start[2] - own) / (wall * usable_cpus()))
        return {"wall_s": round(wall, 3), "cpu_s": round(own, 3),
                "foreign": None if foreign is None else round(foreign, 3)}


def _is_quiet(epoch: dict) -> bool:
    return epoch["foreign"] is not None and epoch["foreign"] <= QUIET


def best_epochs(*kinds: list[dict]) -> tuple[list[dict], bool]:
    """The fastest epoch of each kind: among the quiet ones if every kind had one."""
    quiet = all(any(_is_quiet(e) for e in epochs) for epochs in kinds)
    return [min((e for e in epochs if _is_quiet(e) or not quiet), key=lambda e: e["wall_s"])
            for epochs in kinds], quiet


# --------------------------------------------------------------------------- worker

def _samples(ndim: int, size: int, depth: int):
    """Cached phantom samples like ``slice_samples`` / ``volume_samples`` build."""
    import numpy as np

    from bcseg.data.intensity import normalise
    from bcseg.data.phantom import make_specimen
    from bcseg.learn.pipeline import Samples

    specimens = [make_specimen((max(24, depth + 8), size, size), seed=k) for k in range(2)]
    images = [normalise(s["image"]) for s in specimens]
    targets = [(s["observer1"] | s["observer2"])[None].astype(np.uint8) for s in specimens]  # union
    ids = [f"phantom{k}" for k in range(len(specimens))]
    if ndim == 3:
        return Samples(images, targets, ids)
    return Samples(np.concatenate(images), np.concatenate([t.transpose(1, 0, 2, 3) for t in targets]),
                   [i for i, image in zip(ids, images) for _ in range(len(image))])


def worker(name: str, steps: int, epochs: int) -> dict:
    """Measure one configuration in this process; return its figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from bcseg.learn import pipeline
    from bcseg.learn import train
    from bcseg.learn.augment import AugmentConfig
    from bcseg.config import load_config

    spec = CONFIGS[name]
    overrides = {"model": {"ndim": spec["ndim"]}}
    if spec["size"]:
        overrides["data"] = {"size": spec["size"]}
    cfg = load_config(None, overrides)
    t, d = cfg["train"], cfg["data"]
    batch, seed = t["batch_size"], t["seed"]
    size = d["size"]
    patch = (d["patch_depth"], size, size) if spec["ndim"] == 3 else None
    shape = patch or (size, size)
    n = steps * batch

    tf.config.experimental.enable_op_determinism()  # as train.train does
    keras.utils.set_random_seed(seed)
    samples = _samples(spec["ndim"], size, d["patch_depth"])
    augment = AugmentConfig.from_dict(cfg["augment"])
    model = train.build_model(cfg)
    train.compile_model(model, cfg)
    x, y = pipeline.epoch_arrays(samples, 0, seed, n, d["tumour_fraction"], patch)

    def pipeline_epoch(epoch: int, count: int) -> dict:
        """One epoch as ``train.fit`` runs it, measured."""
        meter = Meter()
        keras.utils.set_random_seed(seed + epoch)
        images, targets = pipeline.epoch_arrays(samples, epoch, seed, count, d["tumour_fraction"], patch)
        dataset = pipeline.epoch_dataset(images, targets, batch, seed, epoch, augment)
        model.fit(dataset, epochs=1, verbose=0)
        return meter.read()

    class EpochTimer(keras.callbacks.Callback):
        """Measures each epoch from its first step to its last."""

        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.meter = Meter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(self.meter.read())

    # Warm-up: compile the train step (one batch), then one short pipeline epoch.
    start = time.perf_counter()
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    pipeline_epoch(10_000, batch)
    warmup = time.perf_counter() - start

    # Alternate epoch by epoch, so that a burst of load from elsewhere hits both alike.
    preloaded, piped = [], []
    meter = Meter()
    for epoch in range(1, epochs + 1):
        timer = EpochTimer()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[timer])
        preloaded.extend(timer.epochs)
        piped.append(pipeline_epoch(epoch, n))
    foreign = meter.read()["foreign"]

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    unit = "patches" if spec["ndim"] == 3 else "images"
    (pipe_best, pre_best), quiet = best_epochs(piped, preloaded)
    pipe_rate, pre_rate = n / pipe_best["wall_s"], n / pre_best["wall_s"]
    pipe_cpu, pre_cpu = (min(e["cpu_s"] for e in kind) / n for kind in (piped, preloaded))
    return {
        "configuration": f"{spec['ndim']}D U-Net, default config" + (" (patches/s)" if spec["ndim"] == 3 else ""),
        "name": name, "input": "x".join(map(str, shape)), "unit": unit, "batch": batch,
        "steps_per_epoch": steps, "timed_epochs": len(piped),
        "pipeline_per_s": round(pipe_rate, 2), "preloaded_per_s": round(pre_rate, 2),
        "ratio": round(pipe_rate / pre_rate, 3),
        "cpu_ms_per_item_pipeline": round(1000 * pipe_cpu, 2),
        "cpu_ms_per_item_preloaded": round(1000 * pre_cpu, 2),
        "cpu_ratio": round(pre_cpu / pipe_cpu, 3),
        "quiet": quiet, "quiet_epochs": sum(map(_is_quiet, piped + preloaded)),
        "pipeline_epochs": piped, "preloaded_epochs": preloaded,
        "warmup_s": round(warmup, 1), "foreign_cpu_share": None if foreign is None else round(foreign, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


# --------------------------------------------------------------------------- driver

def run_config(name: str, quick: bool) -> dict:
    """Run :func:`worker` for ``name`` in a fresh interpreter and parse its result."""
    spec = CONFIGS[name]
    steps, epochs = (QUICK["steps"], QUICK["epochs"]) if quick else (spec["steps"], spec["epochs"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(steps),
                           "--epochs", str(epochs)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"train_speed: the {name} worker failed (exit {done.returncode})")
    result = json.loads(lines[-1][len(MARKER):])
    result.update(load_before=None if load is None else round(load, 2),
                  wall_s=round(time.perf_counter() - start, 1))
    return result


def markdown(results: list[dict], machine: dict, quick: bool) -> str:
    """The results as a Markdown table with the machine and the verdict."""
    lines = [
        "| configuration | input | batch | images/s (pipeline) | images/s (preloaded) "
        "| ratio | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['configuration']} | {r['input']} | {r['batch']} "
                     f"| {r['pipeline_per_s']:.2f} | {r['preloaded_per_s']:.2f} "
                     f"| {r['ratio']:.1%} | {r['peak_rss_mb']:.0f} |")
    worst = min(r["ratio"] for r in results)
    notes = [
        "",
        f"CPU: {machine['cpu']}; os.cpu_count() = {machine['cpu_count']} "
        f"({machine['usable_cpus']} usable); {machine['platform']}; Python {machine['python']}, "
        f"TensorFlow {results[0]['tensorflow']}, Keras {results[0]['keras']}.",
        "Each figure is the best timed epoch of its kind among those during which other processes "
        f"took at most {QUIET:.0%} of the CPU (among all epochs if either kind had none). "
        f"Timed epochs of each kind{' (quick run)' if quick else ''}: "
        + ", ".join(f"{r['name']} {r['timed_epochs']} × {r['steps_per_epoch']} steps" for r in results)
        + ". The pipeline epoch includes epoch_arrays, epoch_dataset and the fit call. "
        "3D rows count patches/s.",
        "Load: " + ", ".join(
            f"{r['name']} load average {r['load_before']} before, other processes used "
            + (f"{r['foreign_cpu_share']:.0%}" if r["foreign_cpu_share"] is not None else "?")
            + f" of the CPU while timing ({r['quiet_epochs']} of {2 * r['timed_epochs']} epochs quiet)"
            for r in results) + ".",
        "CPU time per image or patch, pipeline / preloaded (ratio preloaded/pipeline): " + ", ".join(
            f"{r['name']} {r['cpu_ms_per_item_pipeline']:.1f} / {r['cpu_ms_per_item_preloaded']:.1f} ms "
            f"({r['cpu_ratio']:.1%})" for r in results) + ".",
        f"Requirement (pipeline >= {REQUIRED_RATIO:.0%} of preloaded): "
        + ("met" if worst >= REQUIRED_RATIO else "NOT met") + f" (lowest ratio {worst:.1%}).",
    ]
    busy = [r["name"] for r in results if not r["quiet"]]
    if busy:
        notes.append(f"Warning: no quiet epoch of both kinds for {', '.join(busy)}: other processes "
                     "disturbed the wall-time figures there (the CPU-time ratio much less).")
    return "\n".join(lines + notes) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per configuration")
    parser.add_argument("--out", type=Path, help="write the results: .json, or Markdown otherwise")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(args.worker, args.steps, args.epochs)
        print(MARKER + json.dumps(result), flush=True)
        return 0

    names = args.only.split(",") if args.only else list(QUICK_CONFIGS if args.quick else CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    machine = cpu_description()
    results = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results.append(run_config(name, args.quick))
    text = markdown(results, machine, args.quick)
    print(text, end="")
    if args.out:
        from bcseg.atomic import write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            write_text(args.out, json.dumps({"machine": machine, "quick": args.quick,
                                             "required_ratio": REQUIRED_RATIO,
                                             "results": results}, indent=1) + "\n")
        else:
            write_text(args.out, text)
    return 0 if min(r["ratio"] for r in results) >= REQUIRED_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
