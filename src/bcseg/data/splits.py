"""Cross-validation folds by group, fold files, and near-duplicate grouping.

Splits are always by group: slices of one specimen (or near-duplicate images of one
lesion) never sit on both sides of a split, since neighbouring slices leak into the
test set and inflate Dice. No TensorFlow here.
"""

from __future__ import annotations

import json
import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bcseg.data import io
from bcseg.atomic import read_json, write_text
from bcseg.data.cases import Case
from bcseg.data.manifest import read_csv_lines
from bcseg.errors import DataError


# The last number of a file name, with what precedes it.
_LAST_NUMBER = re.compile(r"^(?P<before>.*?)(?P<index>\d+)(?P<after>\D*)$")
_SLICE_WORD = re.compile(r"(?:^|[^a-z])(slice|sl|z|frame)[_\- ]?$", re.IGNORECASE)


def _stack_key(case: Case) -> str | None:
    """The file name with its slice index blanked out, or None if it shows none.

    The last number of the name counts as a slice index when another number
    precedes it (``S01_z010``: specimen 01, slice 10) or a slice word does
    (``slice_12``, ``z12``). A lone number (``S01``, ``benign (3)``) names a
    specimen or an image, not a slice.
    """
    name = io.file_stem(Path(case.image))
    match = _LAST_NUMBER.match(name)
    if match is None:
        return None
    before = match["before"]
    if not (re.search(r"\d", before) or _SLICE_WORD.search(before)):
        return None
    return str(Path(case.image).parent / f"{before}#{match['after']}")


def ungrouped_stacks(cases: list[Case]) -> dict[str, list[str]]:
    """Cases without a group whose file names differ only by a slice index from another
    case's, with or without a group.

    Returns
    -------
    dict
        Stack pattern (``S01_z#``) -> ids of its cases whose manifest row gave no group,
        for patterns shared by two or more cases. A slice whose group cell alone was left
        blank counts too: it would be a group of its own, apart from its stack's.
    """
    stacks: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        key = _stack_key(case)
        if key is not None:
            stacks[key].append(case)
    return {key: [c.id for c in members if not c.group_given] for key, members in stacks.items()
            if len(members) > 1 and not all(c.group_given for c in members)}


def group_note(cases: list[Case]) -> str | None:
    """One line about cases without a group, or None when every case has one."""
    missing = [c for c in cases if not c.group_given]
    if not missing:
        return None
    return (f"{len(missing)} of {len(cases)} case(s) have no group (the manifest's 'group' "
            f"column is missing or empty, e.g. for {missing[0].id}): each is its own group, which "
            "is right only if no two come from one specimen or patient")


def require_groups(cases: list[Case], source=None) -> None:
    """Refuse to split per-slice rows of a stack that carry no group, or groups named
    two ways (:func:`refuse_lookalike_groups`).

    Slices of one specimen listed without a group would each be their own group,
    so a split would put neighbouring slices in training and test and inflate Dice.

    Raises
    ------
    DataError
        Naming ``source`` (the manifest or dataset) and a few of the rows.
    """
    refuse_lookalike_groups(cases, source)  # every split by group reads them: k-fold, "last"
    stacks = ungrouped_stacks(cases)
    if not stacks:
        return
    rows = sum(len(ids) for ids in stacks.values())
    key, ids = next(iter(stacks.items()))
    sibling = next(c.id for c in cases if c.id != ids[0] and _stack_key(c) == key)
    raise DataError(source, f"{rows} case(s) without a group look like slices of {len(stacks)} "
                    f"stack(s) (file names that differ only by a slice index, e.g. {ids[0]}, "
                    f"{sibling}): a split would put slices of one specimen in both training and "
                    "test; give every row a 'group' naming its specimen")


def _group_key(group: str) -> str:
    """A group name as a reader sees it: one Unicode form (NFKC), no case, no spaces
    or invisible characters (a zero-width space pasted in from a spreadsheet)."""
    text = unicodedata.normalize("NFKC", group).casefold()
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) != "Cf")


