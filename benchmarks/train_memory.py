"""Peak memory of training steps against ``activation_values(...) * batch``: the bytes one
batch keeps per value its layers output, which ``bcseg.learn.machine.check_memory``
multiplies by.

Each case runs in a fresh interpreter (its ``ru_maxrss`` is its own): the U-Net of
``train.build_model`` for the case's recipe, compiled as ``train.compile_model`` does
(Adam, the recipe's loss, the Dice and IoU metrics), under the recipe's precision
(``mixed_precision``: bfloat16 on a CPU with bfloat16 instructions), then two
``train_on_batch`` steps on random arrays of one batch. It reports

* ``before``: resident memory after importing TensorFlow, building and compiling the
  model and making the batch (the fixed part),
* ``peak``: the process's maximum resident memory after the two steps,
* ``values``: ``activation_values(shape, ...) * batch``, the values the model's layers
  output for the batch,
* ``bytes/value``: ``(peak - before) / values``, what one batch keeps per value.

``bytes/value`` falls as the batch grows (TensorFlow's first step allocates a fixed
part too); the growth between two sizes of one recipe (``marginal``, printed after the
table) is what a much larger batch costs per value, and the lowest of those is what
the check may multiply by without refusing a recipe that fits.

Examples
--------
About 18 minutes on 2 cores (5 GB at most)::

    .venv/bin/python benchmarks/train_memory.py

One case::

    .venv/bin/python benchmarks/train_memory.py --case plain-512-b4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags  # noqa: E402
from train_speed import cpu_description  # noqa: E402

MARKER = "TRAIN_MEMORY_RESULT "
# name -> (model overrides, data overrides, batch, mixed precision). The default recipe
# (16 filters, depth 4, residual, batch norm), the leanest one (no normalisation, no
# residual), one with instance normalisation, the busi-like one (24 filters, stride-2
# stem, capped at 160) and a small 3D one, in float32 and bfloat16, at two sizes or
# batches so that the fixed part shows apart from what grows with the batch.
DEFAULT, PLAIN, INSTANCE = {}, {"norm": "none", "residual": False}, {"norm": "instance"}
BUSI = {"base_filters": 24, "stem_stride": 2, "max_filters": 160}
SMALL_3D = {"ndim": 3, "base_filters": 8, "depth": 3}
CASES = {
    "2d-128-b16": (DEFAULT, {"size": 128}, 16, False),
    "2d-256-b8": (DEFAULT, {"size": 256}, 8, False),
    "2d-512-b4": (DEFAULT, {"size": 512}, 4, False),
    "2d-1024-b2": (DEFAULT, {"size": 1024}, 2, False),
    "2d-256-b8-bf16": (DEFAULT, {"size": 256}, 8, True),
    "2d-512-b4-bf16": (DEFAULT, {"size": 512}, 4, True),
    "2d-8f-512-b4": ({"base_filters": 8}, {"size": 512}, 4, False),
    "plain-256-b8": (PLAIN, {"size": 256}, 8, False),
    "plain-512-b4": (PLAIN, {"size": 512}, 4, False),
    "plain-256-b8-bf16": (PLAIN, {"size": 256}, 8, True),
    "plain-512-b4-bf16": (PLAIN, {"size": 512}, 4, True),
    "plain-1024-b2-bf16": (PLAIN, {"size": 1024}, 2, True),
    "inst-256-b8": (INSTANCE, {"size": 256}, 8, False),
    "inst-512-b4": (INSTANCE, {"size": 512}, 4, False),
    "inst-256-b8-bf16": (INSTANCE, {"size": 256}, 8, True),
    "inst-512-b4-bf16": (INSTANCE, {"size": 512}, 4, True),
    "busi-320-b8": (BUSI, {"size": 320}, 8, False),
    "busi-640-b4": (BUSI, {"size": 640}, 4, False),
    "busi-320-b8-bf16": (BUSI, {"size": 320}, 8, True),
    "busi-640-b4-bf16": (BUSI, {"size": 640}, 4, True),
    "3d-64-b2": (SMALL_3D, {"size": 64, "patch_depth": 16}, 2, False),
    "3d-64-b4": (SMALL_3D, {"size": 64, "patch_depth": 16}, 4, False),
    "3d-64-b2-bf16": (SMALL_3D, {"size": 64, "patch_depth": 16}, 2, True),
    "3d-64-b4-bf16": (SMALL_3D, {"size": 64, "patch_depth": 16}, 4, True),
}


def _rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def case_config(name: str) -> dict:
    """The configuration of case ``name``: the default recipe with the case's changes
    (tests/test_config_ranges.py holds the memory check to the same recipes)."""
    from bcseg.config import load_config

    model_over, data_over, batch, mixed = CASES[name]
    cfg = load_config()
    cfg["model"].update(model_over)
    cfg["data"].update(data_over)
    cfg["train"].update(batch_size=batch, mixed_precision=mixed)
    return cfg


def child(name: str) -> dict:
    """One case, in this (fresh) interpreter."""
    import numpy as np

    from bcseg.learn.machine import sample_shape
    from bcseg.learn.models import activation_values, unet_options
    from bcseg.learn.train import build_model, compile_model, training_precision

    model_over, _, batch, mixed = CASES[name]
    cfg = case_config(name)
    m = cfg["model"]
    shape = sample_shape(cfg)
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    with training_precision(cfg):
        model = compile_model(build_model(cfg), cfg)
        before = _rss()
        for _ in range(2):
            model.train_on_batch(x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    values = batch * activation_values(shape, **unet_options(m))
    return {"case": name, "input": "x".join(map(str, shape)), "batch": batch,
            "filters": m["base_filters"], "precision": "bfloat16" if mixed else "float32",
            "policy": str(model.dtype_policy.name), "before": before, "peak": peak,
            "values": values, "per_value": (peak - before) / values,
            "recipe": json.dumps([model_over, mixed], sort_keys=True)}


def run_case(name: str) -> dict:
    """``child(name)`` in a fresh interpreter; its result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, __file__, "--child", name], env=env,
                          capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"case {name} failed:\n{done.stderr[-2000:]}")


def table(rows: list[dict]) -> str:
    lines = ["| case | input | batch | precision | before MB | peak MB | values (M) "
             "| bytes/value |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['input']} | {r['batch']} | {r['precision']} | "
                     f"{r['before'] / 1e6:.0f} | {r['peak'] / 1e6:.0f} | "
                     f"{r['values'] / 1e6:.1f} | {r['per_value']:.2f} |")
    return "\n".join(lines)


def marginals(rows: list[dict]) -> list[str]:
    """Per recipe and precision measured at two sizes: the bytes per value between them."""
    lines = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        same = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["values"])
        if len(same) > 1 and same[-1]["values"] > same[0]["values"]:
            low, high = same[0], same[-1]
            rate = (high["peak"] - low["peak"]) / (high["values"] - low["values"])
            lines.append(f"marginal {low['case']} -> {high['case']}: {rate:.2f} bytes/value")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="run only this case (repeatable); default: all")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    if args.child:
        print(MARKER + json.dumps(child(args.child)), flush=True)
        return 0
    rows = []
    for name in args.case or CASES:
        rows.append(run_case(name))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    cpu = cpu_description()
    text = (f"{cpu['cpu']}, {cpu['usable_cpus']} cores; flags: {cpu_flags()}\n\n{table(rows)}\n"
            + "\n" + "\n".join(marginals(rows)) + "\n")
    print("\n" + text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
