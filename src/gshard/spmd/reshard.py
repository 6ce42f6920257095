"""The reshard planner (DESIGN §5): from any spec to any spec, one mesh axis at a time.

partial -> split = ReduceScatter; partial -> replicated = AllReduce; split -> split on another dim =
AllToAll; split -> replicated = AllGather; replicated -> split = local slice (no communication);
same tiling in another device order = CollectivePermute. Uneven dims whose axes change are
gathered whole, trimmed, and re-split.
"""
from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from .. import collectives as coll
from ..spec import ShardingSpec
from .local import Ctx, Local


def reshard(ctx: Ctx, x: Local, dst: ShardingSpec, reason: str = "") -> Local:
    if x.spec == dst:
        return x
    why = reason or f"{x.spec} -> {dst}"
    if _permutable(x.spec, dst, ctx.sizes):
        return _permute(ctx, x, dst, why)
    x = _gather_uneven(ctx, x, dst, why)
    x = _reduce_partials(ctx, x, dst, why)
    x = _remove_axes(ctx, x, dst, why)
    x = _add_axes(ctx, x, dst)
    x = _add_partials(ctx, x, dst)
    assert x.spec == dst, (x.spec, dst)
    return x


def _with(x: Local, val, spec: ShardingSpec) -> Local:
    return Local(val, spec, x.shape, x.origin if spec.partial else "")


def _is_prefix(a, b) -> bool:
    return tuple(b[: len(a)]) == tuple(a)


def _even(n: int, axes, sizes) -> bool:
    return n % math.prod(sizes[a] for a in axes) == 0


# ----- step 0: uneven dims whose tiling changes are gathered whole and trimmed ------------------
def _gather_uneven(ctx: Ctx, x: Local, dst: ShardingSpec, why: str) -> Local:
    for d in range(x.rank):
        src_axes, dst_axes = x.spec.dims[d], dst.dims[d]
        if not src_axes or src_axes == dst_axes:
            continue
        if _even(x.shape[d], src_axes, ctx.sizes) and _even(x.shape[d], dst_axes, ctx.sizes):
            continue
        val = coll.all_gather(ctx.rec, x.val, src_axes, d, why + " (uneven dim gathered whole)")
        val = lax.slice_in_dim(val, 0, x.shape[d], axis=d)
        x = _with(x, val, x.spec.with_dim(d, ()))
    return x


# ----- step 1: partial sums -> ReduceScatter where the destination splits, else AllReduce ------
def _reduce_partials(ctx: Ctx, x: Local, dst: ShardingSpec, why: str) -> Local:
    todo = [a for a in x.spec.partial if a not in dst.partial]
    if not todo:
        return x
    why = f"partial sum from {x.origin or 'an earlier op'} reduced for: {why}"
    for d in range(x.rank):
        cur, want = x.spec.dims[d], dst.dims[d]
        if not _is_prefix(cur, want):
            continue
        ext = []
        for a in want[len(cur):]:
            if a not in todo or a in x.spec.used_axes():
                break
            ext.append(a)
        if ext and _even(x.shape[d], want, ctx.sizes):
            val = coll.reduce_scatter(ctx.rec, x.val, tuple(ext), d, why)
            keep = tuple(a for a in x.spec.partial if a not in ext)
            x = _with(x, val, x.spec.with_dim(d, cur + tuple(ext)).with_partial(keep))
            todo = [a for a in todo if a not in ext]
    if todo:
        val = coll.all_reduce(ctx.rec, x.val, tuple(todo), why)
        x = _with(x, val, x.spec.with_partial(tuple(a for a in x.spec.partial if a not in todo)))
    return x


# ----- step 2: remove axes: AllToAll when the axis moves to another dim, else AllGather --------
def _remove_axes(ctx: Ctx, x: Local, dst: ShardingSpec, why: str) -> Local:
    for d in range(x.rank):
        while not _is_prefix(x.spec.dims[d], dst.dims[d]):
            cur = x.spec.dims[d]
            moved = False
            for k in _suffix_starts(cur, dst.dims[d]):  # the longest movable suffix first
                axes = cur[k:]
                d2 = _a2a_target(ctx, x, dst, d, axes)
                if d2 is not None:
                    val = coll.all_to_all(ctx.rec, x.val, axes, d2, d, why)
                    spec = x.spec.with_dim(d, cur[:k]).with_dim(d2, x.spec.dims[d2] + axes)
                    x, moved = _with(x, val, spec), True
                    break
            if not moved:
                x = _gather_suffix(ctx, x, dst, d, why)
    return x