def refuse_lookalike_groups(cases: list[Case], source=None) -> None:
    """Refuse two group names that differ only in case, spaces or Unicode form.

    ``S01`` and ``s01``, or ``Spéc`` typed with a combining accent, name one specimen
    to whoever wrote the manifest, but would be two groups: its cases could then sit
    in training and test at once.

    Raises
    ------
    DataError
        Naming ``source`` and both spellings.
    """
    seen: dict[str, str] = {}
    for case in cases:
        first = seen.setdefault(_group_key(case.group), case.group)
        if first != case.group:
            raise DataError(source, f"groups {first!r} and {case.group!r} differ only in letter case, "
                            "spaces or Unicode form, so they look like the same specimen, yet would be "
                            "split apart and could land in both training and test; spell each "
                            "specimen's group one way")


def kfold_by_group(cases: list[Case], k: int = 5, seed: int = 0, source=None) -> dict[str, int]:
    """Assign every case a fold, keeping groups whole and classes balanced.

    Groups are shuffled with ``seed`` and placed largest first, each into the fold
    where it least upsets the balance of size and class (greedy stratified group
    k-fold, the idea behind scikit-learn's ``StratifiedGroupKFold``).

    Parameters
    ----------
    cases : list of Case
    k : int
        Number of folds. With fewer groups than ``k``, ``k`` drops to the number of
        groups and a warning says so (pilot studies of 3 or 4 specimens).
    seed : int
    source : str or Path, optional
        The dataset, named in the error when per-slice rows lack groups
        (:func:`require_groups`) or when it holds fewer than two groups.

    Returns
    -------
    dict of str to int
        Fold index per case id.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    require_groups(cases, source)
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.group].append(case)
    if len(groups) < 2:
        raise DataError(source, f"only {len(groups)} specimen/group: cross-validation needs at least 2")
    if len(groups) < k:
        warnings.warn(f"only {len(groups)} groups for {k} folds; using {len(groups)} folds "
                      "(one group per test fold)", stacklevel=2)
        k = len(groups)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    rng.shuffle(names)
    names.sort(key=lambda g: -len(groups[g]))  # stable: ties keep the shuffled order
    return _place_groups(cases, groups, names, k)


def _place_groups(cases: list[Case], groups: dict[str, list[Case]], names: list[str],
                  k: int) -> dict[str, int]:
    """Put each group, in the order of ``names``, into the fold it least unbalances."""
    classes = sorted({c.label_class or "" for c in cases})
    total = Counter(c.label_class or "" for c in cases)
    size = np.zeros(k)
    per_class = np.zeros((k, len(classes)))
    folds: dict[str, int] = {}
    for name in names:
        members = groups[name]
        counts = np.array([sum((c.label_class or "") == cls for c in members) for cls in classes])
        target = np.array([total[cls] for cls in classes]) / k
        # Cost of each choice: how much it adds to the stray of class counts and fold
        # sizes from even (the change, not the level, or full folds keep filling);
        # ties go to the smallest fold.
        cost = (np.abs(per_class + counts - target).sum(axis=1)
                - np.abs(per_class - target).sum(axis=1)
                + 0.5 * (np.abs(size + len(members) - len(cases) / k) - np.abs(size - len(cases) / k))
                + 1e-9 * size)
        fold = int(np.argmin(cost))
        size[fold] += len(members)
        per_class[fold] += counts
        for case in members:
            folds[case.id] = fold
    return folds


_FOLD = re.compile(r"[0-9]+", re.ASCII)


def folds_from_file(path: str | Path, cases: list[Case]) -> dict[str, int]:
    """Read folds from a CSV with an ``image`` (or ``id``) column and a ``fold`` column.

    Rows match cases by case id or by the image's file stem. A fold is a plain
    decimal number 0, 1, 2, ...; the folds of the cases must be 0 to K-1 without a
    gap, with K no more than the number of cases; each case is listed once. Cases
    missing from the file raise :class:`DataError` listing them (up to five). Every
    other problem raises :class:`DataError` naming the file and the line.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":  # bcseg split's output: its folds are a run's, not a table
        raise DataError(path, "is JSON (bcseg split writes its folds so, to read, not to train "
                        "from); --folds-file reads a CSV with columns 'fold' and 'image' or 'id', "
                        "one row per image: write one, or let train split by group itself "
                        "(--k, train.seed), as split did")
    columns, rows = read_csv_lines(path, "fold file")
    if "fold" not in columns or not ({"image", "id"} & set(columns)):
        raise DataError(path, "line 1: fold file needs columns 'fold' and 'image' or 'id'")
    if not rows:
        raise DataError(path, "fold file has no rows")
    # An image row names the case of that image, not the case whose id is its file name:
    # a manifest's ids need not be its file names (and 'b,a.tif' beside 'a,b.tif' swapped
    # every fold without a word). Where the ids are the file names, as in folders, both agree.
    owners: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        owners[io.file_stem(case.image)].append(case.id)
    by_key: dict[str, tuple[int, int]] = {}  # case key -> (fold, line)
    for line, row in rows:
        case_id = (row.get("id") or "").strip()
        image = (row.get("image") or "").strip()
        key = case_id or (io.file_stem(image) if image else "")
        if not key:
            raise DataError(path, f"line {line}: names no case (its id and image are empty)")
        if not case_id and len(owners.get(key, ())) > 1:
            raise DataError(path, f"line {line}: image '{image}' is the file name of cases "
                            f"{', '.join(owners[key])}; give an 'id' column to tell them apart")
        if not case_id and owners.get(key):
            key = owners[key][0]
        text = (row.get("fold") or "").strip()
        if not text:
            raise DataError(path, f"line {line}: fold is empty")
        if not _FOLD.fullmatch(text):
            raise DataError(path, f"line {line}: fold '{text}' is not a fold number "
                            "(0, 1, 2, ... in plain digits)")
        if key in by_key:
            what = f"case '{key}'" if case_id else f"'{image}' names case '{key}', which"
            raise DataError(path, f"line {line}: {what} is listed already on line "
                            f"{by_key[key][1]}; list each case once")
        by_key[key] = int(text), line
    missing = [c.id for c in cases if c.id not in by_key]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(path, f"{len(missing)} case(s) have no fold: {shown}")
    used = {c.id: by_key[c.id] for c in cases}
    if not used:
        return {}
    fold = max(f for f, _ in used.values())
    line = min(n for f, n in used.values() if f == fold)
    if fold >= len(cases):
        raise DataError(path, f"line {line}: fold {fold} but only {len(cases)} case(s), so at most "
                        f"{len(cases)} folds (0-{len(cases) - 1}); number folds 0, 1, 2, ...")
    gaps = sorted(set(range(fold + 1)) - {f for f, _ in used.values()})
    if gaps:
        shown = ", ".join(map(str, gaps[:10])) + (" ..." if len(gaps) > 10 else "")
        raise DataError(path, f"line {line}: fold {fold}, but fold(s) {shown} hold no case; "
                        "number the folds 0, 1, 2, ... without gaps")
    if fold == 0 and len(cases) > 1:  # one fold: every case tested, none left to train on
        raise DataError(path, f"line {line}: puts every case in fold 0: none is left to train "
                        "on; spread the cases over at least 2 folds")
    folds = {case_id: f for case_id, (f, _) in used.items()}
    check_groups_whole(cases, folds, path)
    return folds


