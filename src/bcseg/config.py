"""Training configuration: TOML presets, user files and command-line overrides.

The configuration is a dict of sections (``model``, ``data``, ``augment``, ``train``,
``inference``) read from ``configs/default.toml``. A preset (``seed``, ``demo``) or a
user's TOML file is laid over it, then command-line flags. Unknown keys and wrong
types are refused with the key named, so a typo never silently falls back to a
default. The merged result is saved in every run directory.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
import struct
import sys
from pathlib import Path

from bcseg.atomic import write_text
from bcseg.errors import ConfigError, DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "configs"
SECTIONS = ("model", "data", "augment", "train", "inference")


def presets() -> list[str]:
    """Names of the bundled presets (``default``, ``seed``, ``demo``, ...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


MAX_CONFIG_BYTES = 1 << 20  # a recipe is a few hundred bytes; /dev/zero is not one


def _read_toml(path: Path) -> dict:
    try:
        if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block forever
            raise ConfigError(path, "is not a regular file; --config takes a TOML file or a preset name")
        with open(path, "rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:  # a huge file, or a device that reads without end
            raise ConfigError(path, f"is larger than {MAX_CONFIG_BYTES >> 20} MiB; not a configuration file")
        # utf-8-sig: Windows Notepad and Excel put a byte-order mark in front of UTF-8 text,
        # which TOML's grammar does not allow; the manifest and channels.json accept it too.
        return tomllib.loads(text.decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(path, "configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a folder; --config takes a TOML file or a preset name") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, f"not valid TOML ({exc})") from None
    except UnicodeDecodeError:  # binary files land here
        raise ConfigError(path, "not valid TOML (not UTF-8 text)") from None
    except (RecursionError, ValueError) as exc:  # nesting thousands deep, a 5000-digit integer
        raise ConfigError(path, f"not valid TOML ({type(exc).__name__}: {str(exc)[:120]})") from None


def _same_type(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def merge(base: dict, override: dict, source) -> dict:
    """Lay ``override`` over ``base``; refuse keys ``base`` lacks and wrong types.

    Names and values are shown cut short (:func:`shorten`) here and in the checks below:
    a file of up to 1 MiB put a string or list of 5000 characters whole into the one line."""
    merged = copy.deepcopy(base)
    for section, values in override.items():
        if section not in merged:
            raise ConfigError(source, f"unknown section [{shorten(section)}]; known: "
                              f"{', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(source, f"[{section}] must be a table of keys")
        for key, value in values.items():
            if key not in merged[section]:
                known = ", ".join(sorted(merged[section]))
                raise ConfigError(source, f"unknown key '{section}.{shorten(key)}'; "
                                  f"known keys: {known}")
            default = merged[section][key]
            if not _same_type(default, value):
                raise ConfigError(source, f"'{section}.{key}' must be {type(default).__name__}, "
                                  f"got {_shown(value)}")
            merged[section][key] = _as_default(default, value, source, f"{section}.{key}")
    return merged


def _as_default(default, value, source, key: str):
    """``value`` as the default's type: an integer for a float key becomes a float,
    and one beyond any float (TOML integers have no size limit here) is refused."""
    if not isinstance(default, float):
        return value
    try:
        return float(value)
    except OverflowError:  # learning_rate = 10**400: float() raised, exit 1 without the file
        raise ConfigError(source, f"'{key}' must be a number, got {_shown(value)}, "
                          "beyond the largest float") from None


def _defaults() -> dict:
    """The built-in configuration (``configs/default.toml``), a new copy each call."""
    return _read_toml(PRESET_DIR / "default.toml")


def load_config(config: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The default configuration with a preset or file and overrides laid over it.

    Parameters
    ----------
    config : str or Path or None
        A preset name (see :func:`presets`) or a TOML file.
    overrides : dict or None
        ``{"train": {"epochs": 3}}``-style values, e.g. from command-line flags.
    """
    result = _defaults()
    if config is not None:
        path = Path(config)
        if not path.suffix and str(config) in presets():
            path = PRESET_DIR / f"{config}.toml"
        elif not path.exists():
            raise ConfigError(path, f"not a file nor a preset; presets: {', '.join(presets())}")
        result = merge(result, _read_toml(path), path)
        _check_values(result, path)  # a bad value is blamed on the file that set it
        _check_normalised_channels(result["data"], path)
        # A teacher named in a file is found beside the file, wherever the command runs,
        # and recorded absolute so that --resume from elsewhere finds the same one.
        result["train"]["teacher"] = [str(path.parent.absolute() / t) if not Path(t).is_absolute() else t
                                      for t in result["train"]["teacher"]]
    if overrides:
        ndim = result["model"]["ndim"]
        result = merge(result, {k: v for k, v in overrides.items() if v}, "command line")
        if config is not None and result["model"]["ndim"] != ndim:
            _check_other_ndim(result, path, ndim)
        if (overrides.get("data") or {}).get("channels"):  # --channels picks some of the recipe's:
            chosen = result["data"]["channels"]            # the others' normalisation goes too,
            result["data"]["normalisation"] = {            # so that the saved recipe reloads
                name: method for name, method in result["data"]["normalisation"].items() if name in chosen}
    _check_values(result, "command line" if overrides else None)
    return result


def _check_other_ndim(cfg: dict, path: Path, ndim: int) -> None:
    """The recipe's shape rules under the model size the command line chose instead of
    its ``ndim``: ``--model unet3d`` over a 2D recipe (busi: 32 must divide the patch depth
    it never set) was blamed on "command line", which gave no such key."""
    try:
        _check_model_shape(cfg, path)
    except ConfigError as exc:
        wanted = cfg["model"]["ndim"]
        rule, _, got = exc.problem.rpartition(", got ")
        raise ConfigError(path, f"{rule} for --model unet{wanted}d, got {got}: this recipe is "
                          f"{ndim}D; give a {wanted}D recipe, or set the key in a copy of it") from None


# The intensity normalisations bcseg.data.intensity implements (it imports this list:
# the data stage may use this basic module, not the other way round).
NORMALISATIONS = ("auto", "uint8", "percentile", "log")

# Allowed ranges of the numeric keys, as intervals: "[" and "]" include the bound, "(" and
# ")" exclude it. An open "inf)" also refuses inf, and NaN fails every comparison, so every
# key here must be a finite number. Checked when the file is loaded, before any run folder
# is touched, so that a bad value is one error naming the file and the key rather than a
# crash (or a NaN loss) epochs later.
MAX_EPOCHS = 100_000
MAX_BUDGET_MINUTES = 525_960  # one year
MAX_FOLDS = 100_000  # folds and test specimens: more than any study has specimens
RANGES = {
    # counts and sizes: zero or less builds no model, draws no batch, splits nothing
    # Upper bounds: far above any useful value, but below those that only exhaust memory
    # after the run folder exists (data.size 1.6e6 asked for 9 TiB in the first batch).
    ("model", "base_filters"): "[1, 1024]",
    ("model", "depth"): "[1, 12]",  # 2**12 = 4096 px per pooled pixel; more only overflows
    ("model", "stem_stride"): "[1, 16]",  # also a power of two (models.unet)
    ("model", "max_filters"): "[0, 4096]",  # 0: no cap; else at least base_filters
    ("model", "dropout"): "[0, 1)",  # keras Dropout's rate; 1 would drop everything
    ("data", "size"): "[1, 4096]",  # pixels a side (rundir.MAX_INPUT_SIZE for saved settings)
    ("data", "patch_depth"): "[1, 1024]",
    ("data", "tumour_fraction"): "[0, 1]",
    # [augment]: the same bounds as AugmentConfig (learn/augment.py), which would
    # otherwise refuse them only when training starts, without naming the file
    ("augment", "rotation_deg"): "[0, 180]",
    ("augment", "p_geometric"): "[0, 1]",
    ("augment", "p_intensity"): "[0, 1]",
    # Upper bounds of the strengths: far beyond any useful augmentation, and below values
    # (brightness 1e300, a learning rate of 1e300) that only trained to NaN.
    ("augment", "brightness"): "[0, 1]",  # added to images scaled to [0, 1]
    ("augment", "contrast"): "[0, 1)",
    ("augment", "speckle"): "[0, 4]",  # SD of the multiplicative noise
    ("augment", "gain_ramp"): "[0, 1)",
    ("augment", "blur"): "[0, 4]",  # augment.MAX_BLUR pixels
    ("augment", "resample"): "[0, 1)",
    ("augment", "speckle_grain"): "[0, 4]",  # augment.MAX_BLUR pixels
    ("augment", "speckle_max"): "[0, 4]",  # 0: off; else >= speckle (AugmentConfig)
    # Upper bounds of the counts and times: far beyond any run (100000 epochs of the
    # tiniest model are weeks), and below values that passed here and then crashed after
    # the run folder existed (10**400 epochs overflowed the cosine schedule; a budget of
    # 1e308 minutes became inf seconds, then a NaN epoch count after epoch 2).
    ("train", "epochs"): f"[1, {MAX_EPOCHS}]",
    ("train", "budget_minutes"): f"[0, {MAX_BUDGET_MINUTES}]",  # 0: no time budget
    # 0: one pass over the samples. Its upper bound is the machine's memory, which holds
    # an epoch's samples: train checks it before the run folder exists.
    ("train", "steps_per_epoch"): "[0, inf)",
    ("train", "batch_size"): "[1, 4096]",
    ("train", "learning_rate"): "(0, 1]",
    ("train", "early_stopping"): f"[0, {MAX_EPOCHS}]",  # 0: off; patience in epochs
    ("train", "val_fraction"): "[0, 1)",  # at least one group always stays for training
    # splits.kfold_by_group needs two folds; more folds than groups give one group per fold
    ("train", "k"): f"[2, {MAX_FOLDS}]",
    ("train", "test_last"): f"[1, {MAX_FOLDS}]",  # split = "last" needs a test specimen
    ("train", "seed"): "[0, 2147483647]",  # numpy seeds refuse negatives; room for seed + epoch
    ("train", "member_seed"): "[-1, 2147483647]",  # -1: train.seed
    ("train", "teacher_weight"): "(0, 1]",  # 0 would be no teacher; 1 the teacher alone
    ("inference", "threshold"): "(0, 1)",  # 0 or 1 would mark every pixel or none
}
# (low, high) ranges drawn from in [augment], and the interval both must lie in: factors,
# so positive, and bounded (a zoom of 1e-300 or a gamma of 1e300 only trained to NaN)
PAIRS = {("augment", "scale"): "[0.1, 10]", ("augment", "gamma"): "[0.05, 20]"}


def interval_bounds(interval: str) -> tuple[float, float]:
    """The low and high bounds of a range written as in :data:`RANGES` ("[0, 1)")."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    return low, high


def _in_interval(value, interval: str) -> bool:
    low, high = interval_bounds(interval)
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def _open_in_float32(value, interval: str) -> bool:
    """Whether ``value``, inside ``interval``, stays inside its open (excluded) finite bounds
    as the float32 that the model, the targets and the augmentation hold it in: a learning
    rate of 1e-320 was 0 there and trained nothing, a dropout of 0.99999999 was 1."""
    low, high = interval_bounds(interval)
    if interval[0] == "(" and not as_float32(value) > low:
        return False
    return not (interval[-1] == ")" and math.isfinite(high) and not as_float32(value) < high)


def _check_values(cfg: dict, source=None) -> None:
    choices = {
        ("model", "ndim"): (2, 3),
        ("model", "norm"): ("batch", "instance", "none"),
        ("model", "upsample"): ("transpose", "linear"),
        ("data", "resize"): ("pad",),
        ("data", "offline_augment"): ("none", "reference"),
        ("train", "loss"): ("bce_dice", "dice", "bce", "reference_dice"),
        ("train", "lr_schedule"): ("cosine", "plateau", "constant"),
        ("train", "split"): ("kfold", "last"),
    }
    for (section, key), allowed in choices.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(source, f"'{section}.{key}' must be one of {allowed}, "
                              f"got {_shown(cfg[section][key])}")
    unused = {("train", "k")} if cfg["train"]["split"] == "last" else {("train", "test_last")}
    for (section, key), interval in RANGES.items():
        value = cfg[section][key]
        if (section, key) in unused:
            continue
        if not _in_interval(value, interval):
            raise ConfigError(source, f"'{section}.{key}' must be in {interval}, got {_shown(value)}")
        if not _open_in_float32(value, interval):
            raise ConfigError(source, f"'{section}.{key}' must be in {interval}, also as a 32-bit "
                              f"float, got {_shown(value)}")
    for (section, key), interval in PAIRS.items():
        pair = cfg[section][key]
        if not (len(pair) == 2 and all(_is_number(v) and _in_interval(v, interval) for v in pair)
                and pair[0] <= pair[1]):
            raise ConfigError(source, f"'{section}.{key}' must be [low, high], two numbers in "
                              f"{interval} with low <= high, got {_shown(pair)}")
    augment = cfg["augment"]
    if augment["speckle_max"] and augment["speckle_max"] < augment["speckle"]:
        raise ConfigError(source, f"'augment.speckle_max' must be 0 (off) or at least "
                          f"'augment.speckle' ({augment['speckle']!r}), got {augment['speckle_max']!r}")
    teacher = cfg["train"]["teacher"]
    if not all(isinstance(path, str) and path.strip() for path in teacher):
        raise ConfigError(source, f"'train.teacher' must list model paths (runs or .keras files), "
                          f"got {_shown(teacher)}")
    _check_model_shape(cfg, source)
    _check_channels(cfg["data"], source)


def shorten(text: str) -> str:
    """``text`` as an error line shows it: a 400-digit number cut to a readable length."""
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"


def _shown(value) -> str:
    return shorten(repr(value))


def is_whole(value, low: int = 0) -> bool:
    """Whether ``value`` is a whole number (Python's or NumPy's, not a bool) >= ``low``:
    int() would cut 2.5 to 2 and take True for 1 without a word."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def is_probability_cut(value) -> bool:
    """Whether ``value`` is a number strictly between 0 and 1, also as the 32-bit float
    that the float32 probability maps are compared with: there 1e-50 is 0, which marks
    every pixel of any probability, and 0.99999999 is 1, which marks none."""
    if not (_is_number(value) and 0 < value < 1):  # NaN too: it fails every comparison
        return False
    return 0 < as_float32(value) < 1


def as_float32(value: float) -> float:
    """``value`` (finite, within float32's range) rounded as TensorFlow and NumPy's float32
    hold it: below about 1e-45 it is 0."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_model_shape(cfg: dict, source) -> None:
    """What :func:`bcseg.learn.models.unet` refuses, or fails on in the first batch:
    a stride that is no power of two, a decoder-only norm with no norm, a filter cap
    below the first level's filters, and inputs that ``2**depth * stem_stride`` does not
    divide (the skips would not match)."""
    m, d = cfg["model"], cfg["data"]
    if m["stem_stride"] & (m["stem_stride"] - 1):
        raise ConfigError(source, f"'model.stem_stride' must be a power of two, got {m['stem_stride']}")
    if m["decoder_norm_only"] and m["norm"] == "none":  # unet() refuses it after the run folder exists
        raise ConfigError(source, "'model.decoder_norm_only' must be false when model.norm is "
                          "\"none\" (there is no norm to keep to the decoder), got true")
    if 0 < m["max_filters"] < m["base_filters"]:
        raise ConfigError(source, f"'model.max_filters' must be 0 (no cap) or at least "
                          f"model.base_filters ({m['base_filters']}), got {m['max_filters']}")
    divisor = 2 ** m["depth"] * m["stem_stride"]
    keys = ("size", "patch_depth") if m["ndim"] == 3 else ("size",)
    for key in keys:  # first: else data.size was asked to be 8192, then refused as over 4096
        largest = int(interval_bounds(RANGES[("data", key)])[1])
        if divisor > largest:
            raise ConfigError(source, f"'model.depth' must keep 2**model.depth * model.stem_stride "
                              f"at most {largest}, the largest data.{key} (which it must divide), "
                              f"got 2**{m['depth']} * {m['stem_stride']} = {divisor}")
    for key in keys:
        if d[key] % divisor:
            raise ConfigError(source, f"'data.{key}' must be a multiple of 2**model.depth * "
                              f"model.stem_stride = {divisor}, got {d[key]}")


# What may name a channel: it becomes part of file names (examples_<channel>.png) and a
# TOML key of the saved recipe. The data stage checks dataset folders with the same rule.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: '$' would let "us\n" through
NAME_MAX = 64  # characters; names go into output file names (examples_<channel>.png)


def check_channel_name(name: str, where: Path | None) -> str:
    """Return ``name`` if it can name a channel (letters, digits, ``_.-``, at most
    :data:`NAME_MAX` characters, starting with a letter or digit), else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DataError(where, f"'{name}' cannot name a channel; use letters, digits, '_', '.', '-' "
                        "(starting with a letter or digit)")
    if len(name) > NAME_MAX:
        raise DataError(where, f"channel name '{name[:20]}...' has {len(name)} characters; "
                        f"use at most {NAME_MAX}")
    return name


def _check_channels(data: dict, source) -> None:
    """``data.channels`` a list of distinct names, ``data.normalisation`` a table of
    names to known methods; the names themselves are checked against the dataset when
    training starts (:mod:`bcseg.data.channels`)."""
    names = data["channels"]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ConfigError(source, f"'data.channels' must list distinct channel names, "
                          f"got {_shown(names)}")
    for name in [*names, *data["normalisation"]]:  # names become file names and TOML keys
        try:
            check_channel_name(name, None)
        except DataError as exc:
            raise ConfigError(source, f"'data.channels' / 'data.normalisation': {exc.problem}") from None

    if not all(v in NORMALISATIONS for v in data["normalisation"].values()):
        raise ConfigError(source, "'data.normalisation' must map channel names to methods "
                          f"({', '.join(NORMALISATIONS)}), got {_shown(data['normalisation'])}")


def unused_keys(cfg: dict, folds_file: bool = False) -> list[tuple[str, str, str]]:
    """``(section, key, why)`` for each key of ``cfg`` that holds other than its default
    value, yet that the recipe's own choices leave unread (``folds_file``: the folds come
    from ``--folds-file``), first the mode that would read it.

    Such a key was ignored without a word: ``k = 10`` beside ``split = "last"`` made no
    folds, augmentation strengths beside ``augment.enabled = false`` augmented nothing,
    and ``offline_augment = "reference"`` in a 3D run copied no slice. Keys that another
    model size reads (``data.patch_depth`` in a 2D run) are left alone: one recipe serves
    ``--model unet2d`` and ``--model unet3d``.
    """
    default = _defaults()
    train, found = cfg["train"], []

    def unused(section: str, key: str, why: str) -> None:
        if cfg[section][key] != default[section][key]:
            found.append((section, key, why))

    if folds_file and train["split"] == "last":
        found.append(("train", "split", "chooses the test specimens, but --folds-file gives the "
                      "folds (only its fold 0 would be trained and tested)"))
    elif train["split"] == "last":
        unused("train", "k", 'is read by train.split = "kfold"; "last" makes no folds')
    elif not folds_file:
        unused("train", "test_last", 'is read by train.split = "last"; "kfold" tests every fold')
    if not train["teacher"]:
        unused("train", "teacher_weight", "is the share of a teacher, and train.teacher names none")
    if not cfg["augment"]["enabled"]:
        for key in cfg["augment"]:
            if key != "enabled":
                unused("augment", key, "is an augmentation, and augment.enabled is false")
    if cfg["model"]["ndim"] == 3:
        unused("data", "offline_augment", "augments 2D slices; a 3D model augments its patches "
               "on the fly")
    return found


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def k_beside_folds_file(cfg: dict, folds: int) -> str | None:
    """What is wrong with ``train.k`` beside a folds file of ``folds`` folds, or None.

    k = 3 beside a file of 2 folds trained those 2 without a word, and config.toml
    recorded k = 3 as if used. A k equal to the file's, or the default k (a recipe that
    leaves k alone, or sets it to the default as the demo preset does), is no conflict:
    one recipe serves runs with and without a folds file, and refusing any k broke them.
    """
    k = cfg["train"]["k"]
    if k in (folds, _defaults()["train"]["k"]):
        return None
    return f"makes {k} folds, but --folds-file gives {folds}; set k = {folds} or leave it out"


def _check_normalised_channels(data: dict, source) -> None:
    """A file that lists its channels normalises only those (a misspelt name would keep
    its default normalisation without a word). Checked on the file alone: ``--channels``
    may then pick some of them, leaving the others' normalisation unused."""
    names, unused = data["channels"], sorted(set(data["normalisation"]) - set(data["channels"]))
    if names and unused:
        raise ConfigError(source, f"'data.normalisation' names channel(s) {', '.join(unused)} not in "
                          f"'data.channels' ({', '.join(names)})")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a TOML basic string: control characters only as escapes
        return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127
                                                      else c) for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, keys quoted (channel names may hold dots)
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def to_toml(cfg: dict) -> str:
    """The configuration as TOML text (flat sections of scalars, lists and inline tables)."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def save_config(cfg: dict, path: str | Path) -> Path:
    """Write the configuration a run used, atomically."""
    return write_text(path, to_toml(cfg))
