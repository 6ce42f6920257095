"""Weight-update sharding (Xu et al. 2020, GSPMD §3.4; ZeRO-1/2), as annotations.

Data-parallel replicas each update 1/N of every weight: the gradient is annotated split over the
data axes (the partitioner turns its pending sum into a ReduceScatter), the optimizer state and
the update live split the same way, and the new weights are annotated back to their forward
layout (an AllGather before the next forward). Nothing here communicates: the partitioner does,
and `explain()` shows each collective with this file's lines.

The forward layout of each parameter is what propagation gave it (`forward_specs`); its update
layout adds the data axes it is not split over yet to its largest dim they divide.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
from jax.sharding import PartitionSpec

from .. import annotate as _ann
from ..spec import ShardingSpec


def update_spec(fwd: ShardingSpec, shape, data_axes, sizes) -> ShardingSpec:
    """`fwd` plus the unused data axes on the largest dim they divide evenly; when none does
    (a [1024, 16, 64] weight over 2048 replicas), the longest prefix of those axes that divides
    a dim evenly, else `fwd` unchanged. Never padded tiles: the optimizer state leaves every
    step as a jax.Array, which holds no uneven split (each step would gather it whole)."""
    free = [a for a in data_axes if a not in fwd.used_axes()]
    for n in range(len(free), 0, -1):
        k = math.prod(sizes[a] for a in free[:n])
        even = [d for d, m in enumerate(shape) if m % (fwd.tiles(d, sizes) * k) == 0]
        if even:
            best = max(even, key=lambda d: shape[d])
            return fwd.with_dim(best, fwd.dims[best] + tuple(free[:n]))
    return fwd


class UpdateSpecs(NamedTuple):
    """Per-parameter forward and update PartitionSpec trees, and the data axes (with sizes) that
    other optimizer state (factored moments) is split over."""
    fwd: Any
    upd: Any
    data_axes: tuple
    sizes: dict


def specs_for(params, fwd_specs: list, data_axes, sizes) -> UpdateSpecs:
    """Per-parameter (forward, update) PartitionSpec trees from the propagated forward specs."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    fwd = [s.drop_partial() for s in fwd_specs]
    upd = [update_spec(s, x.shape, data_axes, sizes) for s, x in zip(fwd, leaves)]
    unflat = lambda ss: jax.tree_util.tree_unflatten(tree, [s.to_partition_spec() for s in ss])  # noqa: E731
    return UpdateSpecs(unflat(fwd), unflat(upd), tuple(data_axes), dict(sizes))


def weight_update_specs(forward, params, args, mesh, data_axes):
    """(forward, update) PartitionSpec trees: the forward layouts are what propagation gives the
    parameters in `forward(params, *args)` alone (the model's own annotations; the backward pass
    and the optimizer must not decide them), the update layouts add the data axes."""
    import gshard
    low = gshard.partition(forward, mesh).lower(params, *args)
    n = len(jax.tree_util.tree_leaves(params))
    return specs_for(params, low.in_specs[:n], data_axes, low.mesh.sizes)


def constrain(tree, specs):
    """mesh_split every leaf of `tree` by the PartitionSpec at the same place in `specs`."""
    return jax.tree_util.tree_map(lambda x, s: _ann.mesh_split(x, s), tree, specs,
                                  is_leaf=lambda s: isinstance(s, PartitionSpec))


def constrain_state(opt_state, params, specs, data_axes=(), sizes=None, min_size: int = 4096):
    """The optimizer-state leaves that mirror a parameter (Adam's mu and nu; same shape, its
    path as a suffix) take that parameter's spec; a factored moment (Adafactor's v_row, v_col:
    the parameter's shape less one dim) takes that spec less the factored dim, plus any data
    axes that dim held; other large ones are split over the data axes on their own; small ones
    (counts) propagate."""
    by_path = {}
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))):
        by_path[tuple(path)] = (x.shape, s)
    lengths = sorted({len(p) for p in by_path}, reverse=True)

    def one(path, leaf):
        path = tuple(path)
        for n in lengths:
            hit = by_path.get(path[-n:]) if len(path) >= n else None
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return _ann.mesh_split(leaf, hit[1])
            spec = _factored(hit, leaf.shape, data_axes, sizes) if hit is not None else None
            if spec is not None:
                return _ann.mesh_split(leaf, spec)
        if data_axes and math.prod(leaf.shape) >= min_size:
            spec = update_spec(ShardingSpec.replicated(len(leaf.shape)), leaf.shape, data_axes, sizes)
            return _ann.mesh_split(leaf, spec.to_partition_spec())
        return leaf
    return jax.tree_util.tree_map_with_path(one, opt_state)


def _factored(hit, shape, data_axes, sizes):
    """The spec of a factored moment of a parameter (shape, update PartitionSpec): the
    parameter's spec with the factored-out dim dropped; None if `shape` is not such a moment."""
    pshape, pspec = hit
    if len(shape) != len(pshape) - 1:
        return None
    full = ShardingSpec.from_partition_spec(pspec, len(pshape))
    for k in range(len(pshape) - 1, -1, -1):
        if tuple(pshape[:k]) + tuple(pshape[k + 1:]) == tuple(shape):
            dims = full.dims[:k] + full.dims[k + 1:]
            kept = ShardingSpec(tuple(dims))
            return (update_spec(kept, shape, data_axes, sizes) if data_axes else kept) \
                .to_partition_spec()
    return None
