"""The CPU a benchmark ran on, in the words its tables use.

Every timing and every accuracy run in ``benchmarks/`` states the CPU flags beside
it: this project's machines come with AVX-512 (and bfloat16) or with AVX2 only, and
training speed differs 2-5x between them.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path


def cpu_flags() -> str:
    """``"AVX2, no AVX-512"`` or ``"AVX2, avx512f avx512_bf16 ... amx_bf16"`` from
    /proc/cpuinfo (AMX beside AVX-512: oneDNN runs bfloat16 on its tiles)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    avx512 = sorted(set(re.findall(r"\b(?:avx512|amx)[a-z_0-9]*", text)))
    base = "AVX2" if re.search(r"\bavx2\b", text) else "no AVX2"
    return f"{base}, " + (" ".join(avx512) if avx512 else "no AVX-512")


def hardware() -> str:
    """``"x86_64, 2 CPU cores, AVX2, avx512f ..."``: the line a result table ends with."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {cpu_flags()}"


def busi_missing(data: Path, script: str) -> bool:
    """Say so (one line, on stderr) when ``data`` is not BUSI with its folds.csv."""
    if (Path(data) / "folds.csv").is_file():
        return False
    print(f"{script}: error: {data}: BUSI with folds.csv not found", file=sys.stderr)
    return True


def write_results(out: Path, name: str, results: dict, table: str) -> None:
    """Write ``out/NAME.json`` and ``out/NAME.md`` (atomically) and print the table."""
    import json

    from bcseg.atomic import write_text

    write_text(Path(out) / f"{name}.json", json.dumps(results, indent=1) + "\n")
    write_text(Path(out) / f"{name}.md", table)
    print(table)


def fold_run_parser(doc: str, default_out: str):
    """The command line of a script that studies one fold's run of ``busi.py``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a fold's run folder from benchmarks/busi.py")
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "busi")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    return parser


def read_fold_run(run: Path, data: Path):
    """BUSI's cases by id, its folds, and the run's split (``fold.json``)."""
    import json

    from bcseg.data.dataset import discover
    from bcseg.data.splits import folds_from_file

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cases = discover(data)
    folds = folds_from_file(Path(data) / "folds.csv", cases)
    split = json.loads((Path(run) / "fold.json").read_text(encoding="utf-8"))
    return {c.id: c for c in cases}, folds, split
