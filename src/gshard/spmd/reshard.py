"""The reshard interpreter: executes a plan (`spmd/plan.py`) on this device's shard.

Each step goes through the context's collectives (recorded with its reason); after every step
the local shard has exactly the local shape of the step's spec (a dim gathered whole trimmed,
misaligned uneven blocks realigned by the step's halo exchanges: `spmd/halo.py`).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from ..spec import ShardingSpec
from .halo import realign
from .plan import Step, plan
from .plan_permute import free_axes
from .shard import Local


def reshard(ctx, x: Local, dst: ShardingSpec, reason: str = "") -> Local:
    """x resharded to `dst` through `ctx` (the rule context, spmd.local.Ctx): its collectives,
    mesh sizes and shard index."""
    why = reason or f"{x.spec} -> {dst}"
    for step in plan(x.spec, dst, x.shape, ctx.sizes):
        x = execute(ctx, x, step, why)
    return x


def execute(ctx, x: Local, step: Step, why: str) -> Local:
    assert x.spec == step.before, (x.spec, step.before)
    val = realign(ctx, x.val, step.pre, why) if step.pre else x.val
    val = _RUN[step.kind](ctx, x, val, step, why)
    want = step.after.local_shape(x.shape, ctx.sizes)
    keep = list(want)
    if step.post:   # trim the dims joined whole first: the halo carries only real columns
        keep[step.post.dim] = val.shape[step.post.dim]
    if tuple(val.shape) != tuple(keep):
        val = lax.slice(val, (0,) * val.ndim, keep)
    if step.post:
        val = realign(ctx, val, step.post, why)
    assert tuple(val.shape) == tuple(want), (step, val.shape, want)
    return Local(val, step.after, x.shape, x.origin if step.after.partial else "")


def _why_partial(x: Local, why: str) -> str:
    return f"partial sum from {x.origin or 'an earlier op'} reduced for: {why}"


def _all_gather(ctx, x, val, s: Step, why):
    note = " (uneven dim gathered whole)" if s.whole else ""
    return ctx.all_gather(val, s.axes, s.dim, why + note, full=s.full, whole=s.whole)


def _all_reduce(ctx, x, val, s: Step, why):
    if s.dim >= 0:
        return _gather_by_sum(ctx, x, val, s, why)
    return ctx.all_reduce(val, s.axes, _why_partial(x, why))


def _gather_by_sum(ctx, x, val, s: Step, why):
    """An uneven dim gathered whole as a sum: this tile's rows written at their place in zeros
    of the real length plus one block (rows past the end fall into the block, cut off), summed
    over the tiles. Moves the real length, not the padded one."""
    d, block, n = s.dim, val.shape[s.dim], x.shape[s.dim]
    buf = jnp.zeros(val.shape[:d] + (n + block,) + val.shape[d + 1:], val.dtype)
    start = jnp.minimum(ctx.shard_index(s.axes) * block, n)
    buf = lax.dynamic_update_slice_in_dim(buf, val, start, axis=d)
    why = f"{why} (uneven dim {d} gathered as a sum: {n} rows, not {block} per tile)"
    return ctx.all_reduce(lax.slice_in_dim(buf, 0, n, axis=d), s.axes, why, full=s.full)


def _reduce_scatter(ctx, x, val, s: Step, why):
    return ctx.reduce_scatter(_pad_to_tiles(ctx, x, val, s, s.dim), s.axes, s.dim,
                              _why_partial(x, why))


def _pad_to_tiles(ctx, x, val, s: Step, d: int):
    """val with dim `d` zero-padded to the result's tile length times the step's tiles."""
    want = s.after.local_shape(x.shape, ctx.sizes)[d] * math.prod(ctx.sizes[a] for a in s.axes)
    if val.shape[d] == want:
        return val
    pad = [(0, 0)] * x.rank
    pad[d] = (0, want - val.shape[d])
    return jnp.pad(val, pad)


def _all_to_all(ctx, x, val, s: Step, why):
    return ctx.all_to_all(_pad_to_tiles(ctx, x, val, s, s.to_dim), s.axes, s.to_dim, s.dim, why)


def _permute(ctx, x, val, s: Step, why):
    if s.merge:
        return _join(ctx, val, s, why)
    if s.sub:
        val = _my_piece(ctx, x, val, s)
    return ctx.collective_permute(val, s.axes, s.perm, why)


def _my_piece(ctx, x, val, s: Step):
    """The piece of this device's source tile it sends (`spmd/plan_permute.py`): piece
    f // R of its tile, f its index over the axes its spec leaves unused, R the destination's
    replicas; per dim a mixed-radix digit of the piece, in units of the destination tile."""
    want = s.after.local_shape(x.shape, ctx.sizes)
    pad = [(0, w * r - n) for w, r, n in zip(want, s.sub, val.shape)]
    if any(p for _, p in pad):  # a dim whose one tile holds the data: padded to whole pieces
        val = jnp.pad(val, pad)
    reps = math.prod(ctx.sizes[a] for a in free_axes(s.after, s.axes))
    piece = ctx.shard_index(free_axes(s.before, s.axes)) // reps
    starts = [None] * x.rank
    for d in reversed(range(x.rank)):
        piece, digit = jnp.divmod(piece, s.sub[d])
        starts[d] = digit * want[d]
    return lax.dynamic_slice(val, starts, want)


def _join(ctx, val, s: Step, why):
    """This device's destination tile from its pieces, one CollectivePermute round each
    (`spmd/plan_merge.py`): piece q arrived in round (q - rho) mod R."""
    total, rank = len(s.rounds), val.ndim
    got = jnp.stack([ctx.collective_permute(val, s.axes, p, why) for p in s.rounds])
    rho = ctx.shard_index(free_axes(s.after, s.axes))
    pieces = jnp.take(got, (jnp.arange(total) - rho) % total, axis=0)
    grid = pieces.reshape(tuple(s.merge) + tuple(val.shape))  # piece digits, then the piece
    grid = grid.transpose([i for d in range(rank) for i in (d, rank + d)])
    return grid.reshape([r * n for r, n in zip(s.merge, val.shape)])


def _slice(ctx, x, val, s: Step, why):
    new_len = s.after.local_shape(x.shape, ctx.sizes)[s.dim]
    start = ctx.shard_index(s.axes) * new_len
    return lax.dynamic_slice_in_dim(_pad_to_tiles(ctx, x, val, s, s.dim), start, new_len, axis=s.dim)


def _add_partial(ctx, x, val, s: Step, why):
    if not s.axes:
        return val
    first = ctx.shard_index(s.axes) == 0
    return jnp.where(first, val, jnp.zeros_like(val))


_RUN = {"all_gather": _all_gather, "all_reduce": _all_reduce, "reduce_scatter": _reduce_scatter,
        "all_to_all": _all_to_all, "collective_permute": _permute, "slice": _slice,
        "add_partial": _add_partial}
