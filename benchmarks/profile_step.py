"""Where the time of one training step and one inference batch goes, against the CPU's limit.

For a 2D U-Net configuration (default: ``src/bcseg/configs/default.toml``, 128 px)
this script

* counts the floating-point operations of one image through the network from the
  layer shapes (a multiply-add is 2 FLOPs; convolutions and transposed convolutions
  only, which are >97% of the work; a training step is counted as 3× the forward
  pass: forward, gradient with respect to the inputs, gradient with respect to the
  weights),
* measures the CPU's float32 matrix-multiply rate (NumPy ``matmul`` of 2048² float32
  matrices, OpenBLAS, with the same number of threads as TensorFlow gets): the
  practical ceiling of any convolution on these cores,
* times ``train_on_batch`` and ``predict_on_batch`` on random arrays, for each
  variant (thread settings, oneDNN on/off, XLA ``jit_compile``, batch size,
  cheaper layers), every variant in a fresh interpreter because oneDNN's and the
  thread pools' settings are read once at start-up,

and reports achieved GFLOP/s as a share of the sgemm rate, with the CPU's flags
and the load (other processes' share of the CPU while each variant ran).

Examples
--------
About a minute (a few variants, few steps; noisy)::

    .venv/bin/python benchmarks/profile_step.py --quick

The full set of variants (about 10 minutes on 2 idle cores)::

    .venv/bin/python benchmarks/profile_step.py --out benchmarks/results/profile_step.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import Meter, cpu_description, usable_cpus  # noqa: E402

MARKER = "PROFILE_STEP_RESULT "
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
# name -> (environment, options). Options: batch, jit, intra, inter, model overrides.
VARIANTS = {
    "default": ({}, {}),
    "onednn-off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "intra1-inter1": ({}, {"intra": 1, "inter": 1}),
    "intra2-inter1": ({}, {"intra": 2, "inter": 1}),
    "xla": ({}, {"jit": True}),
    "batch4": ({}, {"batch": 4}),
    "batch32": ({}, {"batch": 32}),
    "no-residual": ({}, {"model": {"residual": False}}),
    "stem2": ({}, {"model": {"stem_stride": 2}}),
    "norm-none": ({}, {"model": {"norm": "none"}}),
}
QUICK_VARIANTS = ("default", "stem2")


# --------------------------------------------------------------------------- machine

def cpu_flags() -> list[str]:
    """The SIMD flags of interest that /proc/cpuinfo lists (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    first = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(first.split(":", 1)[-1].split())
    return [f for f in FLAGS if f in present]


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 matmul rate of NumPy (its BLAS) on this process's threads, GFLOP/s."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up: thread pool start, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- worker

def worker(name: str, size: int, steps: int, config: str | None) -> dict:
    """Time one variant in this (fresh) process and return its figures."""
    env, options = VARIANTS[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    if "intra" in options:
        tf.config.threading.set_intra_op_parallelism_threads(options["intra"])
        tf.config.threading.set_inter_op_parallelism_threads(options["inter"])
    from bcseg.learn import train
    from bcseg.config import load_config
    from bcseg.learn.models import conv_flops

    cfg = load_config(config, {"model": options.get("model", {}), "data": {"size": size}})
    batch = options.get("batch", cfg["train"]["batch_size"])
    keras.utils.set_random_seed(0)
    model = train.build_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=train.get_loss(cfg["train"]["loss"]),
                  jit_compile=bool(options.get("jit")))
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1), dtype=np.float32)
    y = (rng.random((batch, size, size, 1)) > 0.7).astype(np.float32)
    warm = time.perf_counter()
    model.train_on_batch(x, y)
    model.predict_on_batch(x)
    warm = time.perf_counter() - warm
    meter = Meter()
    train_s = min(_timed(lambda: model.train_on_batch(x, y)) for _ in range(steps))
    train_cpu = meter.read()["cpu_s"] / steps  # CPU time is less disturbed by others' load
    infer_s = min(_timed(lambda: model.predict_on_batch(x)) for _ in range(steps))
    load = meter.read()
    flops = conv_flops(model, (size, size))
    return {"variant": name, "env": env, "options": {k: v for k, v in options.items()},
            "batch": batch, "size": size, "steps": steps, "warmup_s": round(warm, 2),
            "train_step_s": round(train_s, 4), "infer_batch_s": round(infer_s, 4),
            "train_img_s": round(batch / train_s, 2),
            "train_cpu_ms_per_img": round(1000 * train_cpu / batch, 1),
            "infer_img_s": round(batch / infer_s, 2),
            "gflop_per_image_forward": round(flops / 1e9, 3),
            "train_gflops": round(3 * flops * batch / train_s / 1e9, 2),
            "infer_gflops": round(flops * batch / infer_s / 1e9, 2),
            "foreign_cpu_share": load["foreign"],
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tensorflow": tf.__version__, "keras": keras.__version__}


# --------------------------------------------------------------------------- driver

def run_variant(name: str, size: int, steps: int, config: str | None) -> dict:
    """:func:`worker` for ``name`` in a fresh interpreter with the variant's environment."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **VARIANTS[name][0])
    command = [sys.executable, __file__, "--worker", name, "--size", str(size), "--steps", str(steps)]
    if config:
        command += ["--config", config]
    load = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"profile_step: variant {name} failed (exit {done.returncode})")
    return dict(json.loads(lines[-1][len(MARKER):]), load_before=round(load, 2))


def markdown(results: list[dict], machine: dict, sgemm: float, quick: bool) -> str:
    """The table, with the machine, its flags and the sgemm ceiling."""
    lines = ["| variant | batch | GFLOP/img (fwd) | train step s | train img/s | train GFLOP/s "
             "| share of sgemm | train CPU ms/img | infer batch s | infer img/s | infer GFLOP/s "
             "| share of sgemm | others' CPU share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        other = "?" if r["foreign_cpu_share"] is None else f"{r['foreign_cpu_share']:.0%}"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['gflop_per_image_forward']:.2f} "
                     f"| {r['train_step_s']:.3f} | {r['train_img_s']:.1f} | {r['train_gflops']:.1f} "
                     f"| {r['train_gflops'] / sgemm:.0%} | {r['train_cpu_ms_per_img']:.0f} "
                     f"| {r['infer_batch_s']:.3f} "
                     f"| {r['infer_img_s']:.1f} | {r['infer_gflops']:.1f} "
                     f"| {r['infer_gflops'] / sgemm:.0%} | {other} |")
    notes = ["",
             f"CPU: {machine['cpu']}, flags {' '.join(machine['flags']) or 'none of ' + ', '.join(FLAGS)}; "
             f"{machine['usable_cpus']} usable core(s); {machine['platform']}; Python {machine['python']}, "
             f"TensorFlow {results[0]['tensorflow']}, Keras {results[0]['keras']}.",
             f"sgemm ceiling: NumPy float32 matmul 2048², {machine['usable_cpus']} thread(s): "
             f"{sgemm:.1f} GFLOP/s (load average {machine['load_before']} before).",
             f"Input {results[0]['size']}² px, best of {results[0]['steps']} step(s) per variant"
             f"{' (quick run: noisy)' if quick else ''}. A training step counts 3x the forward FLOPs; "
             "only convolutions are counted. Others' CPU share: what other processes took "
             "while the variant was timed."]
    return "\n".join(lines + notes) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two variants, few steps (~1 min)")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--config", help="a bcseg preset or TOML file (default: the default config)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 5, quick 2)")
    parser.add_argument("--out", type=Path, help="write the results: .json, or Markdown otherwise")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 5)
    if args.worker:
        print(MARKER + json.dumps(worker(args.worker, args.size, steps, args.config)), flush=True)
        return 0
    names = args.only.split(",") if args.only else list(QUICK_VARIANTS if args.quick else VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    machine = dict(cpu_description(), flags=cpu_flags(), load_before=round(os.getloadavg()[0], 2))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(usable_cpus()))
    sgemm = sgemm_gflops(1024 if args.quick else 2048)
    results = []
    for name in names:
        print(f"profiling {name} ...", file=sys.stderr, flush=True)
        results.append(run_variant(name, args.size, steps, args.config))
    text = markdown(results, machine, sgemm, args.quick)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine, "sgemm_gflops": round(sgemm, 2), "results": results}
        args.out.write_text(json.dumps(payload, indent=1) + "\n" if args.out.suffix == ".json" else text,
                            encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
