"""Out-of-range configuration values are refused when the file is loaded.

Every numeric or list key of ``configs/default.toml`` has a range; a value outside
it is a one-line :class:`ConfigError` naming the TOML file and the key, raised by
``load_config`` before ``bcseg train`` touches its run folder, not a bare error (or
a NaN loss) epochs later.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bcseg.config import load_config
from bcseg.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_memory import case_config  # noqa: E402  (benchmarks/train_memory.py)

# (TOML text, the key it breaks); the values around each rule's bounds
BAD = [
    ("[model]\nbase_filters = 0", "model.base_filters"),
    ("[model]\ndepth = 0", "model.depth"),
    ("[model]\nstem_stride = 0", "model.stem_stride"),
    ("[model]\nstem_stride = 3", "model.stem_stride"),  # not a power of two
    ("[model]\nmax_filters = -1", "model.max_filters"),
    ("[model]\nbase_filters = 16\nmax_filters = 8", "model.max_filters"),  # below base_filters
    ("[model]\ndropout = 2.0", "model.dropout"),
    ("[model]\ndropout = 1.0", "model.dropout"),
    ("[model]\ndropout = -0.1", "model.dropout"),
    ("[data]\nsize = 0", "data.size"),
    ("[data]\nsize = 100", "data.size"),  # not a multiple of 2**4
    ("[data]\npatch_depth = 0", "data.patch_depth"),
    ("[model]\nndim = 3\n[data]\npatch_depth = 12", "data.patch_depth"),  # not a multiple of 16
    ("[data]\ntumour_fraction = nan", "data.tumour_fraction"),
    ("[data]\nnormalisation = { pa = \"sqrt\" }", "data.normalisation"),
    ("[augment]\nrotation_deg = 200.0", "augment.rotation_deg"),
    ("[augment]\nrotation_deg = -1.0", "augment.rotation_deg"),
    ("[augment]\np_geometric = 1.5", "augment.p_geometric"),
    ("[augment]\np_intensity = -0.5", "augment.p_intensity"),
    ("[augment]\nbrightness = -0.1", "augment.brightness"),
    ("[augment]\nbrightness = inf", "augment.brightness"),
    ("[augment]\ncontrast = 1.0", "augment.contrast"),
    ("[augment]\nspeckle = -1.0", "augment.speckle"),
    ("[augment]\ngain_ramp = 1.0", "augment.gain_ramp"),
    ("[augment]\nblur = 5.0", "augment.blur"),
    ("[augment]\nresample = 1.0", "augment.resample"),
    ("[augment]\nspeckle_grain = 4.5", "augment.speckle_grain"),
    ("[augment]\nspeckle_max = -0.1", "augment.speckle_max"),
    ("[augment]\nspeckle = 0.2\nspeckle_max = 0.1", "augment.speckle_max"),  # below speckle
    ("[augment]\nscale = [\"a\", \"b\"]", "augment.scale"),
    ("[augment]\nscale = [1.2, 0.8]", "augment.scale"),  # low > high
    ("[augment]\nscale = [0.0, 1.0]", "augment.scale"),
    ("[augment]\nscale = [1.0]", "augment.scale"),
    ("[augment]\nscale = [nan, 1.0]", "augment.scale"),
    ("[augment]\ngamma = [0.7, inf]", "augment.gamma"),
    ("[augment]\ngamma = [true, true]", "augment.gamma"),
    ("[train]\nepochs = 0", "train.epochs"),
    ("[train]\nbudget_minutes = -1.0", "train.budget_minutes"),
    ("[train]\nbudget_minutes = inf", "train.budget_minutes"),
    ("[train]\nsteps_per_epoch = -1", "train.steps_per_epoch"),
    ("[train]\nbatch_size = 0", "train.batch_size"),
    # absurdly large: each exhausted memory after the run folder existed
    ("[data]\nsize = 1600000", "data.size"),
    ("[model]\nbase_filters = 100000000", "model.base_filters"),
    ("[model]\nmax_filters = 100000000", "model.max_filters"),
    ("[model]\nndim = 3\n[data]\npatch_depth = 16384", "data.patch_depth"),
    ("[train]\nbatch_size = 100000000", "train.batch_size"),
    ("[train]\nlearning_rate = nan", "train.learning_rate"),
    ("[train]\nlearning_rate = 0.0", "train.learning_rate"),
    ("[train]\nlearning_rate = -0.001", "train.learning_rate"),
    ("[train]\nlearning_rate = inf", "train.learning_rate"),
    ("[train]\nearly_stopping = -1", "train.early_stopping"),
    ("[train]\nval_fraction = 1.0", "train.val_fraction"),
    ("[train]\nval_fraction = -0.2", "train.val_fraction"),
    ("[train]\nk = 0", "train.k"),
    ("[train]\nk = 1", "train.k"),
    ("[train]\nsplit = \"last\"\ntest_last = 0", "train.test_last"),
    ("[model]\ndepth = 30000000", "model.depth"),  # refused before 2**depth is computed
    # 2**12 * 2 = 8192: no data.size in [1, 4096] is a multiple; it asked for 8192, then refused it
    ("[model]\ndepth = 12\nstem_stride = 2", "model.depth"),
    ("[model]\nndim = 3\ndepth = 11", "model.depth"),  # 2048: no data.patch_depth in [1, 1024]
    ("[train]\nseed = -1", "train.seed"),
    ("[inference]\nthreshold = 7.0", "inference.threshold"),
    ("[inference]\nthreshold = 0.0", "inference.threshold"),
    ("[inference]\nthreshold = 1.0", "inference.threshold"),
    ("[inference]\nthreshold = nan", "inference.threshold"),
    # inside (0, 1), but 1 and 0 as the float32 the probability maps are compared with
    ("[inference]\nthreshold = 0.99999999", "inference.threshold"),
    ("[inference]\nthreshold = 1e-50", "inference.threshold"),
    ("[train]\nlearning_rate = 1e-320", "train.learning_rate"),  # 0 as float32: trained nothing
    ('[train]\nteacher = ["t.keras"]\nteacher_weight = 1e-50', "train.teacher_weight"),
    ("[model]\ndropout = 0.99999999", "model.dropout"),  # 1 as float32: drops everything
    ("[augment]\nresample = 0.99999999", "augment.resample"),
    # absurd but finite: each trained to NaN losses
    ("[train]\nlearning_rate = 1e300", "train.learning_rate"),
    ("[train]\nlearning_rate = 1.5", "train.learning_rate"),
    ("[augment]\nbrightness = 1e300", "augment.brightness"),
    ("[augment]\nspeckle = 1e300", "augment.speckle"),
    ("[augment]\nspeckle_max = 5.0", "augment.speckle_max"),
    ("[augment]\nscale = [1e-300, 1.0]", "augment.scale"),
    ("[augment]\nscale = [1.0, 1e300]", "augment.scale"),
    ("[augment]\ngamma = [0.01, 1.0]", "augment.gamma"),
    ("[augment]\ngamma = [1.0, 1e300]", "augment.gamma"),
    # absurd but finite counts and times: each crashed after the run folder existed
    ("[train]\nepochs = 100001", "train.epochs"),
    ("[train]\nepochs = 1" + "0" * 400, "train.epochs"),  # OverflowError in the schedule
    ("[train]\nbudget_minutes = 1e308", "train.budget_minutes"),  # NaN epochs after epoch 2
    ("[train]\nbudget_minutes = 525961.0", "train.budget_minutes"),  # a year and a minute
    ("[train]\nearly_stopping = 100001", "train.early_stopping"),
    ("[train]\nk = 100001", "train.k"),
    ("[train]\nsplit = \"last\"\ntest_last = 100001", "train.test_last"),
    # a float key given an integer beyond any float: OverflowError, exit 1 without the file
    ("[train]\nlearning_rate = 1" + "0" * 400, "train.learning_rate"),
    ("[augment]\nrotation_deg = 1" + "0" * 400, "augment.rotation_deg"),
]


@pytest.mark.parametrize("toml, key", BAD, ids=[t.replace("\n", " ") for t, _ in BAD])
def test_out_of_range_value_is_a_config_error_naming_file_and_key(toml, key, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(toml + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    message = str(caught.value)  # one line: the file, the key, the rule, the value read
    assert message.startswith(f"{bad}: '{key}' must ") and ", got " in message
    assert "\n" not in message


@pytest.mark.parametrize("toml, key", [
    ("[model]\ndropout = 2.0", "model.dropout"),
    ("[model]\nstem_stride = 0", "model.stem_stride"),
    ("[augment]\nscale = [\"a\", \"b\"]", "augment.scale"),
    ("[train]\nlearning_rate = nan", "train.learning_rate"),
    ("[train]\nlearning_rate = 1" + "0" * 400, "train.learning_rate"),
    # passed the file's checks, then the model refused it with a bare ValueError (exit 1)
    # after config.toml, splits.json and fold.json were written
    ('[model]\nnorm = "none"\ndecoder_norm_only = true', "model.decoder_norm_only"),
], ids=["dropout", "stem_stride", "scale", "learning_rate", "learning_rate_beyond_float",
        "decoder_norm_only without a norm"])
def test_train_with_a_bad_config_exits_before_the_run_folder(toml, key, tmp_path, phantom_root, capsys):
    from test_robustness import one_error_line, run_main  # imports Keras: only here

    bad = tmp_path / "bad.toml"
    bad.write_text(toml + "\n", encoding="utf-8")
    run = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", phantom_root, "--out", run, "--config", bad])
    assert code == ConfigError.exit_code == 4
    assert f"{bad}: '{key}' must be " in one_error_line(err)
    assert not run.exists()  # a corrected rerun is not refused as "already holds a run"


def test_the_largest_counts_and_times_are_accepted(tmp_path):
    path = tmp_path / "long.toml"
    path.write_text("[train]\nepochs = 100000\nbudget_minutes = 525960.0\nearly_stopping = 100000\n"
                    "k = 100000\n")
    assert load_config(path)["train"]["epochs"] == 100000


def _refusal(capsys, argv) -> tuple[int, str]:
    """``bcseg ARGV``: the exit code and the one error line."""
    from bcseg.cli import main
    from test_robustness import one_error_line  # imports Keras: only here

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's refusal of a flag
        code = stop.code
    return code, one_error_line(capsys.readouterr().err)


def test_train_with_an_absurd_budget_exits_before_the_run_folder(tmp_path, phantom_root, capsys):
    """budget_minutes = 1e308 passed the range [0, inf): after epoch 2 the plan was
    'cannot convert float NaN to integer', exit 1, with the run folder left behind."""
    config = tmp_path / "budget.toml"
    config.write_text("[train]\nepochs = 3\nbudget_minutes = 1e308\n")
    run = tmp_path / "run"
    code, line = _refusal(capsys, ["train", phantom_root, "--out", run, "--config", config])
    assert code == ConfigError.exit_code
    assert line == (f"bcseg: error: {config}: 'train.budget_minutes' must be in [0, 525960], "
                    "got 1e+308")
    assert not run.exists()


@pytest.mark.parametrize("argv, flag", [
    (["train", "DATA", "--out", "OUT", "--config", "TINY", "--epochs", "1" + "0" * 400], "--epochs"),
    (["train", "DATA", "--out", "OUT", "--config", "TINY", "--seed", "2147483648"], "--seed"),
    (["train", "DATA", "--out", "OUT", "--config", "TINY", "--batch-size", "4097"], "--batch-size"),
    (["split", "DATA", "--out", "OUT/folds.json", "--k", "100001"], "--k"),
    (["demo", "--out", "OUT", "--epochs-2d", "100001"], "--epochs-2d"),
], ids=["epochs 10**400", "seed", "batch-size", "split k", "demo epochs"])
def test_a_flag_setting_a_key_has_its_bound_and_is_named(argv, flag, tmp_path, phantom_root, capsys):
    """--epochs 10**400 passed and trained until OverflowError, with the run folder
    (config.toml, fold.json, splits.json, train.log) left behind."""
    out, tiny = tmp_path / "out", tmp_path / "tiny.toml"
    tiny.write_text("[model]\nbase_filters = 4\ndepth = 2\n[data]\nsize = 32\n[train]\nbatch_size = 8\n")
    named = {"DATA": phantom_root, "TINY": tiny}
    argv = [named.get(a, str(out) + a[3:] if a.startswith("OUT") else a) for a in argv]
    code, line = _refusal(capsys, argv)
    assert code == 2 and f"argument {flag}: must be a whole number from " in line
    assert len(line) < 200  # the 401 digits are cut short
    assert not out.exists()


def test_a_key_the_split_does_not_use_is_not_checked(tmp_path):
    """k only matters for split = "kfold", test_last only for split = "last"."""
    path = tmp_path / "last.toml"
    path.write_text('[train]\nsplit = "last"\nk = 1\n')
    assert load_config(path)["train"]["k"] == 1
    path.write_text("[train]\ntest_last = 0\n")
    assert load_config(path)["train"]["test_last"] == 0


def test_a_folder_given_as_config_is_named_as_a_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    with pytest.raises(ConfigError, match="is a folder; --config takes a TOML file"):
        load_config(tmp_path / "cfg")


@pytest.mark.parametrize("make, problem", [
    (lambda p: os.mkfifo(p), "is not a regular file"),                        # open() blocked forever
    (lambda p: p.write_text("[model]\ndepth = 1" + "0" * 5000), r"not valid TOML \(ValueError"),
    (lambda p: p.write_text("a = " + "[" * 100000 + "]" * 100000), r"not valid TOML \(RecursionError"),
    (lambda p: p.write_bytes(b"# " + b"x" * (2 << 20)), "is larger than 1 MiB"),
], ids=["fifo", "5000-digit integer", "deep nesting", "2 MiB"])
def test_a_config_that_is_no_recipe_is_a_config_error(tmp_path, make, problem):
    """These ended as a raw ValueError or RecursionError (exit 1), or hung on a FIFO."""
    path = tmp_path / "c.toml"
    make(path)
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


@pytest.mark.parametrize("toml, problem", [
    ('[data]\nchannels = ["us", "pa"]\nnormalisation = { pa = "log", usx = "uint8" }',
     r"'data.normalisation' names channel\(s\) usx not in 'data.channels' \(us, pa\)"),
    ('[data]\nnormalisation = { "u\\ns" = "log" }', r"'u\\ns' cannot name a channel"),
    ('[data]\nchannels = ["us", "p a"]', r"'p a' cannot name a channel"),
])
def test_channel_names_and_their_normalisation_are_checked_with_the_file(tmp_path, toml, problem):
    # A misspelt channel kept its default normalisation without a word; a name with a
    # newline was saved into the run's config.toml as invalid TOML.
    bad = tmp_path / "bad.toml"
    bad.write_text(toml + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(bad)
    assert str(caught.value).startswith(f"{bad}: ") and "\n" not in str(caught.value)


def test_strings_with_control_characters_round_trip_through_a_saved_config():
    import tomllib

    from bcseg.config import to_toml

    cfg = load_config()
    cfg["data"]["observer"] = 'dr "a"\nb\t\\c\x1b\x7fé😀'
    assert tomllib.loads(to_toml(cfg)) == cfg


def _train_refusal(capsys, tmp_path, data, toml: str) -> str:
    from test_robustness import one_error_line, run_main  # imports Keras: only here

    config = tmp_path / "recipe.toml"
    config.write_text(toml, encoding="utf-8")
    run = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", data, "--out", run, "--config", config])
    assert code == ConfigError.exit_code and not run.exists()
    line = one_error_line(err)
    assert line.startswith(f"bcseg: error: {config}: "), line
    return line


def test_train_names_the_config_that_set_an_unknown_observer(tmp_path, phantom_root, capsys):
    line = _train_refusal(capsys, tmp_path, phantom_root, '[data]\nobserver = "nosuch"\n')
    assert "'data.observer': unknown observer 'nosuch'; choose one of" in line and "observer1" in line


def test_train_refuses_a_normalisation_for_channels_the_data_lacks(tmp_path, phantom_root, capsys):
    # The phantom has one grey image per case: the table was ignored without a word.
    line = _train_refusal(capsys, tmp_path, phantom_root, '[data]\nnormalisation = { pa = "log" }\n')
    assert "'data.normalisation' names channel(s) pa, but the dataset has one unnamed image" in line


def test_train_refuses_a_batch_no_machine_memory_holds(tmp_path, phantom_root, capsys):
    # Each key is in range; together one batch needs terabytes. It was killed for
    # memory after the run folder existed.
    line = _train_refusal(capsys, tmp_path, phantom_root,
                          "[data]\nsize = 4096\n[train]\nbatch_size = 4096\n")
    assert "one training batch (4096 x 4096 x 4096" in line and "lower train.batch_size" in line


def _would_train(*args, **kwargs):
    # Called right after the memory checks: a check that lets the recipe through must
    # not go on to train it (it would fill this machine's memory).
    raise AssertionError("the memory check let the recipe through; training would start")


def test_train_refuses_a_batch_the_old_lower_bound_let_through(tmp_path, phantom_root, capsys,
                                                               monkeypatch):
    # The bound was 16 bytes per value of one map per level, 31 * size**2 values for the
    # default recipe: a 4096-pixel batch of 1 "needed" 8 GiB, passed on a 24 GiB machine
    # and was killed for memory at 19 GB after the run folder existed (training keeps
    # 4 times that). The batch is the largest the old bound let through here.
    from test_robustness import files_under

    from bcseg.learn import machine, train

    have = machine._machine_memory()
    batch = (have or 0) // (16 * 31 * 4096**2)
    if not 1 <= batch <= 4096:
        pytest.skip("the old bound refused every 4096-pixel batch here, or memory is unknown")
    monkeypatch.setattr(train, "started_from", _would_train)
    data = files_under(phantom_root)
    line = _train_refusal(capsys, tmp_path, phantom_root,
                          f"[data]\nsize = 4096\n[train]\nbatch_size = {batch}\n")
    assert f"one training batch ({batch} x 4096 x 4096, 16 base filters) needs at least" in line
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.toml"]  # nothing written
    assert files_under(phantom_root) == data


def test_train_refuses_epoch_samples_that_fit_only_without_the_batch(tmp_path, phantom_root,
                                                                     capsys, monkeypatch):
    # Samples and batch were each checked against the whole memory, so an epoch whose
    # samples filled it passed beside the batch's training, which needs 1 GB more.
    from bcseg.learn import machine, train

    have = machine._machine_memory()
    if have is None:
        pytest.skip("this system does not tell its memory")
    steps = have // (16 * 128 * 128 * 2 * 4)  # default batch, size, one image and a target
    monkeypatch.setattr(train, "started_from", _would_train)
    line = _train_refusal(capsys, tmp_path, phantom_root, f"[train]\nsteps_per_epoch = {steps}\n")
    assert "'train.steps_per_epoch' must be at most" in line and f"got {steps}" in line
    assert "that training leaves" in line


def test_train_counts_the_slices_cached_beside_the_batch(tmp_path, phantom_root, capsys,
                                                         monkeypatch):
    # Training caches every slice of its folds at data.size first (80 MiB each at 4096
    # pixels): the batch was checked alone. This machine holds the batch and one slice.
    from bcseg.learn import machine, train

    cfg = load_config()
    have = machine.batch_memory(cfg) + machine.cache_memory(cfg, 1)
    monkeypatch.setattr(machine, "_machine_memory", lambda: have)
    monkeypatch.setattr(train, "started_from", _would_train)
    line = _train_refusal(capsys, tmp_path, phantom_root, "[train]\nepochs = 1\n")
    assert "one training batch (16 x 128 x 128, 16 base filters) needs at least" in line
    assert "MiB of cached samples" in line  # under 1 GiB: in MiB, not '0.0 GiB'


def test_the_memory_refusal_tells_need_and_memory_apart(monkeypatch):
    # In whole GiB, 8.3 needed on an 8.0 GiB machine read 'needs at least 8 GiB, more
    # than this machine's 8 GiB'. Here the machine has 1 MiB less than the batch needs.
    import re

    from bcseg.learn import machine

    cfg = load_config(overrides={"train": {"batch_size": 64}})
    have = machine.batch_memory(cfg) - 2**20
    monkeypatch.setattr(machine, "_machine_memory", lambda: have)
    monkeypatch.setattr(machine, "_step_memory", lambda cfg, channels: machine.batch_memory(cfg))
    with pytest.raises(ConfigError) as refused:
        machine.check_memory(cfg, Path("recipe.toml"))
    line = str(refused.value)
    assert line.startswith("recipe.toml: ") and "\n" not in line, line
    sizes = re.search(r"needs at least (\S+ \S+), more than this machine's (\S+ \S+);", line)
    assert sizes and sizes[1] != sizes[2], line


# Peak resident memory of two training steps in a fresh interpreter, MB, measured by
# benchmarks/train_memory.py (docs/benchmarks.md, "Training memory"), Intel Xeon with
# AVX-512 and AMX bfloat16, TensorFlow 2.21.
MEASURED_PEAK_MB = {
    "2d-128-b16": 1480,
    "2d-256-b8": 1913,
    "2d-512-b4": 2853,
    "2d-1024-b2": 5041,
    "2d-256-b8-bf16": 1677,
    "2d-512-b4-bf16": 2536,
    "2d-8f-512-b4": 1908,
    "plain-256-b8": 1476,
    "plain-512-b4": 1949,
    "plain-256-b8-bf16": 1253,
    "plain-512-b4-bf16": 1642,
    "plain-1024-b2-bf16": 2334,
    "inst-256-b8": 1892,
    "inst-512-b4": 3120,
    "inst-256-b8-bf16": 1749,
    "inst-512-b4-bf16": 2568,
    "busi-320-b8": 2255,
    "busi-640-b4": 3563,
    "busi-320-b8-bf16": 2160,
    "busi-640-b4-bf16": 3145,
    "3d-64-b2": 992,
    "3d-64-b4": 1078,
    "3d-64-b2-bf16": 998,
    "3d-64-b4-bf16": 1096,
}


@pytest.mark.parametrize("case", sorted(MEASURED_PEAK_MB))
def test_the_memory_bound_is_below_every_measured_peak_and_near_the_large_ones(case, monkeypatch):
    # Below: no recipe that fits is refused. Near: 60% of each peak of 2 GB or more at
    # the least, where the fixed part weighs little: the bound of 16 bytes per value of
    # one map per level counted under a fifth, and let far too large batches by.
    from bcseg.learn import machine

    cfg = case_config(case)
    monkeypatch.setattr(machine, "mixed_policy", lambda: "mixed_bfloat16")  # as measured
    need, peak = machine.batch_memory(cfg), MEASURED_PEAK_MB[case] * 1e6
    assert need <= peak
    assert peak < 2e9 or need > 0.6 * peak


@pytest.mark.parametrize("steps", ["1099511627776", "100000000000000000000"])
def test_train_refuses_more_steps_per_epoch_than_memory_holds(steps, tmp_path, phantom_root, capsys):
    # In range (no upper bound: a server holds more than a laptop); 1e12 steps of 16
    # samples asked for 64 TiB, a MemoryError after the run folder existed.
    line = _train_refusal(capsys, tmp_path, phantom_root, f"[train]\nsteps_per_epoch = {steps}\n")
    assert "'train.steps_per_epoch' must be at most" in line and f"got {steps}" in line


def test_steps_per_epoch_of_400_digits_is_shown_cut_short(tmp_path, phantom_root, capsys):
    # TOML integers have no size limit here; the refusal echoed all 401 digits.
    toml = "[train]\nsteps_per_epoch = 1" + "0" * 400
    line = _train_refusal(capsys, tmp_path, phantom_root, toml)
    assert "'train.steps_per_epoch' must be at most" in line and "(401 characters)" in line, line
    assert "0" * 30 not in line


def test_a_file_named_like_a_preset_is_ambiguous_on_the_command_line(tmp_path, monkeypatch, capsys):
    # It was shadowed: --config busi took the preset and ignored the user's file.
    from bcseg.cli import main

    monkeypatch.chdir(tmp_path)
    Path("busi").write_text("[train]\nepochs = 3\n")
    with pytest.raises(SystemExit) as stop:
        main(["train", "data", "--out", "run", "--config", "busi"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "'busi' is both a file here and a bundled preset; pass ./busi for the file" in err
    assert not Path("run").exists()
    assert load_config("./busi")["train"]["epochs"] == 3  # the file, named as one
    assert load_config("busi")["model"]["max_filters"] == 160  # callers in code mean the preset


def test_a_recipe_normalising_channels_that_the_command_line_leaves_out_loads(tmp_path):
    # One recipe for ["us", "pa"], run with --channels us for an ablation: pa's entry is
    # unused, not an error (the file itself is consistent).
    recipe = tmp_path / "two.toml"
    recipe.write_text('[data]\nchannels = ["us", "pa"]\nnormalisation = { pa = "percentile" }\n')
    cfg = load_config(recipe, {"data": {"channels": ["us"]}})
    assert cfg["data"]["channels"] == ["us"] and cfg["data"]["normalisation"] == {}
    from bcseg.config import save_config

    saved = save_config(cfg, tmp_path / "run_config.toml")  # what train writes, and --resume reads
    assert load_config(saved) == cfg
    recipe.write_text('[data]\nnormalisation = { pa = "percentile", us = "uint8" }\n')  # no channels listed
    cfg = load_config(recipe, {"data": {"channels": ["us"]}})
    assert cfg["data"]["normalisation"] == {"us": "uint8"} and load_config(save_config(cfg, saved)) == cfg


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors save UTF-8 with a byte-order mark; it was refused as 'Invalid
    statement (at line 1, column 1)', though manifests and channels.json accept it."""
    path = tmp_path / "mine.toml"
    path.write_bytes("\ufeff[train]\nepochs = 3\n".encode("utf-8"))
    assert load_config(path)["train"]["epochs"] == 3


