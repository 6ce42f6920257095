"""Gather (jnp.take, x[idx], embedding lookups), dynamic_slice, sort, top_k.

Gather: the operand's indexed dims are made whole (an AllGather where they were split, reported),
except a table split along the one dim it is looked up in (a masked local lookup, a partial sum);
window dims taken whole keep their split; the result's batch dims follow the indices' sharding, so
a batch-split lookup from a replicated table is local. Index columns that are an iota
(x[jnp.arange(B), labels]) are batching dims (rules/iota.py): operand and indices split alike.
Sort / top_k along a split dim: the split moves onto another dim (an AllToAll each way, padded
shards for an uneven dim), never a gather. dynamic_update_slice: rules/dus.py.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.lax import GatherScatterMode
from jax.extend.core import primitives as P

from ..compat import primitive
from ..registry import rule
from ..spec import ShardingSpec, merge, relocate
from ..spmd.shard import Local
from . import iota


def _non_window(rank: int, window) -> list[int]:
    """The dims of a gather result / scatter updates that are not slice-window dims."""
    return [d for d in range(rank) if d not in set(window)]


def _gather_batch_dims(eqn) -> list[int]:
    return _non_window(len(eqn.outputs[0].shape), eqn.params["dimension_numbers"].offset_dims)


def gather_passthrough(eqn) -> list[tuple[int, int]]:
    """(operand dim, result dim) pairs of window dims the gather takes whole and never indexes:
    a split there stays a split (x[:, i] of a batch-split x)."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape = eqn.inputs[0].shape
    window = [d for d in range(len(shape)) if d not in dn.collapsed_slice_dims
              and d not in dn.operand_batching_dims]
    return [(d, o) for d, o in zip(window, dn.offset_dims)
            if sizes[d] == shape[d] and d not in dn.start_index_map]


def prop_gather(eqn, ins, outs, mesh):
    batch = _gather_batch_dims(eqn)
    idx_rank = len(eqn.inputs[1].shape)
    fwd = op = idx = None
    out_rank, op_rank = len(eqn.outputs[0].shape), len(eqn.inputs[0].shape)
    if ins[1] is not None or ins[0] is not None:
        dims = [()] * out_rank
        for k, d in enumerate(batch):
            dims[d] = ins[1].dims[k] if ins[1] is not None else ()
        for od, o in gather_passthrough(eqn):
            dims[o] = ins[0].dims[od] if ins[0] is not None else ()
        fwd = ShardingSpec(tuple(dims))
    if outs[0] is not None:
        dims = [outs[0].dims[d] for d in batch] + [()]
        idx = ShardingSpec(tuple(dims[:idx_rank]))
        pt = [()] * op_rank
        for od, o in gather_passthrough(eqn):
            pt[od] = outs[0].dims[o]
        op = ShardingSpec(tuple(pt)) if any(pt) else None
    return [op, idx], [fwd]


@rule(P.gather_p, prop=prop_gather)
def part_gather(ctx, eqn, ins, targets):
    operand, indices = ins
    parallel = iota.as_batching(eqn)
    if parallel is not None:  # iota columns of the indices: batching dims
        eqn, keep = parallel
        cols = jnp.take(indices.val, jnp.asarray(keep), axis=-1)
        indices = Local(cols, indices.spec, eqn.inputs[1].shape)
    batch = _gather_batch_dims(eqn)
    t = targets[0]
    d = split_lookup_dim(eqn, operand)
    if d is not None:  # a vocabulary-split table: no gather of the table
        return [split_lookup(ctx, eqn, operand, indices, d, t)]
    idx_dims = [t.dims[d] for d in batch] + [()]
    idx_spec = ShardingSpec(tuple(idx_dims[:indices.rank]))
    dn = eqn.params["dimension_numbers"]
    op_spec = _batched(operand.rank, dn.operand_batching_dims, dn.start_indices_batching_dims, idx_spec)
    out_dims = [t.dims[d] if d in batch else () for d in range(len(t.dims))]
    for od, o in gather_passthrough(eqn):  # whole-window dims keep the result's split
        if t.dims[o] and not set(t.dims[o]) & set(op_spec.used_axes()):
            op_spec, out_dims[o] = op_spec.with_dim(od, t.dims[o]), t.dims[o]
    operand = ctx.reshard(operand, op_spec, "gather needs the indexed dims of its operand whole")
    indices = ctx.reshard(indices, idx_spec, "gather indices")
    params = dict(eqn.params, slice_sizes=tuple(
        operand.val.shape[d] if (d, o) in gather_passthrough(eqn) else n
        for d, (n, o) in enumerate(zip(eqn.params["slice_sizes"], _offsets(eqn)))))
    val = eqn.prim.bind(operand.val, indices.val, **params)
    out = Local(val, ShardingSpec(tuple(out_dims)), eqn.outputs[0].shape)
    return [ctx.reshard(out, t, "gather result to its propagated spec")]


