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
import math
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path

from bcseg import outputs
from bcseg.atomic import WRITE_HOOKS
from bcseg.config import RANGES, as_float32, interval_bounds, is_probability_cut, presets, shorten
from bcseg.errors import STOPS_ASKED, BcsegError, UsageError, printable
from bcseg.outputs import check_output_folder, check_replaceable, claim


class _Parser(argparse.ArgumentParser):
    """argparse with bcseg's one-line errors: the problem, then where to read more.

    Subparsers are built from the parser's own class, so this holds for every
    subcommand. Argument types below reject bad values while parsing, so every usage
    error exits 2 before any data is read or any model is loaded.
    """

    def __init__(self, *args, **kwargs):
        # Options are spelled out: argparse would take "--folds 5" as --folds-file 5
        # and "--forc" as --force, a flag that replaces earlier results.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"bcseg: error: {printable(message)}; see '{self.prog} --help'\n")

    def _get_value(self, action, arg_string):
        """A value, converted by its type; an empty one refused for every argument.

        An empty value is a slip (an unset shell variable, ``--folds-file "$F"``), never
        a choice: code that tests the value ("if args.folds_file") dropped it without a
        word, and Path('') is the current folder, taken as the data, model or run.
        The type's own refusal, where it has one, is said first."""
        value = super()._get_value(action, arg_string)
        if action.nargs not in (argparse.PARSER, argparse.REMAINDER) and not arg_string.strip():
            raise argparse.ArgumentError(action, f"must not be empty, got {arg_string!r}")
        return value

    def parse_known_args(self, args=None, namespace=None):
        self._refuse_repeats(sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)

    def _refuse_repeats(self, argv: list[str]) -> None:
        """An option that takes one value, given twice (``--config a --config b``):
        argparse keeps the last without a word, and the run uses what the user may
        not have meant. Options that collect values (``--model``, ``--teacher``) repeat."""
        single = (argparse._StoreAction, argparse._StoreConstAction)  # store_true/false too
        dest = {option: action.dest for action in self._actions if isinstance(action, single)
                for option in action.option_strings}
        seen: dict[str, str] = {}
        for token in argv:
            if token == "--":
                break
            option = token.split("=", 1)[0]
            if option in dest:
                if dest[option] in seen:
                    other = seen[dest[option]]
                    also = "" if other == option else f" (also as {other})"
                    self.error(f"{option} is given twice{also}; give it once")
                seen[dest[option]] = option


def _plain(text: str) -> bool:
    """Whether a number is written in ASCII without '_', as fold files take them: int()
    and float() also read '1_5' as 15 and Arabic-Indic or full-width digits, so
    --close-mm 1_5 (a slip for 1.5) measured against 15 mm without a word."""
    return text.isascii() and "_" not in text


def _number(text: str) -> float:
    try:
        if not _plain(text):
            raise ValueError(text)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{shorten(text)}' is not a number (plain digits, "
                                         "like 0.25 or 1e-3)") from None


def _threshold(text: str) -> float:
    """A probability cut strictly between 0 and 1 (NaN is not one): at 0 every pixel
    with any probability is tumour, at 1 none is, so neither segments anything. Also
    as a 32-bit float, as the probabilities are: 0.99999999 is 1 there."""
    value = _number(text)
    if not is_probability_cut(value):
        raise argparse.ArgumentTypeError("must be a number between 0 and 1 (both excluded, also as "
                                         f"a 32-bit float), got '{shorten(text)}'")
    return value


def _file_out(text: str) -> str:
    """An output that is one file: a name ending in '/' (or '.', '..') names a folder,
    which Path() would silently turn into a file of that name."""
    name = text.rstrip("/" + os.sep)
    if not text or text != name or name.replace(os.sep, "/").rsplit("/", 1)[-1] in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"names a folder, expected a file name, got '{text}'")
    return text


def _folder_out(text: str) -> str:
    """An output folder, named: an empty ``--out ''`` is the current folder to Path(),
    where bcseg would write (or be refused naming some file of yours) unasked."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got ''")
    return text


def _share(text: str) -> float:
    """A share in (0, 1]: 0 would leave the teacher out, more than all of the target is none
    (1e-50 is 0 as the float32 the targets are)."""
    value = _number(text)
    if not (0 < value <= 1 and as_float32(value) > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0 (also as a 32-bit float) "
                                         f"and at most 1, got '{shorten(text)}'")
    return value


def _config_name(text: str) -> str:
    """A preset name or a TOML file; a file here with a preset's name is ambiguous."""
    if text in presets() and Path(text).is_file():
        raise argparse.ArgumentTypeError(f"'{text}' is both a file here and a bundled preset; "
                                         f"pass ./{text} for the file, or rename it")
    return text


def _orientation(text: str) -> str:
    """Which face lies at each end of each axis, read while parsing: a misspelt one was
    refused as "orientation '...': ...", naming no flag and without the usage line."""
    from bcseg.measure.margins import parse_orientation  # only when --orientation is given

    try:
        parse_orientation(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("orientation ")) from None
    return text


def _millimetres(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of mm >= 0, got '{shorten(text)}'")
    return value + 0.0  # -0 passes 0 <= value, and the margins CSV recorded close_mm as -0


def _close_millimetres(text: str) -> float:
    """The close-margin threshold: mm, at most margins' MAX_CLOSE_MM (a value in um typed
    as mm made every margin close)."""
    from bcseg.measure.margins import MAX_CLOSE_MM  # only when --close-mm is given

    value = _millimetres(text)
    if value > MAX_CLOSE_MM:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CLOSE_MM:g} mm (a specimen measures "
                                         f"a few cm), got '{shorten(text)}'")
    return value


