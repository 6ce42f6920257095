"""rev and concatenate along a split dim: shards move (CollectivePermute), nothing is gathered.

rev along a dim split over A (t shards of L rows, n real, pad = t*L - n): every device reverses
its shard and sends it to its mirror device t-1-i, which then holds result rows [i*L - pad, +L);
an uneven dim takes the first `pad` rows of its right neighbour's (a halo) to realign.

concatenate along a dim split over A: result rows [i*Lo, +Lo) read operand k at rows shifted by
its offset o_k: a halo window of an operand split over A (`halo.window_at`), a local take of one
that is whole along the dim; each result row keeps the operand it falls in. Rotations
(jnp.roll) and jnp.pad(mode="wrap") are such concatenates of slices.
Where a halo would reach past MAX_HOPS neighbours the dim is gathered (shape.py's rule).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from ..registry import rule
from ..spmd.shard import Local
from . import halo, iota
from .shape import part_moving


# ----- propagation: a split along the moved dim stays -----------------------------------------
def prop_rev(eqn, ins, outs, mesh):
    return [outs[0]], [ins[0]]


def prop_concat(eqn, ins, outs, mesh):
    """Operands at least half the result keep its split along the concatenated dim (smaller
    ones are whole there: a local take); the result takes the largest operand's split."""
    d = eqn.params["dimension"]
    n = eqn.outputs[0].shape[d]
    big = max(range(len(ins)), key=lambda k: eqn.inputs[k].shape[d])
    fwd = ins[big] if ins[big] is not None else next((s for s in ins if s is not None), None)
    keep = lambda s, x: s if s is None or 2 * x.shape[d] >= n else s.with_dim(d, ())  # noqa: E731
    return [keep(outs[0], x) for x in eqn.inputs], [fwd]


# ----- rev --------------------------------------------------------------------------------------
def _rev_split(ctx, x, d: int, axes, n: int):
    """x reversed along `d`, split over `axes` before and after; None if the realigning halo
    would be too wide."""
    L, t = x.shape[d], halo.tiles(ctx, axes)
    pad = t * L - n
    y = ctx.collective_permute(lax.rev(x, (d,)), axes, [(j, t - 1 - j) for j in range(t)],
                               "rev: each shard reversed to its mirror device")
    if pad == 0:
        return y
    # y on device i: result rows [i*L - pad, +L), i.e. positions [i*L, +L) of the result
    # shifted right by pad; the own rows are positions [i*L + pad, +L) of that
    return halo.window_at(ctx, y, d, axes, t * L, lambda i: i * L + pad, L)


@rule(P.rev_p, prop=prop_rev)
def part_rev(ctx, eqn, ins, targets):
    want = targets[0].drop_partial()
    x = ctx.reshard(ins[0], want, "rev operand")
    val = x.val
    for d in eqn.params["dimensions"]:
        axes = want.dims[d]
        y = _rev_split(ctx, val, d, axes, x.shape[d]) if axes else lax.rev(val, (d,))
        if y is None:
            return part_moving(ctx, eqn, ins, targets)
        val = y
    return [Local(val, want, x.shape)]


# ----- concatenate ------------------------------------------------------------------------------
@rule(P.concatenate_p, prop=prop_concat)
def part_concat(ctx, eqn, ins, targets):
    iota.note(eqn)
    d, want = eqn.params["dimension"], targets[0].drop_partial()
    axes = want.dims[d]
    if not axes:
        return part_moving(ctx, eqn, ins, targets)
    Lo = want.local_shape(eqn.outputs[0].shape, ctx.sizes)[d]
    i = ctx.shard_index(axes)
    pos = jnp.arange(Lo) + i * Lo  # the result rows of this device
    out, off = None, 0
    for x in ins:
        if x.shape[d] == 0:  # an empty operand adds no rows
            continue
        rows = _rows_of(ctx, x, d, axes, want, Lo, off)
        if rows is None:
            return part_moving(ctx, eqn, ins, targets)
        shape = [1] * x.rank
        shape[d] = Lo
        inside = ((pos >= off) & (pos < off + x.shape[d])).reshape(shape)
        out = rows if out is None else jnp.where(inside, rows, out)
        off += x.shape[d]
    return [Local(out, want, eqn.outputs[0].shape)]


def _rows_of(ctx, x: Local, d: int, axes, want, Lo: int, off: int):
    """Operand rows [i*Lo - off, +Lo) along d (anything outside the operand): a halo window when
    it is split over `axes` (cheaper than whole), else a local take."""
    split, whole = want.with_dim(d, axes), want.with_dim(d, ())
    if x.spec.drop_partial() == split or ctx.cost(x, split) < ctx.cost(x, whole):
        x = ctx.reshard(x, split, "concatenate operand keeps its split")
        w = halo.window_at(ctx, x.val, d, axes, x.shape[d], lambda i: i * Lo - off, Lo)
        if w is not None:
            return w
    x = ctx.reshard(x, whole, "concatenate operand whole along the concatenated dim")
    n = x.shape[d]
    q = jnp.arange(Lo) + ctx.shard_index(axes) * Lo - off
    return jnp.take(x.val, jnp.clip(q, 0, n - 1), axis=d)
