"""The reshard interpreter: executes a plan (`spmd/plan.py`) on this device's shard.

Each step goes through the context's collectives (recorded with its reason); after every step
the local shard has exactly the local shape of the step's spec (gathered uneven dims trimmed).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from ..spec import ShardingSpec
from .shard import Local
from .plan import Step, plan


def reshard(ctx, x: Local, dst: ShardingSpec, reason: str = "") -> Local:
    """x resharded to `dst` through `ctx` (the rule context, spmd.local.Ctx): its collectives,
    mesh sizes and shard index."""
    why = reason or f"{x.spec} -> {dst}"
    for step in plan(x.spec, dst, x.shape, ctx.sizes):
        x = execute(ctx, x, step, why)
    return x


def execute(ctx, x: Local, step: Step, why: str) -> Local:
    assert x.spec == step.before, (x.spec, step.before)
    val = _RUN[step.kind](ctx, x, step, why)
    want = step.after.local_shape(x.shape, ctx.sizes)
    if step.kind == "all_gather" and val.shape[step.dim] != want[step.dim]:
        val = lax.slice_in_dim(val, 0, want[step.dim], axis=step.dim)  # trim the padding
    assert tuple(val.shape) == tuple(want), (step, val.shape, want)
    return Local(val, step.after, x.shape, x.origin if step.after.partial else "")


def _why_partial(x: Local, why: str) -> str:
    return f"partial sum from {x.origin or 'an earlier op'} reduced for: {why}"


def _all_gather(ctx, x, s: Step, why):
    note = " (uneven dim gathered whole)" if s.whole else ""
    return ctx.all_gather(x.val, s.axes, s.dim, why + note, full=s.full, whole=s.whole)


def _all_reduce(ctx, x, s: Step, why):
    return ctx.all_reduce(x.val, s.axes, _why_partial(x, why))


def _reduce_scatter(ctx, x, s: Step, why):
    return ctx.reduce_scatter(_pad_to_tiles(ctx, x, s), s.axes, s.dim, _why_partial(x, why))


def _pad_to_tiles(ctx, x, s: Step):
    """The operand with dim `s.dim` zero-padded to the result's tile length times the tiles."""
    d, val = s.dim, x.val
    want = s.after.local_shape(x.shape, ctx.sizes)[d] * math.prod(ctx.sizes[a] for a in s.axes)
    if val.shape[d] == want:
        return val
    pad = [(0, 0)] * x.rank
    pad[d] = (0, want - val.shape[d])
    return jnp.pad(val, pad)


def _all_to_all(ctx, x, s: Step, why):
    return ctx.all_to_all(x.val, s.axes, s.to_dim, s.dim, why)


def _permute(ctx, x, s: Step, why):
    return ctx.collective_permute(x.val, s.axes, s.perm, why)


def _slice(ctx, x, s: Step, why):
    new_len = s.after.local_shape(x.shape, ctx.sizes)[s.dim]
    start = ctx.shard_index(s.axes) * new_len
    return lax.dynamic_slice_in_dim(_pad_to_tiles(ctx, x, s), start, new_len, axis=s.dim)


def _add_partial(ctx, x, s: Step, why):
    if not s.axes:
        return x.val
    first = ctx.shard_index(s.axes) == 0
    return jnp.where(first, x.val, jnp.zeros_like(x.val))


_RUN = {"all_gather": _all_gather, "all_reduce": _all_reduce, "reduce_scatter": _reduce_scatter,
        "all_to_all": _all_to_all, "collective_permute": _permute, "slice": _slice,
        "add_partial": _add_partial}
