"""The ``bcseg`` command line: a thin shell over the package's functions.

Each subcommand parses its arguments and calls one function. Every user-facing
failure becomes one line on stderr, ``bcseg: error: <file>: <problem>``, with a
distinct exit code (see :mod:`bcseg.errors`); ``--debug`` shows the traceback.
Modules that import TensorFlow are imported inside the handlers, so ``--help``,
``check`` and ``phantom`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from bcseg.errors import BcsegError, UsageError


def _spacing(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a spacing like 1x0.25x0.25") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"spacing '{text}' must be positive numbers")
    return values


def _shape(values: list[int]) -> tuple[int, ...]:
    return tuple(values)


# --------------------------------------------------------------------------- handlers

def cmd_phantom(args) -> int:
    from bcseg.phantom import write_phantom

    images = write_phantom(args.out, n=args.n, shape=tuple(args.shape), seed=args.seed,
                           truth=args.truth, force=args.force)
    print(f"wrote {len(images)} synthetic specimens to {args.out} "
          f"(images/, masks/observer1/, masks/observer2/{', truth/' if args.truth else ''})")
    return 0


def cmd_check(args) -> int:
    from bcseg.check import check_dataset, format_report

    report = check_dataset(args.data)
    print(format_report(report))
    if not report.ok:
        print(f"bcseg: error: {args.data}: {len(report.problems)} problem(s) found, listed above",
              file=sys.stderr)
        return 3
    return 0


def cmd_split(args) -> int:
    from bcseg.dataset import discover
    from bcseg.splits import folds_from_file, kfold_by_group, near_duplicate_groups, save_splits

    cases = discover(args.data)
    if args.near_duplicates:
        cases = near_duplicate_groups(cases)
    if args.folds_file:
        folds = folds_from_file(args.folds_file, cases)
        source = str(args.folds_file)
    else:
        folds = kfold_by_group(cases, k=args.k, seed=args.seed)
        source = "kfold_by_group"
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(out, "already exists; pass --force to overwrite it")
    save_splits(out, cases, folds, seed=args.seed, source=source)
    sizes = [sum(1 for f in folds.values() if f == k) for k in range(max(folds.values()) + 1)]
    print(f"wrote {out}: {len(sizes)} folds of {', '.join(map(str, sizes))} cases, "
          f"{len({c.group for c in cases})} groups")
    return 0


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcseg", description="Segment breast tumours in ultrasound images and specimen stacks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("phantom", help="write synthetic specimen stacks with two observers' masks",
                       description="Write synthetic ex-vivo specimen ultrasound stacks "
                       "(images/ + masks/observer1/ + masks/observer2/), deterministic from the seed.")
    p.add_argument("out", help="output folder")
    p.add_argument("--n", type=int, default=8, help="number of specimens (default 8)")
    p.add_argument("--shape", type=int, nargs=3, default=[24, 128, 128], metavar=("Z", "H", "W"),
                   help="stack shape (default 24 128 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", action="store_true",
                   help="also write the true tumour and tissue masks under truth/")
    p.add_argument("--force", action="store_true", help="overwrite an existing folder")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("check", help="check a dataset's integrity and summarise it",
                       description="Read every image and mask, print a summary table and list "
                       "every problem. Exits 3 when there are problems.")
    p.add_argument("data", help="dataset folder or manifest CSV")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("split", help="write k-fold splits by group as JSON",
                       description="Assign folds by group (specimen), stratified by class, "
                       "or read them from a fold file; write them as JSON.")
    p.add_argument("data", help="dataset folder or manifest CSV")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds-file", help="CSV with image,fold columns (e.g. BUSI's folds.csv)")
    p.add_argument("--near-duplicates", action="store_true",
                   help="group near-duplicate 2D images (average hash) before splitting")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_split)
    return parser


def _quiet_libraries() -> None:
    """Keep stderr to bcseg's own lines: no TensorFlow banners or tifffile chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tifffile").setLevel(logging.ERROR)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"bcseg: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BcsegError as error:
        if args.debug:
            raise
        print(f"bcseg: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("bcseg: error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or the system (full disk, ...): still one line
        if args.debug:
            raise
        print(f"bcseg: error: {type(error).__name__}: {error} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
