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
phantom specimens (``bcseg.phantom.make_specimen``). Op determinism is enabled,
as ``train.train`` does.

The first fit call compiles the model; it and one pipeline epoch are run before
timing. Then the two measurements alternate epoch by epoch, and each figure is the
best epoch: other processes sharing the CPU only ever slow an epoch down. The share
of CPU time that other processes used during the timed part is reported (from
``/proc/stat``), and so is the CPU time per image of both, which such load hardly
changes: on a machine of its own, where the model keeps every core busy, the wall
time ratio tends to the CPU time ratio.

Requirement: the pipeline reaches at least 90% of the preloaded throughput.

Examples
--------
Proper measurement (about 5 minutes on 2 idle cores)::

    .venv/bin/python benchmarks/train_speed.py --out bench-out/train_speed.md

Smoke run (a few steps; the numbers are noisy)::

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
    "3d": {"ndim": 3, "size": None, "steps": 2, "epochs": 2},
}
QUICK = {"steps": 2, "epochs": 1}
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


class CpuShare:
    """Wall time, and the share of the machine's CPU used by other processes."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.busy = _busy_seconds()
        self.own = sum(os.times()[:2])

    def foreign_share(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.wall
        own = sum(os.times()[:2]) - self.own
        return max(0.0, (busy - self.busy - own) / (wall * usable_cpus()))


# --------------------------------------------------------------------------- worker

def _samples(ndim: int, size: int, depth: int):
    """Cached phantom samples like ``slice_samples`` / ``volume_samples`` build."""
    import numpy as np

    from bcseg.intensity import normalise
    from bcseg.phantom import make_specimen
    from bcseg.pipeline import Samples

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

    from bcseg import pipeline, train
    from bcseg.augment import AugmentConfig
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

    def cpu_seconds() -> float:
        return sum(os.times()[:2])  # this process, all threads

    def pipeline_epoch(epoch: int, count: int) -> tuple[float, float]:
        """One epoch as ``train.fit`` runs it; (wall, CPU) seconds."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        keras.utils.set_random_seed(seed + epoch)
        images, targets = pipeline.epoch_arrays(samples, epoch, seed, count, d["tumour_fraction"], patch)
        dataset = pipeline.epoch_dataset(images, targets, batch, seed, epoch, augment)
        model.fit(dataset, epochs=1, verbose=0)
        return time.perf_counter() - wall, cpu_seconds() - cpu

    class EpochTimer(keras.callbacks.Callback):
        """(wall, CPU) seconds of each epoch, from its first step to its last."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = (time.perf_counter(), cpu_seconds())

        def on_epoch_end(self, epoch, logs=None):
            self.times.append((time.perf_counter() - self.start[0], cpu_seconds() - self.start[1]))

    # Warm-up: compile the train step (one batch), then one short pipeline epoch.
    start = time.perf_counter()
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    pipeline_epoch(10_000, batch)
    warmup = time.perf_counter() - start

    # Alternate epoch by epoch, so that a burst of load from elsewhere hits both alike.
    preloaded, piped = [], []
    share = CpuShare()
    for epoch in range(1, epochs + 1):
        timer = EpochTimer()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[timer])
        preloaded.extend(timer.times)
        piped.append(pipeline_epoch(epoch, n))
    foreign = share.foreign_share()

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    unit = "patches" if spec["ndim"] == 3 else "images"
    pipe_rate, pre_rate = n / min(w for w, _ in piped), n / min(w for w, _ in preloaded)
    pipe_cpu, pre_cpu = (min(c for _, c in times) / n for times in (piped, preloaded))
    return {
        "configuration": f"{spec['ndim']}D U-Net, default config" + (" (patches/s)" if spec["ndim"] == 3 else ""),
        "name": name, "input": "x".join(map(str, shape)), "unit": unit, "batch": batch,
        "steps_per_epoch": steps, "timed_epochs": len(piped),
        "pipeline_per_s": round(pipe_rate, 2), "preloaded_per_s": round(pre_rate, 2),
        "ratio": round(pipe_rate / pre_rate, 3),
        "cpu_ms_per_item_pipeline": round(1000 * pipe_cpu, 2),
        "cpu_ms_per_item_preloaded": round(1000 * pre_cpu, 2),
        "cpu_ratio": round(pre_cpu / pipe_cpu, 3),
        "pipeline_epoch_wall_cpu_s": [[round(w, 3), round(c, 3)] for w, c in piped],
        "preloaded_epoch_wall_cpu_s": [[round(w, 3), round(c, 3)] for w, c in preloaded],
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
        "3D rows count patches/s. Each figure is the best timed epoch "
        f"({'quick run, ' if quick else ''}epochs: "
        + ", ".join(f"{r['name']} {r['timed_epochs']}×{r['steps_per_epoch']} steps" for r in results)
        + "); the pipeline epoch includes epoch_arrays, epoch_dataset and the fit call.",
        "Load: " + ", ".join(
            f"{r['name']} load average {r['load_before']} before, other processes used "
            + (f"{r['foreign_cpu_share']:.0%}" if r["foreign_cpu_share"] is not None else "?")
            + " of the CPU while timing" for r in results) + ".",
        "CPU time per image or patch, pipeline / preloaded (ratio preloaded/pipeline): " + ", ".join(
            f"{r['name']} {r['cpu_ms_per_item_pipeline']:.1f} / {r['cpu_ms_per_item_preloaded']:.1f} ms "
            f"({r['cpu_ratio']:.1%})" for r in results) + ".",
        f"Requirement (pipeline >= {REQUIRED_RATIO:.0%} of preloaded): "
        + ("met" if worst >= REQUIRED_RATIO else "NOT met") + f" (lowest ratio {worst:.1%}).",
    ]
    busy = [r["name"] for r in results if (r["foreign_cpu_share"] or 0) > 0.1]
    if busy:
        notes.append(f"Warning: other processes used over 10% of the CPU during {', '.join(busy)}; "
                     "the wall-time figures are disturbed (the CPU-time ratio much less).")
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

    names = args.only.split(",") if args.only else list(CONFIGS)
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
