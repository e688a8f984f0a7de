"""Inference speed and memory of the default 2D model on this CPU.

What is measured (issue requirements in brackets):

* seconds per 32 x 256 x 256 uint8 stack and slices/s through
  :func:`bcseg.infer.predict.predict_volume`, without and with mirror TTA, on two paths:

  - **native**: ``input_size=None``, whole 256 x 256 slices (what ``bcseg predict``
    does with a bare ``.keras`` file, which has no ``inference.json``);
  - **run default**: ``input_size=128`` (``data.size``), each slice fitted to a
    128 x 128 square and the probability mapped back (what ``bcseg predict`` does
    with a run folder trained by the default recipe);

  [a stack in <= 3 s without TTA];
* the overhead of ``predict_volume`` against a bare ``model.predict`` on the same
  tensors the model sees (the same normalised, padded, and for the run default
  fitted slices; the same flips for TTA; the same batch size), both timed the same
  way after warm-up, back to back in each round [< 15 %];
* peak RSS of ``predict_files`` segmenting a 400 x 1024 x 1024 uint8 stack, an
  uncompressed ImageJ TIFF written with tifffile and memory-mapped by bcseg, the
  mask written as a TIFF, each path in a fresh subprocess so ``ru_maxrss`` is that
  run's peak [< 1.5 GB = 1.5e9 bytes].

The model is ``train.build_model(config.load_config())`` (the default recipe's
U-Net), saved to a temporary ``.keras`` file and loaded back with
``predict.load_model`` as a user would. Its weights are untrained: the numbers are
speed and memory only, not accuracy (the cost of a CNN does not depend on its
weights or on the image content, so the stacks are random uint8).

Other processes may share the CPU. The load average is sampled during the run and
the CPU time other processes used during each measurement is reported (Linux), so a
slow number can be told from a busy machine.

Examples
--------
Everything (the large native run takes minutes on 2 cores)::

    .venv/bin/python benchmarks/predict_speed.py --out bench-out/predict_speed

Quick look, without the large stack::

    .venv/bin/python benchmarks/predict_speed.py --skip-large --repeats 3

A shallower large stack when time is short (the memory of one batch does not depend
on the depth of the stack, so the peak is the same; the time scales with it)::

    .venv/bin/python benchmarks/predict_speed.py --large-slices 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np

STACK_SHAPE = (32, 256, 256)
LARGE_PLANE = (1024, 1024)
LARGE_DEPTH = 400
MAX_STACK_S = 3.0
MAX_OVERHEAD = 0.15
MAX_RSS_BYTES = 1.5e9
SPACING_MM = (0.05, 0.02, 0.02)
CHILD_TIMEOUT_S = 3 * 3600


# --------------------------------------------------------------------------- machine

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import keras
    import tensorflow as tf

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu_name(), "os_cpu_count": os.cpu_count(), "usable_cpus": affinity,
            "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def _busy_seconds() -> float | None:
    """CPU seconds all processes have used (Linux ``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class LoadSampler:
    """Samples the 1-minute load average in the background."""

    def __init__(self, every_s: float = 2.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every_s)

    def __enter__(self) -> "LoadSampler":
        self.start = os.getloadavg()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.end = os.getloadavg()

    def summary(self) -> dict:
        s = self.samples or [math.nan]
        return {"start_1_5_15": [round(v, 2) for v in self.start],
                "end_1_5_15": [round(v, 2) for v in self.end],
                "during_1min_min": round(min(s), 2), "during_1min_mean": round(statistics.fmean(s), 2),
                "during_1min_max": round(max(s), 2), "samples": len(self.samples)}


def timed(fn, children: bool = False) -> dict:
    """Wall seconds of ``fn()``, and the CPU other processes used meanwhile (in cores)."""
    busy0, own0 = _busy_seconds(), _own_seconds(children)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    busy1, own1 = _busy_seconds(), _own_seconds(children)
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return {"wall_s": wall, "own_cpu_s": own1 - own0, "others_cores": others, "result": result}


# --------------------------------------------------------------------------- model

def default_model(folder: Path):
    """The default recipe's 2D U-Net, saved and loaded back as a user would."""
    from bcseg import config
    from bcseg.learn import train
    from bcseg.infer.predict import load_model

    cfg = config.load_config()
    if cfg["model"]["ndim"] != 2:
        raise SystemExit(f"the default recipe is {cfg['model']['ndim']}D; this benchmark is for 2D")
    path = folder / "default_2d.keras"
    train.build_model(cfg).save(path)
    return cfg, path, load_model(path)


# --------------------------------------------------------------------------- tensors

def _pad_to_divisor(x: np.ndarray, divisor: int) -> np.ndarray:
    """Centred reflect padding of ``(N, H, W)`` to a multiple of ``divisor``, as predict does."""
    widths = [(0, 0)]
    for n in x.shape[1:]:
        extra = -(-n // divisor) * divisor - n
        widths.append((extra // 2, extra - extra // 2))
    return np.pad(x, widths, mode="reflect") if any(a or b for a, b in widths) else x


def model_tensors(volume: np.ndarray, divisor: int, input_size: int | None, tta: bool) -> np.ndarray:
    """Exactly what ``predict_volume`` feeds the model for ``volume``: ``(M, H, W, 1)``."""
    from bcseg.data.intensity import intensity_stats, normalise

    x = normalise(volume, intensity_stats(volume))
    if input_size:
        from bcseg.learn.pipeline import to_square
        x = np.stack([to_square(s, input_size) for s in x])
    x = _pad_to_divisor(x, divisor)
    flips = [(), (1,), (2,), (1, 2)] if tta else [()]
    return np.ascontiguousarray(np.concatenate([np.flip(x, axes) for axes in flips]))[..., None]


def calls_batch(batch_size: int, item_shape) -> int:
    """The batch ``predict_volume`` uses for items of ``item_shape``."""
    from bcseg.infer.predict import VOXELS_PER_CALL
    return max(1, min(batch_size, VOXELS_PER_CALL // max(1, math.prod(item_shape))))


# --------------------------------------------------------------------------- stack speed

def _median(values):
    return statistics.median(values)


def stack_speed(model, volume: np.ndarray, batch_size: int, repeats: int) -> dict:
    """predict_volume vs bare model.predict, 4 configurations, interleaved rounds."""
    from bcseg.learn.models import model_divisor
    from bcseg.infer.predict import predict_volume

    divisor = model_divisor(model)
    configs = {}
    for path, input_size in (("native", None), ("run_default", 128)):
        for tta in (False, True):
            tensors = model_tensors(volume, divisor, input_size, tta)
            batch = calls_batch(batch_size, tensors.shape[1:3])
            configs[(path, tta)] = {
                "input_size": input_size, "tta": tta, "model_input": list(tensors.shape[1:3]),
                "batch": batch, "model_items": int(tensors.shape[0]),
                "pv": lambda s=input_size, t=tta: predict_volume(
                    model, volume, input_size=s, tta=t, batch_size=batch_size),
                "bare": lambda x=tensors, b=batch: model.predict(x, batch_size=b, verbose=0),
                "calls": lambda x=tensors, b=batch: [model.predict_on_batch(x[i:i + b])
                                                     for i in range(0, len(x), b)],
                "pv_s": [], "bare_s": [], "calls_s": [], "ratio": [], "calls_ratio": [],
                "cpu_ratio": [], "others": []}

    checks = {}
    for key, c in configs.items():  # warm-up (tracing), and the same-tensors check
        _, prob = c["pv"]()
        c["calls"]()
        bare = c["bare"]()
        if c["input_size"] is None:
            n = volume.shape[0]
            mean = bare[..., 0].reshape(-1, n, *bare.shape[1:3])
            flips = [(), (1,), (2,), (1, 2)] if c["tta"] else [()]
            mean = np.mean([np.flip(m, axes) for m, axes in zip(mean, flips)], axis=0)
            checks[f"{key[0]}_{'tta' if key[1] else 'no_tta'}"] = float(np.abs(prob - mean).max())
    for r in range(repeats):
        for key, c in configs.items():  # back to back, so both see the same load
            a, b, k = timed(c["pv"]), timed(c["bare"]), timed(c["calls"])
            c["pv_s"].append(a["wall_s"])
            c["bare_s"].append(b["wall_s"])
            c["calls_s"].append(k["wall_s"])
            c["ratio"].append(a["wall_s"] / b["wall_s"])
            c["calls_ratio"].append(a["wall_s"] / k["wall_s"])
            c["cpu_ratio"].append(a["own_cpu_s"] / max(b["own_cpu_s"], 1e-9))
            c["others"] += [t["others_cores"] for t in (a, b, k) if t["others_cores"] is not None]
        print(f"  round {r + 1}/{repeats}: load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)

    n = volume.shape[0]
    out = {}
    for (path, tta), c in configs.items():
        name = f"{path}_{'tta' if tta else 'no_tta'}"
        pv, bare = _median(c["pv_s"]), _median(c["bare_s"])
        out[name] = {
            "input_size": c["input_size"], "tta": tta, "model_input": c["model_input"],
            "batch": c["batch"], "model_items": c["model_items"],
            "stack_s_median": pv, "stack_s_min": min(c["pv_s"]),
            "slices_per_s": n / pv, "bare_predict_s_median": bare, "bare_predict_s_min": min(c["bare_s"]),
            "overhead_paired_median": _median(c["ratio"]) - 1,
            "overhead_paired_range": [min(c["ratio"]) - 1, max(c["ratio"]) - 1],
            "overhead_cpu_time_paired_median": _median(c["cpu_ratio"]) - 1,
            "overhead_of_minima": min(c["pv_s"]) / min(c["bare_s"]) - 1,
            "predict_on_batch_loop_s_median": _median(c["calls_s"]),
            "overhead_vs_predict_on_batch_loop": _median(c["calls_ratio"]) - 1,
            "others_cores_mean": statistics.fmean(c["others"]) if c["others"] else None,
            "pv_s": c["pv_s"], "bare_s": c["bare_s"], "predict_on_batch_loop_s": c["calls_s"]}
    out["same_tensors_max_abs_diff"] = checks
    return out


# --------------------------------------------------------------------------- large stack

def write_stack(path: Path, depth: int, seed: int) -> None:
    """An uncompressed ImageJ TIFF of random uint8 slices, written a chunk at a time."""
    import tifffile

    from bcseg.data import io

    shape = (depth, *LARGE_PLANE)
    rng = np.random.default_rng(seed)
    out = tifffile.memmap(path, shape=shape, dtype=np.uint8, **io.imagej_kwargs(shape, SPACING_MM))
    for start in range(0, depth, 16):
        stop = min(depth, start + 16)
        out[start:stop] = rng.integers(0, 256, (stop - start, *LARGE_PLANE), dtype=np.uint8)
    out.flush()
    del out


def run_large_child(args: dict) -> None:
    """In a fresh process: segment one file with predict_files, report peak RSS."""
    t0 = time.perf_counter()
    from bcseg.infer.segment import predict_files

    import_s = time.perf_counter() - t0
    rss_import = _status_kib("VmRSS")
    t1 = time.perf_counter()
    records = predict_files(args["model"], [args["input"]], args["out"], progress=False)
    predict_s = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    hwm = _status_kib("VmHWM")  # the same peak, from the address space itself
    print(json.dumps({"import_s": import_s, "predict_files_s": predict_s, "peak_rss_bytes": peak,
                      "vm_hwm_bytes": None if hwm is None else hwm * 1024,
                      "rss_after_import_bytes": None if rss_import is None else rss_import * 1024,
                      "records": records}))


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _fresh(command: list[str]) -> list[str]:
    """``command`` started by a small shell in the background, not by this process.

    Linux keeps the high-water mark of a forked address space across ``execve``
    (in the signal struct), so a child started from this process directly would
    report at least this process's own RSS (TensorFlow, the model, test stacks) as
    its ``ru_maxrss``. A process the shell forks starts its accounting afresh.
    """
    return ["/bin/sh", "-c", " ".join(shlex.quote(c) for c in command) + " & wait $!"]


def large_stack(model_path: Path, work: Path, depth: int, seed: int, paths: list[str]) -> dict:
    """Peak RSS and time of predict_files on a depth x 1024 x 1024 TIFF, per path."""
    import tifffile

    from bcseg.data import io

    stack = work / "large_stack.tif"
    t = time.perf_counter()
    write_stack(stack, depth, seed)
    array, _ = io.open_volume(stack)
    mapped = isinstance(array, np.memmap)
    del array
    print(f"  wrote {stack.stat().st_size / 1e6:.0f} MB TIFF in {time.perf_counter() - t:.1f} s "
          f"(memory-mapped by bcseg: {mapped})", file=sys.stderr, flush=True)
    results = {"shape": [depth, *LARGE_PLANE], "tiff_bytes": stack.stat().st_size, "memory_mapped": mapped}
    for path in paths:
        run = work / f"run_{path}"
        run.mkdir()
        if path == "native":  # a bare .keras file: no inference.json, whole slices
            model = run / "default_2d.keras"
        else:  # a run folder as bcseg train leaves it (default recipe: input_size 128)
            model = run
            settings = {"ndim": 2, "threshold": 0.5, "postprocess": [], "min_size": 0,
                        "tta": False, "input_size": 128, "patch_size": None}
            (run / "inference.json").write_text(json.dumps(settings))
        os.link(model_path, run / ("default_2d.keras" if path == "native" else "model_best.keras"))
        child = {"model": str(model), "input": str(stack), "out": str(run / "masks")}
        print(f"  {path}: predict_files in a fresh process ...", file=sys.stderr, flush=True)
        proc = timed(lambda: subprocess.run(_fresh(
            [sys.executable, __file__, "--child-large", json.dumps(child)]),
            capture_output=True, text=True, timeout=CHILD_TIMEOUT_S), children=True)
        done = proc["result"]
        if done.returncode != 0:
            raise SystemExit(f"large-stack child ({path}) failed:\n{done.stderr[-4000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        mask_path = Path(report["records"][0]["mask"])
        mask = tifffile.memmap(mask_path, mode="r")
        values = np.unique(mask[:: max(1, depth // 16)])
        ok = mask.shape == tuple(results["shape"]) and mask.dtype == np.uint8
        del mask
        report.update(mask_ok=bool(ok and set(values.tolist()) <= {0, 255}),
                      wall_s=proc["wall_s"], others_cores_mean=proc["others_cores"],
                      s_per_slice=report["predict_files_s"] / depth)
        mask_path.unlink()
        results[path] = report
        print(f"  {path}: {report['predict_files_s']:.0f} s, peak RSS "
              f"{report['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return results


# --------------------------------------------------------------------------- report

def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "FAIL")


def table_rows(speed: dict | None, large: dict | None) -> list[list[str]]:
    rows = []
    labels = {"native": "native 256×256 (input_size=None)",
              "run_default": "run default (input_size=128)"}
    large_labels = {"native": "native (input_size=None, whole 1024×1024 slices)",
                    "run_default": "run default (input_size=128)"}
    if speed:
        configs = [r for name, r in speed.items() if name != "same_tensors_max_abs_diff"]
        n = STACK_SHAPE[0]
        for r in configs:
            path = labels["run_default" if r["input_size"] else "native"]
            tta = "TTA ×4" if r["tta"] else "no TTA"
            need = None if r["tta"] else r["stack_s_median"] <= MAX_STACK_S
            rows.append([f"{path}, {tta}: s per 32×256×256 stack",
                         f"{r['stack_s_median']:.2f} s (best round {r['stack_s_min']:.2f} s)",
                         "≤ 3 s" if not r["tta"] else "—", _verdict(need)])
            rows.append([f"{path}, {tta}: slices/s",
                         f"{r['slices_per_s']:.1f} (best round {n / r['stack_s_min']:.1f})", "—", "—"])
        for r in configs:
            path = labels["run_default" if r["input_size"] else "native"]
            tta = "TTA ×4" if r["tta"] else "no TTA"
            lo, hi = r["overhead_paired_range"]
            rows.append([f"{path}, {tta}: overhead of predict_volume vs bare model.predict "
                         f"({r['bare_predict_s_median']:.2f} s, batch {r['batch']})",
                         f"{100 * r['overhead_paired_median']:+.1f} % (rounds {100 * lo:+.0f} … {100 * hi:+.0f} %)",
                         "< 15 %", _verdict(r["overhead_paired_median"] < MAX_OVERHEAD)])
            rows.append([f"{path}, {tta}: overhead vs a bare predict_on_batch loop (wall); "
                         "vs bare model.predict in CPU time",
                         f"{100 * r['overhead_vs_predict_on_batch_loop']:+.1f} %; "
                         f"{100 * r['overhead_cpu_time_paired_median']:+.1f} %", "—", "—"])
    if large:
        shape = "×".join(str(v) for v in large["shape"])
        for path in ("native", "run_default"):
            if path not in large:
                continue
            r = large[path]
            rows.append([f"predict_files {shape} TIFF, {large_labels[path]}: peak RSS (ru_maxrss)",
                         f"{r['peak_rss_bytes'] / 2**20:.0f} MiB ({r['peak_rss_bytes'] / 1e9:.2f} GB)",
                         "< 1.5 GB", _verdict(r["peak_rss_bytes"] < MAX_RSS_BYTES)])
            rows.append([f"predict_files {shape} TIFF, {large_labels[path]}: time",
                         f"{r['predict_files_s']:.0f} s ({r['s_per_slice']:.2f} s/slice)", "—", "—"])
    return rows


def markdown(result: dict) -> str:
    m, load = result["machine"], result["load"]
    lines = ["| Measurement | Value | Requirement | Result |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result.get("stack_speed"), result.get("large"))]
    model = result["model"]
    notes = [
        "",
        f"- CPU: {m['cpu']}; os.cpu_count() = {m['os_cpu_count']} (usable: {m['usable_cpus']}); "
        f"{m['platform']}; Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}.",
        f"- Load average (1 min) during the run: min {load['during_1min_min']}, mean "
        f"{load['during_1min_mean']}, max {load['during_1min_max']} (start {load['start_1_5_15']}, "
        f"end {load['end_1_5_15']}; this benchmark itself accounts for up to "
        f"~{m['usable_cpus'] or m['os_cpu_count']}).",
        f"- Model: the default recipe's 2D U-Net ({model['summary']}, {model['params']:,} parameters), "
        "**untrained weights** (speed and memory only, not accuracy); saved to a .keras file and "
        "loaded with predict.load_model. Data: random uint8.",
    ]
    speed = result.get("stack_speed")
    if speed:
        others = [r["others_cores_mean"] for k, r in speed.items()
                  if k != "same_tensors_max_abs_diff" and r["others_cores_mean"] is not None]
        notes += [
            f"- Stack times: median of {result['args']['repeats']} rounds after warm-up; in each round "
            "predict_volume, the bare model.predict and a bare loop of model.predict_on_batch (the call "
            "predict_volume makes; the leanest reference) on the same tensors run back to back; overhead = "
            "median over rounds of (predict_volume / bare) − 1, with the range over rounds, and the same "
            "ratio in this process's CPU seconds (less sensitive to other load). \"Best round\" is the "
            "fastest round, the closest to an idle CPU: TensorFlow's two threads wait for each other, so "
            "a core taken by another process can double a time. Other processes used on "
            f"average {statistics.fmean(others):.2f} cores during these measurements."
            if others else f"- Stack times: median of {result['args']['repeats']} rounds after warm-up.",
            "- native = whole slices at their own size (a bare .keras file); run default = slices "
            "fitted to 128×128 squares and mapped back (a run folder from the default recipe); "
            "the run-default overhead includes that resizing.",
            "- Same tensors: max |predict_volume − bare| probability = "
            + ", ".join(f"{k} {v:.1e}" for k, v in speed["same_tensors_max_abs_diff"].items()) + ".",
        ]
    large = result.get("large")
    if large:
        note = (f"- Large stack: {'×'.join(map(str, large['shape']))} uint8, uncompressed ImageJ TIFF "
                f"({large['tiff_bytes'] / 1e6:.0f} MB), memory-mapped by bcseg: {large['memory_mapped']}; "
                "predict_files in a fresh subprocess per path (forked by a shell, so ru_maxrss is "
                "its own peak; VmHWM: " + ", ".join(
                    f"{p} {large[p]['vm_hwm_bytes'] / 2**20:.0f} MiB" for p in ("native", "run_default")
                    if p in large and large[p].get("vm_hwm_bytes")) + "), mask written as a uint8 TIFF "
                "(checked: " + ", ".join(f"{p} {'ok' if large[p]['mask_ok'] else 'BAD'}"
                                         for p in ("native", "run_default") if p in large) + ").")
        if large["shape"][0] != LARGE_DEPTH:
            note += (f" Ran {large['shape'][0]} slices, not {LARGE_DEPTH}: the memory of one batch does "
                     "not depend on the depth of the stack (slices are streamed and their pages released), "
                     f"so the peak is close to that of a {LARGE_DEPTH}-slice run (when this benchmark was "
                     "written, 4 slices peaked 72 MiB below 400); the time scales with the depth.")
        for p in ("native", "run_default"):
            if p in large and large[p]["others_cores_mean"] is not None:
                note += (f" Other processes used {large[p]['others_cores_mean']:.2f} cores on average "
                         f"during the {p} run.")
        notes.append(note)
    elif result["args"]["skip_large"]:
        notes.append("- Large stack: skipped (--skip-large).")
    return "\n".join(lines + notes) + "\n"


# --------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="also write OUT.json and OUT.md")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per configuration (default 7)")
    p.add_argument("--batch-size", type=int, default=8, help="predict_volume batch_size (default 8, its default)")
    p.add_argument("--skip-large", action="store_true", help="skip the 1024×1024 peak-RSS runs")
    p.add_argument("--large-slices", type=int, default=LARGE_DEPTH,
                   help=f"depth of the large stack (default {LARGE_DEPTH})")
    p.add_argument("--large-paths", default="native,run_default",
                   help="comma-separated: native, run_default (default both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child-large", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.large_slices < 1 or args.batch_size < 1:
        p.error("--repeats, --large-slices and --batch-size must be at least 1")
    args.large_paths = [s.strip() for s in args.large_paths.split(",") if s.strip()]
    if not args.large_paths or any(s not in ("native", "run_default") for s in args.large_paths):
        p.error("--large-paths takes native and/or run_default")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_large:
        run_large_child(json.loads(args.child_large))
        return 0
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k != "child_large"}}
    with LoadSampler() as load, tempfile.TemporaryDirectory(prefix="bcseg-speed-") as tmp:
        work = Path(tmp)
        result["machine"] = machine()
        cfg, model_path, model = default_model(work)
        mc = cfg["model"]
        result["model"] = {
            "params": int(model.count_params()), "untrained": True,
            "summary": f"base_filters {mc['base_filters']}, depth {mc['depth']}, norm {mc['norm']}, "
                       f"residual {mc['residual']}, upsample {mc['upsample']}, stem_stride {mc['stem_stride']}"}
        volume = np.random.default_rng(args.seed).integers(0, 256, STACK_SHAPE, dtype=np.uint8)
        print(f"stack {STACK_SHAPE}: {args.repeats} rounds x 4 configurations", file=sys.stderr, flush=True)
        result["stack_speed"] = stack_speed(model, volume, args.batch_size, args.repeats)
        if not args.skip_large:
            per_slice = result["stack_speed"]["native_no_tta"]["stack_s_median"] / STACK_SHAPE[0]
            scale = math.prod(LARGE_PLANE) / math.prod(STACK_SHAPE[1:])
            print(f"large stack {args.large_slices}x{LARGE_PLANE[0]}x{LARGE_PLANE[1]}: native path "
                  f"estimated at ~{per_slice * scale * args.large_slices / 60:.1f} min", file=sys.stderr, flush=True)
            result["large"] = large_stack(model_path, work, args.large_slices, args.seed, args.large_paths)
    result["load"] = load.summary()
    text = markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
