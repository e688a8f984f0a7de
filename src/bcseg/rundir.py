"""The run-directory contract: file names, inference settings, runs and fold members.

A training run directory holds ``model_best.keras`` and ``inference.json``, the
settings its predictions are made with: threshold, post-processing, TTA and the
mirror axes the model was trained with, the 2D input size or 3D window, channels,
and for an ensemble its members. The same settings also travel inside the
``.keras`` archive (as ``bcseg_metadata.json``, an entry Keras ignores), so a model
copied on its own keeps them.

This module is the one place for the defaults (:data:`DEFAULTS`) and the schema,
and it imports no TensorFlow: it reads and writes JSON and zip archives only.

Examples
--------
>>> settings = InferenceSettings.from_dict({"threshold": 0.4, "flips": ["lr"]})
>>> settings.threshold, settings.flips
(0.4, ('lr',))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

from bcseg import outputs
from bcseg.atomic import atomic_path, parse_json, read_json, real_path, write_text
from bcseg.config import is_probability_cut, is_whole
from bcseg.errors import ConfigError, ModelError, UsageError, not_a_file

# The post-processing steps a run's settings may name; bcseg.infer.postprocess
# implements them.
POSTPROCESS_STEPS = ("largest", "fill", "small")

MODEL_FILE = "model_best.keras"
LAST_MODEL_FILE = "model_last.keras"
SETTINGS_FILE = "inference.json"
CONFIG_FILE = "config.toml"
FOLD_FILE = "fold.json"
SPLITS_FILE = "splits.json"
STATE_FILE = "state.json"
TEACHER_FILE = "teacher.json"  # the fingerprint of a distilled run's teacher
INIT_FILE = "init.json"  # the model a run started from (--init) and its weights' digest
CHECKPOINTS_DIR = "checkpoints"  # each epoch's model (epoch_K.keras) and optimiser, for --resume
PREDICTIONS_DIR = "predictions"
FOLD_DIR = "fold_{}"
ARCHIVE_SETTINGS = "bcseg_metadata.json"  # the settings' copy inside a .keras archive
ARCHIVE_WEIGHTS = "model.weights.h5"      # Keras's entry for the weights inside a .keras archive
# The digest (weights_digest) of the model an inference.json's settings were tuned for, recorded
# beside them (and in each ensemble member's entry): a model file swapped for other weights
# (copied from another run of the recipe) predicted silently with a threshold tuned for the old.
WEIGHTS_KEY = "weights_sha256"

# The largest min_size (voxels) of the 'small' step: what one image holds at most, a byte a
# voxel under BCSEG_MAX_IMAGE_GB's largest limit (16 EiB, data.image_rules). A larger one can
# only remove every component of every mask, and 10**30 did so without a word.
MAX_MIN_SIZE = 2**64

FLIP_NAMES = ("z", "ud", "lr")  # mirror axes: slice order, up-down (depth), left-right
DEFAULT_FLIPS = ("z", "lr")     # what bcseg's recipes augment with; never up-down

# The one place for inference defaults; everything else reads them from here.
DEFAULTS: dict[str, Any] = {
    "threshold": 0.5, "postprocess": [], "min_size": 0, "tta": False,
    "flips": list(DEFAULT_FLIPS), "ndim": None, "input_size": None, "patch_size": None,
    "channels": 1, "channel_names": [], "normalisation": {}, "members": [], "tuned": {},
}
MEMBER_KEYS = ("path", "flips", "ndim", "input_size", "patch_size", "channels", "channel_names",
               "normalisation", WEIGHTS_KEY)
TUNED_KEYS = ("with_tta", "without_tta")
TUNED_ENTRY_KEYS = ("threshold", "postprocess", "validation_dice")  # what training records in each

# A settings file (inference.json, or the copy inside a .keras archive) must hold the
# keys that decide how masks are made: a missing one is refused, never filled in with a
# default (threshold 0.5 is not the threshold a run was tuned with). bcseg train has
# written these from its first release (with ``ndim``, ``input_size`` and
# ``patch_size``, the one not used being null). Keys added later take their old meaning
# when a file lacks them: ``flips`` (the default mirror axes), ``channels`` (1),
# ``members`` (one model), ``tuned`` (nothing tuned the other TTA way),
# ``channel_names`` and ``normalisation`` (one grey image, as before channels).
REQUIRED_KEYS = ("threshold", "postprocess", "min_size", "tta", "ndim")
ENSEMBLE_REQUIRED_KEYS = ("threshold", "postprocess", "min_size", "tta")  # ndim etc. per member
MEMBER_REQUIRED_KEYS = ("path", "flips", "ndim")  # members were recorded with these from the start


def _size_keys(data: dict) -> tuple[str, ...]:
    """The size keys a model of ``data``'s ndim runs with: both when ndim is null (bcseg
    writes both), none when ndim itself is missing (that is reported first)."""
    if "ndim" not in data:
        return ()
    ndim = data["ndim"]
    return {2: ("input_size",), 3: ("patch_size",)}.get(ndim if is_whole(ndim) else None,
                                                       ("input_size", "patch_size"))


# Run metadata bcseg itself records beside the settings (train, the k-fold ensemble
# step, benchmarks/build_pretrained.py); any other key is refused as a likely typo.
RECORDED_KEYS = ("observer", "best_epoch", "validation_dice", "pooled_validation_cases",
                 "trained_on", "dataset", "citation", "licence", "source_run", WEIGHTS_KEY)

# Largest input_size, and largest patch_size side, a settings file may name. There is no
# bound on data.size in bcseg.config to reuse, so this one is chosen here: 4096 pixels is
# far above any scan bcseg is trained on, and far below a size whose buffers would fail
# with an unnamed MemoryError.
MAX_INPUT_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How a model (or an ensemble of members) turns an image into a mask.

    Parameters
    ----------
    threshold : float
        Tumour where the (mean) probability is strictly above it.
    postprocess : tuple of str
        Steps of :func:`bcseg.infer.postprocess.postprocess`, in order.
    min_size : int
        Smallest component kept by the ``"small"`` step, in voxels.
    tta : bool
        Mirror test-time augmentation over ``flips``.
    flips : tuple of {"z", "ud", "lr"}
        The mirror axes the model was trained with (its augmentation's ``flip_z``,
        ``flip_ud``, ``flip_lr``); TTA averages every combination of these only.
    ndim, input_size, patch_size, channels
        The model's kind, the 2D square it was trained on, the 3D window, channels.
    channel_names : tuple of str
        The named channels the model takes, in input order (``("us", "pa")``); empty
        for a model of one grey image, which takes any image file as it is.
    normalisation : dict of str to str
        How each named channel was normalised (see :mod:`bcseg.data.intensity`);
        prediction normalises it the same way.
    members : tuple of InferenceSettings
        Ensemble members, each with its own ``path`` (in ``info``), ``flips``,
        ``input_size``, ``patch_size``; empty for a single model.
    tuned : dict
        Threshold and post-processing chosen on validation ``with_tta`` and
        ``without_tta``, so that switching TTA uses a threshold tuned for it.
    info : dict
        Other recorded keys (best epoch, observer, citation, ...), kept as they are.
    """

    threshold: float = DEFAULTS["threshold"]
    postprocess: tuple[str, ...] = ()
    min_size: int = DEFAULTS["min_size"]
    tta: bool = DEFAULTS["tta"]
    flips: tuple[str, ...] = DEFAULT_FLIPS
    ndim: int | None = None
    input_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    channels: int = DEFAULTS["channels"]
    channel_names: tuple[str, ...] = ()
    normalisation: dict = dataclasses.field(default_factory=dict)
    members: tuple["InferenceSettings", ...] = ()
    tuned: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: Path | None = None) -> "InferenceSettings":
        """Check ``data`` (an ``inference.json`` object) and build the settings.

        Raises
        ------
        ConfigError
            A wrongly typed or out-of-range value, naming ``source`` and the key.
        """
        if not isinstance(data, dict):
            raise ConfigError(source, "must hold a JSON object of settings")
        merged = {**DEFAULTS, **data}
        _check_settings(merged, source)
        members = tuple(cls.from_dict(_member_dict(m, source), source) for m in merged["members"])
        info = {k: v for k, v in data.items() if k not in DEFAULTS}
        return cls(threshold=float(merged["threshold"]), postprocess=tuple(merged["postprocess"]),
                   min_size=merged["min_size"], tta=merged["tta"],
                   flips=_flip_order(merged["flips"]), ndim=merged["ndim"],
                   input_size=merged["input_size"],
                   patch_size=None if merged["patch_size"] is None else tuple(merged["patch_size"]),
                   channels=merged["channels"], channel_names=tuple(merged["channel_names"]),
                   normalisation=dict(merged["normalisation"]), members=members, tuned=dict(merged["tuned"]),
                   info=info)

    def to_dict(self) -> dict:
        """The JSON form: the schema's keys, then the recorded ``info`` keys."""
        data = {"threshold": self.threshold, "postprocess": list(self.postprocess),
                "min_size": self.min_size, "tta": self.tta, "flips": list(self.flips),
                "ndim": self.ndim, "input_size": self.input_size,
                "patch_size": None if self.patch_size is None else list(self.patch_size),
                "channels": self.channels, "channel_names": list(self.channel_names),
                "normalisation": dict(self.normalisation), "tuned": self.tuned,
                "members": [_member_json(m) for m in self.members]}
        return {**data, **self.info}

    def replace(self, **changes) -> "InferenceSettings":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def overridden(self, threshold=None, tta=None, postprocess=None, min_size=None,
                   source: Path | None = None) -> "InferenceSettings":
        """The settings with a user's choices laid over them (``None`` keeps the recorded).

        Switching TTA takes the threshold and post-processing tuned on validation with
        that TTA setting where training recorded one; otherwise it keeps the recorded
        threshold and warns in one line, since that threshold was tuned the other way.
        """
        changed = self
        if tta is not None and tta != self.tta:
            tuned = self.tuned.get("with_tta" if tta else "without_tta")
            changed = changed.replace(tta=tta)
            if tuned and threshold is None:
                changed = changed.replace(threshold=tuned["threshold"],
                                          postprocess=tuple(tuned["postprocess"]))
            elif threshold is None:
                warnings.warn(f"{source or 'model'}: threshold {self.threshold} was tuned "
                              f"{'without' if tta else 'with'} TTA and none was recorded "
                              f"{'with' if tta else 'without'} it; pass a threshold to choose one")
        if threshold is not None:
            changed = changed.replace(threshold=float(threshold))
        if postprocess is not None:
            changed = changed.replace(postprocess=tuple(postprocess))
        if min_size is not None:
            # only the 'small' step reads it: without that step it was dropped unasked
            if "small" not in changed.postprocess:
                raise UsageError(None, f"min_size={min_size} needs the 'small' step, which the "
                                 f"post-processing ({', '.join(changed.postprocess) or 'none'}) lacks; "
                                 "add small to postprocess")
            changed = changed.replace(min_size=int(min_size))
        _check_settings(changed.to_dict(), source)
        return changed

    def member_views(self) -> tuple["InferenceSettings", ...]:
        """The settings each model runs with: the members', or this one's for one model."""
        if not self.members:
            return (self,)
        return tuple(m.replace(tta=self.tta) for m in self.members)

    def input_channels(self) -> tuple[str, ...]:
        """The named channels the model (every member of an ensemble) takes; () for grey.

        Raises
        ------
        ConfigError
            For ensemble members that take different channels.
        """
        first, *others = self.member_views()
        for view in others:  # named by the member's file, which load_run records
            if view.channel_names != first.channel_names:
                shown = [", ".join(v.channel_names) or "one grey image" for v in (view, first)]
                raise ConfigError(view.info.get("path"), f"takes {shown[0]}, but "
                                  f"{first.info.get('path', 'the first member')} takes {shown[1]}: "
                                  "the members of an ensemble must take the same channels in the same order")
        return first.channel_names


