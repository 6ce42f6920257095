"""pad and slice along split dims, one dim at a time, without gathering the operand.

Along a moved dim d the result position p reads operand position q(p) (or the pad value):
- result split over the operand's axes: a halo exchange (`halo.window`) gives each device the
  operand rows its result rows read, then a local pad / strided slice;
- result unsplit, operand split: each device writes the positions it owns (zeros elsewhere, the
  pad value on one device), a partial sum over the operand's axes, reduced lazily;
- otherwise the dim is whole and the op local.
Propagation passes a split through a moved dim whose extent about stays (shifts, small pads);
a slice no bigger than two operand shards is whole where it was cut (the rows a roll wraps).
The operand keeps its split along the moved dims: it is sliced in place, never resharded first.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from ..registry import rule
from ..spec import ShardingSpec, relocate
from ..spmd.shard import Local
from . import halo


def moves(eqn) -> dict[int, tuple]:
    """dim -> (kind, params): ("pad", (lo, hi, interior)) / ("slice", (start, stop, stride))."""
    shape, p = eqn.inputs[0].shape, eqn.params
    if eqn.prim is P.pad_p:
        return {d: ("pad", tuple(int(v) for v in c)) for d, c in enumerate(p["padding_config"])
                if tuple(c) != (0, 0, 0)}
    strides = p["strides"] or (1,) * len(shape)
    out = {}
    for d in range(len(shape)):
        sl = (p["start_indices"][d], p["limit_indices"][d], strides[d])
        if sl != (0, shape[d], 1):
            out[d] = ("slice", sl)
    return out


def _keeps(eqn, d: int) -> bool:
    """A pad keeps a split (a halo serves it); a slice when it keeps at least half the dim."""
    n, m = eqn.inputs[0].shape[d], eqn.outputs[0].shape[d]
    return eqn.prim is P.pad_p or 2 * m >= n


def prop_shift(eqn, ins, outs, mesh):
    mv = moves(eqn)
    whole = [d for d in mv if not _keeps(eqn, d)]
    keep = lambda s: relocate(s, whole, eqn.outputs[0].shape, mesh.sizes)  # noqa: E731
    fwd = keep(ins[0])
    if fwd is not None and whole and _small(eqn, ins[0], mesh):
        fwd = ShardingSpec(tuple(() if d in whole else a for d, a in enumerate(ins[0].dims)))
    return [keep(outs[0])] + [None] * (len(ins) - 1), [fwd]


def _small(eqn, spec, mesh) -> bool:
    """A slice result no bigger than two operand shards stays whole where it was cut (a split
    moved onto another dim costs a reshard of its consumers for little memory)."""
    out = math.prod(eqn.outputs[0].shape)
    return out <= 2 * math.prod(spec.local_shape(eqn.inputs[0].shape, mesh.sizes))


# ----- one dim --------------------------------------------------------------------------------
def _source(kind, prm, p):
    """Operand position read by result positions `p` (an int array), and whether it exists."""
    if kind == "slice":
        start, _, stride = prm
        return start + p * stride, jnp.ones(p.shape, bool)
    lo, _, interior = prm
    k = interior + 1
    off = p - lo
    return off // k, (off % k == 0)


def _halo_slice(ctx, x, d, axes, n, prm, Lo):
    start, _, stride = prm
    w = halo.window(ctx, x, d, axes, n, Lo * stride, start, (Lo - 1) * stride + 1)
    return None if w is None else lax.slice_in_dim(w, 0, w.shape[d], stride, axis=d)


def _halo_pad(ctx, x, d, axes, n, prm, Lo):
    """Result rows [i*Lo, +Lo) of a pad with interior: operand rows from q(i) = ceil((i*Lo -
    lo) / k), dilated, then shifted by where the first of them lands (< k)."""
    lo, _, interior = prm
    k = interior + 1
    first = lambda i: (i * Lo - lo + k - 1) // k  # noqa: E731  (ints and traced ints)
    last = lambda i: ((i + 1) * Lo - 1 - lo) // k  # noqa: E731
    wq = max(1, max(last(i) - first(i) + 1 for i in range(halo.tiles(ctx, axes))))
    w = halo.window_at(ctx, x, d, axes, n, first, wq, end=lambda i: last(i) + 1)
    if w is None:
        return None
    dil = _zero_pad(w, d, (k - 1, k - 1, interior))  # operand row j at k-1 + j*k
    i = ctx.shard_index(axes)
    shift = lo + first(i) * k - i * Lo  # in [0, k)
    return lax.dynamic_slice_in_dim(dil, k - 1 - shift, Lo, axis=d)


def _zero_pad(val, d, cfg_d):
    cfg = [(0, 0, 0)] * val.ndim
    cfg[d] = cfg_d
    return lax.pad(val, jnp.zeros((), val.dtype), cfg)


def _owned(ctx, x, d, axes, n, kind, prm, m):
    """The whole result dim: positions this device's rows feed, zeros elsewhere: a partial sum
    over `axes`."""
    L = x.shape[d]
    q, exists = _source(kind, prm, jnp.arange(m))
    local = q - ctx.shard_index(axes) * L
    mine = exists & (q >= 0) & (q < n) & (local >= 0) & (local < L)
    val = jnp.take(x, jnp.clip(local, 0, L - 1), axis=d)
    shape = [1] * x.ndim
    shape[d] = m
    return jnp.where(mine.reshape(shape), val, jnp.zeros((), x.dtype))


def _move(ctx, x: Local, d: int, kind, prm, want, new_shape) -> Local:
    """pad (with zeros: linear, so partial sums pass) or slice one dim of x."""
    n, m = x.shape[d], new_shape[d]
    axes = x.spec.dims[d]
    spec = x.spec.with_dim(d, want if want == axes else ())
    if axes and want == axes:
        Lo = spec.local_shape(new_shape, ctx.sizes)[d]
        val = (_halo_slice(ctx, x.val, d, axes, n, prm, Lo) if kind == "slice"
               else _halo_pad(ctx, x.val, d, axes, n, prm, Lo))
        if val is not None:
            return Local(val, spec, new_shape, x.origin)
        spec = x.spec.with_dim(d, ())
    if axes:
        val = _owned(ctx, x.val, d, axes, n, kind, prm, m)
        return Local(val, spec.with_partial(spec.partial + ctx.new_partial(axes)), new_shape)
    if kind == "slice":
        start, stop, stride = prm
        return Local(lax.slice_in_dim(x.val, start, stop, stride, axis=d), spec, new_shape, x.origin)
    return Local(_zero_pad(x.val, d, prm), spec, new_shape, x.origin)


def _fill_holes(ctx, x: Local, mv: dict, pv, in_shape) -> Local:
    """Add the pad value where a result position reads no operand element (once per sum)."""
    hole = None
    local = x.val.shape
    for d, (kind, prm) in mv.items():
        if kind != "pad":
            continue
        axes = x.spec.dims[d]
        p = lax.broadcasted_iota(jnp.int32, local, d) + ctx.shard_index(axes) * local[d]
        q, exists = _source(kind, prm, p)
        h = ~(exists & (q >= 0) & (q < in_shape[d]))
        hole = h if hole is None else hole | h
    if hole is None:
        return x
    if x.spec.partial:
        hole = hole & (ctx.shard_index(x.spec.partial) == 0)
    val = jnp.where(hole, pv.astype(x.dtype), x.val)
    return Local(val, x.spec, x.shape, x.origin)


# ----- the rule ---------------------------------------------------------------------------------
@rule([P.pad_p, P.slice_p], prop=prop_shift)
def part_shift(ctx, eqn, ins, targets):
    t, mv = targets[0], moves(eqn)
    x = ins[0]
    # moved dims keep the operand's split (sliced or padded in place, never moved first)
    used = {a for d in mv for a in x.spec.dims[d]}
    dims = [x.spec.dims[d] if d in mv else tuple(a for a in t.dims[d] if a not in used)
            for d in range(x.rank)]
    used |= {a for d in dims for a in d}
    partial = tuple(a for a in x.spec.partial if a not in used)  # pad and slice are linear
    x = ctx.reshard(x, ShardingSpec(tuple(dims), partial), f"{eqn.prim.name} operand")
    shape = list(x.shape)
    for d in sorted(mv):
        kind, prm = mv[d]
        shape[d] = eqn.outputs[0].shape[d]
        x = _move(ctx, x, d, kind, prm, t.dims[d], tuple(shape))
    if eqn.prim is P.pad_p:
        pv = ctx.reshard(ins[1], ShardingSpec.replicated(0), "pad value").val
        x = _fill_holes(ctx, x, mv, pv, eqn.inputs[0].shape)
    return [ctx.reshard(x, t, f"{eqn.prim.name} result")]
