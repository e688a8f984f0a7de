"""Does the demo's 2D result depend on the CPU's kernels, or on a few epochs?

Writes the demo's phantom (``bcseg.demo``: 10 specimens of 24x128x128, seed 0), then
trains the demo's 2D model on fold 0 as ``bcseg demo`` does but with a fixed epoch
count (no time budget), once per kernel setting, with the same seeds and data:

* ``onednn``: TensorFlow's default, oneDNN kernels for the machine's best ISA;
* ``onednn-avx2``: oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), the kernels an
  AVX2-only machine runs; on an AVX-512 machine this emulates the other kind;
* ``eigen``: oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``), Eigen's kernels.

``--epochs`` adds runs of other lengths (a time budget on a slow CPU cuts the demo's
epochs), ``--config`` compares another recipe (a TOML file, laid over ``default.toml``
as every config is: e.g. a copy of ``src/bcseg/configs/demo.toml`` with other model
lines).
Prints and writes a table of the Dice against the union and each observer, and the
spread. Each run takes about 5-8 minutes on 2 idle cores.

Examples::

    .venv/bin/python benchmarks/onednn_spread.py --out bench-out/onednn_spread
    .venv/bin/python benchmarks/onednn_spread.py --kernels onednn-avx2 --epochs 22,30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

KERNELS = {"onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"},
           "onednn-avx2": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"},
           "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"}}


def train_once(data: Path, out: Path, kernels: str, epochs: int | None, config: str) -> dict:
    """Train the demo's 2D model with one kernel setting; return Dice per reference."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **KERNELS[kernels])
    command = [sys.executable, "-m", "bcseg.cli", "train", str(data), "--out", str(out),
               "--config", config, "--fold", "0", "--force"]
    if epochs:
        command += ["--epochs", str(epochs)]
    subprocess.run(command, env=env, check=True)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    state = json.loads((out / "state.json").read_text(encoding="utf-8"))
    dice = {name: round(ref["metrics"]["dice"]["mean"], 4) for name, ref in summary["references"].items()
            if name in ("union", "observer1", "observer2")}
    return dict(dice, kernels=kernels, epochs=state["epoch"], best_epoch=state.get("best_epoch"),
                train_seconds=round(state.get("train_seconds", 0.0)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/onednn_spread"))
    parser.add_argument("--kernels", default="onednn,onednn-avx2,eigen",
                        help=f"comma-separated, from {', '.join(KERNELS)}")
    parser.add_argument("--epochs", default="",
                        help="comma-separated epoch counts (default: the preset's)")
    parser.add_argument("--config", default="demo", help="preset or TOML (default: demo)")
    args = parser.parse_args(argv)
    kernels = args.kernels.split(",")
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        parser.error(f"--kernels: unknown {', '.join(unknown)}; choose from {', '.join(KERNELS)}")
    epochs = [int(e) for e in args.epochs.split(",") if e] or [None]

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import cpu_flags, write_results

    from bcseg.data.phantom import write_phantom
    from bcseg.demo import DEMO_SHAPE, DEMO_SPECIMENS

    data = args.out / "phantom"
    if not data.is_dir():
        write_phantom(data, n=DEMO_SPECIMENS, shape=DEMO_SHAPE, seed=0, truth=True)
    runs = [train_once(data, args.out / f"{k}_e{e or 'preset'}", k, e, args.config)
            for e in epochs for k in kernels]
    unions = [r["union"] for r in runs]
    lines = ["| kernels | epochs | best epoch | Dice vs union | vs observer1 | vs observer2 | "
             "training s |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['kernels']} | {r['epochs']} | {r['best_epoch']} | {r['union']:.3f} | "
              f"{r['observer1']:.3f} | {r['observer2']:.3f} | {r['train_seconds']} |" for r in runs]
    lines += ["", f"Recipe: `{args.config}`. Spread of the Dice vs union (max - min): "
              f"{max(unions) - min(unions):.3f}; lowest {min(unions):.3f}. CPU: {cpu_flags()}, "
              f"{os.cpu_count()} cores."]
    write_results(args.out, "spread", {"config": args.config, "cpu": cpu_flags(), "runs": runs},
                  "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