# --------------------------------------------------------------------------- schema

def flips_from_augment(augment: dict, ndim: int) -> tuple[str, ...]:
    """The mirror axes of an ``[augment]`` configuration table (none if disabled)."""
    if not augment.get("enabled", True):
        return ()
    names = [name for name in FLIP_NAMES if augment.get(f"flip_{name}", name in DEFAULT_FLIPS)]
    return tuple(n for n in names if ndim == 3 or n != "z")


def recipe_settings(cfg: dict, best_epoch: int | None, channels: list[str] | None = None,
                    normalisation: dict[str, str] | None = None) -> InferenceSettings:
    """The settings a model of recipe ``cfg`` starts from, before tuning: its input
    size or window, the mirror axes it was augmented with, the named channels it
    takes and their normalisation (none for a grey model), and the configured
    threshold and TTA."""
    d, ndim = cfg["data"], cfg["model"]["ndim"]
    return InferenceSettings(
        threshold=cfg["inference"]["threshold"], tta=cfg["inference"]["tta"],
        flips=flips_from_augment(cfg["augment"], ndim), ndim=ndim,
        input_size=d["size"] if ndim == 2 else None,
        patch_size=(d["patch_depth"], d["size"], d["size"]) if ndim == 3 else None,
        channels=max(1, len(channels or ())), channel_names=tuple(channels or ()),
        normalisation=dict(normalisation or {}),
        info={"observer": d["observer"], "best_epoch": best_epoch})


