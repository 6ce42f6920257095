"""shard(x, device_assignment): map a tile grid of device ids onto the (refined) mesh (paper A.3).

A device assignment is expressible iff it is a reshape-transpose of the flat device order, i.e. each
tile coordinate digit moves the device position by a fixed stride. We factor every grid dim into
primes, read off the strides, sort them into a mixed radix over the flat device position, and cut
mesh axes where the assignment needs it. Device ids are positions in the mesh's device order.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import AnnotationError, fail
from .mesh import MeshInfo
from .spec import ShardingSpec

Factor = tuple[str, int, int]  # (original mesh axis, lo, hi): major-cumulative product bounds


def _primes(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def _bad(ann, shape, mesh: MeshInfo, why: str):
    grid = list(ann.assignment_shape)
    fail(AnnotationError,
         f"shard: device assignment with tile grid {grid} for a tensor of shape {list(shape)} is not "
         f"a tiling of the mesh {mesh.describe()}: {why}", where=ann.where,
         fix="use a permutation of the device ids 0..N-1 laid out as a reshape/transpose of the mesh "
             "order, or mesh_split(x, dims_mapping)")


def layout(ann, mesh: MeshInfo, shape) -> list[list[Factor]]:
    """For each tensor dim, its mesh-axis factors (major to minor)."""
    grid = tuple(ann.assignment_shape)
    n = mesh.size
    ids = np.array(ann.assignment, dtype=np.int64)
    if math.prod(grid) != n or sorted(ids.tolist()) != list(range(n)):
        _bad(ann, shape, mesh, f"it must use each of the {n} device ids 0..{n - 1} exactly once")
    owners, sizes = [], []
    for d, g in enumerate(grid):
        for p in _primes(g):
            owners.append(d)
            sizes.append(p)
    a = ids.reshape(sizes) if sizes else ids.reshape(())
    strides = _strides(a, sizes)
    if strides is None:
        _bad(ann, shape, mesh, _why_not_affine(ids.reshape(grid)))
    order = sorted(range(len(sizes)), key=lambda j: -strides[j])
    acc = 1
    for j in reversed(order):
        if strides[j] != acc:
            _bad(ann, shape, mesh, "the tile strides do not form a mixed radix of the device order")
        acc *= sizes[j]
    return _assign_to_axes(ann, mesh, shape, owners, sizes, order)


def _why_not_affine(grid: np.ndarray) -> str:
    """Why a device assignment is no reshape/transpose of the mesh's device order."""
    for d in range(grid.ndim):
        steps = np.diff(grid, axis=d)
        if steps.size and (steps < 0).all():
            return (f"the device ids run backwards along tile dim {d} "
                    f"({', '.join(map(str, np.moveaxis(grid, d, 0)[:3, ...].ravel()[:3]))}, ...); a "
                    f"shard() assignment can reshape and transpose the mesh's device order but not "
                    f"reverse it (to reverse it, build the mesh from the reversed devices and use "
                    f"mesh_split)")
    return ("the device ids are not a reshape/transpose of the mesh's device order (each tile "
            "dim must step through the ids by a fixed stride)")


def _strides(a: np.ndarray, sizes: Sequence[int]):
    if a.ndim == 0:
        return []
    if a.flat[0] != 0:
        return None
    strides = []
    for j in range(a.ndim):
        idx = [0] * a.ndim
        idx[j] = 1
        strides.append(int(a[tuple(idx)]))
    grids = np.indices(a.shape)
    pred = sum(g * s for g, s in zip(grids, strides))
    return strides if np.array_equal(pred, a) else None


def _assign_to_axes(ann, mesh, shape, owners, sizes, order) -> list[list[Factor]]:
    per_dim: list[list[tuple[int, Factor]]] = [[] for _ in ann.assignment_shape]
    k = 0
    for axis, axis_size in zip(mesh.names, mesh.shape):
        lo = 1
        while lo < axis_size:
            if k >= len(order):
                _bad(ann, shape, mesh, "fewer tiles than devices")
            j = order[k]
            hi = lo * sizes[j]
            if axis_size % hi:
                _bad(ann, shape, mesh, f"a factor of {sizes[j]} straddles mesh axis {axis!r}")
            per_dim[owners[j]].append((j, (axis, lo, hi)))
            lo, k = hi, k + 1
    # within a dim, factors run major to minor in prime-axis order (j ascending)
    return [_merge_adjacent([f for _, f in sorted(fs)]) for fs in per_dim]


def _merge_adjacent(factors: list[Factor]) -> list[Factor]:
    out: list[Factor] = []
    for axis, lo, hi in factors:
        # a more-major factor of the same dim followed by the next more-minor range of the axis
        if out and out[-1][0] == axis and out[-1][2] == lo:
            out[-1] = (axis, out[-1][1], hi)
        else:
            out.append((axis, lo, hi))
    return out


def refinement(layouts: Sequence[list[list[Factor]]], mesh: MeshInfo) -> dict[str, tuple[int, ...]]:
    """The factor sizes of each mesh axis that every layout needs (major to minor)."""
    bounds = {a: {1, s} for a, s in zip(mesh.names, mesh.shape)}
    for lay in layouts:
        for dim in lay:
            for axis, lo, hi in dim:
                bounds[axis] |= {lo, hi}
    out = {}
    for axis, size in zip(mesh.names, mesh.shape):
        b = sorted(bounds[axis])
        if any(b[i + 1] % b[i] for i in range(len(b) - 1)):
            raise AnnotationError(
                f"shard: the device assignments in this program need mesh axis {axis!r} (size {size}) "
                f"cut in incompatible ways (boundaries {b})\n  fix: use one consistent tile layout")
        # lo/hi are major-cumulative products within the axis; factors listed major to minor
        out[axis] = tuple(b[i + 1] // b[i] for i in range(len(b) - 1))
    return out


def resolve_shard(ann, mesh: MeshInfo, shape) -> ShardingSpec:
    """Resolve a shard() annotation on a mesh already refined by `refinement`."""
    base = _unrefined(mesh)
    lay = layout(ann, base, shape)
    dims = []
    for factors in lay:
        axes: list[str] = []
        for axis, lo, hi in factors:
            axes += _refined_axes(mesh, axis, lo, hi)
        dims.append(tuple(axes))
    return ShardingSpec(tuple(dims))


def _refined_axes(mesh: MeshInfo, axis: str, lo: int, hi: int) -> list[str]:
    sub = mesh.expand(axis)
    sizes = [mesh.sizes[s] for s in sub]
    out, acc = [], 1
    for name, s in zip(sub, sizes):  # major to minor: name covers [acc, acc * s)
        if lo <= acc and acc * s <= hi:
            out.append(name)
        acc *= s
    return out


def _unrefined(mesh: MeshInfo) -> MeshInfo:
    names = mesh.original_names()
    shape = tuple(math.prod(mesh.sizes[s] for s in mesh.expand(o)) for o in names)
    return MeshInfo(names, shape, None, tuple((n, (n,)) for n in names))
