"""What a case is, and how its image, channels and masks are read.

A *case* is one image (2D or 3D) with zero or more observer masks, a *group* (the
specimen or patient it came from; splits never separate a group), an optional
class, and optional spacing. A case may hold several named, co-registered channels;
``Case.image`` is then its first channel, so code that reads one image per case keeps
working, and :func:`read_case_channels` reads them all, channels last. How cases are
found on disk is :mod:`bcseg.data.dataset`'s.

No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bcseg.data import channels as channel_files
from bcseg.data import io
from bcseg.data.image_rules import same_spacing, spacing_text
from bcseg.errors import DataError


@dataclass(frozen=True)
class Channel:
    """One named channel of a case: a whole file, or plane ``index`` of a file's C axis."""

    name: str
    path: Path
    index: int | None = None


IMAGE_CHANNEL = "image"  # the name of the one channel of a case that names none


@dataclass(frozen=True)
class Case:
    """One image with its observers' masks.

    Attributes
    ----------
    id : str
        Unique name of the case (file stem by default).
    image : Path
        The image or stack file.
    masks : dict of str to tuple of Path
        Files per observer; several files for one observer are OR-merged.
    group : str
        Specimen or patient; cases of one group always share a split.
    label_class : str or None
        Class such as ``benign``, used to stratify folds.
    spacing_mm : tuple of float or None
        Overrides the spacing stored in the image file.
    group_given : bool
        False when a manifest row left ``group`` missing or empty, so the case
        became its own group (see :func:`bcseg.data.splits.require_groups`).
    channels : tuple of Channel
        The named channels, in order; empty for a case of one unnamed image.
        ``image`` is then the first channel's file.
    """

    id: str
    image: Path
    masks: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    group: str = ""
    label_class: str | None = None
    spacing_mm: tuple[float, ...] | None = None
    group_given: bool = True
    channels: tuple[Channel, ...] = ()

    @property
    def observers(self) -> list[str]:
        return sorted(self.masks)

    @property
    def channel_names(self) -> list[str]:
        """Names of the case's channels; ``["image"]`` for a case that names none."""
        return [c.name for c in self.channels] or [IMAGE_CHANNEL]


def read_case_image(case: Case, mmap: bool = False) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """The case's image array and its spacing (the case's own spacing wins).

    For a multi-channel case this is its first channel, with the spacing its channels
    agree on: a first channel saved without spacing takes another's, as training and
    prediction read it (:func:`read_case_channel_arrays`), so that ``evaluate`` does not
    measure the same case in voxels.
    """
    if case.channels and case.channels[0].index is not None:
        arrays, spacings = channel_files.read_files([_triple(case.channels[0])])
        return arrays[0], case.spacing_mm or spacings[0]
    array, spacing = io.read_image(case.image, mmap=mmap)
    for other in case.channels[1:]:  # headers only, and only while none is known
        if spacing is not None or case.spacing_mm:
            break
        spacing = io.stored_geometry(other.path)[1]
    return array, case.spacing_mm or spacing


def _triple(channel: Channel) -> tuple[str, Path, int | None]:
    return channel.name, channel.path, channel.index


def read_case_channel_arrays(case: Case, names: list[str] | None = None, mmap: bool = False
                             ) -> tuple[dict[str, np.ndarray], tuple[float, ...] | None]:
    """Each channel's array in its own dtype, and the case's spacing.

    Parameters
    ----------
    case : Case
    names : list of str, optional
        Channels to read, in this order; all of the case's when omitted. A case that
        names no channels has one, called ``"image"``.
    mmap : bool
        Memory-map whole-file channels where the file allows.

    Raises
    ------
    DataError
        For a channel the case lacks (naming its image), or channels that differ in
        shape or spacing (naming the file that disagrees).
    """
    own = case.channels or (Channel(IMAGE_CHANNEL, case.image),)
    by_name = {c.name: c for c in own}
    names = list(names) if names is not None else [c.name for c in own]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(case.image, f"case '{case.id}' has no channel {', '.join(map(repr, missing))}; "
                        f"it has {', '.join(map(repr, by_name))}")
    chosen = [by_name[n] for n in names]
    arrays, spacings = channel_files.read_files([_triple(c) for c in chosen], mmap=mmap)
    spacing = channel_files.check_agreement(names, [c.path for c in chosen], arrays, spacings)
    return dict(zip(names, arrays)), case.spacing_mm or spacing


def read_case_channels(case: Case, names: list[str] | None = None, mmap: bool = False
                       ) -> tuple[np.ndarray, tuple[float, ...] | None, list[str]]:
    """The case's channels as one array with the channel axis LAST.

    Returns
    -------
    array : ndarray
        ``(H, W, C)`` or ``(Z, H, W, C)`` in the smallest dtype holding every channel
        (uint8 US with float32 PA gives float32, values unchanged).
    spacing_mm : tuple of float or None
    names : list of str
        The channel of each plane of the last axis.

    Raises
    ------
    DataError
        As :func:`read_case_channel_arrays`.
    """
    arrays, spacing = read_case_channel_arrays(case, names, mmap=mmap)
    return channel_files.stack(list(arrays.values())), spacing, list(arrays)


def dataset_channels(cases: list[Case]) -> list[str]:
    """Every channel name used in ``cases``, in first-seen order."""
    return list(dict.fromkeys(name for case in cases for name in case.channel_names))


def read_case_masks(case: Case, shape: tuple[int, ...] | None = None,
                    spacing: tuple[float, ...] | None = None) -> dict[str, np.ndarray]:
    """Each observer's mask as a bool array; several files per observer are OR-merged.

    ``shape`` and ``spacing`` are the image's: a mask that states another is refused.
    """
    masks = {}
    stated = None  # the first mask stating a spacing, where the image states none
    for observer, files in sorted(case.masks.items()):
        merged = None
        for path in files:
            mask = io.read_mask(path, shape, (spacing,), image=case.image)
            if spacing is None and not case.spacing_mm:
                stated = same_mask_spacing(path, stated)
            shape = mask.shape
            merged = mask if merged is None else merged | mask
        masks[observer] = merged
    return masks


def same_mask_spacing(path: Path, stated: tuple[Path, tuple[float, ...]] | None
                      ) -> tuple[Path, tuple[float, ...]] | None:
    """Refuse a mask whose spacing differs from ``stated``, the file and spacing of an
    earlier mask of the case; return the first mask's that states one (or None).

    For a case whose image states no spacing: each mask is compared with its image's
    spacing where there is one, so two observers' masks of 1x0.25x0.25 and 2x0.5x0.5 mm
    passed together, one drawn on another stack or saved with a wrong calibration, and
    were united, scored and trained on as one grid.
    """
    # headers only: a NIfTI mask is not decoded twice, and a PNG or JPEG (which states
    # no spacing) not at all: BUSI's masks were each read again
    own = io.stored_geometry(path)[1] if io.is_nifti(path) else io.read_spacing(path)
    if own is None:
        return stated
    if stated is None:
        return path, own
    if not same_spacing(own, stated[1]):
        raise DataError(path, f"mask spacing {spacing_text(own)} mm differs from that of "
                        f"another mask of its image, {stated[0]} ({spacing_text(stated[1])} mm), "
                        "and the image states none; re-save the masks with the image's spacing, "
                        "or with none")
    return stated
