"""Shape ops: reshape/squeeze, transpose, broadcast_in_dim, concatenate, slice, pad, rev, iota.

Reshape: a sharding survives a group of merged/split dims iff only the most-major dim of the
group is split and the split count divides it ([8,16] split on dim 0 -> [128] ok; split on dim 1
-> not representable -> reshard). Ops that move data along a split dim shift shards instead:
slice and pad in rules/shift.py, concatenate and rev in rules/rotate.py (`part_moving` here, with
the moved dims whole, is their fallback).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from ..spmd.plan import reshard_cost
from ..spmd.plan_uneven import Infeasible, halo_elems, shift
from ..spmd.shard import Local
from ..registry import rule
from ..spec import ShardingSpec, relocate
from . import iota


# ----- reshape groups ---------------------------------------------------------------------------
def reshape_groups(a, b) -> list[tuple[list[int], list[int]]]:
    """Contiguous groups of dims of shapes a and b with equal element counts."""
    if 0 in a or 0 in b:
        return [(list(range(len(a))), list(range(len(b))))]
    i = j = 0
    groups = []
    while i < len(a) or j < len(b):
        ga, gb, pa, pb = [], [], 1, 1
        if i < len(a):
            ga, pa, i = [i], a[i], i + 1
        if j < len(b):
            gb, pb, j = [j], b[j], j + 1
        while pa != pb:
            if pa < pb:
                ga.append(i); pa *= a[i]; i += 1  # noqa: E702
            else:
                gb.append(j); pb *= b[j]; j += 1  # noqa: E702
        groups.append((ga, gb))
    return groups


def _major(dims, shape):
    return next((d for d in dims if shape[d] > 1), dims[0] if dims else None)


def map_reshape(spec: ShardingSpec, src_shape, dst_shape, sizes) -> tuple[ShardingSpec, ShardingSpec]:
    """(spec carried to dst_shape, the part of `spec` that survives) for a reshape."""
    src_dims, dst_dims = [()] * len(src_shape), [()] * len(dst_shape)
    for ga, gb in reshape_groups(src_shape, dst_shape):
        axes = _group_axes(spec, ga, gb, src_shape, dst_shape, sizes)
        if axes:
            src_dims[_major(ga, src_shape)] = axes
            dst_dims[_major(gb, dst_shape)] = axes
    return ShardingSpec(tuple(dst_dims)), ShardingSpec(tuple(src_dims))


def _group_axes(spec, ga, gb, src_shape, dst_shape, sizes):
    """The axes a group of merged / split dims carries: all its splits, major dim first, placed
    on the major dim of both sides. A split of a minor dim is thereby moved to the major one
    (an AllToAll before the reshape) rather than lost, when the tiles divide both major dims."""
    if not ga or not gb:
        return ()
    ma, mb = _major(ga, src_shape), _major(gb, dst_shape)
    axes = tuple(a for d in ga for a in spec.dims[d])
    if not axes:
        return ()
    t = math.prod(sizes[x] for x in axes)
    if len(ga) == 1 and len(gb) == 1:
        return axes
    if src_shape[ma] % t or dst_shape[mb] % t:
        return ()
    return axes


def prop_reshape(eqn, ins, outs, mesh):
    src, dst = eqn.inputs[0].shape, eqn.outputs[0].shape
    fwd = map_reshape(ins[0], src, dst, mesh.sizes)[0] if ins[0] is not None else None
    bwd = map_reshape(outs[0], dst, src, mesh.sizes)[0] if outs[0] is not None else None
    return [bwd] + [None] * (len(eqn.inputs) - 1), [fwd]


@rule([P.reshape_p, P.squeeze_p], prop=prop_reshape, fwd_level=0)
def part_reshape(ctx, eqn, ins, targets):
    x, src, dst = ins[0], eqn.inputs[0].shape, eqn.outputs[0].shape
    uneven = _uneven_reshape(ctx, x, targets[0], src, dst)
    if uneven is not None:
        return [uneven]
    want_in = map_reshape(_divisible(targets[0], src, dst, ctx.sizes), dst, src, ctx.sizes)[0]
    out_spec, want_in = map_reshape(want_in, src, dst, ctx.sizes)
    x = ctx.reshard(x, want_in.with_partial(x.spec.partial), "reshape operand")
    local = out_spec.local_shape(dst, ctx.sizes)
    val = jnp.reshape(x.val, local)
    return [Local(val, out_spec.with_partial(x.spec.partial), dst)]


# ----- reshape of an uneven split: the padded blocks realigned by a halo exchange -----------
def _uneven_groups(target: ShardingSpec, src, dst, sizes):
    """(operand spec, [(src dim, dst dim, merging)]) where the target splits only the major dim
    of a merge (several dims -> one) or a split (one -> several) whose tiles do not divide it;
    None where there is no such group, or another merged group is split (the even mapping's)."""
    in_dims, groups = [()] * len(src), []
    for ga, gb in reshape_groups(src, dst):
        if not ga or not gb:
            continue
        ma, mb = _major(ga, src), _major(gb, dst)
        axes = tuple(a for d in gb for a in target.dims[d])
        if len(ga) == 1 and len(gb) == 1:
            in_dims[ma] = target.dims[mb]
            continue
        if not axes:
            continue
        t = math.prod(sizes[a] for a in axes)
        if (len(ga) > 1) == (len(gb) > 1) or axes != target.dims[mb] or not (src[ma] % t or
                                                                             dst[mb] % t):
            return None
        in_dims[ma] = axes
        groups.append((ma, mb, len(ga) > 1))
    return (ShardingSpec(tuple(in_dims)), groups) if groups else None


def _uneven_reshape(ctx, x: Local, target: ShardingSpec, src, dst):
    """The reshape where the target splits a merged / split group unevenly: the operand split
    the same way on the group's major dim and reshaped locally, the flat blocks realigned by a
    halo exchange (XLA's way, instead of gathering the group whole): merging, from ceil(n/t)
    major rows' worth to ceil(N/t); splitting, the other way before the local reshape. None:
    not such a reshape, or no halo exchange reaches far enough."""
    found = _uneven_groups(target, src, dst, ctx.sizes)
    if found is None:
        return None
    in_spec, groups = found
    out_spec = ShardingSpec(tuple(target.dims))
    local_out = list(out_spec.local_shape(dst, ctx.sizes))
    blocks = [_flat_blocks(ctx, in_spec, g, src, dst, local_out) for g in groups]
    try:
        shifts = [shift(n, d, axes, old, new, ctx.sizes) for n, d, axes, old, new in blocks]
    except Infeasible:
        return None
    in_spec = in_spec.with_partial(x.spec.partial)
    item = jnp.dtype(x.dtype).itemsize
    local_in = in_spec.local_shape(src, ctx.sizes)
    halo = item * sum(halo_elems(h, local_out if merging else local_in)
                      for (_, _, merging), h in zip(groups, shifts))
    if ctx.cost(x, in_spec) + halo > _even_cost(ctx, x, target, src, dst):
        return None
    x = ctx.reshard(x, in_spec, "reshape operand")
    val = _reshape_realigned(ctx, x.val, groups, blocks, shifts, local_out)
    return Local(val, out_spec.with_partial(x.spec.partial), dst)


def _reshape_realigned(ctx, val, groups, blocks, shifts, local_out):
    """The local reshape of the uneven groups: a split group's flat blocks realigned (and padded
    to whole rows) before it, a merged group's after it; the result cut to `local_out`."""
    mid = list(local_out)
    for (ma, mb, merging), (_, _, _, old, new), h in zip(groups, blocks, shifts):
        if merging:
            mid[mb] = old
        else:
            val = _fit(ctx.realign(val, h, "reshape splitting an uneven dim") if h else val,
                       ma, new)
    val = jnp.reshape(val, mid)
    for (_, _, merging), h in zip(groups, shifts):
        if merging and h:
            val = ctx.realign(val, h, "reshape merging an uneven dim")
    return _fit(val, None, None, tuple(local_out))


def _divisible(target: ShardingSpec, src, dst, sizes) -> ShardingSpec:
    """target with the axes on each merged / split group's major dim cut to the longest prefix
    whose tiles divide the group's major dims (the rest are added after the reshape)."""
    dims = list(target.dims)
    for ga, gb in reshape_groups(src, dst):
        if not ga or not gb or (len(ga) == 1 and len(gb) == 1):
            continue
        ma, mb = _major(ga, src), _major(gb, dst)
        axes = dims[mb]
        while axes and (src[ma] % _tiles(axes, sizes) or dst[mb] % _tiles(axes, sizes)):
            axes = axes[:-1]
        dims[mb] = axes
    return ShardingSpec(tuple(dims), target.partial)


def _even_cost(ctx, x: Local, target: ShardingSpec, src, dst) -> float:
    """Bytes of the even way: each group split by the longest prefix of its axes that divides
    it (none: gathered), the rest of the target's axes added after the reshape."""
    want_in = map_reshape(_divisible(target, src, dst, ctx.sizes), dst, src, ctx.sizes)[0]
    out_spec = map_reshape(want_in, src, dst, ctx.sizes)[0]
    item = jnp.dtype(x.dtype).itemsize
    return ctx.cost(x, want_in.with_partial(x.spec.partial)) + reshard_cost(
        out_spec, target.drop_partial(), dst, item, ctx.sizes)


def _tiles(axes, sizes) -> int:
    return math.prod(sizes[a] for a in axes)


def _flat_blocks(ctx, in_spec, group, src, dst, local_out):
    """(length, dim, axes, old block, new block) of one uneven group's flat dim: merging, the
    result dim from ceil(n/t) major rows' worth to ceil(N/t); splitting, the operand dim from
    ceil(N/t) to ceil(n/t) major rows' worth."""
    ma, mb, merging = group
    axes = in_spec.dims[ma]
    t = math.prod(ctx.sizes[a] for a in axes)
    if merging:
        return dst[mb], mb, axes, -(-src[ma] // t) * (dst[mb] // src[ma]), local_out[mb]
    return src[ma], ma, axes, -(-src[ma] // t), local_out[mb] * (src[ma] // dst[mb])


def _fit(val, dim, length, shape=None):
    """val with dim `dim` zero-padded or cut to `length` (or cut to `shape`)."""
    if shape is not None:
        return val if tuple(val.shape) == shape else lax.slice(val, (0,) * val.ndim, shape)
    if val.shape[dim] >= length:
        return lax.slice_in_dim(val, 0, length, axis=dim)
    pad = [(0, 0)] * val.ndim
    pad[dim] = (0, length - val.shape[dim])
    return jnp.pad(val, pad)


# ----- transpose --------------------------------------------------------------------------------
def prop_transpose(eqn, ins, outs, mesh):
    perm = eqn.params["permutation"]
    fwd = ShardingSpec(tuple(ins[0].dims[p] for p in perm)) if ins[0] is not None else None
    bwd = None
    if outs[0] is not None:
        dims = [()] * len(perm)
        for j, p in enumerate(perm):
            dims[p] = outs[0].dims[j]
        bwd = ShardingSpec(tuple(dims))
    return [bwd], [fwd]


@rule(P.transpose_p, prop=prop_transpose, fwd_level=0)
def part_transpose(ctx, eqn, ins, targets):
    perm, t = eqn.params["permutation"], targets[0]
    dims = [()] * len(perm)
    for j, p in enumerate(perm):
        dims[p] = t.dims[j]
    x = ctx.reshard(ins[0], ShardingSpec(tuple(dims), ins[0].spec.partial), "transpose operand")
    return [Local(jnp.transpose(x.val, perm), t.with_partial(x.spec.partial), eqn.outputs[0].shape)]


# ----- broadcast_in_dim -------------------------------------------------------------------------
def _bcast_map(eqn):
    src, dst = eqn.inputs[0].shape, eqn.outputs[0].shape
    return [(i, o) for i, o in enumerate(eqn.params["broadcast_dimensions"]) if src[i] == dst[o]]


def prop_broadcast(eqn, ins, outs, mesh):
    pairs = _bcast_map(eqn)
    fwd = bwd = None
    if ins[0] is not None:
        dims = [()] * len(eqn.outputs[0].shape)
        for i, o in pairs:
            dims[o] = ins[0].dims[i]
        fwd = ShardingSpec(tuple(dims))
    if outs[0] is not None:
        dims = [()] * len(eqn.inputs[0].shape)
        for i, o in pairs:
            dims[i] = outs[0].dims[o]
        bwd = ShardingSpec(tuple(dims))
    return [bwd] + [None] * (len(eqn.inputs) - 1), [fwd]


def _is_expand(eqn) -> bool:
    """A broadcast that only inserts size-1 dims (expand_dims): a pass-through, not a broadcast."""
    src, dst = eqn.inputs[0].shape, eqn.outputs[0].shape
    bd = eqn.params["broadcast_dimensions"]
    return all(src[i] == dst[o] for i, o in enumerate(bd)) and \
        all(dst[o] == 1 for o in range(len(dst)) if o not in bd)


def _broadcast_levels(eqn) -> tuple[int, int]:
    return (0, 0) if _is_expand(eqn) else (3, 2)


@rule(P.broadcast_in_dim_p, prop=prop_broadcast, levels=_broadcast_levels)
def part_broadcast(ctx, eqn, ins, targets):
    iota.note(eqn)
    t, x = targets[0], ins[0]
    dims = [()] * x.rank
    for i, o in _bcast_map(eqn):
        dims[i] = t.dims[o]
    # a partial sum is reduced before a broadcast makes it bigger (BatchNorm statistics per
    # channel, not per activation); an expand_dims keeps it partial
    grows = math.prod(t.local_shape(eqn.outputs[0].shape, ctx.sizes)) > \
        math.prod(ShardingSpec(tuple(dims)).local_shape(x.shape, ctx.sizes))
    partial = () if grows else x.spec.partial
    x = ctx.reshard(x, ShardingSpec(tuple(dims), partial), "broadcast operand")
    local = t.local_shape(eqn.outputs[0].shape, ctx.sizes)
    val = lax.broadcast_in_dim(x.val, local, eqn.params["broadcast_dimensions"])
    return [Local(val, t.with_partial(x.spec.partial), eqn.outputs[0].shape)]


# ----- ops that need one or more dims unsplit ---------------------------------------------------
def _moving_dims(eqn) -> set[int]:
    name, p = eqn.prim.name, eqn.params
    if name == "concatenate":
        return {p["dimension"]}
    if name == "rev":
        return set(p["dimensions"])
    raise KeyError(name)


def _unsplit(spec, dims):
    return None if spec is None else ShardingSpec(
        tuple(() if d in dims else a for d, a in enumerate(spec.dims)))


def part_moving(ctx, eqn, ins, targets):
    """concatenate / rev with their moving dims whole (rules/rotate.py falls back to this)."""
    moving = _moving_dims(eqn)
    rank = len(eqn.outputs[0].shape)
    need = _unsplit(targets[0], moving)
    vals = [ctx.reshard(x, need if x.rank == rank else x.spec.drop_partial(),
                        f"{eqn.prim.name} needs dims {sorted(moving)} whole").val for x in ins]
    val = eqn.prim.bind(*vals, **eqn.params)
    out = Local(val, need, eqn.outputs[0].shape)
    return [ctx.reshard(out, targets[0], f"{eqn.prim.name} result to its propagated spec")]


# ----- iota -------------------------------------------------------------------------------------
def prop_iota(eqn, ins, outs, mesh):
    return [], [None]


@rule(P.iota_p, prop=prop_iota, fwd_level=0)
def part_iota(ctx, eqn, ins, targets):
    iota.note(eqn)
    t, p = targets[0], eqn.params
    local = t.local_shape(p["shape"], ctx.sizes)
    dim = p["dimension"]
    val = lax.broadcasted_iota(p["dtype"], local, dim)
    axes = t.dims[dim]
    if axes:
        val = val + (ctx.shard_index(axes) * local[dim]).astype(p["dtype"])
    return [Local(val, t, tuple(p["shape"]))]