def _whole(minimum: int, maximum: int | None = None):
    """An argument type for whole numbers from ``minimum`` (to ``maximum``)."""
    def parse(text: str) -> int:
        try:
            if not _plain(text):
                raise ValueError(text)
            value = int(text)
        except ValueError:
            # int() reads at most 4300 digits: a longer number is whole, only far out of
            # range, and was refused as 'not a whole number (plain digits, like 10)'
            if not (_plain(text) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", text)):
                raise argparse.ArgumentTypeError(f"'{shorten(text)}' is not a whole number (plain "
                                                 "digits, like 10)") from None
            value = -math.inf if "-" in text else math.inf
        if value < minimum or (maximum is not None and value > maximum):
            allowed = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got '{shorten(text)}'")
        if value == math.inf:
            raise argparse.ArgumentTypeError(f"'{shorten(text)}' is too large a number")
        return value
    return parse


def _min_size(text: str) -> int:
    """Voxels, from 0 to the most one image may hold (:data:`bcseg.rundir.MAX_MIN_SIZE`):
    a larger size can only remove every component of every mask, as --min-size 10**30 did
    without a word. Below it, a size larger than an image empties that image's mask; in a
    folder of images of several sizes that is a choice."""
    from bcseg.rundir import MAX_MIN_SIZE  # only when --min-size is given

    return _whole(0, MAX_MIN_SIZE)(text)


def _whole_key(section: str, key: str, minimum: int | None = None):
    """A whole-number flag that sets ``section.key``, bounded as the key is in a TOML
    file (:data:`bcseg.config.RANGES`, closed intervals): so ``--epochs 10**400`` is
    refused naming the flag, before the dataset is read, not the key later."""
    low, high = (int(bound) for bound in interval_bounds(RANGES[(section, key)]))
    return _whole(low if minimum is None else minimum, high)


def _steps(text: str) -> list[str]:
    """Comma-separated post-processing steps; 'none' for none."""
    from bcseg.infer.postprocess import POSTPROCESS_STEPS

    given = [step.strip() for step in text.split(",")]
    # An empty item is a slip ("$A,$B" with both unset is ","), never a step: dropped,
    # "," was no post-processing at all, overriding the run's tuned choice.
    if "" in given:
        raise argparse.ArgumentTypeError(f"'{text}' has an empty step; give steps separated by "
                                         "single commas, or none")
    steps = [step for step in given if step != "none"]
    unknown = [step for step in steps if step not in POSTPROCESS_STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step '{unknown[0]}'; choose from "
                                         f"{', '.join(POSTPROCESS_STEPS)} or none")
    # "none,fill" says two things at once, "fill,fill" one twice: either is a slip that
    # the run's record would carry on as something the user did not mean.
    if steps and len(given) > len(steps):
        raise argparse.ArgumentTypeError(f"'{text}' asks for none and for {', '.join(steps)}; "
                                         "give the steps, or none alone")
    if len(set(steps)) < len(steps):
        raise argparse.ArgumentTypeError(f"'{text}' names a step twice; give each once")
    return steps


def _spacing(text: str) -> tuple[float, ...]:
    """A voxel size ``Z x Y x X`` in mm: three positive, finite numbers in the plausible
    range of :func:`bcseg.data.image_rules.spacing_problem`, the readers' rule, so a slip
    (1e-12) is a usage error here, before a model loads or margins size a kernel from it."""
    from bcseg.data.image_rules import spacing_problem

    try:
        if not _plain(text):  # 1x0_25x0_25 was 25 mm voxels
            raise ValueError(text)
        values = tuple(float(v) for v in text.replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a spacing like 1x0.25x0.25 (Z x Y x X mm)") from None
    problem = spacing_problem(values, 3)
    if problem:
        raise argparse.ArgumentTypeError(f"spacing '{text}' {problem} (Z x Y x X mm, like 1x0.25x0.25)")
    return values


def _phantom_channels(text: str) -> tuple[str, ...]:
    from bcseg.data.phantom import CHANNELS

    names = tuple(name.strip() for name in text.split(","))
    if any(name not in CHANNELS for name in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a list of distinct channels from {', '.join(CHANNELS)} (e.g. us,pa)")
    return names


def _channel_list(text: str) -> list[str]:
    """Comma-separated, distinct channel names, such as ``us,pa``."""
    from bcseg.data.channels import check_channel_names
    from bcseg.errors import DataError

    try:
        return check_channel_names([name.strip() for name in text.split(",")], None)
    except DataError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def _shape(values: list[int]) -> tuple[int, ...]:
    return tuple(values)


# --------------------------------------------------------------------------- handlers

def cmd_phantom(args) -> int:
    from bcseg.data.phantom import MAX_SPECIMENS, shape_problem, write_phantom

    _needs(args.no_artefacts, "--no-artefacts", args.difficulty == "realistic",
           "--difficulty realistic (the easy phantom has no artefacts to leave out)")
    # Checked before the folder is made: an absurd shape was a raw MemoryError.
    if args.n > MAX_SPECIMENS:
        raise UsageError("--n", f"must be at most {MAX_SPECIMENS} specimens, "
                         f"got {shorten(str(args.n))}")
    problem = shape_problem(args.shape)
    if problem:
        raise UsageError("--shape", problem)
    write_phantom(args.out, n=args.n, shape=tuple(args.shape), seed=args.seed,
                  truth=args.truth, force=args.force, difficulty=args.difficulty,
                  channels=args.channels, artefacts=not args.no_artefacts)
    folders = "images/" if args.channels == ("us",) else ", ".join(f"images/{c}/" for c in args.channels)
    print(f"wrote {args.n} synthetic specimens to {args.out} ({args.difficulty}: {folders}, "
          f"masks/observer1/, masks/observer2/{', truth/' if args.truth else ''}, specimens.csv)")
    return 0


def cmd_check(args) -> int:
    from bcseg.data.check import check_dataset, format_report

    report = check_dataset(args.data)
    print(format_report(report))
    if not report.ok:
        print(f"bcseg: error: {args.data}: {len(report.problems)} problem(s) found, listed above",
              file=sys.stderr)
        return 3
    return 0


def _needs(value, flag: str, present: bool, other: str) -> None:
    """Refuse ``flag``, given (``value`` not None or False), without ``other``, the flag
    or choice it acts through: alone, it was dropped without a word and the run did
    what the user had not asked for (``--spacing`` without ``--margins`` set no spacing)."""
    if value is not None and value is not False and not present:
        raise UsageError(None, f"{flag} needs {other}")


def _fold_options(args) -> None:
    """Refuse --seed beside --folds-file (the file decides the folds, and the flag was
    dropped without a word); otherwise fill in its default. --k is checked against the
    file where the file is read (:func:`_folds_file`)."""
    if args.folds_file and args.seed is not None:
        raise UsageError("--seed", "the folds come from --folds-file; give one or the other")
    args.seed = 0 if args.seed is None else args.seed


def _folds_file(args, cases) -> dict | None:
    """The folds --folds-file gives ``cases`` (None: no file), and --k filled in. Beside
    the file, --k must be its number of folds: --k 3 beside a file of 2 folds was dropped
    without a word, while --k 2 says what the file does (as train takes a recipe's k)."""
    folds = None
    if args.folds_file:
        from bcseg.data.splits import folds_from_file

        folds = folds_from_file(args.folds_file, cases)
        count = max(folds.values(), default=-1) + 1
        if args.k not in (None, count):
            raise UsageError("--k", f"the folds come from --folds-file, which has {count}; "
                             f"give --k {count} or leave it out")
    args.k = 5 if args.k is None else args.k
    return folds


def cmd_split(args) -> int:
    from bcseg.data.content import refuse_duplicate_images
    from bcseg.data.dataset import discover
    from bcseg.data.splits import group_note, kfold_by_group, near_duplicate_groups, save_splits

    _fold_options(args)
    cases = discover(args.data)
    if args.near_duplicates:
        cases = near_duplicate_groups(cases)
    refuse_duplicate_images(cases)
    folds = _folds_file(args, cases)
    if folds is not None:
        source = str(args.folds_file)
    else:
        note = group_note(cases)
        if note:
            warnings.warn(note)
        folds = kfold_by_group(cases, k=args.k, seed=args.seed, source=args.data)
        source = "kfold_by_group"
    out = Path(args.out)
    _check_split_file(out, args, cases)
    with claim(out.parent, "split"):
        check_replaceable([out], args.force, command="split")  # again, now that no other run writes there
        save_splits(out, cases, folds, seed=args.seed, source=source)
    sizes = [sum(1 for f in folds.values() if f == k) for k in range(max(folds.values()) + 1)]
    print(f"wrote {out}: {len(sizes)} folds of {', '.join(map(str, sizes))} cases, "
          f"{len({c.group for c in cases})} groups")
    return 0


# Files a dataset folder is read by, by name (bcseg.data.dataset.discover).
LAYOUT_FILES = {"manifest.csv": "manifest", "folds.csv": "BUSI folds file",
                "channels.json": "channel names file"}  # data.channels.CHANNELS_FILE


def _check_split_file(out: Path, args, cases) -> None:
    """A splits file replaces only one bcseg wrote, and never an input (the manifest,
    the fold file, an image or mask of a case)."""
    from bcseg.data.content import case_files

    # first: a path too long for the system fails any look at it; and never among a
    # dataset's images or masks, whatever dataset it is
    check_output_folder(out.parent, command="split")
    if out.is_dir():
        raise UsageError(out, "is a folder; --out names the JSON file to write")
    outputs.check_not_bookkeeping(out)
    files = {f for case in cases for f in case_files(case)}
    inputs = {args.data, args.folds_file, *files}
    check_replaceable([out], args.force, command="split", inputs=inputs)
    outputs.refuse_dataset_folder(out.parent, args.data, files, "split")  # not among the scans
    # A dataset beside it would read the JSON as its own table; where letter case is
    # ignored (macOS, Windows) 'Channels.json' is the file 'channels.json' it reads.
    layout_file = LAYOUT_FILES.get(outputs.folded(out.name))
    if layout_file:
        raise UsageError(out, f"is the name of a dataset's {layout_file}, which every "
                         "command reading the folder would take for it; --out names the splits' "
                         "JSON file: choose another name (splits.json)")
    # A splits file is JSON: any other name would let it take the place of another
    # command's output (a report.html, a margins.csv) that the next run of that command
    # rewrites as its own, or be read as a table it is not.
    if out.suffix.lower() != ".json":
        raise UsageError(out, "--out names the splits' JSON file, which must end in .json "
                         "(e.g. splits.json)")
    outputs.refuse_whole_result(out.parent, "split")  # as predict: never inside a run


def _train_overrides(args) -> dict:
    model = {}
    if args.model:
        model["ndim"] = 3 if args.model == "unet3d" else 2
    data = {k: v for k, v in (("observer", args.observer), ("channels", args.channels)) if v}
    return {"model": model,
            "data": data,
            "train": {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed),
                                        ("member_seed", args.member_seed),
                                        ("batch_size", args.batch_size),
                                        ("teacher", args.teacher and [str(Path(t).absolute()) for t in args.teacher]),
                                        ("teacher_weight", args.teacher_weight)) if v is not None}}


def cmd_train(args) -> int:
    from bcseg.after_fit import train_and_evaluate
    from bcseg.learn.train import Interrupted

    fold = "all" if args.folds == "all" else (args.fold if args.fold is not None else 0)
    try:
        results = train_and_evaluate(args.data, args.out, config=args.config, overrides=_train_overrides(args),
                        fold=fold, folds_file=args.folds_file, resume=args.resume, force=args.force,
                        init=args.init, strategy=args.strategy, mixed_precision=args.mixed_precision)
    except Interrupted as stopped:
        saved = stopped.saved_epoch
        kept = {0: "no epoch was saved", 1: "epoch 1 is saved"}.get(saved, f"epochs 1-{saved} are saved")
        folds = (" --folds all" if args.folds == "all" else
                 f" --fold {args.fold}" if args.fold is not None else "")
        folds += f" --folds-file {args.folds_file}" if args.folds_file else ""
        # --force interrupted before any fold saved an epoch puts the earlier run back
        if getattr(stopped, "bcseg_old_result_back", False):
            print(printable(f"bcseg: training interrupted ({stopped}); no epoch was saved, so "
                            f"{args.out} is as it was before this run"), file=sys.stderr)
            return 130
        print(printable(f"bcseg: training interrupted ({stopped}); {kept}. Continue with: "
                        f"bcseg train {args.data} --out {args.out}{folds} --resume"), file=sys.stderr)
        return 130
    for result in results:
        dice = result["best_val_dice"]  # None: no validation split, the last epoch kept
        print(f"fold {result['fold']}: " + (f"best epoch {result['best_epoch']}, validation Dice {dice:.3f}"
                                            if dice is not None else
                                            f"epoch {result['best_epoch']} kept (no validation split)"))
        _print_headline(result)
    print(f"run directory: {args.out}")
    return 0


def cmd_predict(args) -> int:
    from bcseg.after_predict import margins_step
    from bcseg.infer.segment import predict_files

    postprocess = args.postprocess
    _needs(args.spacing, "--spacing", args.margins, "--margins (it is the voxel size the margins are "
           "measured in; masks keep their input's spacing)")
    model = args.model  # several --model arguments: an ensemble of them all
    if not model and args.runtime == "onnx":
        # The bundled model is a .keras file: its refusal ("export it first") led nowhere, as
        # the default stays that file however often it is exported.
        raise UsageError("--runtime", "onnx runs a model exported with 'bcseg export-onnx RUN'; pass "
                         "it with --model (the run folder holding model_best.onnx, or the .onnx file): "
                         "the bundled model is a Keras file, which the tensorflow runtime runs")
    if not model:
        from bcseg.pretrained import pretrained_info, pretrained_model
        model = pretrained_model()
        members = [m["path"] for m in pretrained_info().get("members", [])]
        print(f"no --model given: using the bundled BUSI ensemble ({', '.join(members)})" if members
              else f"no --model given: using the bundled BUSI model {model.name}")
    # predict_files checks every input (with --margins its spacing too) before the model
    # loads; the margins step runs after segmenting, inside its claim of --out.
    after = margins_step(Path(args.out), args.margins, args.spacing, args.force or args.resume,
                         args.keep_going)
    records = predict_files(model, args.inputs, args.out, threshold=args.threshold,
                            tta=args.tta or None, postprocess=postprocess, min_size=args.min_size,
                            save_prob=args.save_prob, quicklook=args.quicklook, force=args.force,
                            resume=args.resume, keep_going=args.keep_going, runtime=args.runtime,
                            progress=not args.no_progress and sys.stderr.isatty(),
                            margins=args.margins, spacing_mm=args.spacing, after=after,
                            margin_check=_margin_check() if args.margins else None)
    failed = [r for r in records if r.get("error")]  # with --keep-going: unread, or margins failed
    segmented = sum(r["status"] == "ok" for r in records)
    skipped = sum(r["status"] == "skipped" for r in records)
    print(f"segmented {segmented} of {len(records)} file(s) into "
          f"{args.out}" + (f" ({skipped} already complete, kept)" if skipped else ""))
    if failed:
        for record in failed:
            print(f"bcseg: error: {_flags_for_parameters(record['error'])}", file=sys.stderr)
        return 3
    return 0


def cmd_ensemble(args) -> int:
    from bcseg.ensemble import build_ensemble, recorded_validation_dice

    out, settings, runs = build_ensemble(args.data, args.model, args.out, force=args.force)
    alone = [recorded_validation_dice(run) for run in runs]
    steps = ", ".join(settings.postprocess) or "none"
    print(f"ensemble of {len(runs)} models in {out}: threshold {settings.threshold:g}, "
          f"post-processing {steps}, TTA {'on' if settings.tta else 'off'}")
    if settings.info.get("validation_dice") is not None:
        members = ", ".join("?" if d is None else f"{d:.3f}" for d in alone)
        print(f"validation Dice {settings.info['validation_dice']:.3f} on "
              f"{settings.info.get('pooled_validation_cases')} cases (members alone: {members})")
    print(f"segment with: bcseg predict IMAGES --model {out} --out OUT")
    return 0


def _margin_check():
    """The margins' own refusal of a stack's spacing, for predict to ask of every
    stack before its mask is written (SciPy and scikit-image: only with --margins)."""
    from bcseg.measure.margins import check_margin_spacing

    return check_margin_spacing


def cmd_export_onnx(args) -> int:
    from bcseg.infer.onnx_runtime import export_onnx

    print(f"wrote {export_onnx(args.model, args.out, force=args.force)}")
    return 0


def cmd_evaluate(args) -> int:
    from bcseg.measure.evaluate import evaluate

    if args.protocol == "reference" and not args.model:
        raise UsageError(None, "--protocol reference scores a model: pass --model RUN_DIR "
                         "(the run the predictions came from)")
    _needs(args.model, "--model", args.protocol == "reference", "--protocol reference (the honest "
           "protocol scores the predictions alone)")
    if args.protocol == "reference":
        _import_tensorflow_quietly()
    # before the report's files are looked for in it
    check_output_folder(args.out, command="evaluate")
    if not args.no_report:  # the report's files are checked before the evaluation writes any
        from bcseg.report.html import check_report_files, report_sources
        check_report_files(Path(args.out))
        # and so are the other tables it reads there (a *_margins.csv, a history.csv, an
        # evaluation below): a file of yours so named failed the report after the
        # evaluation was written, exit 3 with half the output in place
        if Path(args.out).is_dir():
            report_sources(Path(args.out), evaluating=Path(args.out))
    result = evaluate(args.pred, args.truth, args.out, observers=args.observer or "all",
                      force=args.force, protocol=args.protocol, model=args.model)
    _print_headline(result)
    if not args.no_report:
        try:
            page = _report(args.out)
        except KeyboardInterrupt:  # the numbers are written and whole: say how to draw them
            raise _Stopped(f"{printable(str(args.out))}: the evaluation is written, its report is not; "
                           f"'bcseg report {printable(str(args.out))}' draws it") from None
        print(f"report: {page}")
    return 0


class _Stopped(KeyboardInterrupt):
    """A stop after the command's results were written: what is left to do, in words."""


def _report(folder) -> Path:
    """Rebuild the report inside a claim, so its files are recorded as bcseg's.

    Figures redrawn in a folder below that keeps its own record (a run of a folder of
    experiments) are recorded there too, under a claim of it: recorded only above, the
    run's own record would find them changed and refuse its --resume and --force.
    """
    from contextlib import ExitStack

    from bcseg.report.html import build_report, check_report_files, figure_folders, report_sources

    root = Path(folder)
    check_report_files(root)  # never a page or figure of yours
    report_sources(root)  # nothing to report: refused before the folder is touched
    with claim(folder, "report"), ExitStack() as claims:
        for sub in figure_folders(root):
            if (sub / outputs.RECORD).is_file():
                claims.enter_context(claim(sub, "report"))
        check_report_files(root)  # again, now that no other run writes here
        return build_report(folder)


def _print_headline(result: dict) -> None:
    from bcseg.measure.evaluate import headline_lines

    for line in headline_lines(result):
        print(line)


def cmd_report(args) -> int:
    if not Path(args.run).is_dir():
        from bcseg.errors import DataError
        raise DataError(args.run, "is not a folder")
    # its page goes into the folder given: into a phantom's dataset (margins or an
    # evaluation inside it) it kept 'phantom --force' from replacing the dataset
    outputs.refuse_whole_result(Path(args.run), "report", instead="give the folder of the "
                                "evaluation, run or margins inside it to report")
    # the checks of every output folder, among them: never among a dataset's masks
    check_output_folder(args.run, command="report")
    print(f"report: {_report(args.run)}")
    return 0


def _margin_images(values: list[str]):
    """``--image PATH`` once, or ``--image NAME=PATH`` per channel, in order."""
    named = [v.partition("=") for v in values]
    if len(values) == 1 and not named[0][1]:
        return values[0]
    if not all(sep and name and path for name, sep, path in named):
        raise UsageError(None, "several --image values must each be NAME=PATH (e.g. us=S01_us.tif)")
    from bcseg.data.channels import check_channel_names

    try:
        names = check_channel_names([name for name, _, _ in named], None)
    except BcsegError as exc:  # a usage error, named after the flag that repeats the name
        raise UsageError("--image", exc.problem) from None
    return {name: path for name, (_, _, path) in zip(names, named)}


def cmd_margins(args) -> int:
    from bcseg.measure.margins import margins_for_files

    from bcseg.data.cases import IMAGE_CHANNEL

    images = _margin_images(args.image)
    names = list(images) if isinstance(images, dict) else [IMAGE_CHANNEL]
    if args.display_channel is not None and args.display_channel not in names:
        # named as the flag, as usage errors are (the core says "display_channel")
        raise UsageError("--display-channel", f"{args.display_channel!r} is not a channel of --image; "
                         f"its channels are {', '.join(map(repr, names))}")
    result = margins_for_files(images, args.tumour, args.out,
                               specimen_path=args.specimen, spacing_mm=args.spacing,
                               orientation=args.orientation, close_mm=args.close_mm, force=args.force,
                               display_channel=args.display_channel)
    distance = result.get("distance_mm")
    print(f"closest margin: {distance:.2f} mm ({result.get('closest_face')})"
          if isinstance(distance, float) and distance == distance else "no margin measured")
    for warning in result.get("warnings", []):
        print(f"bcseg: warning: {warning}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in result.get('outputs', {}).values())}")
    return 0


def cmd_export_nnunet(args) -> int:
    from bcseg.data.dataset import discover
    from bcseg.nnunet import export_nnunet

    _fold_options(args)
    folds = _folds_file(args, discover(args.data) if args.folds_file else [])
    path = export_nnunet(args.data, args.out, args.dataset_id, args.name, observer=args.observer,
                         folds=folds, k=args.k, seed=args.seed, file_ending=args.file_ending,
                         force=args.force, channels=args.channels)
    print(f"wrote nnU-Net v2 dataset {path}")
    return 0


def cmd_demo(args) -> int:
    from bcseg.demo import print_summary, run_demo

    result = run_demo(args.out, force=args.force, epochs_2d=args.epochs_2d, epochs_3d=args.epochs_3d)
    print_summary(result)
    return 0


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bcseg", description="Segment breast tumours in ultrasound images and specimen stacks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic specimen stacks with two observers' masks",
                       description="Write synthetic ex-vivo specimen ultrasound stacks "
                       "(images/ + masks/observer1/ + masks/observer2/), deterministic from the seed.")
    p.add_argument("out", type=_folder_out, help="output folder")
    p.add_argument("--n", type=_whole(1), default=8, help="number of specimens (default 8)")
    p.add_argument("--shape", type=_whole(8), nargs=3, default=[24, 128, 128], metavar=("Z", "H", "W"),
                   help="stack shape, each size from 8 to 4096, at most 2**27 voxels "
                   "(default 24 128 128)")
    # bounded as every other seed (train.seed), so one seed serves a phantom and the runs on
    # it; 2**70 (a slip for 2**7) or a number of 5000 digits was taken without a word
    p.add_argument("--seed", type=_whole_key("train", "seed"), default=0,
                   help="seed of the specimens, from 0 to 2147483647 (default 0)")
    p.add_argument("--truth", action="store_true",
                   help="also write the true tumour and tissue masks under truth/")
    p.add_argument("--difficulty", choices=("easy", "realistic"), default="easy",
                   help="easy: the original, uniformly dark tumour (fast tests); realistic: "
                   "beam-shaped speckle, tissue texture, iso- to hypoechoic spiculated tumours, "
                   "artefacts (default easy)")
    p.add_argument("--channels", type=_phantom_channels, default=("us",), metavar="LIST",
                   help="comma-separated channels from us,pa; anything but 'us' alone writes "
                   "images/<channel>/ (default us)")
    p.add_argument("--no-artefacts", action="store_true",
                   help="realistic: no clip or reverberation artefacts")
    p.add_argument("--force", action="store_true", help="overwrite an existing folder")
    p.set_defaults(func=cmd_phantom)


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="check a dataset's integrity and summarise it",
                       description="Read every image and mask, print a summary table and list "
                       "every problem. Exits 3 when there are problems.")
    p.add_argument("data", help="dataset folder or manifest CSV")
    p.set_defaults(func=cmd_check)