def check_groups_whole(cases: list[Case], folds: dict[str, int], source) -> None:
    """Raise DataError if any group (specimen) has cases in two folds, or two groups
    look like one (:func:`refuse_lookalike_groups`)."""
    refuse_lookalike_groups(cases, source)
    seen: dict[str, int] = {}
    for case in cases:
        if seen.setdefault(case.group, folds[case.id]) != folds[case.id]:
            raise DataError(source, f"group '{case.group}' is split across folds; "
                            "that leaks one specimen into both train and test")


def validation_ids(cases: list[Case], fraction: float = 0.2, seed: int = 0) -> list[str]:
    """Pick whole groups from ``cases`` (the training folds) for validation.

    At least one group is taken; with a single group there is no validation split
    and an empty list is returned with a warning.
    """
    groups = sorted({c.group for c in cases})
    if len(groups) < 2:
        warnings.warn("one training group only: no validation split, "
                      "the last epoch's model is kept", stacklevel=2)
        return []
    rng = np.random.default_rng(seed + 7919)  # a stream apart from the fold shuffle
    rng.shuffle(groups)
    n = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    chosen = set(groups[:n])
    return [c.id for c in cases if c.group in chosen]


def save_splits(path: str | Path, cases: list[Case], folds: dict[str, int],
                seed: int | None = None, source: str = "kfold_by_group") -> Path:
    """Write folds as JSON: per fold the test and train ids, plus groups."""
    k = max(folds.values()) + 1
    data = {
        "source": source, "seed": seed, "k": k,
        "folds": [{"fold": f, "test": [c.id for c in cases if folds[c.id] == f],
                   "train": [c.id for c in cases if folds[c.id] != f]} for f in range(k)],
        "groups": {c.id: c.group for c in cases},
    }
    return write_text(path, json.dumps(data, indent=1) + "\n")


