"""Post-processing of binary masks, the same in 2D and 3D (no TensorFlow).

Each step is optional and chosen per run on its validation split:

* ``largest``: keep the largest connected component (full connectivity);
* ``fill``: fill holes (in 3D for stacks);
* ``small``: remove components smaller than ``min_size`` voxels.

Labels use the most compact integer type the component count allows, and counting
runs in chunks, so masks of large stacks stay within bounded memory.
"""

from __future__ import annotations

import mmap
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bcseg.data.geometry import as_mask
from bcseg.rundir import POSTPROCESS_STEPS

_LABEL_CHUNK = 1 << 24     # voxels per chunk when counting or selecting components
_SLAB_MIN_VOXELS = 1 << 26  # stacks larger than this are processed slab by slab
_SLAB = 32                 # slices per slab


def release_slices(array: np.ndarray, start: int, stop: int) -> None:
    """Drop slices ``start:stop`` of a memory-mapped array from this process's memory.

    The pages stay in the OS page cache (written ones still reach the file); they
    are only unmapped from this process, so its resident memory stays bounded while
    a stack streams through. Does nothing for ordinary arrays or private mappings.
    """
    mm = getattr(array, "_mmap", None)
    stop = min(stop, array.shape[0]) if array.ndim else stop
    if (mm is None or not hasattr(mm, "madvise") or getattr(array, "mode", "c") == "c"
            or not array.flags.c_contiguous or array.ndim == 0 or stop <= start):
        return
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not isinstance(root.base, mmap.mmap) or not isinstance(root, np.memmap):
        return
    base = root.ctypes.data - root.offset % mmap.ALLOCATIONGRANULARITY
    begin = array.ctypes.data - base + start * array.strides[0]
    end = begin + (stop - start) * array.strides[0]
    begin = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
    end -= end % mmap.PAGESIZE
    if end > begin:
        try:
            mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        except (OSError, ValueError):
            pass

def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components in the most compact label type that holds them."""
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    for dtype in (np.uint16, np.int32):
        labels = np.empty(mask.shape, dtype)
        try:
            count = ndi.label(mask, structure, output=labels)
        except RuntimeError:  # more components than uint16 holds
            continue
        return labels, int(count)
    raise AssertionError("unreachable: int32 labels always fit")


def _component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label (index 0 is background), counted in chunks to bound memory."""
    flat = labels.reshape(-1)
    sizes = np.zeros(count + 1, np.int64)
    for i in range(0, flat.size, _LABEL_CHUNK):
        sizes += np.bincount(flat[i:i + _LABEL_CHUNK], minlength=count + 1)
    return sizes