def _add_split(sub) -> None:
    p = sub.add_parser("split", help="write k-fold splits by group as JSON",
                       description="Assign folds by group (specimen), stratified by class, "
                       "or read them from a fold file; write them as JSON.")
    p.add_argument("data", help="dataset folder or manifest CSV")
    p.add_argument("--out", required=True, type=_file_out, help="JSON file to write")
    p.add_argument("--k", type=_whole_key("train", "k"), help="number of folds (default 5)")
    p.add_argument("--seed", type=_whole_key("train", "seed"), help="seed of the split (default 0)")
    p.add_argument("--folds-file", help="CSV with image,fold columns (e.g. BUSI's folds.csv)")
    p.add_argument("--near-duplicates", action="store_true",
                   help="group near-duplicate 2D images (average hash) before splitting")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_split)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a 2D or 3D U-Net; write a run directory",
                       description="Train on every fold but the test fold, validate on held-out "
                       "groups from the training folds, then segment and evaluate the test fold.")
    p.add_argument("data", help="dataset folder or manifest CSV")
    p.add_argument("--out", type=_folder_out, required=True, help="run directory")
    p.add_argument("--model", choices=["unet2d", "unet3d"], help="overrides model.ndim")
    p.add_argument("--config", type=_config_name, help="preset (default, seed, demo) or TOML file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fold", type=_whole(0), help="test fold (default 0)")
    group.add_argument("--folds", choices=["all"], help="train every fold in turn")
    p.add_argument("--folds-file", help="CSV with image,fold columns (e.g. BUSI's folds.csv)")
    p.add_argument("--observer", help="training target: an observer's name, union, "
                   "intersection, staple, random (one observer per sample) or soft (their mean)")
    p.add_argument("--channels", type=_channel_list, metavar="LIST",
                   help="comma-separated named channels to train on, e.g. us,pa or pa; overrides "
                   "data.channels (default: every channel the dataset has)")
    p.add_argument("--epochs", type=_whole_key("train", "epochs"))
    p.add_argument("--batch-size", type=_whole_key("train", "batch_size"))
    p.add_argument("--seed", type=_whole_key("train", "seed"))
    p.add_argument("--member-seed", type=_whole_key("train", "member_seed", 0), metavar="N",
                   help="one member of a seed ensemble: weights and each epoch's draws from N, "
                   "the folds and validation split still from --seed (train.member_seed)")
    p.add_argument("--init", help="start from a model: 'busi' (the bundled one; of a bundled "
                   "ensemble, its first member, busi_unet2d.keras) or a .keras file")
    p.add_argument("--teacher", action="append", metavar="MODEL",
                   help="distil: blend this run's (a k-fold run's: its ensemble's) probabilities into "
                   "the training targets; several --teacher arguments form one ensemble")
    p.add_argument("--teacher-weight", type=_share, metavar="W",
                   help="the teacher's share of each target, in (0, 1] (default: the recipe's "
                   "train.teacher_weight, 0.5 in the presets)")
    # one or the other: given both, --resume won and --force was dropped without a word
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run")
    again.add_argument("--force", action="store_true", help="replace an existing run")
    p.add_argument("--strategy", choices=["mirrored", "multiworker"],
                   help="tf.distribute strategy for several GPUs or machines")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU, bfloat16 on a CPU (AVX512-BF16/AMX)")
    p.set_defaults(func=cmd_train)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment images, stacks or folders with a trained model",
                       description="Segment 2D images and 3D stacks. Masks are written as TIFF "
                       "with the input's shape and spacing; settings not given come from the "
                       "run's inference.json (chosen on its validation split).")
    p.add_argument("inputs", nargs="+", help="image files, stack files or folders; for a model "
                   "of several channels, dataset folders or manifests (images/<channel>/, ...)")
    p.add_argument("--model", action="append",
                   help="run directory or .keras file (default: the bundled BUSI model or ensemble); a run "
                   "trained with --folds all, or several --model arguments, predict as an ensemble")
    p.add_argument("--out", type=_folder_out, required=True, help="output folder")
    p.add_argument("--tta", action="store_true",
                   help="average predictions over the mirror flips the model was trained with")
    p.add_argument("--threshold", type=_threshold, help="probability cut, between 0 and 1")
    p.add_argument("--postprocess", type=_steps, help="comma-separated steps: largest, fill, small; or none")
    p.add_argument("--min-size", type=_min_size, help="voxels; with the 'small' step")
    p.add_argument("--save-prob", action="store_true", help="also write float32 probability maps")
    p.add_argument("--quicklook", action="store_true", help="also write overlay PNGs")
    p.add_argument("--margins", action="store_true", help="measure surgical margins per stack")
    p.add_argument("--spacing", type=_spacing, help="voxel size in mm (Z x Y x X) for --margins")
    p.add_argument("--keep-going", action="store_true",
                   help="carry on past a bad file, report every failure at the end")
    p.add_argument("--no-progress", action="store_true")
    # one or the other: a usage error naming the flags, not the core's "force and resume"
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true",
                       help="replace outputs bcseg wrote before, and remove their stale companions")
    again.add_argument("--resume", action="store_true",
                       help="keep complete outputs, remove partial files a killed run left, do the rest")
    p.add_argument("--runtime", choices=["tensorflow", "onnx"], default="tensorflow",
                   help="onnx: run the model exported by export-onnx with ONNX Runtime, "
                   "without TensorFlow (give it with --model)")
    p.set_defaults(func=cmd_predict)


