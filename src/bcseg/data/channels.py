"""Named channels of a case: their names on disk, and reading them into one array.

A case may hold several co-registered channels (``us``, ``pa``, or any name). On
disk they come as

- one folder per channel: ``images/<channel>/S01.tif``;
- nnU-Net style suffixes: ``images/S01_0000.tif``, ``images/S01_0001.tif``, with the
  names in ``channels.json``;
- one TIFF with a C axis (ImageJ hyperstack or OME-TIFF), names in ``channels.json``;
- manifest columns ``image_<channel>``.

``channels.json`` beside ``images/`` names the channels by index, in any of the
forms ``["us", "pa"]``, ``{"0": "us", "1": "pa"}`` or nnU-Net's
``{"channel_names": {"0": "us", "1": "pa"}}``. Arrays of a case are stacked with
the channel axis LAST: ``(H, W, C)`` or ``(Z, H, W, C)``, as Keras takes them.
No TensorFlow here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bcseg.atomic import read_json
from bcseg.data import io
from bcseg.data.image_rules import same_spacing, spacing_text
from bcseg.config import NAME_MAX, check_channel_name  # noqa: F401 (one rule, kept with the recipe's)
from bcseg.errors import DataError

CHANNELS_FILE = "channels.json"
SUFFIX = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")  # nnU-Net: S01_0000


# The channel names bcseg gives a meaning: ultrasound finds the specimen and takes the
# speckle augmentation and a grey model's weights; photoacoustics is log-compressed.
ULTRASOUND, PHOTOACOUSTICS = "us", "pa"


def is_modality(name: str, modality: str) -> bool:
    """Whether channel ``name`` is ``modality`` (:data:`ULTRASOUND`, ...), whatever its
    case: images/US/ and images/PA/ missed every one of those meanings (PA was read
    linearly and found the specimen), and names differing only in case are refused
    as one name anyway (:func:`check_channel_names`)."""
    return name.casefold() == modality


def check_channel_names(names, where: Path | None) -> list[str]:
    """Check each name and that no two are the same, even ignoring case.

    Names become parts of file names (``examples_<channel>.png``), which on macOS and
    Windows cannot tell ``US`` from ``us``.
    """
    names = [check_channel_name(name, where) for name in names]
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other is not name:
            same = "twice" if other == name else f"twice ('{other}' and '{name}' differ only in case)"
            raise DataError(where, f"names channel '{name}' {same}: {', '.join(names)}; "
                            "give each channel its own name")
    return names


def read_channel_names(root: str | Path) -> list[str] | None:
    """Channel names from ``ROOT/channels.json`` by index, or None when there is none.

    Raises
    ------
    DataError
        For unreadable JSON, indices that are not 0, 1, ... or names repeated or unusable.
    """
    path = Path(root) / CHANNELS_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    if not path.is_file():  # a folder, a broken link: never fall back to guessing the order
        raise DataError(path, "is not a readable file (a folder or a broken link); it must be a "
                        'JSON file naming the channels, e.g. ["us", "pa"]')
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or JSON
        raise DataError(path, f"cannot read channel names ({exc}); save it as UTF-8 JSON, "
                        'e.g. ["us", "pa"]') from None
    if isinstance(data, dict) and "channel_names" in data:
        data = data["channel_names"]
    if isinstance(data, list):
        data = {str(i): name for i, name in enumerate(data)}
    if not isinstance(data, dict) or not data:
        raise DataError(path, 'expected channel names like ["us", "pa"] or {"0": "us", "1": "pa"}')
    if sorted(data, key=lambda k: (len(k), k)) != [str(i) for i in range(len(data))]:
        raise DataError(path, f"channel indices must be 0..{len(data) - 1}, got {', '.join(sorted(data))}")
    return check_channel_names([data[str(i)] for i in range(len(data))], path)


def check_agreement(names: list[str], paths: list[Path], arrays: list[np.ndarray],
                    spacings: list[tuple[float, ...] | None]) -> tuple[float, ...] | None:
    """Raise unless all channels share shape, (where known) spacing and, for NIfTI files,
    their place in space; return the spacing.

    The error names the file of the first channel that disagrees with the first one.
    """
    first = arrays[0].shape
    known = next((s for s in spacings if s is not None), None)
    for name, path, array, spacing in zip(names, paths, arrays, spacings):
        if array.shape != first:
            raise DataError(path, f"channel '{name}' has shape {array.shape}, but channel "
                            f"'{names[0]}' ({paths[0].name}) has {first}")
        if spacing is not None and not same_spacing(spacing, known):
            raise DataError(path, f"channel '{name}' has spacing {spacing_text(spacing)} mm, but "
                            f"another channel of the case has {spacing_text(known)} mm")
        # co-registered voxel by voxel: one saved flipped or shifted would be stacked mirrored
        io.check_same_frame(path, paths[0], f"the {name} channel", f"the {names[0]} channel")
    return known


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Channels stacked last, in the smallest dtype that holds them all (uint8 + float32: float32)."""
    dtype = np.result_type(*[a.dtype for a in arrays])
    return np.stack([np.asarray(a, dtype=dtype) for a in arrays], axis=-1)


def value_range(array: np.ndarray, chunk: int = 16) -> tuple[float, float]:
    """Minimum and maximum of an image or stack, read a few slices at a time."""
    if array.ndim == 2:
        return float(array.min()), float(array.max())
    lows, highs = zip(*((array[i:i + chunk].min(), array[i:i + chunk].max())
                        for i in range(0, len(array), chunk)))
    return float(min(lows)), float(max(highs))


def constant_problem(name: str, array: np.ndarray, chunk: int = 16) -> str | None:
    """Why a named channel holds no image (one value everywhere), or None.

    Normalised, a constant channel is all zeros: a model trained on it learns nothing
    from it, and one segmenting with it draws from the other channels alone, a mask
    that looks like a result (a PA stack of zeros: the laser never fired). The first
    slice decides for almost every real image; only a constant one reads the rest.
    """
    first = array if array.ndim == 2 else array[0]
    low = first.min()
    if low != first.max():  # NaN too: not "one value"
        return None
    # The rest a few slices at a time, up to the first that holds another value: a
    # memory-mapped stack blank only at its start is not read to its end.
    for start in range(1, len(array) if array.ndim > 2 else 1, chunk):
        part = array[start:start + chunk]
        if part.min() != low or part.max() != low:
            return None
    return (f"channel '{name}' is constant (every value is {float(low):g}): it holds no image; check the "
            "export from the scanner, or leave the channel out of this case")


def read_files(channels, mmap: bool = False) -> tuple[list[np.ndarray], list[tuple | None]]:
    """Arrays and spacings of channels given as ``(name, path, index)`` triples.

    ``index`` None reads the whole file; an integer takes that plane of the file's C
    axis (each multi-channel file is read once).
    """
    arrays, spacings, opened = [], [], {}
    for name, path, index in channels:
        if index is None:
            array, spacing = io.read_image(path, mmap=mmap)
        else:
            if path not in opened:
                opened[path] = io.read_channels(path)
            planes, spacing = opened[path]
            if index >= planes.shape[-1]:
                raise DataError(path, f"has {planes.shape[-1]} channels; channel '{name}' "
                                f"is number {index + 1}")
            array = planes[..., index]
        arrays.append(array)
        spacings.append(spacing)
    return arrays, spacings
