"""Training step time of a recipe's U-Net in float32 against mixed precision.

Builds the network of a preset (default ``busi``) with ``train.build_model``, compiles
it with the preset's loss, and times ``train_on_batch`` on random batches of the
preset's size, switching the policy with ``train.training_precision`` (float16 on a
GPU, bfloat16 on a CPU with AVX512-BF16/AMX, float32 elsewhere). The two precisions
alternate ``--rounds`` times so that a neighbour's load hits both alike; each figure
is the fastest round. Peak RSS is the whole process's (both precisions).

Example (about 2 minutes on 2 cores)::

    .venv/bin/python benchmarks/precision_speed.py --config busi --out bench-out/precision.md
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


def _step_seconds(cfg: dict, steps: int) -> float:
    import numpy as np

    from bcseg.learn.train import build_model, compile_model

    size, batch = cfg["data"]["size"], cfg["train"]["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1), dtype=np.float32)
    y = (rng.random((batch, size, size, 1)) > 0.7).astype(np.float32)
    model = compile_model(build_model(cfg), cfg)
    for _ in range(2):  # tracing and oneDNN primitive creation, not timed
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - started) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="busi", help="preset or TOML file (default: busi)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg.config import load_config
    from bcseg.learn.machine import mixed_policy
    from bcseg.learn.train import training_precision

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for mixed in (False, True):
            cfg = load_config(args.config, {"train": {"mixed_precision": mixed}})
            with training_precision(cfg):
                times[mixed].append(_step_seconds(cfg, args.steps))
    batch, size = cfg["train"]["batch_size"], cfg["data"]["size"]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = ["| precision | s per step (fastest round) | images/s |", "|---|---|---|"]
    for mixed, label in ((False, "float32"), (True, mixed_policy())):
        best = min(times[mixed])
        lines.append(f"| {label} | {best:.3f} | {batch / best:.1f} |")
    table = "\n".join(lines) + (
        f"\n\n`{args.config}` network, batch {batch}, {size}x{size} px, {args.steps} steps x "
        f"{args.rounds} rounds per precision; {os.cpu_count()} CPU cores; "
        f"peak RSS {rss_mib:.0f} MiB.\n")
    if args.out:
        from bcseg.atomic import write_text

        write_text(args.out, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