def _add_ensemble(sub) -> None:
    p = sub.add_parser("ensemble", help="tune an ensemble of finished runs on their validation images",
                       description="Put finished training runs (another --member-seed, another "
                       "recipe, or the folds of k-fold runs) together as one model folder: one "
                       "threshold, post-processing and TTA choice tuned on the runs' validation "
                       "images, as train does for one model. Predict with --model OUT.")
    p.add_argument("data", help="the dataset the runs were trained on (folder or manifest)")
    p.add_argument("--model", action="append", required=True,
                   help="a training run folder, or a k-fold run folder (each fold a member); repeat")
    p.add_argument("--out", type=_folder_out, required=True, help="the ensemble's folder")
    p.add_argument("--force", action="store_true", help="replace an ensemble this command wrote there")
    p.set_defaults(func=cmd_ensemble)


def _add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a trained model to ONNX for --runtime onnx",
                       description="Write the run's model_best.keras as model_best.onnx beside "
                       "it (needs TensorFlow, tf2onnx and onnx: pip install 'bcseg[export]').")
    p.add_argument("model", help="run directory or .keras file")
    p.add_argument("--out", type=_file_out, help="ONNX file (default: model_best.onnx in the run directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing ONNX file")
    p.set_defaults(func=cmd_export_onnx)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions against observers and their consensus",
                       description="Per-case (per-specimen) metrics against each observer, "
                       "their union, intersection and STAPLE consensus, and the agreement "
                       "between observers (the ceiling); summary with bootstrap CIs; report.")
    p.add_argument("--pred", required=True, help="folder of <case>_mask.tif predictions")
    p.add_argument("--truth", required=True, help="dataset folder or manifest")
    p.add_argument("--out", type=_folder_out, required=True, help="output folder")
    p.add_argument("--observer", action="append", help="observer(s) to use (default all)")
    p.add_argument("--protocol", choices=["honest", "reference"], default="honest",
                   help="'reference' also scores --model the way the reference study did "
                        "(24 augmented 128 px copies of every slice, its per-row soft Dice) "
                        "beside the honest per-specimen figures")
    p.add_argument("--model", help="run folder or .keras file the predictions came from "
                                   "(needed by --protocol reference)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.html of a run or evaluation folder")
    p.add_argument("run", help="run or evaluation folder")
    p.set_defaults(func=cmd_report)


