"""Dataset integrity check, in the spirit of nnU-Net's ``--verify_dataset_integrity``.

Reads every image and mask once, and lists every problem rather than stopping at the
first: unreadable or truncated files, masks whose shape differs from their image,
masks that are not binary, observers missing for some cases; for multi-channel
cases, channels missing from some cases, channels that disagree in shape or
spacing, and channels that hold one value only. Each channel's dtypes and value range are summarised. No TensorFlow here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bcseg.atomic import real_path
from bcseg.data import image_rules, io
from bcseg.data.channels import constant_problem, value_range
from bcseg.data.intensity import blank_problem, check_methods
from bcseg.data.case_checks import Problems
from bcseg.data.cases import Case, dataset_channels, read_case_channel_arrays, same_mask_spacing
from bcseg.data.content import duplicate_images, duplicate_problem
from bcseg.data.dataset import BUSI_MASK, data_files, discover
from bcseg.data.splits import group_note, require_groups
from bcseg.errors import DataError, printable


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    ``problems`` holds ``(path, message)`` pairs; the dataset is usable when it is empty.
    """

    cases: list[Case]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    spacings: dict[str, tuple[float, ...] | None] = field(default_factory=dict)
    empty_masks: list[tuple[str, str]] = field(default_factory=list)  # (case id, observer)
    inverted_masks: list[str] = field(default_factory=list)  # mask files that look drawn inverted
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Per channel of a multi-channel dataset: dtypes seen and the overall value range.
    channel_dtypes: dict[str, set[str]] = field(default_factory=dict)
    channel_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | Path) -> CheckReport:
    """Read every case under ``root`` and collect what is wrong.

    Raises
    ------
    DataError
        Only when no dataset can be found at all (missing or empty folder, unknown
        layout, an unusable channels.json or manifest header); problems with single
        files are collected in the report, those found while building the case list
        (a damaged hyperstack, a wrong channel count, clashing ids) too: the case is
        left out and the rest are checked.
    """
    found = Problems()
    cases = discover(root, found)
    report = CheckReport(cases=cases, problems=list(found))
    try:  # per-slice rows without groups: train and split refuse them, so it is a problem
        require_groups(cases, root)
    except DataError as error:
        report.problems.append((error.path or str(root), error.problem))
    observers = sorted({o for case in cases for o in case.masks})
    channels = dataset_channels(cases) if any(case.channels for case in cases) else []
    methods = check_methods(None, channels)  # the defaults a run without a config uses: pa is log
    for case in cases:
        report.problems.extend(check_case(case, observers, report, channels, methods))
    for first, first_file, other, other_file in duplicate_images(cases):
        report.problems.append((str(other_file), duplicate_problem(first, first_file, other)))
    for path in orphan_masks(Path(root), cases, found):
        report.problems.append((str(path), "is a mask with no image of the same name, so no case "
                                "uses it; rename it or its image so that they match"))
    return report


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def orphan_masks(root: Path, cases: list[Case], set_aside: Problems | None = None) -> list[Path]:
    """Mask files of a folder layout that no case uses: a mask named unlike its image
    (``specimen_1`` against ``specimen_01``) leaves that image without the mask, unseen.
    A manifest names every mask itself, so it has none. The masks of cases that
    discovery left out for a problem already listed (``set_aside``, the problems it
    listed) have an image, and are not listed again."""
    if not root.is_dir() or (root / "manifest.csv").is_file():
        return []
    used = {path for case in cases for files in case.masks.values() for path in files}
    ignore = Problems()  # a broken link among the masks is discovery's to name, not a crash here
    masks = root / "masks"
    if (root / "images").is_dir():
        observers = _subfolders(masks) if masks.is_dir() else []
        # one level deeper too: masks/<observer>/<folder>/ is read by no layout, and a
        # mask moved there (a 'done' folder, an export's own folder) was dropped unseen
        folders = [masks, *observers, *(deeper for folder in observers for deeper in _subfolders(folder))]
        folders = folders if masks.is_dir() else []
        found = [path for folder in folders for path in data_files(folder, ignore)
                 if not (set_aside is not None and set_aside.left_out(io.file_stem(path)))]
    else:  # BUSI-like class folders: NAME_mask.png beside NAME.png
        found = [path for folder in _subfolders(root) for path in data_files(folder, ignore)
                 if (match := BUSI_MASK.match(io.file_stem(path))) 
                 and not (set_aside is not None and set_aside.left_out(match["name"]))]
    return sorted(set(found) - used)


