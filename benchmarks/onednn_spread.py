"""Does the demo's result depend on the CPU's kernels? oneDNN on against off.

Writes the demo's phantom (``bcseg.demo``: 10 specimens of 24x128x128, seed 0), then
trains the demo's 2D model on fold 0 exactly as ``bcseg demo`` does, but with a
fixed epoch count (no time budget), once with ``TF_ENABLE_ONEDNN_OPTS=1`` and once
with ``0``: same seeds, same data, only the convolution kernels differ (oneDNN's
against Eigen's). Prints the test Dice against the union and each observer, and the
spread. Each run takes about 5 minutes on 2 idle cores.

Example::

    .venv/bin/python benchmarks/onednn_spread.py --out bench-out/onednn_spread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def train_once(data: Path, out: Path, onednn: str) -> dict:
    """Train the demo's 2D model with oneDNN on ("1") or off ("0"); return Dice per reference."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", "bcseg.cli", "train", str(data), "--out", str(out),
                    "--config", "demo", "--fold", "0", "--force"], env=env, check=True)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    state = json.loads((out / "state.json").read_text(encoding="utf-8"))
    dice = {name: round(ref["metrics"]["dice"]["mean"], 4) for name, ref in summary["references"].items()
            if name in ("union", "observer1", "observer2")}
    return dict(dice, epochs=state["epoch"], best_epoch=state.get("best_epoch"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/onednn_spread"))
    args = parser.parse_args(argv)
    from bcseg.demo import DEMO_SHAPE, DEMO_SPECIMENS
    from bcseg.data.phantom import write_phantom

    data = args.out / "phantom"
    if not data.is_dir():
        write_phantom(data, n=DEMO_SPECIMENS, shape=DEMO_SHAPE, seed=0, truth=True)
    results = {flag: train_once(data, args.out / f"onednn{flag}", flag) for flag in ("1", "0")}
    print("| oneDNN | Dice vs union | vs observer1 | vs observer2 | epochs | best epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    for flag, r in results.items():
        print(f"| {'on' if flag == '1' else 'off'} | {r['union']:.3f} | {r['observer1']:.3f} "
              f"| {r['observer2']:.3f} | {r['epochs']} | {r['best_epoch']} |")
    print(f"\nspread (|on - off|, Dice vs union): {abs(results['1']['union'] - results['0']['union']):.3f}")
    (args.out / "spread.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
