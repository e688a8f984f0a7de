"""``bcseg ensemble``: put finished training runs together as one tuned ensemble.

``predict --model A --model B`` averages the models' probabilities, but nothing chose a
threshold for that mean, so it falls back on the members' mean threshold (with a
warning). This tunes one: threshold, post-processing and TTA, chosen on the runs' own
validation images (:func:`bcseg.after_fit.tune_members`), as ``train`` does for one
model. The result is a folder that predicts as the ensemble (``predict --model OUT``):
the members' model files and an ``inference.json`` that lists them.

Which runs go together (the same choice nnU-Net and MONAI leave to the user):

- runs trained on the same split with another ``--member-seed`` (a seed ensemble):
  each validation image is scored on the members' mean probability, which is exactly
  what the ensemble will output;
- the fold models of k-fold runs, or runs of other splits: each member is scored on its
  own validation images and the scores are pooled, as a k-fold run tunes its folds.

The members may differ in recipe (augmentation, width, input size) but not in what they
take and give: one dimensionality and the same channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bcseg import rundir
from bcseg.atomic import atomic_path, read_json, real_path
from bcseg.data.dataset import discover
from bcseg.errors import DataError, ModelError, UsageError
from bcseg.outputs import check_not_inputs, check_output_folder, claim, require_new_folder


def member_runs(models: Sequence[str | Path]) -> list[Path]:
    """The training run folder of every member: each ``--model`` is a finished run
    (``model_best.keras`` beside its ``fold.json``) or a finished k-fold run, whose fold
    folders are its members. A bare model file, an ensemble folder or a run that has not
    finished is refused by name: tuning needs the validation images each member kept out."""
    runs, given_as = [], {}
    for given in map(Path, models):
        if not given.exists():
            raise ModelError(given, "not found; give a finished training run folder")
        if not given.is_dir():
            raise ModelError(given, "is not a training run folder; an ensemble is tuned on each "
                             f"run's validation images, which its {rundir.FOLD_FILE} names: give the "
                             "run folder the model was trained in")
        rundir.check_model_file(given / rundir.MODEL_FILE)
        if (given / rundir.MODEL_FILE).is_file():
            found = [given]
        else:
            found = rundir.find_members(given)
            recorded = rundir.read_settings(given / rundir.SETTINGS_FILE)
            if not found and recorded is not None and recorded.members:
                raise ModelError(given, "is an ensemble already (its inference.json lists members), "
                                 "not a training run; give the runs it was made of")
            if not found:
                raise ModelError(given, f"holds no {rundir.MODEL_FILE} and no fold_K folders with "
                                 "one; give a finished training run folder")
            if (given / rundir.CONFIG_FILE).is_file() and not (recorded and recorded.members):
                raise ModelError(given, "this k-fold run has not finished (its folds' ensemble is "
                                 "recorded when the last fold ends); finish it with --resume, or "
                                 "name its finished fold folders instead")
            if recorded is not None:  # an edited record is refused here as predict refuses it
                rundir.check_fold_members(given, recorded)
        for run in found:
            if not (run / rundir.FOLD_FILE).is_file() or not (run / rundir.SETTINGS_FILE).is_file():
                raise ModelError(run, f"has no {rundir.FOLD_FILE} or {rundir.SETTINGS_FILE}: it is "
                                 "not a finished training run (an ensemble or an exported model cannot "
                                 "be tuned again); give the runs it was made of")
            # a fold named beside its k-fold run, or one run given twice
            twin = given_as.setdefault(real_path(run), given)
            if twin is not given:
                raise ModelError(given, f"is in the ensemble twice: {run} is also given as {twin}; "
                                 "give each model once")
        runs += found
    if len(runs) < 2:
        raise UsageError(None, "an ensemble needs two models or more: pass --model twice or more, "
                         "or a k-fold run")
    rundir.refuse_repeats([run / rundir.MODEL_FILE for run in runs])  # one model twice would weigh twice
    _refuse_copies([run / rundir.MODEL_FILE for run in runs])
    return runs


def _refuse_copies(files: list[Path]) -> None:
    """A byte-identical copy of a member's model (a run folder copied) is the same model:
    it too would weigh twice (every save of a model stamps its own date)."""
    from bcseg.atomic import file_sha256

    by_size: dict[int, list[Path]] = {}
    for f in files:
        by_size.setdefault(f.stat().st_size, []).append(f)
    for same_size in (group for group in by_size.values() if len(group) > 1):
        digests: dict[str, Path] = {}
        for f in same_size:
            first = digests.setdefault(file_sha256(f), f)
            if first is not f:
                raise ModelError(f, f"is a copy of {first}, so that model would weigh twice in the "
                                 "ensemble; give each model once")


def _recipe(run: Path) -> dict:
    """A run's config.toml (:func:`_config_file`). train writes every setting there: an
    empty one is a damaged run, not the defaults."""
    path = _config_file(run)
    if not path.is_file():
        raise ModelError(run, f"has no {rundir.CONFIG_FILE} here or above: not a bcseg training run")
    return rundir.load_recipe(path)


def _check_alike(runs: list[Path]) -> None:
    """Members must take and give the same: one dimensionality, the same channels, and
    one target (the observer or consensus their validation scored against), which the
    ensemble is tuned against."""
    from bcseg.after_fit import validation_target

    targets = [validation_target(_recipe(run)) for run in runs]
    for run, target in zip(runs[1:], targets[1:]):
        if target != targets[0]:
            raise ModelError(run, f"was trained against {target!r}, but {runs[0]} against "
                             f"{targets[0]!r}: one threshold cannot be tuned for both")
    def takes(settings) -> str:
        channels = ", ".join(settings.channel_names) or f"{settings.channels} unnamed channel(s)"
        return f"{settings.ndim or '?'}D input of {channels}"

    first = takes(rundir.model_settings(runs[0] / rundir.MODEL_FILE))
    for run in runs[1:]:
        own = takes(rundir.model_settings(run / rundir.MODEL_FILE))
        if own != first:
            raise ModelError(run, f"takes {own}, but {runs[0]} takes {first}: members of an "
                             "ensemble segment the same input")


def _check_models(runs: list[Path]) -> None:
    """Each member's network against its own settings, as ``predict`` checks them (a 3D
    network whose settings say 2D, channels they do not name), named by its file."""
    from bcseg.infer.segment import load_models

    for run in runs:
        load_models(run / rundir.MODEL_FILE)


def _config_file(run: Path) -> Path:
    """The config.toml a run's recipe is read from: its own, else its k-fold run's."""
    return next((f / rundir.CONFIG_FILE for f in (run, run.parent) if (f / rundir.CONFIG_FILE).is_file()),
                run / rundir.CONFIG_FILE)


def _validation_cases(runs: list[Path], data) -> list:
    """The dataset's cases; every member's validation case must be among them, once,
    with the mask the run's target needs."""
    from bcseg.after_fit import validation_target
    from bcseg.learn.train import check_observer

    cases = discover(data)
    by_id = {c.id: c for c in cases}
    known = set(by_id)
    digests: dict[str, str] = {}  # each case's files hashed once, however many runs list it
    for run in runs:
        fold_file = run / rundir.FOLD_FILE
        try:
            split = read_json(fold_file)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(fold_file, f"cannot be read as a run's split ({exc})") from None
        for key in ("train", "validation"):
            listed = split.get(key) if isinstance(split, dict) else None
            if not isinstance(listed, list) or not all(isinstance(i, str) for i in listed):
                raise ModelError(fold_file, f"is not a run's split: {key!r} must be a list of "
                                 "case ids; give a run folder as train wrote it")
        validation = split["validation"]
        missing = sorted(set(validation) - known)
        if missing:
            raise DataError(fold_file, f"validation case {missing[0]!r} is not in {data}"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; give "
                            "the dataset the run was trained on")
        if not validation:
            raise ModelError(fold_file, "lists no validation cases, so nothing can tune the ensemble")
        twice = sorted({i for i in validation if validation.count(i) > 1})
        if twice:  # it would count twice in the tuning
            raise ModelError(fold_file, f"lists validation case {twice[0]!r} twice; give a run folder "
                             "as train wrote it")
        _check_same_files(split.get("validation_sha256"), validation, fold_file, by_id, digests, data)
    # The target as training checked it over the dataset: a consensus needs every
    # observer's mask in every case (the members' targets are alike: _check_alike).
    check_observer(cases, validation_target(_recipe(runs[0])), _config_file(runs[0]))
    return cases


