"""Reductions (sum/max/min/prod/and/or, argmax/argmin) and prefix ops (cumsum & co.).

A reduction over a split dim reduces locally (padding masked with the identity) and then across
shards: sums stay partial (reduced lazily), max/min reduce at once. Prefix ops over a split dim
run the local scan and add the carry of the shards before (or after, for reverse) this one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from ..spmd.shard import Local
from ..registry import rule
from ..spec import ShardingSpec

REDUCE = [P.reduce_sum_p, P.reduce_max_p, P.reduce_min_p, P.reduce_prod_p, P.reduce_and_p,
          P.reduce_or_p, P.argmax_p, P.argmin_p]
CUMULATIVE = [P.cumsum_p, P.cumprod_p, P.cummax_p, P.cummin_p, P.cumlogsumexp_p]


def _insert(spec: ShardingSpec | None, axes, rank) -> ShardingSpec | None:
    if spec is None:
        return None
    it = iter(spec.dims)
    return ShardingSpec(tuple(() if d in axes else next(it) for d in range(rank)))


def prop_reduce(eqn, ins, outs, mesh):
    axes = set(eqn.params["axes"])
    fwd = ins[0].drop_dims(axes).drop_partial() if ins[0] is not None else None
    return [_insert(outs[0], axes, len(eqn.inputs[0].shape))], [fwd]


def prop_same(eqn, ins, outs, mesh):
    return [outs[0]], [ins[0]]


def _identity(name, dtype):
    if name in ("sum", "or", "argmin_dummy"):
        return jnp.zeros((), dtype)
    if name in ("prod", "and"):
        return jnp.ones((), dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.array(-jnp.inf if name in ("max", "logsumexp") else jnp.inf, dtype)
    info = jnp.iinfo(dtype) if dtype != jnp.bool_ else None
    if info is None:
        return jnp.array(name == "min", dtype)
    return jnp.array(info.min if name == "max" else info.max, dtype)


def _operand(ctx, x: Local, axes, target: ShardingSpec, keep_partial: bool) -> Local:
    """Reshard x: reduced dims keep their current split (the reduction consumes it, leaving a
    partial sum or a cross-shard reduce of the small result), kept dims take the target's axes
    but those the reduced dims already use (moving an axis off a reduced dim would regather the
    big operand)."""
    reduced = {a for d in axes for a in x.spec.dims[d]}
    it, dims = iter(target.dims), []
    for d in range(x.rank):
        dims.append(x.spec.dims[d] if d in axes else
                    tuple(a for a in next(it) if a not in reduced))
    used = {a for d in dims for a in d}
    partial = x.spec.partial if keep_partial and not set(x.spec.partial) & used else ()
    return ctx.reshard(x, ShardingSpec(tuple(dims), partial), "reduction operand")


def _kept(x: Local, axes) -> ShardingSpec:
    """The result's spec: x's spec without the reduced dims."""
    return ShardingSpec(tuple(a for d, a in enumerate(x.spec.dims) if d not in axes))


def _reduced_axes(x: Local, axes):
    return tuple(a for d in axes for a in x.spec.dims[d])


@rule([P.reduce_sum_p, P.reduce_max_p, P.reduce_min_p, P.reduce_prod_p,
       P.reduce_and_p, P.reduce_or_p], prop=prop_reduce)
def part_reduce(ctx, eqn, ins, targets):
    name = eqn.prim.name.split("_")[1]
    axes = tuple(eqn.params["axes"])
    x = _operand(ctx, ins[0], axes, targets[0], keep_partial=name == "sum")
    x = ctx.masked(x, axes, _identity(name, x.dtype))
    val = eqn.prim.bind(x.val, **eqn.params)
    split, spec = _reduced_axes(x, axes), _kept(x, axes)
    if name == "sum":
        return [Local(val, spec.with_partial(x.spec.partial + ctx.new_partial(split)),
                      eqn.outputs[0].shape)]
    if split:
        val = _cross_reduce(ctx, val, split, name)
    out = Local(val, spec, eqn.outputs[0].shape)
    return [ctx.reshard(out, targets[0], f"reduce_{name} result")]


def _cross_reduce(ctx, val, axes, name):
    why = f"reduce_{name} over a split dim"
    if name in ("max", "or", "min", "and"):
        best, _ = _nan_aware(ctx, val, axes, "max" if name in ("max", "or") else "min", why)
        return best
    parts = ctx.all_gather(val[None], axes, 0, why)  # [k, ...] one per shard
    return jnp.prod(parts, axis=0).astype(val.dtype)


def _nan_aware(ctx, val, axes, op: str, why: str):
    """(max or min over `axes`, whether any shard held a NaN): a NaN anywhere wins, as in
    jnp.max / jnp.min. One collective: the values and their NaN flags side by side."""
    if not jnp.issubdtype(val.dtype, jnp.floating):
        return ctx.all_reduce(val, axes, why, op=op), None
    sign = 1 if op == "max" else -1
    flag = jnp.isnan(val).astype(val.dtype) * sign
    both = ctx.all_reduce(jnp.stack([val, flag]), axes, why + " (with NaN flags)", op=op)  # [2, ...]
    nan = both[1] * sign > 0
    return jnp.where(nan, jnp.asarray(jnp.nan, val.dtype), both[0]), nan


@rule([P.argmax_p, P.argmin_p], prop=prop_reduce)
def part_argminmax(ctx, eqn, ins, targets):
    (axis,) = eqn.params["axes"]
    is_max = eqn.prim is P.argmax_p
    x = _operand(ctx, ins[0], (axis,), targets[0], keep_partial=False)
    x = ctx.masked(x, (axis,), _identity("max" if is_max else "min", x.dtype))
    idx = eqn.prim.bind(x.val, **eqn.params)
    split = x.spec.dims[axis]
    if split:
        val = jnp.take_along_axis(x.val, jnp.expand_dims(idx, axis), axis=axis).squeeze(axis)
        gidx = idx + (ctx.shard_index(split) * x.val.shape[axis]).astype(idx.dtype)
        best, nan = _nan_aware(ctx, val, split, "max" if is_max else "min", "arg-reduction value")
        win = (val == best) if nan is None else jnp.where(nan, jnp.isnan(val), val == best)
        big = jnp.iinfo(idx.dtype).max
        idx = ctx.all_reduce(jnp.where(win, gidx, big), split,
                             "arg-reduction index (first of the best)", op="min")
    out = Local(idx, _kept(x, (axis,)), eqn.outputs[0].shape)
    return [ctx.reshard(out, targets[0], "arg-reduction result")]


_COMBINE = {"cumsum": jnp.add, "cumprod": jnp.multiply, "cummax": jnp.maximum,
            "cumlogsumexp": jnp.logaddexp, "cummin": jnp.minimum}
_FOLD = {"cumsum": jnp.sum, "cumprod": jnp.prod, "cummax": jnp.max, "cummin": jnp.min,
         "cumlogsumexp": lambda v, axis: jax.nn.logsumexp(v, axis=axis)}
_IDENT = {"cumsum": "sum", "cumprod": "prod", "cummax": "max", "cummin": "min",
          "cumlogsumexp": "logsumexp"}


@rule(CUMULATIVE, prop=prop_same)
def part_cumulative(ctx, eqn, ins, targets):
    name, axis, reverse = eqn.prim.name, eqn.params["axis"], eqn.params["reverse"]
    x = ctx.reshard(ins[0], targets[0], "prefix-op operand")
    split = x.spec.dims[axis]
    x = ctx.masked(x, (axis,), _identity(_IDENT[name], x.dtype))
    val = eqn.prim.bind(x.val, **eqn.params)
    if split:
        val = _carry(ctx, val, axis, reverse, split, name)
    return [Local(val, x.spec, eqn.outputs[0].shape)]


def _carry(ctx, val, axis, reverse, split, name):
    """Combine each shard's local scan with the totals of the shards before it."""
    total = lax.index_in_dim(val, 0 if reverse else val.shape[axis] - 1, axis, keepdims=True)
    totals = ctx.all_gather(total[None], split, 0, f"{name} carry across shards")
    me = ctx.shard_index(split)
    j = lax.broadcasted_iota(jnp.int32, totals.shape, 0)
    before = (j > me) if reverse else (j < me)
    ident = _identity(_IDENT[name], val.dtype)
    contrib = jnp.where(before, totals, ident)
    carry = _FOLD[name](contrib, axis=0)
    return _COMBINE[name](val, carry.astype(val.dtype))
