"""Scatter-add (the gradient of gathers, .at[].add) and the other scatters.

Scatter-add: each device adds its own updates into a zero-initialised copy (the original operand
kept on one device only), leaving a partial sum over the updates' split axes, reduced lazily.
Window dims the updates cover whole keep the operand's split (no partial sum there). Other
scatters (set, mul, min, max) are computed whole and sliced (reported).
An operand split along the dim it is indexed by single rows keeps its split: each device adds the
updates whose rows it holds (indices and updates whole, when that moves fewer bytes than the
partial sum's reduce-scatter of the whole operand).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax.lax import GatherScatterMode
from jax.extend.core import primitives as P

from ..registry import rule
from ..spec import ShardingSpec, merge
from ..spmd.shard import Local
from . import iota
from .indexing import _batched, _non_window
from .misc import part_whole, prop_none


# ----- scatter-add ------------------------------------------------------------------------------
def _scatter_dims(eqn) -> list[int]:
    return _non_window(len(eqn.inputs[2].shape),
                       eqn.params["dimension_numbers"].update_window_dims)


def scatter_passthrough(eqn) -> list[tuple[int, int]]:
    """(operand dim, updates dim) pairs of window dims the updates cover whole and the indices
    never address: a split there stays a split."""
    dn = eqn.params["dimension_numbers"]
    op_shape, upd_shape = eqn.inputs[0].shape, eqn.inputs[2].shape
    window = [d for d in range(len(op_shape)) if d not in dn.inserted_window_dims
              and d not in dn.operand_batching_dims]
    return [(d, u) for d, u in zip(window, dn.update_window_dims)
            if upd_shape[u] == op_shape[d] and d not in dn.scatter_dims_to_operand_dims]


def _pass_specs(eqn, op_spec, upd_spec):
    """Operand-side and updates-side specs of the pass-through dims (None when none is split)."""
    op_rank, upd_rank = len(eqn.inputs[0].shape), len(eqn.inputs[2].shape)
    op, upd = [()] * op_rank, [()] * upd_rank
    for d, u in scatter_passthrough(eqn):
        axes = (op_spec.dims[d] if op_spec is not None else ()) or \
            (upd_spec.dims[u] if upd_spec is not None else ())
        op[d] = upd[u] = axes
    if not any(op):
        return None, None
    return ShardingSpec(tuple(op)), ShardingSpec(tuple(upd))


def prop_scatter(eqn, ins, outs, mesh):
    op, idx, upd = _prop_indexed(eqn, ins, outs)
    pop, pupd = _pass_specs(eqn, outs[0] or ins[0], ins[2])
    fwd, bwd = merge(op, pop), merge(op, pop)
    d = owned_dim(eqn)
    if d is not None and eqn.prim is P.scatter_add_p:  # the indexed dim keeps its split
        rank = len(eqn.inputs[0].shape)
        along = lambda s: None if s is None or not s.dims[d] else \
            ShardingSpec.replicated(rank).with_dim(d, s.dims[d])  # noqa: E731
        fwd, bwd = merge(fwd, along(ins[0])), merge(bwd, along(outs[0]))
    return [bwd, idx, merge(upd, pupd)], [fwd]


def _prop_indexed(eqn, ins, outs):
    scatter = _scatter_dims(eqn)
    idx_rank = len(eqn.inputs[1].shape)
    idx = None
    if ins[2] is not None:
        dims = [ins[2].dims[d] for d in scatter] + [()]
        idx = ShardingSpec(tuple(dims[:idx_rank]))
    src = ins[1] if ins[1] is not None else idx
    dn = eqn.params["dimension_numbers"]
    op = None
    if src is not None and dn.operand_batching_dims:
        op = _batched(len(eqn.inputs[0].shape), dn.operand_batching_dims,
                      dn.scatter_indices_batching_dims, src)
    if outs[0] is not None and dn.operand_batching_dims and op is None:
        op = outs[0]
    upd = _updates_from_indices(eqn, ins[1]) if ins[1] is not None else None
    return op, idx, upd


def _batching_updates(eqn, idx_dims, op_dims=None) -> list:
    """Updates dims whose batching scatter dims take the indices' split (else the operand's
    batching dim's); every other dim whole. A split elsewhere would leave the whole operand a
    partial sum, so only batching dims are taken over."""
    scatter = _scatter_dims(eqn)
    dn = eqn.params["dimension_numbers"]
    dims = [()] * len(eqn.inputs[2].shape)
    for od, idd in zip(dn.operand_batching_dims, dn.scatter_indices_batching_dims):
        if idd < len(scatter):
            dims[scatter[idd]] = idx_dims[idd] or (op_dims[od] if op_dims else ())
    return dims


def _updates_from_indices(eqn, idx: ShardingSpec):
    """Propagated updates spec from the indices (batching dims only); None when it is whole."""
    dims = _batching_updates(eqn, idx.dims)
    return ShardingSpec(tuple(dims)) if any(dims) else None


def _scatter_plan(eqn, operand: Local, indices: Local, updates: Local) -> list:
    """Dims of the updates to compute with: the updates' own split of their scatter dims; when
    they have none, the split of the batching dims, so a replicated updates array is sliced
    locally rather than the indices gathered."""
    scatter = _scatter_dims(eqn)
    own = [updates.spec.dims[d] if d in scatter else () for d in range(updates.rank)]
    return own if any(own) else _batching_updates(eqn, indices.spec.dims, operand.spec.dims)


@rule(P.scatter_add_p, prop=prop_scatter)
def part_scatter_add(ctx, eqn, ins, targets):
    operand, indices, updates = ins
    parallel = iota.scatter_as_batching(eqn)
    if parallel is not None:  # iota columns of the indices: batching dims
        eqn, keep = parallel
        cols = jnp.take(indices.val, jnp.asarray(keep), axis=-1)
        indices = Local(cols, indices.spec, eqn.inputs[1].shape)
        ins = [operand, indices, updates]
    d = owned_dim(eqn)
    if d is not None and operand.spec.dims[d] and _owned_cheaper(ctx, eqn, ins, d):
        return [ctx.reshard(owned_scatter(ctx, eqn, ins, d), targets[0], "scatter-add result")]
    scatter = _scatter_dims(eqn)
    udims = _scatter_plan(eqn, operand, indices, updates)
    idx_dims = [udims[d] for d in scatter] + [()]
    idx_spec = ShardingSpec(tuple(idx_dims[:indices.rank]))
    dn = eqn.params["dimension_numbers"]
    op_spec = _batched(operand.rank, dn.operand_batching_dims, dn.scatter_indices_batching_dims,
                       idx_spec)
    for d, u in scatter_passthrough(eqn):  # whole-window dims keep the result's split
        want = targets[0].dims[d]
        if want and not set(want) & (set(op_spec.used_axes()) | {a for x in udims for a in x}):
            op_spec, udims[u] = op_spec.with_dim(d, want), want
    updates = ctx.reshard(updates, ShardingSpec(tuple(udims)), "scatter-add updates")
    indices = ctx.reshard(indices, idx_spec, "scatter indices")
    axes = tuple(a for d in udims for a in d if a not in op_spec.used_axes())
    if _would_gather(operand.spec, op_spec):
        return [_into_zeros(ctx, eqn, operand, indices, updates, op_spec, axes)]
    operand = ctx.reshard(operand, op_spec, "scatter-add operand")
    base = operand.val
    if axes:  # the operand counts once: on the first device of the split axes
        base = jnp.where(ctx.shard_index(axes) == 0, base, jnp.zeros_like(base))
    updates = ctx.masked(updates, scatter, 0)
    val = eqn.prim.bind(base, indices.val, updates.val, **eqn.params)
    out = Local(val, op_spec.with_partial(ctx.new_partial(axes)), eqn.outputs[0].shape)
    return [out]


def _would_gather(have: ShardingSpec, want: ShardingSpec) -> bool:
    """The operand is split where the scatter wants it whole (and is no partial sum)."""
    return not have.partial and any(set(h) - set(w) for h, w in zip(have.dims, want.dims))


def _into_zeros(ctx, eqn, operand: Local, indices: Local, updates: Local, op_spec, axes):
    """operand + scatter-add(zeros, ...): the updates go into local zeros (a partial sum over the
    updates' split axes), summed straight to the operand's own split and added there, instead
    of gathering the operand whole (a weak-scaling step's embedding gradient: its zeros are
    split over the vocabulary; gathering them moves the whole table)."""
    zeros = jnp.zeros(op_spec.local_shape(operand.shape, ctx.sizes), operand.dtype)
    upd = ctx.masked(updates, _scatter_dims(eqn), 0)
    val = eqn.prim.bind(zeros, indices.val, upd.val, **eqn.params)
    part = Local(val, op_spec.with_partial(ctx.new_partial(axes)), operand.shape)
    summed = ctx.reshard(part, operand.spec, "scatter-add sum, to the operand's split")
    return Local(summed.val + operand.val, operand.spec, operand.shape)


# ----- other scatters: computed whole, then sliced (reported as full replication) --------------
WHOLE = [p for p in (getattr(P, f"{n}_p", None) for n in ("scatter", "scatter_mul", "scatter_min",
                                                          "scatter_max")) if p is not None]
rule(WHOLE, prop=prop_none)(part_whole)


# ----- scatter-add into an operand split along the dim it indexes: the owning shards add --------
def owned_dim(eqn):
    """The operand dim a scatter indexes by single rows (one index per update), else None."""
    dn = eqn.params["dimension_numbers"]
    if len(dn.scatter_dims_to_operand_dims) != 1 or dn.operand_batching_dims:
        return None
    d = dn.scatter_dims_to_operand_dims[0]
    return d if d in dn.inserted_window_dims else None


def _owned_specs(eqn, operand: Local, d: int):
    """(operand, updates) specs: the operand split along d (and its pass-through window dims),
    the updates whole but for those window dims."""
    axes = operand.spec.dims[d]
    op = ShardingSpec.replicated(operand.rank).with_dim(d, axes)
    upd = ShardingSpec.replicated(len(eqn.inputs[2].shape))
    for od, u in scatter_passthrough(eqn):
        a = operand.spec.dims[od]
        if a and not set(a) & set(op.used_axes()):
            op, upd = op.with_dim(od, a), upd.with_dim(u, a)
    return op, upd


def _owned_cheaper(ctx, eqn, ins, d: int) -> bool:
    """Updates and indices made whole along their scatter dims cost less than a reduce-scatter
    of the whole operand (the partial-sum path)."""
    operand, indices, updates = ins
    op, upd = _owned_specs(eqn, operand, d)
    moved = ctx.cost(updates, upd) + ctx.cost(indices, ShardingSpec.replicated(indices.rank))
    whole = math.prod(operand.shape) * jnp.dtype(operand.dtype).itemsize
    return moved <= whole


def owned_scatter(ctx, eqn, ins, d: int) -> Local:
    """Each device adds the updates whose rows it holds (others dropped): no partial sum."""
    op_spec, upd_spec = _owned_specs(eqn, ins[0], d)
    operand = ctx.reshard(ins[0], op_spec, "scatter-add operand keeps its split")
    updates = ctx.reshard(ins[2], upd_spec, "scatter-add updates whole along their scatter dims")
    ids = ctx.reshard(ins[1], ShardingSpec.replicated(ins[1].rank), "scatter indices").val
    axes, n, L = op_spec.dims[d], operand.shape[d], operand.val.shape[d]
    if eqn.params["mode"] != GatherScatterMode.FILL_OR_DROP:  # CLIP, PROMISE_IN_BOUNDS
        ids = jnp.clip(ids, 0, n - 1)
    local = ids - (ctx.shard_index(axes) * L).astype(ids.dtype)
    ok = jnp.all((local >= 0) & (local < L) & (ids >= 0) & (ids < n), axis=-1)  # no padding row
    # rows out of this shard add zeros at a clipped row (no reliance on out-of-bounds drops)
    keep = jnp.expand_dims(ok, [u for u in range(updates.rank) if u not in _scatter_dims(eqn)])
    upd = jnp.where(keep, updates.val, jnp.zeros((), updates.dtype))
    params = dict(eqn.params, mode=GatherScatterMode.CLIP, indices_are_sorted=False,
                  unique_indices=False)
    val = eqn.prim.bind(operand.val, jnp.clip(local, 0, L - 1), upd, **params)
    return Local(val, op_spec, operand.shape)
