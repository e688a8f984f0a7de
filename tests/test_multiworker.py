"""`--strategy multiworker`: two worker processes on localhost train like one worker.

Two `bcseg train` processes, each with its own `TF_CONFIG` (a two-worker cluster on
free ports of 127.0.0.1), train a tiny 2D U-Net for one epoch with the global batch
split between them. A single process trains the same global batch with no strategy.
The model uses instance normalisation and a per-sample loss, so splitting a batch
changes nothing but the order of float32 sums: the weights must agree to
``WEIGHT_TOLERANCE``. Adam divides each gradient by its own running magnitude, so a
weight whose gradient is near zero can move by a visible share of a step when the
sums are reordered (2e-5 seen on one CPU); a worker that skipped the gradient
all-reduce would differ by whole steps (about the learning rate, 2e-3). (The logged
loss is each worker's own, on its half of the batch, so it is not compared.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

# Absolute, every weight after one epoch (2 Adam steps of at most lr = 2e-3 each):
# 5% of one step. Seen: 1e-7 on one CPU, 2e-5 on another.
WEIGHT_TOLERANCE = 1e-4
TINY = """
[model]
base_filters = 4
depth = 2
norm = "instance"
[data]
size = 32
[train]
epochs = 1
batch_size = 8
k = 2
[inference]
tune = false
"""


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (bound together, so they differ, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _train(data, out, config, extra_env=None, strategy=None):
    command = [sys.executable, "-m", "bcseg.cli", "train", str(data), "--out", str(out),
               "--config", str(config)] + (["--strategy", strategy] if strategy else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(extra_env or {}))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _weights(run):
    import keras

    model = keras.saving.load_model(run / "model_last.keras", compile=False)
    return model.get_weights()


@pytest.mark.slow
def test_two_workers_on_localhost_match_one_worker(phantom_root, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = [_train(phantom_root, tmp_path / f"worker{i}", config, strategy="multiworker",
                      extra_env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                          "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    single = _train(phantom_root, tmp_path / "single", config)
    outputs = [p.communicate(timeout=1200)[0] for p in workers + [single]]
    for process, output in zip(workers + [single], outputs):
        assert process.returncode == 0, output[-3000:]

    reference = _weights(tmp_path / "single")
    for i in range(2):
        run = tmp_path / f"worker{i}"
        assert json.loads((run / "state.json").read_text())["epoch"] == 1
        for got, want in zip(_weights(run), reference):
            np.testing.assert_allclose(got, want, rtol=0, atol=WEIGHT_TOLERANCE)
    diffs = [np.abs(a - b).max() for a, b in zip(_weights(tmp_path / "worker0"), reference)]
    print(f"largest weight difference, 2 workers against 1: {max(diffs):.2e}")
