"""The phantom's speckle against a simulated B-mode image (PyMUST), within 25 %.

PyMUST (pure-NumPy port of the MUST ultrasound simulator) images random point
scatterers with a real probe model: plane-wave transmit, delay-and-sum receive,
envelope of the I/Q signal. The phantom forms its speckle as a Gaussian-filtered
circular Gaussian field (``bcseg.data.phantom_us``). Both are measured with the
same estimator on the same 0.025 mm grid:

- speckle SNR: mean / sd of the envelope (1.91 for fully developed speckle);
- sd of the log-compressed envelope (5.57 dB for Rayleigh speckle);
- intensity correlation length along depth (axial) and across the beam (lateral):
  the lag at which the intensity autocorrelation falls to exp(-1/2), which is the
  sd for a Gaussian correlation.

The phantom's PSF is that of a low-frequency probe: its grain (0.15 mm axial,
0.35 mm lateral) spans pixels at the phantom's 0.25 mm spacing. The reference probe
is therefore PyMUST's C5-2v (3.6 MHz convex array), not a 7.6 MHz linear array whose
grain is about 2.5x finer; ``--probe`` runs any other PyMUST probe (docs/phantom.md
lists five). The receive F-number is fixed (1.7, a clinical value) rather than
PyMUST's automatic one. Exit status 1 when a statistic is off by more than 25 %.

PyMUST is not a dependency of bcseg; install it into the project's environment for
this script only::

    .venv/bin/pip install pymust
    .venv/bin/python benchmarks/speckle_reference.py --out benchmarks/results

It takes about 20 seconds on 2 cores (one simulation of 20,000 scatterers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRID_MM = 0.025
TOLERANCE = 0.25


def correlation_length(intensity: np.ndarray, axis: int, step_mm: float) -> float:
    """Lag (mm) at which the intensity autocorrelation along ``axis`` falls to exp(-1/2)."""
    centred = intensity - intensity.mean()
    n = intensity.shape[axis]
    target = np.exp(-0.5)
    previous = 1.0
    for lag in range(1, n // 2):
        first = np.take(centred, range(0, n - lag), axis=axis)
        second = np.take(centred, range(lag, n), axis=axis)
        rho = float((first * second).mean() / centred.var())
        if rho <= target:  # linear interpolation between lag - 1 and lag
            return (lag - 1 + (previous - target) / (previous - rho)) * step_mm
        previous = rho
    return float("nan")


def statistics(envelope: np.ndarray) -> dict[str, float]:
    """Speckle statistics of a 2D envelope (rows are depth), grid ``GRID_MM``."""
    envelope = envelope / np.sqrt((envelope ** 2).mean(axis=1, keepdims=True))  # no depth trend
    intensity = envelope ** 2
    return {
        "speckle SNR": float(envelope.mean() / envelope.std()),
        "sd of log envelope (dB)": float((20 * np.log10(envelope)).std()),
        "axial correlation (mm)": correlation_length(intensity, 0, GRID_MM),
        "lateral correlation (mm)": correlation_length(intensity, 1, GRID_MM),
    }


def phantom_envelope(seed: int) -> np.ndarray:
    """The phantom's envelope of a homogeneous region, one slice, 8 x 8 mm."""
    from bcseg.data import phantom_us as us

    n = int(round(8 / GRID_MM))
    _, envelope = us.bmode(np.random.default_rng(seed), np.ones((3, n, n)), us.Scan(),
                           (1.0, GRID_MM, GRID_MM))
    return envelope[1]


def pymust_envelope(seed: int, probe: str, fnumber: float) -> np.ndarray:
    """PyMUST B-mode envelope of fully developed speckle, 8 x 8 mm at 14-22 mm depth.

    One transmit at zero tilt: a plane wave for a linear array, a diverging wave
    for a convex one; delay-and-sum onto a 0.025 mm grid.
    """
    import pymust

    rng = np.random.default_rng(seed)
    param = pymust.getparam(probe)
    param.fnumber = fnumber
    count = 20000  # about 150 per mm^2: many scatterers per resolution cell
    xs = rng.uniform(-6e-3, 6e-3, count)
    zs = rng.uniform(12e-3, 24e-3, count)
    reflect = rng.standard_normal(count)
    delays = pymust.txdelay(param, 0)  # one plane wave, no tilt
    rf, _ = pymust.simus(xs, zs, reflect, delays, param)
    iq = pymust.rf2iq(rf, param)
    x = np.arange(-4e-3, 4e-3, GRID_MM * 1e-3)
    z = np.arange(14e-3, 22e-3, GRID_MM * 1e-3)
    xi, zi = np.meshgrid(x, z)
    das = pymust.dasmtx(iq, xi, zi, delays, param)
    return np.abs((das @ iq.flatten(order="F")).reshape(xi.shape, order="F"))


def table(results: dict) -> str:
    lines = [f"| statistic | PyMUST {results['probe']}, receive F# {results['fnumber']} | phantom | "
             f"phantom / PyMUST | within {TOLERANCE:.0%} |", "|---|---|---|---|---|"]
    for name, reference in results["pymust"].items():
        ours = results["phantom"][name]
        ratio = ours / reference
        lines.append(f"| {name} | {reference:.3f} | {ours:.3f} | {ratio:.2f} | "
                     f"{'yes' if abs(ratio - 1) <= TOLERANCE else 'NO'} |")
    lines += ["", f"CPU: {results['cpu']}. Simulation {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", default="C5-2v", help="PyMUST probe name (default C5-2v)")
    parser.add_argument("--fnumber", type=float, default=1.7, help="receive F-number")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for speckle_reference.{json,md}")
    args = parser.parse_args(argv)
    try:
        import pymust  # noqa: F401
    except ImportError:
        print("speckle_reference.py: error: PyMUST is not installed; "
              "run .venv/bin/pip install pymust", file=sys.stderr)
        return 3
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import cpu_flags, write_results

    started = time.perf_counter()
    reference = statistics(pymust_envelope(args.seed, args.probe, args.fnumber))
    results = {"probe": args.probe, "fnumber": args.fnumber, "pymust": reference,
               "phantom": statistics(phantom_envelope(args.seed)),
               "seconds": time.perf_counter() - started, "cpu": cpu_flags()}
    if args.out:
        write_results(Path(args.out), "speckle_reference", results, table(results))
    else:
        print(table(results))
    failed = [k for k, v in reference.items()
              if abs(results["phantom"][k] / v - 1) > TOLERANCE]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