def _add_margins(sub) -> None:
    p = sub.add_parser("margins", help="tumour volume and margins to the specimen surface",
                       description="Tumour and specimen volume, closest distance from tumour "
                       "to the specimen surface overall and per face, flags, CSV and figure. "
                       "An estimate from ultrasound, not a pathology margin.")
    p.add_argument("--image", required=True, action="append",
                   help="the specimen stack; for several channels, NAME=PATH once per channel "
                   "(e.g. --image us=S01_us.tif --image pa=S01_pa.tif)")
    p.add_argument("--display-channel", metavar="NAME",
                   help="channel drawn under the margins figure (default: the first)")
    p.add_argument("--tumour", required=True, help="tumour mask (e.g. from bcseg predict)")
    p.add_argument("--specimen", help="specimen mask (default: computed from the image)")
    p.add_argument("--orientation", type=_orientation,
                   help="e.g. z:superior-inferior,y:anterior-posterior,"
                   "x:medial-lateral (the default)")
    p.add_argument("--spacing", type=_spacing, help="voxel size in mm, Z x Y x X, if the file lacks it")
    p.add_argument("--close-mm", type=_close_millimetres, default=2.0,
                   help="close-margin threshold in mm, 0 to 100 (default 2)")
    p.add_argument("--out", type=_folder_out, required=True)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_margins)


