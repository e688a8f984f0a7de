"""Inference speed: ONNX Runtime against TensorFlow, same model, same bcseg pipeline.

For a 2D model (the ``demo`` preset's, and the default config's) segmenting a
24x128x128 stack slice by slice (fitted to the 128 px training square), and for the
demo's 3D model over 16x64x64 sliding windows of the same stack, this times
:func:`bcseg.infer.predict.predict_volume` with the Keras model and with the same model
exported by :func:`bcseg.infer.onnx_runtime.export_onnx`. The two runs alternate, and each
figure is the best of the repeats, so a burst of load from elsewhere hits both alike.
Needs the ``onnx`` and ``export`` extras.

Example (about 2 minutes on 2 idle cores)::

    .venv/bin/python benchmarks/onnx_speed.py --out benchmarks/results/onnx_speed.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import cpu_flags  # noqa: E402
from train_speed import Meter, cpu_description  # noqa: E402

CASES = {  # name: (config, overrides, predict_volume options)
    "2D demo model, slices": ("demo", {}, {"input_size": 128}),
    "2D default model, slices": (None, {}, {"input_size": 128}),
    "3D demo model, windows": ("demo", {"model": {"ndim": 3, "base_filters": 8, "depth": 3}},
                               {"patch_size": (16, 64, 64)}),
}


def measure(name: str, repeats: int, folder: Path) -> dict:
    """Best seconds of TensorFlow and ONNX Runtime on one case; the ratio."""
    from bcseg.config import load_config
    from bcseg.infer.onnx_runtime import OnnxModel, export_onnx
    from bcseg.data.phantom import make_specimen
    from bcseg.infer.predict import load_model, predict_volume
    from bcseg.learn.train import build_model

    config, overrides, options = CASES[name]
    keras_file = folder / f"{len(list(folder.iterdir()))}.keras"
    build_model(load_config(config, overrides)).save(keras_file)
    onnx_file = export_onnx(keras_file)
    models = {"tensorflow": load_model(keras_file), "onnx": OnnxModel(onnx_file)}
    stack = make_specimen((24, 128, 128), seed=0)["image"]
    times = {kind: [] for kind in models}
    meter = Meter()
    for k in range(repeats + 1):  # the first round warms up (graph tracing, allocations)
        for kind, model in models.items():
            start = time.perf_counter()
            predict_volume(model, stack, batch_size=8, **options)
            if k:
                times[kind].append(time.perf_counter() - start)
    best = {kind: min(values) for kind, values in times.items()}
    return {"case": name, "tensorflow_s": round(best["tensorflow"], 3), "onnx_s": round(best["onnx"], 3),
            "speedup": round(best["tensorflow"] / best["onnx"], 2), "foreign": meter.read()["foreign"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    machine = cpu_description()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, args.repeats, Path(tmp)) for name in CASES]
    lines = ["| case (24x128x128 stack) | TensorFlow s | ONNX Runtime s | ONNX speed-up | others' CPU share |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['tensorflow_s']:.2f} | {r['onnx_s']:.2f} | {r['speedup']:.2f}x "
              f"| {'?' if r['foreign'] is None else format(r['foreign'], '.0%')} |" for r in rows]
    lines += ["", f"CPU: {machine['cpu']}, flags {' '.join(cpu_flags())}; {machine['usable_cpus']} usable "
              f"core(s); Python {machine['python']}; load average {load:.2f} before; best of "
              f"{args.repeats} alternating runs of predict_volume (batch 8)."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