def load_splits(path: str | Path) -> dict[str, int]:
    """Fold per case id from a JSON written by :func:`save_splits`."""
    path = Path(path)
    try:
        data = read_json(path)
        return {case_id: entry["fold"] for entry in data["folds"] for case_id in entry["test"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a bcseg splits file ({exc})") from None


# --------------------------------------------------------------------------- near-duplicates

def average_hash(image: np.ndarray, size: int = 16) -> np.ndarray:
    """Boolean ``size``×``size`` average hash of a 2D image (block means above the mean)."""
    from skimage.transform import resize

    small = resize(image.astype(np.float32), (size, size), anti_aliasing=True)
    return (small > small.mean()).ravel()


def _frame(case: Case) -> np.ndarray:
    """The case's 2D image; DataError for a stack. The hash is of one frame: a stack
    hashed as if 2D kept its x axis whole, so stacks of other widths crashed and stacks of
    one width were compared along x only; a stack is one specimen, grouped as such."""
    image = io.read_image(case.image)[0]
    if image.ndim != 2:
        raise DataError(case.image, f"is {image.ndim}D: near-duplicates are found among 2D images "
                        "(a frame re-cropped or re-saved); give copies of one specimen's stack one "
                        "group in a manifest instead")
    return image


def near_duplicate_groups(cases: list[Case], max_distance: int = 8, size: int = 16) -> list[Case]:
    """Merge the groups of 2D images whose average hashes differ in <= ``max_distance`` bits.

    Near-duplicates (the same frame re-cropped or re-saved) must share a split. The
    merge is transitive. Returns new cases with updated groups; a 3D image raises
    DataError naming it.
    """
    from dataclasses import replace

    hashes = np.stack([average_hash(_frame(c), size) for c in cases])
    distance = (hashes[:, None, :] != hashes[None, :, :]).sum(axis=2)
    parent = list(range(len(cases)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distance <= max_distance, 1))):
        parent[root(i)] = root(j)
    # Cases that already shared a group stay together as well.
    first_of_group: dict[str, int] = {}
    for i, case in enumerate(cases):
        parent[root(i)] = root(first_of_group.setdefault(case.group, i))
    return [replace(c, group=f"dup{root(i)}") for i, c in enumerate(cases)]