def _add_export_nnunet(sub) -> None:
    p = sub.add_parser("export-nnunet", help="write an nnU-Net v2 raw dataset with bcseg's folds")
    p.add_argument("data", help="dataset folder or manifest")
    p.add_argument("out", type=_folder_out, help="nnUNet_raw folder")
    p.add_argument("--dataset-id", type=_whole(1, 999), required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--observer", default="union", help="label: an observer, union, intersection, staple")
    p.add_argument("--k", type=_whole_key("train", "k"), help="number of folds (default 5)")
    p.add_argument("--seed", type=_whole_key("train", "seed"), help="seed of the split (default 0)")
    p.add_argument("--folds-file", help="CSV with image,fold columns")
    p.add_argument("--file-ending", choices=[".tif", ".png", ".nii.gz"])
    p.add_argument("--channels", type=_channel_list, metavar="LIST",
                   help="channels to export, in the model's order (default: the dataset's), "
                   "as _0000, _0001, ...")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_export_nnunet)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole job on the synthetic phantom (about 10 min on a CPU)",
                       description="Phantom, then a 2D and a tiny 3D U-Net trained on training "
                       "specimens, prediction on held-out specimens, evaluation, report.")
    p.add_argument("--out", type=_folder_out, default="demo-run")
    p.add_argument("--epochs-2d", type=_whole_key("train", "epochs"))
    p.add_argument("--epochs-3d", type=_whole_key("train", "epochs"))
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_demo)


