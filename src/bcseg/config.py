"""Training configuration: TOML presets, user files and command-line overrides.

The configuration is a dict of sections (``model``, ``data``, ``augment``, ``train``,
``inference``) read from ``configs/default.toml``. A preset (``seed``, ``demo``) or a
user's TOML file is laid over it, then command-line flags. Unknown keys and wrong
types are refused with the key named, so a typo never silently falls back to a
default. The merged result is saved in every run directory.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from bcseg.atomic import write_text
from bcseg.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "configs"
SECTIONS = ("model", "data", "augment", "train", "inference")


def presets() -> list[str]:
    """Names of the bundled presets (``default``, ``seed``, ``demo``, ...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, "configuration file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, f"not valid TOML ({exc})") from None
    except UnicodeDecodeError:  # tomllib decodes the bytes itself; binary files land here
        raise ConfigError(path, "not valid TOML (not UTF-8 text)") from None


def _same_type(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def merge(base: dict, override: dict, source) -> dict:
    """Lay ``override`` over ``base``; refuse keys ``base`` lacks and wrong types."""
    merged = copy.deepcopy(base)
    for section, values in override.items():
        if section not in merged:
            raise ConfigError(source, f"unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(source, f"[{section}] must be a table of keys")
        for key, value in values.items():
            if key not in merged[section]:
                known = ", ".join(sorted(merged[section]))
                raise ConfigError(source, f"unknown key '{section}.{key}'; known keys: {known}")
            default = merged[section][key]
            if not _same_type(default, value):
                raise ConfigError(source, f"'{section}.{key}' must be {type(default).__name__}, "
                                  f"got {value!r}")
            merged[section][key] = float(value) if isinstance(default, float) else value
    return merged


def load_config(config: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The default configuration with a preset or file and overrides laid over it.

    Parameters
    ----------
    config : str or Path or None
        A preset name (see :func:`presets`) or a TOML file.
    overrides : dict or None
        ``{"train": {"epochs": 3}}``-style values, e.g. from command-line flags.
    """
    result = _read_toml(PRESET_DIR / "default.toml")
    if config is not None:
        path = Path(config)
        if not path.suffix and str(config) in presets():
            path = PRESET_DIR / f"{config}.toml"
        elif not path.exists():
            raise ConfigError(path, f"not a file nor a preset; presets: {', '.join(presets())}")
        result = merge(result, _read_toml(path), path)
        _check_values(result, path)  # a bad value is blamed on the file that set it
    if overrides:
        result = merge(result, {k: v for k, v in overrides.items() if v}, "command line")
    _check_values(result, "command line" if overrides else None)
    return result


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
                              f"got {cfg[section][key]!r}")
    for section, key in (("train", "epochs"), ("train", "batch_size"), ("data", "size"),
                         ("model", "base_filters"), ("model", "depth")):
        if cfg[section][key] < 1:
            raise ConfigError(source, f"'{section}.{key}' must be at least 1")
    if not 0 <= cfg["data"]["tumour_fraction"] <= 1:
        raise ConfigError(source, "'data.tumour_fraction' must be between 0 and 1")
    _check_channels(cfg["data"], source)


def _check_channels(data: dict, source) -> None:
    """``data.channels`` a list of distinct names, ``data.normalisation`` a table of
    names; the names and methods themselves are checked against the dataset when
    training starts (:mod:`bcseg.data.channels`, :mod:`bcseg.data.intensity`)."""
    names = data["channels"]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ConfigError(source, f"'data.channels' must list distinct channel names, got {names!r}")
    if not all(isinstance(v, str) for v in data["normalisation"].values()):
        raise ConfigError(source, "'data.normalisation' must map channel names to methods, "
                          f"got {data['normalisation']!r}")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
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