@pytest.mark.parametrize("extra, flags, said", [
    ("", [], "'data.size' must be more than 20 with data.offline_augment = 'reference'"),
    ('observer = "random"', [], "needs one target"),
    ('observer = "soft"', [], "needs one target"),
    ("", ["--observer", "random"], "needs one target"),
], ids=["size 16", "random", "soft", "--observer random"])
def test_a_recipe_the_reference_augmentation_cannot_run_exits_before_the_run_folder(
        extra, flags, said, tmp_path, phantom_root, capsys):
    """data.offline_augment = 'reference' with data.size 16 (its trims of 10 pixels a side
    leave none) failed with "ValueError: trims must be >= 0" (exit 1), and with the random
    or soft observer was refused without naming a file, both once the run folder held
    config.toml, splits.json and fold.json."""
    config = tmp_path / "offline.toml"
    size = 16 if "size" in said else 32
    config.write_text(f'[model]\nbase_filters = 2\ndepth = 2\n[data]\nsize = {size}\n'
                      f'offline_augment = "reference"\n{extra}\n[train]\nepochs = 1\n')
    run = tmp_path / "run"
    code, line = _refusal(capsys, ["train", phantom_root, "--out", run, "--config", config, *flags])
    assert code == 4, line
    assert line.startswith(f"bcseg: error: {config}: ") and said in line, line
    assert not run.exists()