# Every subcommand, in the order --help lists them.
COMMANDS = (_add_phantom, _add_check, _add_split, _add_train, _add_predict, _add_ensemble, _add_export_onnx,
            _add_evaluate, _add_report, _add_margins, _add_export_nnunet, _add_demo)


def _quiet_libraries() -> None:
    """Keep stderr to bcseg's own lines: no TensorFlow banners or tifffile chatter."""
    # 3, not 2: TensorFlow's C++ also logs harmless ERROR lines during training (a tf.data
    # attribute newer than the runtime); real failures still arrive as Python exceptions.
    # A user who needs its logs sets TF_CPP_MIN_LOG_LEVEL=0 (docs/safety.md).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # tifffile logs a corrupt file at ERROR level; bcseg reports it as its own DataError.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)

    def show(message, category, filename, lineno, file=None, line=None):
        _HELD_WARNINGS.append(f"bcseg: warning: {printable(str(message))}")
        if _warnings_released:
            _release_warnings()

    warnings.showwarning = show
    _warnings_released.clear()
    _HELD_WARNINGS.clear()


# Warnings wait until the command passes its checks and starts writing (its first claim
# or file), or until it ends well: input that a later check refuses then gets the one
# error line, not a warning about the same run before it.
_HELD_WARNINGS: list[str] = []
_warnings_released: list[bool] = []  # non-empty once the command has started writing


def _release_warnings(*_) -> None:
    if not _warnings_released:
        _warnings_released.append(True)
    for line in _HELD_WARNINGS:
        print(line, file=sys.stderr)
    _HELD_WARNINGS.clear()


