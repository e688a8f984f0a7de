"""Time the 2D input and output fitting, scikit-image's resize against bcseg's sparse one.

Every 2D prediction fits each slice to the model's square input (``to_square``) and
each probability map back (``from_square``), once per ensemble member; training
fits every cached image once. Both paths are timed here on the same arrays, one
after the other, with their largest difference (they compute the same linear map,
so it is float rounding).

Example (a BUSI-sized image, 500 x 600 pixels, to the bundled model's 160)::

    .venv/bin/python benchmarks/resize_speed.py --shape 500 600 --size 160
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from skimage.transform import resize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import hardware  # noqa: E402  (benchmarks/machine.py)


def skimage_axis(array, axis, length, anti_aliasing):
    """What ``bcseg.learn.pipeline`` resized with before the sparse matrices."""
    shape = list(array.shape)
    shape[axis] = length
    return resize(array, tuple(shape), order=1, anti_aliasing=anti_aliasing, preserve_range=True)


def milliseconds(call, repeats: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[500, 600], help="image height and width")
    parser.add_argument("--size", type=int, default=160, help="the model's square input")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="bench-out/resize_speed.json")
    args = parser.parse_args(argv)

    from bcseg.learn import pipeline

    rng = np.random.default_rng(0)
    image = rng.random(tuple(args.shape)).astype(np.float32)
    prob = rng.random((args.size, args.size)).astype(np.float32)
    steps = {"to_square": lambda: pipeline.to_square(image, args.size),
             "from_square": lambda: pipeline.from_square(prob, tuple(args.shape))}
    sparse_path = pipeline.resize_axis
    results = {}
    for name, step in steps.items():
        fast = milliseconds(step, args.repeats)
        fast_out = step()
        pipeline.resize_axis = skimage_axis
        try:
            slow = milliseconds(step, args.repeats)
            slow_out = step()
        finally:
            pipeline.resize_axis = sparse_path
        results[name] = {"skimage_ms": slow, "sparse_ms": fast, "speedup": slow / fast,
                         "max_difference": float(np.abs(fast_out.astype(np.float64) - slow_out).max())}
        print(f"{name}: scikit-image {slow:.2f} ms, sparse {fast:.2f} ms ({slow / fast:.1f}x); "
              f"largest difference {results[name]['max_difference']:.1e}")
    record = {"shape": args.shape, "size": args.size, "repeats": args.repeats,
              "hardware": hardware(), "steps": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"CPU: {record['hardware']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