def _check_same_files(recorded, validation: list[str], fold_file: Path, by_id: dict, digests: dict,
                      data) -> None:
    """The validation cases' files are those the run validated on (runs since
    2026-12-06 record their digests; older runs are taken on trust)."""
    from bcseg.data.content import changed_case

    if recorded is None:
        return
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise ModelError(fold_file, "'validation_sha256' is not a map of case ids to digests; give a run "
                         "folder as train wrote it")
    # train records a digest for every validation case and no other: a map lacking one
    # (an empty one, say) left that case's files unchecked, the run taken on trust as if
    # it were older than the digests, and the ensemble tuned on whatever the files now hold.
    if set(recorded) != set(validation):
        unlisted = sorted(set(validation) - set(recorded)) or sorted(set(recorded) - set(validation))
        raise ModelError(fold_file, f"'validation_sha256' does not hold the digests of exactly its "
                         f"validation cases (not so for {unlisted[0]!r}); give a run folder as train wrote it")
    case = changed_case(recorded, by_id, digests)
    if case is not None:
        raise DataError(case.image, f"case {case.id!r} is not the one {fold_file.parent} validated on "
                        f"(its image or masks differ); give the dataset the run was trained on, {data} "
                        "is another")


def build_ensemble(data, models: Sequence[str | Path], out: str | Path, force: bool = False):
    """Tune an ensemble of finished runs on their validation images and write it to ``out``.

    Parameters
    ----------
    data : str or Path
        The dataset the runs were trained on (folder or manifest).
    models : sequence of paths
        Training run folders, or k-fold run folders (each of their folds a member).
    out : str or Path
        The ensemble's folder: ``member_0.keras``, ... and ``inference.json``.
    force : bool
        Replace an ensemble this command wrote there before.

    Returns
    -------
    (Path, InferenceSettings, list of Path)
        The folder, the settings chosen, and the member runs in order.
    """
    out = check_output_folder(out, command="ensemble")
    runs = member_runs(models)
    check_not_inputs(out, [data, *runs, *_run_files(runs)])
    replace = require_new_folder(out, force, "ensemble", what="an ensemble")
    _check_alike(runs)
    cases = _validation_cases(runs, data)
    _check_models(runs)
    settings = write_ensemble(out, runs, cases, _recipe(runs[0]), force=replace, inputs=[data])
    return out, settings, runs


