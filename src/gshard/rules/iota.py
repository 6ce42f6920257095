"""Which program values are positions: an iota, or a column of gather indices that is one.

x[jnp.arange(B), labels] gathers with indices concatenate([iota, labels]): the first column
reads operand row b at batch position b, a batching dim in disguise. The partition rules of the
ops that build such indices (iota, lt / select_n / convert_element_type, broadcast_in_dim,
concatenate) `note` what their result is, in program order; the gather and scatter-add rules then
read the iota columns as batching dims (`as_batching`, `scatter_as_batching`), so an operand split
like its indices stays split, forward and backward.

A fact is {column: dim} (column None: the whole value) meaning value[..., column] equals the
position along `dim`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from jax import lax

FACTS: dict[int, dict] = {}  # Value.id -> {column or None: dim}
FALSE: set[int] = set()      # Value.id of all-False comparisons (iota < 0)
_LIMIT = 1 << 16             # the tables forget everything past this many entries


def _fact(x):
    return FACTS.get(getattr(x, "id", None))


def _is_zero(x) -> bool:
    return getattr(x, "val", None) is not None and not x.shape and x.val == 0


def note(eqn) -> None:
    """Record what `eqn`'s result is, from what its operands are (cheap when nothing)."""
    name = eqn.prim.name
    if name not in _INFER:
        return
    if len(FACTS) + len(FALSE) > _LIMIT:
        FACTS.clear()
        FALSE.clear()
    fact = _INFER[name](eqn)
    if fact:
        FACTS[eqn.outputs[0].id] = fact


def _iota(eqn):
    return {None: eqn.params["dimension"]}


def _lt(eqn):
    f = _fact(eqn.inputs[0])
    if f and None in f and _is_zero(eqn.inputs[1]):
        FALSE.add(eqn.outputs[0].id)
    return None


def _select(eqn):  # select_n(pred, on_false, ...): pred all False picks on_false
    return _fact(eqn.inputs[1]) if getattr(eqn.inputs[0], "id", None) in FALSE else None


def _convert(eqn):
    return _fact(eqn.inputs[0]) if np.issubdtype(eqn.params["new_dtype"], np.integer) else None


def _broadcast(eqn):
    f = _fact(eqn.inputs[0])
    if not f or None not in f:
        return None
    return {None: eqn.params["broadcast_dimensions"][f[None]]}


def _concat(eqn):
    """Columns of an index vector: parts of extent 1 along the last dim."""
    d = eqn.params["dimension"]
    if d != len(eqn.outputs[0].shape) - 1 or any(x.shape[d] != 1 for x in eqn.inputs):
        return None
    out = {}
    for j, x in enumerate(eqn.inputs):
        f = _fact(x)
        if f and None in f and f[None] != d:
            out[j] = f[None]
    return out or None


_INFER = {"iota": _iota, "lt": _lt, "select_n": _select, "convert_element_type": _convert,
          "broadcast_in_dim": _broadcast, "concatenate": _concat}


@dataclasses.dataclass(frozen=True)
class _Shaped:
    shape: tuple


def _iota_columns(eqn, idx_pos: int, index_map, collapsed, window_ok):
    """{column: (operand dim, indices dim)} of the iota index columns that address a collapsed
    operand dim of the indices dim's extent, and the columns kept; None when there are none."""
    f = _fact(eqn.inputs[idx_pos])
    op_shape, idx_shape = eqn.inputs[0].shape, eqn.inputs[idx_pos].shape
    if not f or None in f:
        return None
    iota = {j: (index_map[j], b) for j, b in f.items()
            if index_map[j] in collapsed and window_ok(index_map[j])
            and op_shape[index_map[j]] == idx_shape[b]}
    keep = [j for j in range(idx_shape[-1]) if j not in iota]
    return (iota, keep) if iota and keep else None


def _rewritten(eqn, idx_pos: int, dn, keep):
    inputs = list(eqn.inputs)
    inputs[idx_pos] = _Shaped(tuple(eqn.inputs[idx_pos].shape[:-1]) + (len(keep),))
    return dataclasses.replace(eqn, params=dict(eqn.params, dimension_numbers=dn), inputs=inputs)


def as_batching(eqn):
    """(gather eqn with its iota columns as batching dims, index columns kept), or None."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    if dn.operand_batching_dims:
        return None
    found = _iota_columns(eqn, 1, dn.start_index_map, dn.collapsed_slice_dims,
                          lambda od: sizes[od] == 1)
    if found is None:
        return None
    iota, keep = found
    ods = {od for od, _ in iota.values()}
    new = lax.GatherDimensionNumbers(
        offset_dims=dn.offset_dims,
        collapsed_slice_dims=tuple(d for d in dn.collapsed_slice_dims if d not in ods),
        start_index_map=tuple(dn.start_index_map[j] for j in keep),
        operand_batching_dims=tuple(od for od, _ in iota.values()),
        start_indices_batching_dims=tuple(b for _, b in iota.values()))
    return _rewritten(eqn, 1, new, keep), keep


def scatter_as_batching(eqn):
    """The same for a scatter (the gradient of such a gather)."""
    dn = eqn.params["dimension_numbers"]
    if dn.operand_batching_dims:
        return None
    found = _iota_columns(eqn, 1, dn.scatter_dims_to_operand_dims, dn.inserted_window_dims,
                          lambda od: True)
    if found is None:
        return None
    iota, keep = found
    ods = {od for od, _ in iota.values()}
    new = lax.ScatterDimensionNumbers(
        update_window_dims=dn.update_window_dims,
        inserted_window_dims=tuple(d for d in dn.inserted_window_dims if d not in ods),
        scatter_dims_to_operand_dims=tuple(dn.scatter_dims_to_operand_dims[j] for j in keep),
        operand_batching_dims=tuple(od for od, _ in iota.values()),
        scatter_indices_batching_dims=tuple(b for _, b in iota.values()))
    return _rewritten(eqn, 1, new, keep), keep