def refuse_orphan_masks(root, cases: list[Case]) -> None:
    """Refuse, naming the first, a mask file of a dataset folder that no case reads
    (:func:`orphan_masks`): ``check`` lists them, and ``train``, ``evaluate`` and
    ``export-nnunet`` went on without them, a BUSI ``NAME_mask_1.png`` in another class
    folder left out of its lesion's union, a mask in a subfolder of its observer's
    folder left its image without one. ``root`` that is no folder (a manifest, a list
    of cases) names every mask itself."""
    if not isinstance(root, (str, Path)) or not Path(root).is_dir():
        return
    for path in orphan_masks(Path(root), cases):
        raise DataError(path, "is a mask that no case reads: no image of its name is beside it (or, "
                        "in a subfolder of its observer's folder, it is read by no layout); rename "
                        "or move it so that it matches its image, or move it out of the dataset")


def refuse_bad_cases(cases: list[Case], channels: list[str] | None = None, before: str = "training",
                     methods: dict[str, str] | None = None) -> dict[str, tuple[int, ...]]:
    """Read every case's images and masks before a command's output exists; raise
    DataError naming the first bad file (``before`` says for what they were checked).

    A bad file found later (a compressed stack damaged past its header is found only
    when decoded) would leave half an output behind. Images are memory-mapped where
    they can be, so this reads the masks and the headers, not every stack in full.
    ``methods`` (channel name to normalisation) lets a channel that the method would
    blank be refused (:func:`bcseg.data.intensity.blank_problem`).

    Returns each case's image shape (its first channel's) by case id, read on the
    way: training counts the memory its cached samples take from them.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for case in cases:
        for path, problem in check_case(case, sorted(case.masks), channels=channels or (),
                                        methods=methods, shapes=shapes):
            raise DataError(path, f"{problem} (case '{case.id}', checked before {before})")
    return shapes


def check_case(case: Case, observers: list[str], report: CheckReport | None = None,
               channels: list[str] = (), methods: dict[str, str] | None = None,
               shapes: dict[str, tuple[int, ...]] | None = None) -> list[tuple[str, str]]:
    """Read one case's image (every named channel) and masks; return its
    ``(path, message)`` problems.

    ``observers`` are the masks every case should have, ``channels`` the channels.
    When ``report`` is given, the case's shape, dtype, spacing, channel ranges and
    empty masks are recorded in it; ``shapes`` gets the image's shape alone.
    """
    try:
        image, spacing, problems = _read_case(case, list(channels), report, methods or {})
    except DataError as error:
        return [(error.path or str(case.image), error.problem)]
    if shapes is not None:
        shapes[case.id] = tuple(image.shape)
    if report is not None:
        report.shapes[case.id] = tuple(image.shape)
        report.dtypes[case.id] = str(image.dtype)
        report.spacings[case.id] = case.spacing_mm or spacing
    stated = None  # the first mask stating a spacing, where the image states none
    for observer in observers:
        files = case.masks.get(observer)
        if not files:
            problems.append((str(case.image), f"no mask from observer '{observer}'"))
            continue
        empty = True
        for path in files:
            try:
                # a manifest's spacing overrides the files', masks' included
                mask = io.read_mask(path, image.shape, () if case.spacing_mm else (spacing,),
                                    image=case.image)
                if spacing is None and not case.spacing_mm:  # masks of one image agree
                    stated = same_mask_spacing(path, stated)
                empty &= not mask.any()
                if report is not None and looks_inverted(mask):
                    report.inverted_masks.append(str(path))
            except DataError as error:
                problems.append((error.path or str(path), error.problem))
                empty = False  # unreadable is a problem, not an empty mask
        if empty and report is not None:
            report.empty_masks.append((case.id, observer))
    problems.extend(_shared_by_observers(case))
    return problems


def _shared_by_observers(case: Case) -> list[tuple[str, str]]:
    """One file given as two observers' masks of ``case`` (a manifest cell copied into the
    next column): their agreement, Dice 1, would raise the human ceiling. ``evaluate``
    refuses it when it scores both; ``train`` scores every observer on each test fold,
    so it must be refused before training, not after the first folds."""
    owner: dict[Path, str] = {}
    for name in sorted(case.masks):
        for path in case.masks[name]:
            first = owner.setdefault(real_path(path), name)
            if first != name:
                return [(str(path), f"is the mask of observers {first} and {name} of case '{case.id}'; "
                         "each observer's mask is their own delineation")]
    return []


def looks_inverted(mask: np.ndarray) -> bool:
    """Whether a mask looks drawn inverted, the background marked and the lesion not:
    most of the image foreground, and most of its border too. A white-background
    drawing, or a palette whose index 0 is white, reads so; the file cannot say which
    was meant, so ``check`` warns. (A large lesion covers much of an image, but not
    most of its border.)"""
    if mask.size == 0 or mask.mean() <= 0.5:
        return False
    planes = mask.reshape(-1, *mask.shape[-2:])
    border = np.concatenate([planes[:, 0], planes[:, -1], planes[:, :, 0], planes[:, :, -1]], axis=None)
    return bool(border.mean() > 0.5)


def _read_case(case: Case, channels: list[str], report: CheckReport | None, methods: dict[str, str]):
    """The case's (first) image, its spacing and its problems; with channels, each
    channel is checked and, when ``report`` is given, summarised in it."""
    problems = []
    if not channels:
        image, spacing = io.read_image(case.image, mmap=True)
        arrays = {"image": image}
    else:
        missing = [name for name in channels if name not in case.channel_names]
        if missing:
            problems.append((str(case.image), f"case '{case.id}' lacks channel(s) {', '.join(missing)}"))
        # Only the channels asked for: a run of --channels us never reads pa, so a
        # constant or misshapen pa must not refuse its cases.
        arrays, spacing = read_case_channel_arrays(
            case, [n for n in channels if n in case.channel_names] or None, mmap=True)
    for name, array in arrays.items():
        path = next((c.path for c in case.channels if c.name == name), case.image)
        if not _finite(array):  # read_image skips this check for memory-mapped files
            problems.append((str(path), "contains NaN or infinite values; "
                             "fix or mask them before training or segmenting"))
            continue
        if not channels:
            continue
        # by the normalisation the command will use; none (export-nnunet: nnU-Net
        # normalises itself) refuses only a channel of one value
        problem = blank_problem(name, array, methods[name]) if name in methods \
            else constant_problem(name, array)
        if problem:
            problems.append((str(path), problem))
        if report is not None:
            low, high = value_range(array)
            seen = report.channel_ranges.get(name, (low, high))
            report.channel_ranges[name] = (min(low, seen[0]), max(high, seen[1]))
            report.channel_dtypes.setdefault(name, set()).add(str(array.dtype))
    return next(iter(arrays.values())), spacing, problems


def _finite(image: np.ndarray, chunk: int = 16) -> bool:
    """True unless a float image holds NaN or Inf; a stack is read a few slices at a time."""
    if image.dtype.kind != "f":
        return True
    slabs = [image] if image.ndim == 2 else (image[i:i + chunk] for i in range(0, len(image), chunk))
    return all(np.isfinite(slab).all() for slab in slabs)


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _count_line(counter: Counter) -> str:
    return ", ".join(f"{key}: {n}" for key, n in sorted(counter.items(), key=lambda kv: str(kv[0])))


def format_report(report: CheckReport) -> str:
    """The report as a plain-text table followed by the list of problems."""
    cases = report.cases
    shapes = list(report.shapes.values())
    rows = [
        ("cases", str(len(cases))),
        ("groups", str(len({c.group for c in cases}))),
    ]
    classes = Counter(c.label_class for c in cases if c.label_class)
    if classes:
        rows.append(("classes", _count_line(classes)))
    if shapes:
        rows.append(("dimensions", _count_line(Counter(f"{len(s)}D" for s in shapes))))
        for ndim in sorted({len(s) for s in shapes}):
            same = [s for s in shapes if len(s) == ndim]
            axes = "ZHW"[-ndim:]
            rows.append((f"{ndim}D shapes", ", ".join(
                f"{axis} {_span([s[i] for s in same])}" for i, axis in enumerate(axes))))
        rows.append(("dtypes", _count_line(Counter(report.dtypes.values()))))
        spacing = Counter("unknown" if s is None else image_rules.spacing_text(s) + " mm"
                          for s in report.spacings.values())
        rows.append(("spacing", _count_line(spacing)))
    for name, (low, high) in report.channel_ranges.items():
        count = sum(name in c.channel_names for c in cases)
        rows.append((f"channel {name}", f"{count} cases, {', '.join(sorted(report.channel_dtypes[name]))}, "
                     f"range {low:g} to {high:g}"))
    observers = Counter(o for c in cases for o in c.masks)
    rows.append(("observers", _count_line(observers) if observers else "none (images only)"))
    per_case = Counter(len(c.masks) for c in cases)
    # no cases where discovery left every one out for its problem
    rows.append(("observers per case", _count_line(per_case) if per_case else "0"))
    empty = Counter(observer for _, observer in report.empty_masks)
    rows.append(("empty masks", _count_line(empty) if empty else "0"))
    rows.append(("problems", str(len(report.problems))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    note = group_note(cases)
    if note:
        lines.append(f"warning: {note}")
    if report.inverted_masks:
        lines.append(printable(
            f"warning: {len(report.inverted_masks)} mask(s) mark most of the image and of its "
            f"border (e.g. {report.inverted_masks[0]}): drawn inverted, the background as tumour? "
            "Masks are read as nonzero = tumour"))
    if report.problems:
        lines.append("")
        lines.extend(printable(f"problem: {path}: {message}") for path, message in report.problems)
    return "\n".join(lines)