def _select(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Bool mask of the voxels whose label is marked in ``keep``, in chunks."""
    out = np.empty(labels.shape, bool)
    flat, flat_out = labels.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, _LABEL_CHUNK):
        np.take(keep, flat[i:i + _LABEL_CHUNK], out=flat_out[i:i + _LABEL_CHUNK])
    return out


# --------------------------------------------------------------------------- slabs
#
# A large stack is labelled slab by slab (``_SLAB`` slices) in int32: a first pass
# gives every slab's components global ids, joins those that touch across slab
# boundaries and counts their voxels; a second pass labels each slab again (the same
# way), maps its labels to the joined components and writes the kept voxels in
# place. Memory stays bounded by a slab, and the result is exactly that of labelling
# the whole volume at once.

def _use_slabs(mask) -> bool:
    return np.ndim(mask) == 3 and np.size(mask) > _SLAB_MIN_VOXELS


def _read(src: np.ndarray, z0: int, z1: int) -> np.ndarray:
    part = src[z0:z1]
    return part if part.dtype == bool else part != 0


def _write(out: np.ndarray, z0: int, z1: int, kept: np.ndarray) -> None:
    if out.dtype == np.uint8:
        np.multiply(kept, np.uint8(255), out=out[z0:z1], casting="unsafe")
    else:
        out[z0:z1] = kept
    release_slices(out, z0, z1)


def _slab_label(part: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    labels = np.empty(part.shape, np.int32)
    count = ndi.label(part, structure, output=labels)
    return labels, int(count)


def _boundary_pairs(prev: np.ndarray, nxt: np.ndarray, offsets) -> np.ndarray:
    """(global id, global id) pairs of foreground voxels adjacent across two planes."""
    h, w = prev.shape
    pairs = []
    for dy, dx in offsets:
        a = prev[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        b = nxt[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.append(np.stack([a[both], b[both]], axis=1))
    if not pairs:
        return np.empty((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def _slab_components(src: np.ndarray, connectivity: int, background: bool, slab: int):
    """First pass. Returns (per-slab counts, component of each global id, component
    sizes, component first ids, border flags per component (only when ``background``))."""
    depth = src.shape[0]
    structure = ndi.generate_binary_structure(3, connectivity)
    offsets = [(dy - 1, dx - 1) for dy in range(3) for dx in range(3) if structure[0, dy, dx]]
    counts, sizes, edges, border = [], [np.zeros(1, np.int64)], [], []
    total, prev = 0, None
    for z0 in range(0, depth, slab):
        z1 = min(z0 + slab, depth)
        part = _read(src, z0, z1)
        if background:
            part = ~part
        labels, count = _slab_label(part, structure)
        del part
        release_slices(src, z0, z1)
        counts.append(count)
        sizes.append(_component_sizes(labels, count)[1:])
        first = np.where(labels[0] > 0, labels[0].astype(np.int64) + total, 0)
        if prev is not None:
            edges.append(_boundary_pairs(prev, first, offsets))
        prev = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + total, 0)
        if background:
            planes = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]
            if z0 == 0:
                planes.append(labels[0])
            if z1 == depth:
                planes.append(labels[-1])
            ids = np.unique(np.concatenate([p.ravel() for p in planes]))
            border.append(ids[ids > 0].astype(np.int64) + total)
        del labels
        total += count
    n = total + 1
    pairs = np.concatenate(edges) if edges else np.empty((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    ncomp, comp = connected_components(graph, directed=False)
    node_sizes = np.concatenate(sizes)
    comp_sizes = np.bincount(comp, weights=node_sizes, minlength=ncomp).astype(np.int64)
    comp_first = np.full(ncomp, n, np.int64)
    np.minimum.at(comp_first, comp, np.arange(n, dtype=np.int64))
    comp_border = None
    if background:
        comp_border = np.zeros(ncomp, bool)
        if border:
            comp_border[comp[np.concatenate(border)]] = True
    return counts, comp, comp_sizes, comp_first, comp_border, structure


def _slab_apply(src: np.ndarray, out: np.ndarray, counts, structure, keep_node: np.ndarray,
                background: bool, slab: int) -> None:
    """Second pass: label each slab again and write the kept voxels to ``out``."""
    depth, total = src.shape[0], 0
    for i, z0 in enumerate(range(0, depth, slab)):
        z1 = min(z0 + slab, depth)
        part = _read(src, z0, z1)
        labels, count = _slab_label(~part if background else part, structure)
        if count != counts[i]:
            raise AssertionError("slab labelling is not deterministic")
        lut = np.zeros(count + 1, bool)
        lut[1:] = keep_node[total + 1:total + count + 1]
        total += count
        kept = _select(labels, lut)
        del labels
        if background:
            kept |= part
        del part
        release_slices(src, z0, z1)
        _write(out, z0, z1, kept)


def _slab_largest(src, out, slab: int) -> None:
    counts, comp, sizes, first, _, structure = _slab_components(src, 3, False, slab)
    sizes[comp[0]] = 0  # background
    keep_comp = np.zeros(len(sizes), bool)
    if sizes.max(initial=0) > 0:
        best = np.flatnonzero(sizes == sizes.max())
        keep_comp[best[np.argmin(first[best])]] = True
    _slab_apply(src, out, counts, structure, keep_comp[comp], False, slab)


def _slab_small(src, out, min_size: int, slab: int) -> None:
    if min_size <= 1:
        for z0 in range(0, src.shape[0], slab):
            z1 = min(z0 + slab, src.shape[0])
            kept = np.array(_read(src, z0, z1), bool)
            release_slices(src, z0, z1)
            _write(out, z0, z1, kept)
        return
    counts, comp, sizes, _, _, structure = _slab_components(src, 3, False, slab)
    keep_comp = sizes >= min_size
    keep_comp[comp[0]] = False
    _slab_apply(src, out, counts, structure, keep_comp[comp], False, slab)


def _slab_fill(src, out, slab: int) -> None:
    counts, comp, _, _, border, structure = _slab_components(src, 1, True, slab)
    holes = ~border
    holes[comp[0]] = False
    _slab_apply(src, out, counts, structure, holes[comp], True, slab)


def _slab_steps(src: np.ndarray, out: np.ndarray, steps: Sequence[str], min_size: int) -> None:
    """Apply ``steps`` slab by slab from ``src`` into ``out`` (which may be ``src``)."""
    if "small" in steps:
        _check_min_size(min_size)
    for step in steps:
        if step == "largest":
            _slab_largest(src, out, _SLAB)
        elif step == "fill":
            _slab_fill(src, out, _SLAB)
        else:
            _slab_small(src, out, min_size, _SLAB)
        src = out


def _slabbed(mask, steps: Sequence[str], min_size: int = 0) -> np.ndarray:
    """``steps`` applied slab by slab to a large stack, into a new bool array."""
    out = np.empty(np.shape(mask), bool)
    _slab_steps(np.asarray(mask), out, steps, min_size)
    return out


def _check_min_size(min_size) -> None:
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be a whole number of voxels >= 0, got {min_size!r}")


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component (full connectivity, 8 in 2D / 26 in 3D).

    Examples
    --------
    >>> keep_largest_component(np.array([1, 0, 1, 1], bool))
    array([False, False,  True,  True])
    """
    if _use_slabs(mask):
        return _slabbed(mask, ["largest"])
    mask = as_mask(mask)
    labels, count = _label(mask, mask.ndim)
    if count <= 1:
        return mask.copy()
    sizes = _component_sizes(labels, count)
    sizes[0] = 0
    keep = np.zeros(count + 1, bool)
    keep[int(np.argmax(sizes))] = True
    return _select(labels, keep)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Remove connected components of fewer than ``min_size`` voxels (full connectivity)."""
    _check_min_size(min_size)
    if _use_slabs(mask):
        return _slabbed(mask, ["small"], int(min_size))
    mask = as_mask(mask)
    if min_size <= 1:
        return mask.copy()
    labels, count = _label(mask, mask.ndim)
    keep = _component_sizes(labels, count) >= min_size
    keep[0] = False
    return _select(labels, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not reach the image border.

    Background is connected through faces only (4 in 2D, 6 in 3D), the complement of
    the foreground's full connectivity. A stack is filled in 3D: only cavities
    closed on every side are holes.
    """
    if _use_slabs(mask):
        return _slabbed(mask, ["fill"])
    mask = as_mask(mask)
    labels, count = _label(~mask, 1)
    outside = np.zeros(count + 1, bool)
    for axis in range(mask.ndim):
        for end in (0, -1):
            outside[np.unique(labels.take(end, axis=axis))] = True
    holes = ~outside
    holes[0] = False
    return mask | _select(labels, holes)


def check_steps(steps: Sequence[str]) -> list[str]:
    """The post-processing steps as a list, or ValueError naming an unknown one."""
    if isinstance(steps, str):
        steps = [steps]
    unknown = [s for s in steps if s not in POSTPROCESS_STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step {unknown[0]!r}; "
                         f"choose from {', '.join(POSTPROCESS_STEPS)}")
    return list(steps)


def _apply_steps(mask: np.ndarray, steps: Sequence[str], min_size: int) -> np.ndarray:
    if steps and _use_slabs(mask):
        return _slabbed(mask, steps, min_size)
    for step in steps:
        if step == "largest":
            mask = keep_largest_component(mask)
        elif step == "fill":
            mask = fill_holes(mask)
        else:
            mask = remove_small_components(mask, min_size)
    return mask


def apply_steps_inplace(mask: np.ndarray, steps: Sequence[str], min_size: int) -> None:
    """Apply ``steps`` to a bool or uint8 (0/255) mask in place, memory-mapped or not.

    Large stacks go slab by slab without a whole-volume copy."""
    if not steps:
        return
    if _use_slabs(mask):
        _slab_steps(mask, mask, steps, min_size)
        return
    kept = _apply_steps(as_mask(mask), steps, min_size)
    if mask.dtype == bool:
        mask[...] = kept
    else:
        np.multiply(kept, np.uint8(255), out=mask, casting="unsafe")


def postprocess(mask: np.ndarray, steps: Sequence[str], min_size: int = 0) -> np.ndarray:
    """Apply post-processing steps in order to a 2D or 3D mask.

    Parameters
    ----------
    mask : ndarray
        Bool mask (any other type: nonzero is tumour).
    steps : sequence of {"largest", "fill", "small"}
        :func:`keep_largest_component`, :func:`fill_holes`,
        :func:`remove_small_components` (with ``min_size``).
    min_size : int
        Smallest component kept by ``"small"``, in voxels.

    Returns
    -------
    ndarray of bool

    Raises
    ------
    ValueError
        For an unknown step name.

    Examples
    --------
    >>> postprocess(mask, ["small", "fill"], min_size=50)  # doctest: +SKIP
    """
    return _apply_steps(as_mask(mask), check_steps(steps), min_size)