def _flip_order(flips) -> tuple[str, ...]:
    return tuple(n for n in FLIP_NAMES if n in flips)


def _error(source, key: str, expected: str, value) -> ConfigError:
    return ConfigError(source, f"{key} must be {expected}, got {value!r}")


def _check_settings(s: dict, source) -> None:
    """Raise ConfigError naming the first key of ``s`` whose value is not valid."""
    threshold = s["threshold"]
    # Strictly inside: a cut of 0 marks every pixel with any probability, 1 marks none;
    # also as float32, which rounds 0.99999999 to 1 (the maps compared with it are float32)
    if not is_probability_cut(threshold):
        raise _error(source, "threshold", "a number between 0 and 1 (both excluded, also as a "
                     "32-bit float)", threshold)
    steps = s["postprocess"]
    if not isinstance(steps, (list, tuple)) or any(x not in POSTPROCESS_STEPS for x in steps):
        raise _error(source, "postprocess", f"a list of {', '.join(POSTPROCESS_STEPS)}", steps)
    if not (is_whole(s["min_size"]) and s["min_size"] <= MAX_MIN_SIZE):
        raise _error(source, "min_size", f"a whole number from 0 to {MAX_MIN_SIZE} (2**64)",
                     s["min_size"])
    if not isinstance(s["tta"], bool):
        raise _error(source, "tta", "true or false", s["tta"])
    flips = s["flips"]
    if not isinstance(flips, (list, tuple)) or any(f not in FLIP_NAMES for f in flips):
        raise _error(source, "flips", f"a list of {', '.join(FLIP_NAMES)}", flips)
    # whole numbers only: 2.0 == 2, but a float is no count of axes (and no key of the
    # ndim-keyed tables: a 2.0 model ran with neither input_size nor patch_size)
    if s["ndim"] is not None and not (is_whole(s["ndim"]) and s["ndim"] in (2, 3)):
        raise _error(source, "ndim", "2 or 3", s["ndim"])
    patch = s["patch_size"]
    if patch is not None and (not isinstance(patch, (list, tuple)) or not patch
                              or not all(is_whole(p, 1) and p <= MAX_INPUT_SIZE for p in patch)
                              or (s["ndim"] and len(patch) != s["ndim"])):
        raise _error(source, "patch_size", "a list of positive sizes up to "
                     f"{MAX_INPUT_SIZE}, one per spatial axis", patch)
    size = s["input_size"]
    if size is not None and not (is_whole(size, 1) and size <= MAX_INPUT_SIZE):
        raise _error(source, "input_size", f"a positive whole number of pixels up to {MAX_INPUT_SIZE}",
                     size)
    if not is_whole(s["channels"], 1):
        raise _error(source, "channels", "a positive whole number", s["channels"])
    _check_channel_names(s, source)
    if not isinstance(s["members"], (list, tuple)):
        raise _error(source, "members", "a list of member models", s["members"])
    _check_tuned(s["tuned"], source)
    digest = s.get(WEIGHTS_KEY)  # optional: settings written before digests were recorded lack it
    if digest is not None and not (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)):
        raise _error(source, WEIGHTS_KEY, "the SHA-256 of the model's weights (64 hex digits)", digest)