def _suffix_starts(cur, want):
    common = 0
    while common < min(len(cur), len(want)) and cur[common] == want[common]:
        common += 1
    return range(common, len(cur))


def _a2a_target(ctx: Ctx, x: Local, dst: ShardingSpec, d: int, axes):
    k = math.prod(ctx.sizes[a] for a in axes)
    for d2 in range(x.rank):
        cur = x.spec.dims[d2]
        if d2 == d or not _is_prefix(cur + tuple(axes), dst.dims[d2]):
            continue
        if x.val.shape[d2] % k == 0 and _even(x.shape[d2], dst.dims[d2], ctx.sizes):
            return d2
    return None


def _gather_suffix(ctx: Ctx, x: Local, dst: ShardingSpec, d: int, why: str) -> Local:
    cur, want = x.spec.dims[d], dst.dims[d]
    common = 0
    while common < min(len(cur), len(want)) and cur[common] == want[common]:
        common += 1
    axes = cur[common:]
    new = x.spec.with_dim(d, cur[:common])
    full = not new.used_axes() and not new.partial and dst.is_replicated()
    val = coll.all_gather(ctx.rec, x.val, axes, d, why, full=full)
    return _with(x, val, new)


# ----- step 3: add axes by local slicing ------------------------------------------------------
def _add_axes(ctx: Ctx, x: Local, dst: ShardingSpec) -> Local:
    for d in range(x.rank):
        cur, want = x.spec.dims[d], dst.dims[d]
        extra = want[len(cur):]
        if not extra:
            continue
        x = _slice_dim(ctx, x, d, cur, extra)
    return x


def _slice_dim(ctx: Ctx, x: Local, d: int, cur, extra) -> Local:
    new_spec = x.spec.with_dim(d, cur + tuple(extra))
    new_len = new_spec.local_shape(x.shape, ctx.sizes)[d]
    k = math.prod(ctx.sizes[a] for a in extra)
    val = x.val
    if val.shape[d] < new_len * k:
        pad = [(0, 0)] * x.rank
        pad[d] = (0, new_len * k - val.shape[d])
        val = jnp.pad(val, pad)
    start = ctx.shard_index(tuple(extra)) * new_len
    val = lax.dynamic_slice_in_dim(val, start, new_len, axis=d)
    return _with(x, val, new_spec)


def _add_partials(ctx: Ctx, x: Local, dst: ShardingSpec) -> Local:
    new = tuple(a for a in dst.partial if a not in x.spec.partial)
    if not new:
        return x if x.spec.partial == dst.partial else _with(x, x.val, dst)
    first = ctx.shard_index(new) == 0
    val = jnp.where(first, x.val, jnp.zeros_like(x.val))
    return _with(x, val, dst)


# ----- same tiling, another device order: CollectivePermute -----------------------------------
def _permutable(src: ShardingSpec, dst: ShardingSpec, sizes) -> bool:
    if src.partial != dst.partial or set(src.used_axes()) != set(dst.used_axes()):
        return False
    return all(src.tiles(d, sizes) == dst.tiles(d, sizes) for d in range(src.rank))


def _tile_coords(spec: ShardingSpec, coords: dict, sizes) -> tuple[int, ...]:
    out = []
    for axes in spec.dims:
        t = 0
        for a in axes:
            t = t * sizes[a] + coords[a]
        out.append(t)
    return tuple(out)


def permutation(src: ShardingSpec, dst: ShardingSpec, axes, sizes) -> list[tuple[int, int]]:
    """(source device, destination device) pairs, as linear indices over `axes`."""
    owner = {}
    grid = list(itertools.product(*[range(sizes[a]) for a in axes]))
    for lin, c in enumerate(grid):
        owner[_tile_coords(dst, dict(zip(axes, c)), sizes)] = lin
    return [(lin, owner[_tile_coords(src, dict(zip(axes, c)), sizes)]) for lin, c in enumerate(grid)]


def _permute(ctx: Ctx, x: Local, dst: ShardingSpec, why: str) -> Local:
    axes = tuple(a for a in ctx.mesh.names if a in set(x.spec.used_axes()))
    perm = permutation(x.spec, dst, axes, ctx.sizes)
    if x.val.shape != tuple(dst.local_shape(x.shape, ctx.sizes)):  # pragma: no cover - guarded
        raise AssertionError("permute with different local shapes")
    val = coll.collective_permute(ctx.rec, x.val, axes, perm, why)
    return _with(x, val, dst)
