"""Gather and scatter-add (jnp.take, x[idx], embedding lookups and their gradients).

Gather: the operand is made whole (an AllGather where it was split, reported); the result's batch
dims follow the indices' sharding, so a batch-split lookup from a replicated table is local.
Scatter-add: each device adds its own updates into a zero-initialised copy (the original operand
kept on one device only), leaving a partial sum over the updates' split axes, reduced lazily.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.extend.core import primitives as P

from ..spmd.local import Local
from ..spmd.table import register as register_part
from ..propagate.engine import register as register_prop
from ..spec import ShardingSpec


def _gather_batch_dims(eqn) -> list[int]:
    offset = set(eqn.params["dimension_numbers"].offset_dims)
    return [d for d in range(len(eqn.outputs[0].shape)) if d not in offset]


def prop_gather(eqn, ins, outs, mesh):
    batch = _gather_batch_dims(eqn)
    idx_rank = len(eqn.inputs[1].shape)
    fwd = bwd = None
    if ins[1] is not None:
        dims = [()] * len(eqn.outputs[0].shape)
        for k, d in enumerate(batch):
            dims[d] = ins[1].dims[k]
        fwd = ShardingSpec(tuple(dims))
    if outs[0] is not None:
        dims = [outs[0].dims[d] for d in batch] + [()]
        bwd = ShardingSpec(tuple(dims[:idx_rank]))
    return [None, bwd], [fwd]


register_prop(P.gather_p, prop_gather, fwd_level=1)


@register_part(P.gather_p)
def part_gather(ctx, eqn, ins, targets):
    operand, indices = ins
    batch = _gather_batch_dims(eqn)
    t = targets[0]
    idx_dims = [t.dims[d] for d in batch] + [()]
    idx_spec = ShardingSpec(tuple(idx_dims[:indices.rank]))
    dn = eqn.params["dimension_numbers"]
    op_spec = _batched(operand.rank, dn.operand_batching_dims, dn.start_indices_batching_dims, idx_spec)
    operand = ctx.reshard(operand, op_spec, "gather needs the whole operand (but batching dims)")
    indices = ctx.reshard(indices, idx_spec, "gather indices")
    val = eqn.prim.bind(operand.val, indices.val, **eqn.params)
    spec = ShardingSpec(tuple(t.dims[d] if d in batch else () for d in range(len(t.dims))))
    out = Local(val, spec, eqn.outputs[0].shape)
    return [ctx.reshard(out, t, "gather result to its propagated spec")]


def _batched(rank, operand_dims, index_dims, idx_spec: ShardingSpec) -> ShardingSpec:
    """Operand spec: batching dims split like their indices' dims, the rest whole."""
    dims = [()] * rank
    for od, idd in zip(operand_dims, index_dims):
        dims[od] = idx_spec.dims[idd]
    return ShardingSpec(tuple(dims))


# ----- scatter-add ------------------------------------------------------------------------------
def _scatter_dims(eqn) -> list[int]:
    window = set(eqn.params["dimension_numbers"].update_window_dims)
    return [d for d in range(len(eqn.inputs[2].shape)) if d not in window]


def prop_scatter(eqn, ins, outs, mesh):
    scatter = _scatter_dims(eqn)
    idx_rank = len(eqn.inputs[1].shape)
    idx = None
    if ins[2] is not None:
        dims = [ins[2].dims[d] for d in scatter] + [()]
        idx = ShardingSpec(tuple(dims[:idx_rank]))
    return [None, idx, None], [None]


register_prop(P.scatter_add_p, prop_scatter, fwd_level=1)


@register_part(P.scatter_add_p)
def part_scatter_add(ctx, eqn, ins, targets):
    operand, indices, updates = ins
    scatter = _scatter_dims(eqn)
    udims = [updates.spec.dims[d] if d in scatter else () for d in range(updates.rank)]
    updates = ctx.reshard(updates, ShardingSpec(tuple(udims)), "scatter-add updates")
    idx_dims = [udims[d] for d in scatter] + [()]
    indices = ctx.reshard(indices, ShardingSpec(tuple(idx_dims[:indices.rank])), "scatter indices")
    dn = eqn.params["dimension_numbers"]
    idx_spec = ShardingSpec(tuple(idx_dims[:indices.rank]))
    op_spec = _batched(operand.rank, dn.operand_batching_dims, dn.scatter_indices_batching_dims,
                       idx_spec)
    axes = tuple(a for d in udims for a in d if a not in op_spec.used_axes())
    operand = ctx.reshard(operand, op_spec, "scatter-add operand")
    base = operand.val
    if axes:  # the operand counts once: on the first device of the split axes
        base = jnp.where(ctx.shard_index(axes) == 0, base, jnp.zeros_like(base))
    updates = ctx.masked(updates, scatter, 0)
    val = eqn.prim.bind(base, indices.val, updates.val, **eqn.params)
    out = Local(val, op_spec.with_partial(axes), eqn.outputs[0].shape)
    return [out]