def _check_channel_names(s: dict, source) -> None:
    names, methods = s["channel_names"], s["normalisation"]
    if (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names) or (names and len(names) != s["channels"])):
        raise _error(source, "channel_names", f"a list of {s['channels']} distinct channel names", names)
    if not isinstance(methods, dict) or set(methods) - set(names) or not all(
            isinstance(m, str) for m in methods.values()):
        raise _error(source, "normalisation", "an object of a method per channel name", methods)


def _check_tuned(tuned, source) -> None:
    if not isinstance(tuned, dict) or set(tuned) - set(TUNED_KEYS):
        raise _error(source, "tuned", f"an object with keys {' and '.join(TUNED_KEYS)}", tuned)
    for key, choice in tuned.items():
        if not isinstance(choice, dict) or "threshold" not in choice or "postprocess" not in choice:
            raise _error(source, f"tuned.{key}", "an object with threshold and postprocess", choice)
        # Only threshold and postprocess are taken from it when TTA is switched: another key
        # (a min_size for its 'small' step, a misspelt one) was dropped without a word, as an
        # unknown key of the settings or of a member is not.
        unknown = sorted(set(choice) - set(TUNED_ENTRY_KEYS), key=str)
        if unknown:
            raise _error(source, f"tuned.{key}", f"an object with keys {', '.join(TUNED_ENTRY_KEYS)} "
                         "(min_size is the settings' own)", unknown)
        _check_settings({**DEFAULTS, "threshold": choice["threshold"],
                         "postprocess": choice["postprocess"]}, source)


def _member_dict(member, source) -> dict:
    if not isinstance(member, dict) or not isinstance(member.get("path"), str):
        raise _error(source, "members", "a list of objects with a model path", member)
    unknown = sorted(set(member) - set(MEMBER_KEYS))
    if unknown:
        raise _error(source, "members", f"objects with keys {', '.join(MEMBER_KEYS)}", unknown)
    return member


def _member_json(member: "InferenceSettings") -> dict:
    data = member.to_dict()
    return {"path": member.info["path"], **{k: data[k] for k in MEMBER_KEYS if k != "path" and k in data}}


def member_settings(path: str | Path, settings: InferenceSettings) -> InferenceSettings:
    """A member's record: its model ``path`` and the settings it runs with."""
    return InferenceSettings(flips=settings.flips, ndim=settings.ndim, input_size=settings.input_size,
                             patch_size=settings.patch_size, channels=settings.channels,
                             channel_names=settings.channel_names,
                             normalisation=settings.normalisation, info={"path": str(path)})


# --------------------------------------------------------------------------- files

def _check_keys(data, source) -> None:
    """Refuse a settings file lacking a key that decides the masks, or naming an unknown key."""
    if not isinstance(data, dict):
        return  # from_dict says it must hold an object
    members = data.get("members")
    if members:
        missing = [k for k in ENSEMBLE_REQUIRED_KEYS if k not in data]
    else:
        missing = [k for k in REQUIRED_KEYS + _size_keys(data) if k not in data]
    if missing:
        raise ConfigError(source, f"missing {', '.join(missing)}: the settings the model was tuned "
                          "with are not filled in with defaults; restore the file from its run")
    unknown = sorted(set(data) - set(DEFAULTS) - set(RECORDED_KEYS), key=str)
    if unknown:
        raise ConfigError(source, f"unknown key(s) {', '.join(map(repr, unknown))}: not a setting "
                          f"bcseg records (a misspelt key?); the settings are {', '.join(DEFAULTS)}")
    for member in members if isinstance(members, list) else ():
        if isinstance(member, dict):
            absent = [k for k in MEMBER_REQUIRED_KEYS + _size_keys(member)
                      if k not in member]
            if absent:
                raise ConfigError(source, f"member {member.get('path', '?')!r} is missing "
                                  f"{', '.join(absent)}")


def settings_from_file(data, source: Path) -> InferenceSettings:
    """Settings read from a file: every key that decides the masks present, none unknown,
    then checked as :meth:`InferenceSettings.from_dict` checks them."""
    _check_keys(data, source)
    return InferenceSettings.from_dict(data, source)