@pytest.mark.parametrize("toml, flags, key", [
    ('[train]\nsplit = "last"\nk = 3', [], "'train.k' = 3 is read by train.split = \"kfold\""),
    ("[train]\ntest_last = 2", [], "'train.test_last' = 2 is read by train.split = \"last\""),
    ("[augment]\nenabled = false\nrotation_deg = 30.0", [], "'augment.rotation_deg' = 30.0"),
    ("[train]\nteacher_weight = 0.7", [], "'train.teacher_weight' = 0.7"),
    ('[data]\noffline_augment = "reference"', ["--model", "unet3d"], "'data.offline_augment'"),
    ('[train]\nsplit = "last"', ["--folds-file", "FOLDS"], "'train.split' = 'last'"),
], ids=["k beside last", "test_last beside kfold", "augment off", "no teacher", "offline 3D",
        "last beside a folds file"])
def test_a_key_the_recipe_leaves_unread_exits_before_the_run_folder(toml, flags, key, tmp_path,
                                                                     phantom_root, capsys):
    """Each was ignored without a word, and the run's config.toml still recorded it as if
    used; a recipe of split = "last" given a folds file of 4 folds trained fold 0 only."""
    from test_robustness import one_error_line, run_main  # imports Keras: only here

    folds = tmp_path / "folds.csv"
    folds.write_text("image,fold\n" + "".join(f"{p.name},{i}\n" for i, p in
                                              enumerate(sorted((phantom_root / "images").iterdir()))))
    config = tmp_path / "recipe.toml"
    config.write_text("[model]\nbase_filters = 4\ndepth = 2\n" + toml + "\n", encoding="utf-8")
    run = tmp_path / "run"
    flags = [folds if f == "FOLDS" else f for f in flags]
    code, _, err = run_main(capsys, ["train", phantom_root, "--out", run, "--config", config, *flags])
    assert code == ConfigError.exit_code == 4
    assert one_error_line(err).startswith(f"bcseg: error: {config}: {key}"), err
    assert not run.exists()