def _run_files(runs: list[Path]) -> list[Path]:
    """What the ensemble reads in each run, links followed: none may lie in its output."""
    return [run / name for run in runs
            for name in (rundir.MODEL_FILE, rundir.FOLD_FILE, rundir.SETTINGS_FILE, rundir.CONFIG_FILE)]


def write_ensemble(out: Path, runs: list[Path], cases: list, cfg: dict, force: bool = False,
                   inputs: Sequence = ()):
    """Tune the runs' models as one ensemble on ``cases`` (their validation images among
    them) with recipe ``cfg``, then write ``member_K.keras`` and ``inference.json`` into
    ``out``; return the settings. ``force`` replaces the folder's content, an ensemble
    written there before."""
    from bcseg.after_fit import tune_members

    files = {f"member_{k}.keras": run / rundir.MODEL_FILE for k, run in enumerate(runs)}
    # Claimed before the tuning's minutes, so that no other run finishes there meanwhile
    # (new); a failure or an interruption at any point leaves no part of an ensemble.
    with claim(out, "ensemble", replace=force, inputs=[*inputs, *runs, *_run_files(runs)],
               new=True, what="an ensemble", all_or_nothing=True):
        settings = tune_members(files, cases, cfg)
        settings = settings.replace(info=dict(settings.info, source_run=", ".join(str(r) for r in runs)))
        for name, source in files.items():
            _save_member(source, out / name)
        # the digests of the member files as written (a re-save is not the run's bytes):
        # a member swapped later for other weights is refused, not run with this threshold
        rundir.write_settings(out, rundir.with_weights(settings, out))
    return settings


def _save_member(source: Path, path: Path) -> None:
    """The run's model re-saved for inference: weights and graph without the optimiser
    state (a third of a checkpoint's size), its own settings inside, as in the run."""
    from bcseg.infer.predict import load_model

    model = load_model(source)
    with atomic_path(path) as tmp:
        model.save(tmp)
    rundir.embed_settings(path, rundir.model_settings(source))


def recorded_validation_dice(run: Path) -> float | None:
    """The validation Dice a run's own tuning recorded, if any (shown beside the ensemble's)."""
    settings = rundir.read_settings(Path(run) / rundir.SETTINGS_FILE)
    value = None if settings is None else settings.info.get("validation_dice")
    return value if isinstance(value, (int, float)) else None