def read_settings(path: str | Path) -> InferenceSettings | None:
    """The settings in an ``inference.json`` file, or None when there is none.

    Raises
    ------
    ConfigError
        Unreadable JSON, a missing or unknown key, or a bad value, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        if os.path.lexists(path):  # a folder, a broken link, a pipe: never silently skipped
            raise ConfigError(path, "is not a file; the run's inference settings must be a JSON "
                              "file (move this away to use the settings inside the model)")
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or JSON
        raise ConfigError(path, f"cannot read inference settings ({exc})") from None
    return settings_from_file(data, path)


def archive_settings(model_path: str | Path) -> InferenceSettings | None:
    """The settings stored inside a ``.keras`` archive, or None when it holds none.

    Raises
    ------
    ConfigError
        Settings stored in it that cannot be read (corrupt JSON, a damaged entry) or
        are incomplete, naming the model file: they are not taken as absent.
    """
    model_path = Path(model_path)
    try:
        archive = zipfile.ZipFile(model_path)
    except (OSError, zipfile.BadZipFile):
        return None  # load_model reports an unreadable archive with its own error
    with archive:
        if ARCHIVE_SETTINGS not in archive.namelist():
            return None
        try:
            data = parse_json(archive.read(ARCHIVE_SETTINGS).decode("utf-8"))
        except (OSError, ValueError, EOFError, NotImplementedError, zlib.error,
                zipfile.BadZipFile) as exc:  # ValueError: bad UTF-8 or JSON
            raise ConfigError(model_path, f"its inference settings ({ARCHIVE_SETTINGS} inside "
                              f"it) cannot be read ({exc}); re-save the model with its settings "
                              f"or put its run's {SETTINGS_FILE} beside it") from None
    return settings_from_file(data, model_path)


# What reading a damaged zip archive (a .keras file) raises, beside a missing entry.
ZIP_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError)


_DIGESTS: dict[tuple, str | None] = {}  # weights_digest's, by the file's identity and version


def weights_digest(model_path: str | Path) -> str | None:
    """The SHA-256 of the weights inside a ``.keras`` archive, or None where it holds
    none or they cannot be read (loading the model says why). An ONNX export records it,
    so that the export is known to be of the model beside it, and so does the
    ``inference.json`` tuned for a model (:data:`WEIGHTS_KEY`); rewriting the settings
    inside the archive (:func:`embed_settings`) leaves it unchanged. A file is hashed once
    per version (its size and modification time): a command checks it more than once
    (its settings, then its ONNX export)."""
    try:
        info = os.stat(model_path)
    except OSError:
        return None
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) if info.st_ino \
        else (str(real_path(model_path)), info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        try:
            with zipfile.ZipFile(model_path) as archive, archive.open(ARCHIVE_WEIGHTS) as weights:
                _DIGESTS[key] = hashlib.file_digest(weights, "sha256").hexdigest()
        except (KeyError, *ZIP_ERRORS):
            _DIGESTS[key] = None
    return _DIGESTS[key]


def with_weights(settings: InferenceSettings, folder: str | Path) -> InferenceSettings:
    """``settings`` with the digest of the weights they were tuned for: each member's
    file, or the folder's one model (:data:`WEIGHTS_KEY`). Written where the settings are
    recorded after tuning, so that a model later swapped for other weights is refused
    (:func:`check_weights`) rather than run with a threshold tuned for the old ones."""
    folder = Path(folder)

    def recorded(info: dict, model: Path | None) -> dict:
        digest = None if model is None else weights_digest(model)
        return {**info, WEIGHTS_KEY: digest} if digest else info

    if settings.members:
        return settings.replace(members=tuple(m.replace(info=recorded(m.info, folder / m.info["path"]))
                                              for m in settings.members))
    return settings.replace(info=recorded(settings.info, folder_model(folder)))


def check_weights(settings: InferenceSettings, model_file: Path, source: Path) -> None:
    """Refuse a model whose weights are not those ``settings`` (read from ``source``) were
    tuned for. Settings written before the digest was recorded are taken on trust."""
    recorded = settings.info.get(WEIGHTS_KEY)
    if recorded is None:
        return
    actual = weights_digest(model_file)
    if actual is not None and actual != recorded:
        raise ModelError(model_file, f"its weights are not those {source} was tuned for (the digest "
                         "recorded there differs): the model was replaced, or the settings belong to "
                         f"another model; put back the model they were tuned for, or its own {SETTINGS_FILE}")


def write_settings(folder: str | Path, settings: InferenceSettings) -> Path:
    """Write ``inference.json`` into ``folder`` atomically."""
    return write_text(Path(folder) / SETTINGS_FILE, json.dumps(settings.to_dict(), indent=1) + "\n")


def embed_settings(model_path: str | Path, settings: InferenceSettings) -> None:
    """Store ``settings`` inside the ``.keras`` archive, replacing an earlier copy (without
    a weights digest: the copy travels with its own weights, and a member re-saved into an
    ensemble has other bytes than the run's model the digest was taken of)."""
    model_path = Path(model_path)
    settings = settings.replace(info={k: v for k, v in settings.info.items() if k != WEIGHTS_KEY})
    with atomic_path(model_path) as tmp:
        with zipfile.ZipFile(model_path) as source, zipfile.ZipFile(tmp, "w") as target:
            for item in source.infolist():
                if item.filename != ARCHIVE_SETTINGS:
                    with source.open(item) as src, target.open(item, "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            target.writestr(ARCHIVE_SETTINGS, json.dumps(settings.to_dict(), indent=1))


def save_run_settings(folder: str | Path, settings: InferenceSettings) -> None:
    """Record the settings of a trained run: ``inference.json`` and inside its model."""
    model = Path(folder) / MODEL_FILE
    if model.is_file():
        embed_settings(model, settings)
    write_settings(folder, with_weights(settings, folder))


# --------------------------------------------------------------------------- runs

def find_members(run_dir: str | Path) -> list[Path]:
    """The fold folders (``fold_K``) of a k-fold run that hold a trained model, by fold."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(FOLD_DIR.format("*")) if (p / MODEL_FILE).is_file()
             and p.name[len(FOLD_DIR.format("")):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(FOLD_DIR.format("")):]))


# The settings that describe the trained network itself, not a choice made at inference:
# a settings file beside a model that disagrees with the model's own copy on one of these
# belongs to another model (or was edited), and would run this one wrongly without error.
MODEL_KEYS = ("ndim", "input_size", "patch_size", "channels", "channel_names", "normalisation", "flips")


def model_settings(model_path: Path, given_as_file: bool = False,
                   archive: Path | None = None) -> InferenceSettings:
    """A model file's settings: ``inference.json`` beside it, else its archive's copy,
    else, for a run that has not finished, its recipe's (with a warning; only for a
    checkpoint ``given_as_file`` by name, not a run folder, which is refused).

    ``archive`` is the ``.keras`` file whose embedded copy describes the network (the
    model itself when not given; the ``.keras`` file an ``.onnx`` file was exported from).

    Raises
    ------
    ConfigError
        The file beside it lists ensemble members this model is not one of, or
        contradicts the archive's copy on what the network is (:data:`MODEL_KEYS`).
    ModelError
        A run folder whose training has not finished.
    """
    archive = archive or model_path
    home = _run_folder(model_path)
    beside_file = home / SETTINGS_FILE
    beside = read_settings(beside_file)
    inside = _embedded(archive, tolerate=beside is not None and not beside.members)
    if beside is not None and beside.members:
        listed = {str(Path(m.info.get("path", ""))) for m in beside.members}
        # one member of a recorded ensemble, named alone: its own settings; so is its ONNX
        # export, known by the member file it was exported from (member_0.onnx was refused
        # as "not the settings of the one model" though member_0.keras ran)
        if given_as_file and archive.name in listed and inside is not None:
            return inside
        raise ConfigError(beside_file, f"lists ensemble members, so it is not the settings of "
                          f"the one model {model_path.name} beside it; a folder holds one model's "
                          "settings or one ensemble's, not both")
    if beside is not None and inside is not None:
        _check_same_model(beside, inside, beside_file, archive)
    if beside is not None and WEIGHTS_KEY in beside.info and archive.parent == home \
            and folder_model(home) == archive:
        # the model the folder's settings were tuned for (not model_last.keras or a
        # checkpoint, warned about below): its weights must be the ones they were tuned on
        check_weights(beside, archive, beside_file)
    if beside is not None and inside is None and model_path.stem != Path(MODEL_FILE).stem \
            and (home / MODEL_FILE).is_file():  # model_last.keras, a checkpoint
        warnings.warn(f"{model_path}: its run's {SETTINGS_FILE} was tuned for {MODEL_FILE}, "
                      "not for this file; its threshold may not suit it")
    settings = beside or inside
    if settings is not None:
        return settings
    recipe = _unfinished_run(home)
    if recipe is not None:
        return _unfinished_settings(model_path, recipe, given_as_file)
    warnings.warn(f"{model_path}: holds no inference settings (none inside it, no "
                  f"{SETTINGS_FILE} beside it); using the defaults: threshold "
                  f"{DEFAULTS['threshold']}, no post-processing, whole slices")
    return InferenceSettings()


def _run_folder(model_path: Path) -> Path:
    """The folder whose settings and recipe a model file goes by: its own, or for an
    epoch's checkpoint (``checkpoints/epoch_K.keras``) its run's, as for
    ``model_last.keras``, a link to the latest of them (named in ``checkpoints/``, the
    same file ran with the defaults: whole slices, not the run's training square)."""
    folder = model_path.parent
    if folder.name == CHECKPOINTS_DIR and _is_training_folder(folder.parent):
        return folder.parent
    return folder


def _is_training_folder(folder: Path) -> bool:
    """Whether ``folder`` has the files a training run writes as it goes."""
    return any((folder / name).is_file() for name in (CONFIG_FILE, STATE_FILE, FOLD_FILE))


def _embedded(archive: Path, tolerate: bool) -> InferenceSettings | None:
    """The settings inside ``archive``; a damaged copy is ``tolerate``d (with a warning)
    where an ``inference.json`` beside it holds them anyway."""
    if not archive.is_file():
        return None
    try:
        return archive_settings(archive)
    except ConfigError as exc:
        if not tolerate:
            raise
        warnings.warn(f"{exc}; using the {SETTINGS_FILE} beside it, unchecked against it")
        return None


def _unfinished_run(folder: Path) -> Path | None:
    """The ``config.toml`` of the bcseg run ``folder`` belongs to, when the folder has the
    files training writes as it goes (a k-fold run keeps its recipe in the parent)."""
    if not _is_training_folder(folder):
        return None
    for recipe in (folder / CONFIG_FILE, folder.parent / CONFIG_FILE):
        if recipe.is_file():
            return recipe
    return None


def load_recipe(path: Path) -> dict:
    """A run's ``config.toml``. train writes every setting there: an empty one is a damaged
    run, not the defaults (read as them, a checkpoint ran at the default input size, not
    the square it was trained on, with no word said)."""
    from bcseg.config import load_config

    if not path.read_bytes().strip():
        raise ModelError(path, f"is empty: a run's {CONFIG_FILE} records its recipe; give a run "
                         "folder as train wrote it")
    return load_config(path)


def _unfinished_settings(model_path: Path, recipe: Path, given_as_file: bool) -> InferenceSettings:
    """A run still training (or interrupted) has recorded no settings: refused as a run
    folder; a checkpoint named as a file runs with its recipe's input size, window,
    flips and channels, and the default threshold."""
    problem = (f"its run has not finished: training writes {SETTINGS_FILE} when it ends, and "
               "this checkpoint's threshold was never tuned; finish the run (bcseg train ... --resume)")
    if not given_as_file:
        raise ModelError(model_path.parent, f"{problem}, or name {model_path.name} itself to run "
                         "the checkpoint with its recipe's settings")
    cfg = load_recipe(recipe)
    warnings.warn(f"{model_path}: {problem}; running it with its recipe's input size, flips and "
                  f"channels ({recipe}) and the defaults threshold {DEFAULTS['threshold']}, no "
                  "post-processing")
    names = list(cfg["data"]["channels"])
    methods = {n: m for n, m in cfg["data"]["normalisation"].items() if n in names}
    return recipe_settings(cfg, None, names or None, methods).replace(
        threshold=DEFAULTS["threshold"], tta=DEFAULTS["tta"], info={})


def _check_same_model(beside: InferenceSettings, inside: InferenceSettings, source: Path,
                      model_path: Path) -> None:
    """Refuse settings whose description of the network differs from the model's own."""
    ours, its = beside.to_dict(), inside.to_dict()
    # named from the settings' folder: every fold of a k-fold run is a model_best.keras, and
    # "recorded inside model_best.keras" did not say which member's entry was wrong
    shown = model_path.relative_to(source.parent) if model_path.is_relative_to(source.parent) \
        else model_path.name
    for key in MODEL_KEYS:
        if ours[key] != its[key]:
            raise ConfigError(source, f"{key} {ours[key]!r} differs from {its[key]!r} recorded inside "
                              f"{shown} when it was trained: the two belong to "
                              f"different models; put back the {SETTINGS_FILE} or the model of this run")


def load_run(paths: str | Path | Sequence[str | Path]) -> tuple[list[Path], InferenceSettings]:
    """The model files and inference settings of a run, a model file, or several.

    Parameters
    ----------
    paths : path or sequence of paths
        A training run folder (``model_best.keras``), a k-fold run folder (its
        ``fold_K`` models form an ensemble), or a ``.keras`` file. Several paths
        form an ensemble of all their models.

    Returns
    -------
    model_paths : list of Path
        One per model to run; more than one for an ensemble.
    settings : InferenceSettings
        For an ensemble, ``members`` lists each model's own settings.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    loaded = [_load_one(Path(p)) for p in paths]
    files = [f for found, _ in loaded for f in found]
    refuse_repeats(files)
    if len(loaded) == 1:
        return loaded[0]
    members = tuple(member_settings(f, view) for found, s in loaded
                    for f, view in zip(found, s.member_views()))
    return files, _combined(members, [s for _, s in loaded], files)


def refuse_repeats(files: list[Path]) -> None:
    """A model twice in an ensemble (named twice, listed twice, or reached through a link)
    would weigh twice in the mean, unasked."""
    seen: dict[object, Path] = {}
    for f in files:
        info = f.stat()  # an inode of 0 means none is known (some network file systems)
        first = seen.setdefault((info.st_dev, info.st_ino) if info.st_ino else real_path(f), f)
        if first is not f:
            raise ModelError(f, f"is in the ensemble twice (also as {first}); give each model once")


def check_model_file(path: Path, expected: str = "a .keras file") -> None:
    """Refuse a run's model that is there by name but is no file: a folder, a named pipe,
    a broken link (a disk not mounted). Each was reported as the run holding no
    ``model_best.keras`` at all, or as a member "not found", while the name was there to see."""
    if os.path.lexists(path) and not path.is_file():
        raise ModelError(path, not_a_file(path, expected) or f"is not a regular file, expected {expected}")


def _load_one(path: Path) -> tuple[list[Path], InferenceSettings]:
    outputs.settle_before_reading(path)  # a killed train --force's earlier run put back
    if path.is_dir():
        check_model_file(path / MODEL_FILE)
        if (path / MODEL_FILE).is_file():
            return [path / MODEL_FILE], model_settings(path / MODEL_FILE)
        recorded = _recorded_ensemble(path)
        if recorded is not None:
            return recorded
        bundled = _one_bundled_model(path)
        if bundled is not None:
            return [bundled], model_settings(bundled)
        check_finished_model(path)
        folds = find_members(path)
        if folds and (path / CONFIG_FILE).is_file():  # a k-fold run of bcseg train, untuned
            raise ModelError(path, f"this k-fold run has not finished: the ensemble's {SETTINGS_FILE} "
                             "is written when its last fold ends; finish it (bcseg train ... --folds all "
                             "--resume), or name its finished fold folders instead")
        if folds:
            return _fold_ensemble(path, folds)
        raise ModelError(path, f"holds no {MODEL_FILE}, no {SETTINGS_FILE} listing ensemble members "
                         "and no fold_K folders with a model; pass a training run folder or a .keras file")
    if not path.exists():
        raise ModelError(path, "model not found; pass a training run folder or a .keras file")
    return [path], model_settings(path, given_as_file=True)


def check_finished_model(folder: Path) -> None:
    """Refuse a finished training run (or fold) whose ``model_best.keras`` is gone, naming
    it: its ``inference.json`` holds the settings tuned for it. ``predict`` said the run held
    "no inference.json listing ensemble members" though one was there, and ``train
    --resume`` took the fold for finished and went on, leaving a run with no model."""
    if not _is_training_folder(folder) or (folder / MODEL_FILE).is_file() \
            or not (folder / SETTINGS_FILE).is_file():
        return
    settings = read_settings(folder / SETTINGS_FILE)
    if settings is not None and not settings.members:
        raise ModelError(folder / MODEL_FILE, f"not found, though {folder / SETTINGS_FILE} holds the "
                         "settings tuned for it: the run's model is gone; put it back, or train the "
                         "run again (bcseg train ... --force)")


def folder_model(folder: Path) -> Path | None:
    """The one model file a folder predicts with: its ``model_best.keras``, else the one
    ``.keras`` file beside its settings (a bundled model's folder); None otherwise."""
    return folder / MODEL_FILE if (folder / MODEL_FILE).is_file() else _one_bundled_model(folder)


def _one_bundled_model(folder: Path) -> Path | None:
    """The model of a folder that holds its settings and one ``.keras`` file, as the
    bundled default and its held-out twin are (``build_pretrained.py --target``), or
    None. Two model files with one settings file are not guessed between, and a training
    run's model is its model_best.keras: a finished run that lost it holds only its
    last checkpoint, which the run's threshold was not tuned for."""
    # a training run or fold (config.toml, fold.json, state.json): its model_last.keras is
    # no bundled model (a fold folder has no config.toml of its own)
    if not (folder / SETTINGS_FILE).is_file() or _is_training_folder(folder):
        return None
    named = list(folder.glob("*.keras"))
    if len(named) == 1:  # the one model there, a broken link or a folder: say so
        check_model_file(named[0])
    models = [p for p in named if p.is_file()]
    return models[0] if len(models) == 1 else None


def _recorded_ensemble(folder: Path) -> tuple[list[Path], InferenceSettings] | None:
    """An ensemble whose ``inference.json`` lists its members (a k-fold run after its
    ensemble was tuned, or the bundled models); None when it lists none."""
    recorded = read_settings(folder / SETTINGS_FILE)
    if recorded is None or not recorded.members:
        return None
    paths = []
    for member in recorded.members:
        relative = member.info.get("path")
        path = folder / str(relative)
        # A member is a file of this folder: a settings file cannot point a run elsewhere.
        if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ModelError(folder / SETTINGS_FILE, f"member path {relative!r} is not a file "
                             "inside the folder")
        try:
            found = path.is_file()
        except OSError as exc:  # a name too long for the file system: the settings file's fault
            raise ModelError(folder / SETTINGS_FILE, f"member path {relative!r} cannot name a file "
                             f"({exc.strerror})") from None
        check_model_file(path)
        if not found:
            raise ModelError(path, f"ensemble member listed in {folder / SETTINGS_FILE} not found")
        own = _embedded(path, tolerate=True)
        if own is not None:  # the member's entry must describe the network it names
            _check_same_model(member, own, folder / SETTINGS_FILE, path)
        check_weights(member, path, folder / SETTINGS_FILE)  # and be of the weights it was tuned with
        paths.append(path)
    check_fold_members(folder, recorded)
    return paths, recorded


def check_fold_members(folder: Path, recorded: InferenceSettings) -> None:
    """A k-fold run's recorded ensemble lists every finished fold's model and no other:
    an ``inference.json`` edited to list fewer predicted silently with the subset, under
    a threshold tuned for the whole (a smaller ensemble is named by its folds instead)."""
    if not (folder / CONFIG_FILE).is_file() or not recorded.members:
        return  # not a k-fold run of bcseg train (an ensemble folder, the bundled models)
    folds = {str(Path(f.name) / MODEL_FILE) for f in find_members(folder) if (f / SETTINGS_FILE).is_file()}
    listed = {str(Path(m.info.get("path", ""))) for m in recorded.members}
    if folds and listed != folds:
        unlisted, extra = sorted(folds - listed), sorted(listed - folds)
        problem = (f"does not list the finished fold {unlisted[0]}" if unlisted
                   else f"lists {extra[0]}, which is no finished fold of the run")
        raise ModelError(folder / SETTINGS_FILE, f"{problem}: the run's ensemble is its {len(folds)} "
                         "finished folds, tuned together; put back the inference.json train wrote, or "
                         "name the folds to ensemble (--model RUN/fold_0 --model RUN/fold_1 ...)")


def _fold_ensemble(run_dir: Path, folds: list[Path]) -> tuple[list[Path], InferenceSettings]:
    """A k-fold run not yet tuned as an ensemble: its fold models, with the members'
    own settings combined."""
    files = [f / MODEL_FILE for f in folds]
    parts = [model_settings(f) for f in files]
    members = tuple(member_settings(f.relative_to(run_dir), s) for f, s in zip(files, parts))
    return files, _combined(members, parts, files)


def _combined(members, parts: list[InferenceSettings], files) -> InferenceSettings:
    """Ensemble settings for models put together by hand: no threshold was tuned for
    them, so the members' mean threshold is used (with a warning)."""
    thresholds = [p.threshold for p in parts]
    steps = {p.postprocess for p in parts}
    warnings.warn(f"{files[0]}: ensemble of {len(files)} models without a threshold tuned for "
                  f"it; using the members' mean threshold {sum(thresholds) / len(thresholds):.3g} (bcseg ensemble "
                  "tunes one on the runs' validation images)")
    return InferenceSettings(threshold=round(sum(thresholds) / len(thresholds), 4),
                             postprocess=steps.pop() if len(steps) == 1 else (),
                             tta=all(p.tta for p in parts), members=tuple(members))