def _offsets(eqn) -> list:
    """The result dim of each operand dim's window (None for collapsed / batching dims)."""
    dn = eqn.params["dimension_numbers"]
    shape = eqn.inputs[0].shape
    window = [d for d in range(len(shape)) if d not in dn.collapsed_slice_dims
              and d not in dn.operand_batching_dims]
    out = [None] * len(shape)
    for d, o in zip(window, dn.offset_dims):
        out[d] = o
    return out


def _batched(rank, operand_dims, index_dims, idx_spec: ShardingSpec) -> ShardingSpec:
    """Operand spec: batching dims split like their indices' dims, the rest whole."""
    dims = [()] * rank
    for od, idd in zip(operand_dims, index_dims):
        dims[od] = idx_spec.dims[idd]
    return ShardingSpec(tuple(dims))


# ----- vocabulary-split lookups: masked local gather + a partial sum --------------------------
def split_lookup_dim(eqn, operand: Local):
    """The indexed operand dim when a gather reads single rows of a table split along it."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    if len(dn.start_index_map) != 1 or dn.operand_batching_dims:
        return None
    d = dn.start_index_map[0]
    if d not in dn.collapsed_slice_dims or sizes[d] != 1 or not operand.spec.dims[d]:
        return None
    return d


def split_lookup(ctx, eqn, operand: Local, indices: Local, d: int, target) -> Local:
    """Lookup from a table split on dim `d` over axes A: the ids (and so the result's batch dims)
    are replicated over A, each device looks up the rows it holds, and the result is a partial
    sum over A (reduced lazily; a ReduceScatter when the consumer splits it over A)."""
    axes = operand.spec.dims[d]
    batch = _gather_batch_dims(eqn)
    dims = [tuple(a for a in target.dims[i] if a not in axes) if i in batch else ()
            for i in range(len(target.dims))]
    idx_dims = [dims[i] for i in batch] + [()]
    indices = ctx.reshard(indices, ShardingSpec(tuple(idx_dims[:indices.rank])), "lookup ids")
    val = masked_lookup(ctx, eqn, operand, indices, d)
    out = Local(val, ShardingSpec(tuple(dims), ctx.new_partial(axes)), eqn.outputs[0].shape)
    keep = target.with_partial(axes) if not set(axes) & set(target.used_axes()) else target
    return ctx.reshard(out, keep, "lookup result (a partial sum over the table's split)")


def masked_lookup(ctx, eqn, operand: Local, indices: Local, d: int):
    """Each device looks up the rows of dim `d` it holds; others read as zero. Out-of-range ids
    follow the gather's mode: clipped, or the fill value (counted on one device of the split)."""
    axes = operand.spec.dims[d]
    operand = ctx.reshard(operand, ShardingSpec.replicated(operand.rank).with_dim(d, axes),
                          "lookup table keeps its split")
    L, n = operand.val.shape[d], operand.shape[d]
    ids, mode = indices.val, eqn.params["mode"]
    fill = mode == GatherScatterMode.FILL_OR_DROP
    if not fill:  # CLIP / PROMISE_IN_BOUNDS: an out-of-range id reads the nearest row
        ids = jnp.clip(ids, 0, n - 1)
    local = ids - (ctx.shard_index(axes) * L).astype(ids.dtype)
    val = eqn.prim.bind(operand.val, jnp.clip(local, 0, L - 1), **eqn.params)
    batch = _gather_batch_dims(eqn)
    expand = [i for i in range(val.ndim) if i not in batch]
    ok = (local >= 0) & (local < L) & (ids >= 0) & (ids < n)  # never a padding row
    mine = jnp.expand_dims(jnp.all(ok, axis=-1), expand)
    val = jnp.where(mine, val, jnp.zeros_like(val))
    if fill:
        oob = jnp.expand_dims(jnp.any((ids < 0) | (ids >= n), axis=-1), expand)
        first = ctx.shard_index(axes) == 0
        val = jnp.where(oob & first, _fill_value(eqn, val.dtype), val)
    return val


def _fill_value(eqn, dtype):
    v = eqn.params.get("fill_value")
    if v is not None:
        return jnp.asarray(v, dtype)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.asarray(jnp.nan, dtype)
    if dtype == jnp.bool_:
        return jnp.asarray(True)
    info = jnp.iinfo(dtype)
    return jnp.asarray(info.min if jnp.issubdtype(dtype, jnp.signedinteger) else info.max, dtype)


# ----- dynamic_slice: sliced dims whole, full-extent dims pass --------------------------------
def _full_dims(eqn) -> list[bool]:
    return [n == s for n, s in zip(eqn.inputs[0].shape, _window(eqn))]


def _window(eqn) -> tuple:
    if eqn.prim is P.dynamic_slice_p:
        return tuple(eqn.params["slice_sizes"])
    return tuple(eqn.inputs[1].shape)


def _clamped(starts, shape, window, full) -> list:
    """Start indices clamped into range here, as XLA would: the emitted program never relies on
    XLA's clamp (XLA:CPU folds a dynamic_slice of a dynamic_slice with the wrong bound)."""
    out = []
    for s, n, w, f in zip(starts, shape, window, full):
        out.append(jnp.zeros_like(s) if f else jnp.clip(s, 0, n - w).astype(s.dtype))
    return out


def _keep(spec, full):
    return None if spec is None else ShardingSpec(tuple(a if f else () for a, f in zip(spec.dims, full)))


def prop_dynamic(eqn, ins, outs, mesh):
    full = _full_dims(eqn)
    sliced = [d for d, f in enumerate(full) if not f]
    keep = lambda s: relocate(s, sliced, eqn.inputs[0].shape, mesh.sizes)  # noqa: E731
    return [keep(outs[0])] + [None] * (len(ins) - 1), [keep(ins[0])]


@rule(P.dynamic_slice_p, prop=prop_dynamic)  # dynamic_update_slice: rules/dus.py
def part_dynamic(ctx, eqn, ins, targets):
    full = _full_dims(eqn)
    want = _keep(targets[0], full)
    x = ctx.reshard(ins[0], want, f"{eqn.prim.name}: sliced dims whole")
    starts = [ctx.reshard(s, ShardingSpec.replicated(0), "slice start").val for s in ins[1:]]
    starts = _clamped(starts, eqn.inputs[0].shape, _window(eqn), full)
    local = want.local_shape(eqn.outputs[0].shape, ctx.sizes)
    val = eqn.prim.bind(x.val, *starts, **dict(eqn.params, slice_sizes=tuple(local)))
    return [ctx.reshard(Local(val, want, eqn.outputs[0].shape), targets[0], "slice result")]


# ----- sort, top_k, split: the dim they work along is whole -----------------------------------
SPLIT = primitive("split")


def _along(eqn) -> int:
    if eqn.prim is P.sort_p:
        return eqn.params["dimension"]
    if eqn.prim is P.top_k_p:
        return len(eqn.inputs[0].shape) - 1
    return eqn.params["axis"]


def prop_along(eqn, ins, outs, mesh):
    d = _along(eqn)
    merged = None
    for s in list(ins) + list(outs):
        merged = merge(merged, s)
    merged = relocate(merged, [d], eqn.inputs[0].shape, mesh.sizes)  # split moves, not lost
    return [merged] * len(ins), [merged] * len(eqn.outputs)


ALONG = [p for p in (P.sort_p, P.top_k_p, SPLIT) if p is not None]


@rule(ALONG, prop=prop_along)
def part_along(ctx, eqn, ins, targets):
    d = _along(eqn)
    split = [s.drop_partial() for s in list(targets) + [x.spec for x in ins] if s.dims[d]]
    t = split[0] if split else targets[0].drop_partial()
    # the dim sorted along whole, its split moved onto another dim (AllToAlls, not a gather)
    want = relocate(t, [d], eqn.inputs[0].shape, ctx.sizes)
    m = _swap_dim(ctx, t, want, d, eqn.inputs[0].shape)
    why = f"{eqn.prim.name} needs dim {d} whole"
    vals = [_swap_in(ctx, x, d, m) if m is not None and x.spec.drop_partial() == t
            else ctx.reshard(x, want, why).val for x in ins]
    outs = eqn.prim.bind(*vals, **eqn.params)
    outs = outs if eqn.prim.multiple_results else [outs]
    res = [Local(v, want, o.shape) for v, o in zip(outs, eqn.outputs)]
    if m is not None:
        res = [_swap_out(ctx, r, t, d, m) if t2.drop_partial() == t else r
               for r, t2 in zip(res, targets)]
    return [ctx.reshard(r, t2, f"{eqn.prim.name} result") for r, t2 in zip(res, targets)]


def _swap_dim(ctx, t, want, d: int, shape):
    """The dim m an uneven split of dim d moved to whole (one AllToAll of padded shards each
    way), or None (the reshard planner moves it)."""
    axes = t.dims[d]
    if not axes or shape[d] % t.tiles(d, ctx.sizes) == 0:
        return None
    m = [k for k in range(len(shape)) if want.dims[k] != t.dims[k] and k != d]
    if len(m) != 1 or want.dims[m[0]] != t.dims[m[0]] + axes:
        return None
    return m[0]


def _swap_in(ctx, x: Local, d: int, m: int):
    """x split unevenly along d -> whole along d (n rows), split along m as well."""
    axes = x.spec.dims[d]
    val = ctx.all_to_all(x.val, axes, m, d, f"dim {d} whole, its split onto dim {m}")
    return lax.slice_in_dim(val, 0, x.shape[d], axis=d)  # [t*L] -> [n] rows: padding last


def _swap_out(ctx, r: Local, t, d: int, m: int) -> Local:
    axes = t.dims[d]
    L = t.local_shape(r.shape, ctx.sizes)[d]
    pad = [(0, 0, 0)] * r.rank
    pad[d] = (0, L * t.tiles(d, ctx.sizes) - r.shape[d], 0)  # [n] -> [t*L] rows
    val = lax.pad(r.val, jnp.zeros((), r.dtype), pad)
    val = ctx.all_to_all(val, axes, d, m, f"dim {m}'s split back onto dim {d}")
    return Local(val, t, r.shape)
