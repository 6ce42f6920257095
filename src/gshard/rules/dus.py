"""dynamic_update_slice with the operand split along the dims it updates: the owning shards
update, nothing is gathered.

The update (small: at most the operand) is made whole along its sliced dims; each device reads
the update rows its own positions [i*L, +L) of a split dim hold, `take(u, p - start)`, and keeps
its own rows where p - start falls outside the update. Dims updated but not split take an
ordinary local dynamic_update_slice at the same time.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.shard import Local
from .indexing import _clamped, _full_dims, _window


def prop_dus(eqn, ins, outs, mesh):
    """The operand and result keep their split everywhere; the update is whole along the dims
    it is written along (other dims as the result)."""
    full = _full_dims(eqn)
    whole = lambda s: None if s is None else ShardingSpec(  # noqa: E731
        tuple(a if f else () for a, f in zip(s.dims, full)))
    src = outs[0] if outs[0] is not None else ins[0]
    return [outs[0], whole(src)] + [None] * (len(ins) - 2), [ins[0]]


@rule(P.dynamic_update_slice_p, prop=prop_dus)
def part_dus(ctx, eqn, ins, targets):
    full = _full_dims(eqn)
    want = targets[0].drop_partial()
    x = ctx.reshard(ins[0], want, "dynamic_update_slice operand")
    upd_spec = ShardingSpec(tuple(a if f else () for a, f in zip(want.dims, full)))
    u = ctx.reshard(ins[1], upd_spec, "dynamic_update_slice update, whole along its sliced dims")
    starts = [ctx.reshard(s, ShardingSpec.replicated(0), "update start").val for s in ins[2:]]
    starts = _clamped(starts, eqn.inputs[0].shape, _window(eqn), full)
    split = [d for d, f in enumerate(full) if not f and want.dims[d]]
    return [Local(_owned_update(ctx, x.val, u.val, starts, split, want), want, x.shape)]


def _owned_update(ctx, x, u, starts, split, want):
    """This device's rows of x with the update written where its positions fall inside it."""
    mask = None
    for d in split:
        L, w = x.shape[d], u.shape[d]
        p = jnp.arange(L) + ctx.shard_index(want.dims[d]) * L
        k = p - starts[d].astype(p.dtype)  # the update row each local row would read
        u = jnp.take(u, jnp.clip(k, 0, w - 1), axis=d)  # [.., w, ..] -> [.., L, ..] along d
        shape = [1] * x.ndim
        shape[d] = L
        inside = ((k >= 0) & (k < w)).reshape(shape)
        mask = inside if mask is None else mask & inside
    at = [jnp.zeros_like(s) if d in split else s for d, s in enumerate(starts)]
    if mask is None:
        return lax.dynamic_update_slice(x, u, at)
    old = lax.dynamic_slice(x, at, u.shape)
    return lax.dynamic_update_slice(x, jnp.where(mask, u, old), at)