@pytest.mark.parametrize("preset", ["default", "seed", "demo", "busi"])
def test_the_presets_and_saved_recipes_leave_no_key_unread(preset, tmp_path):
    from bcseg.config import save_config, unused_keys

    cfg = load_config(preset)
    assert unused_keys(cfg) == []
    assert unused_keys(load_config(save_config(cfg, tmp_path / "config.toml"))) == []


def test_a_model_size_the_recipe_is_not_written_for_is_blamed_on_the_recipe(tmp_path, phantom_root,
                                                                           capsys):
    """--config busi --model unet3d was refused as "command line: 'data.patch_depth' must
    be a multiple of ... 32, got 16": the command line gave no patch depth; the 2D preset
    (stride-2 stem, depth 4) leaves the default 16, which no 3D run of it can take."""
    from bcseg.config import PRESET_DIR

    run = tmp_path / "run"
    code, line = _refusal(capsys, ["train", phantom_root, "--out", run, "--config", "busi",
                                   "--model", "unet3d"])
    assert code == ConfigError.exit_code
    assert line == (f"bcseg: error: {PRESET_DIR / 'busi.toml'}: 'data.patch_depth' must be a "
                    "multiple of 2**model.depth * model.stem_stride = 32 for --model unet3d, got 16: "
                    "this recipe is 2D; give a 3D recipe, or set the key in a copy of it")
    assert not run.exists()


LONG = "x" * 5000


@pytest.mark.parametrize("toml", [
    f'[train]\nepochs = "{LONG}"', f'[model]\nnorm = "{LONG}"',
    "[train]\nepochs = [" + ", ".join(["1"] * 2000) + "]",
    f'[data]\nnormalisation = {{ us = "{LONG}" }}', "[train]\nteacher = [''" + ", 1" * 1000 + "]",
    '[data]\nchannels = ["us", "us"' + ", 1" * 1000 + "]",
    f"[{LONG}]\na = 1", f"[train]\n{LONG} = 1",
], ids=["wrong type", "not a choice", "long list", "normalisation", "teacher", "channels",
        "unknown section", "unknown key"])
def test_a_long_value_or_name_is_shown_cut_short(toml, tmp_path):
    """A recipe may be 1 MiB: each of these put thousands of characters into the one line."""
    bad = tmp_path / "long.toml"
    bad.write_text(toml + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    message = str(caught.value)
    assert len(message) < 400 and " characters)" in message and "\n" not in message, message