outputs.CLAIM_HOOKS.append(_release_warnings)
WRITE_HOOKS.append(_release_warnings)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices with file descriptor 2 muted.

    Its C++ runtime prints start-up banners (oneDNN, absl, and "failed call to
    cuInit" on machines without a GPU) straight to the stderr descriptor, ignoring
    TF_CPP_MIN_LOG_LEVEL; they would break the promise that a failure is one line
    on stderr. Listing the devices here runs that probe while muted. Python
    exceptions still propagate.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow

            tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


NEEDS_TENSORFLOW = {"train", "predict", "ensemble", "demo", "export-onnx"}


def _interrupt(signum, frame) -> None:
    """SIGTERM (a scheduler or ``kill``) stops a run exactly as Ctrl-C does."""
    STOPS_ASKED.append(signum)
    raise KeyboardInterrupt


def _full_disk(error: OSError) -> str | None:
    """One line for an OSError that says the disk (or a size limit) is full."""
    from bcseg.atomic import full_disk_problem

    problem = full_disk_problem(error)
    return problem and f"{error.filename or 'an output file'}: cannot be written: {problem}"


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The subcommand's parser (``bcseg predict``), else the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _printable_output() -> None:
    """Print what stdout's encoding lacks as escapes, as Python does on stderr.

    Under a locale that is not UTF-8 (or PYTHONIOENCODING=ascii, or a pipe in such a
    locale), printing a folder named 'phantôme', or the headline's 'Δ Dice', raised
    UnicodeEncodeError after the command had done its work: exit 1 for a good run."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    _printable_output()
    _quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, which names its own --help
        _command_parser(parser, getattr(args, "command", None)).error(
            f"unrecognized arguments: {' '.join(extra)}")
    main_thread = threading.current_thread() is threading.main_thread()
    STOPS_ASKED.clear()
    # A signal the caller ignores stays ignored (a shell's background job ignores SIGINT,
    # so that a Ctrl-C meant for the foreground does not stop it), as Python keeps it.
    previous = {number: signal.signal(number, _interrupt) for number in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(number) is not signal.SIG_IGN} if main_thread else {}
    try:
        return _run(args)
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(number, handler)


# The core names the parameter a user should pass ("pass force=True"); the command
# line has a flag for each, and its messages name the flag instead.
PARAMETER_FLAGS = {"force=True": "--force", "resume=True": "--resume", "model=RUN": "--model RUN",
                   "spacing_mm=(Z, Y, X)": "--spacing ZxYxX", "file_ending ": "--file-ending ",
                   "min_size=": "--min-size ",
                   "add small to postprocess": "add small to --postprocess"}


def _flags_for_parameters(message: str) -> str:
    for parameter, flag in PARAMETER_FLAGS.items():
        message = message.replace(parameter, flag)
    return message


def _access_problem(error: OSError) -> tuple[str, int] | None:
    """One line and an exit code for an OSError about access rights, or None.

    A file that exists but may not be read is bad input (3); anything else denied
    (creating or writing an output, a read-only file system) is where the output
    was asked to go (2). The path is the one the system names.
    """
    import errno

    if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    path = error.filename or "a file"
    if error.errno != errno.EROFS and error.filename and os.path.lexists(path) \
            and not os.path.isdir(path) and not os.access(path, os.R_OK):
        return f"{path}: cannot be read: permission denied for this user; give it read access", 3
    reason = "the file system is read-only" if error.errno == errno.EROFS else \
        "permission denied for this user"
    return (f"{path}: cannot be read or written: {reason}; fix its permissions or choose "
            "another place for the outputs"), 2


def _name_problem(error: OSError) -> tuple[str, int] | None:
    """One line and an exit code for a path given whose name the file system cannot hold.

    Outputs are checked for it before anything is written; an input so named (``--model``,
    ``--config``, ``--init``, a dataset or image path) failed at its first look as
    'OSError: [Errno 36] File name too long' (exit 1). No such file can exist: it is a bad
    argument (2), named.
    """
    import errno

    if error.errno != errno.ENAMETOOLONG:
        return None
    return (f"{error.filename or 'a path'}: is too long a name for the file system (a name has at "
            "most 255 bytes, a whole path 4096 on Linux), so no such file can exist; give a shorter path"), 2


def _system_problem(error: OSError) -> tuple[str, int] | None:
    """One line and an exit code for a full disk, a denied access or a name too long, else None."""
    full = _full_disk(error)
    return (full, 1) if full else _access_problem(error) or _name_problem(error)


def _interrupted(after: str = "") -> int:
    """What a stopped command says: the warnings it held, then one line (with what the
    stop left to do, ``after``); exit 130."""
    _release_warnings()
    print(f"bcseg: error: interrupted{'; ' + after if after else ''}", file=sys.stderr)
    return 130


def _run(args) -> int:
    try:
        # The size limit from the environment is a setting: checked once here, as a
        # setting (exit 4). Read first where a header was, its error was wrapped as that
        # file's ("s0.tif: cannot read TIFF (...)", exit 3), and listed once per file.
        from bcseg.data.image_rules import max_image_bytes
        max_image_bytes()
        if args.command in NEEDS_TENSORFLOW and getattr(args, "runtime", None) != "onnx":
            _import_tensorflow_quietly()
        code = int(args.func(args) or 0)
        _release_warnings()
        return code
    except BcsegError as error:
        if args.debug:
            raise
        if STOPS_ASKED:  # an input read half-way by the stop is not a damaged input
            return _interrupted()
        _HELD_WARNINGS.clear()  # the error line is all a refused command says
        print(f"bcseg: error: {_flags_for_parameters(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:
        return _interrupted(str(stop) if isinstance(stop, _Stopped) else "")
    except Exception as error:  # a bug or the system (full disk, ...): still one line
        if args.debug:
            raise
        if STOPS_ASKED:  # what the stop left half done failed: it is still the stop
            return _interrupted()
        _HELD_WARNINGS.clear()
        system = _system_problem(error) if isinstance(error, OSError) else None
        if system:
            line, code = system
            print(f"bcseg: error: {printable(line)}", file=sys.stderr)
            return code
        print(f"bcseg: error: {type(error).__name__}: {printable(str(error))} "
              "(run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
