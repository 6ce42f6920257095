"""Which program values are positions: an iota, or a column of gather indices that is one.

x[jnp.arange(B), labels] gathers with indices concatenate([iota, labels]): the first column
reads operand row b at batch position b, a batching dim in disguise. The partition rules of the
ops that build such indices (iota, lt / select_n / convert_element_type, broadcast_in_dim,
concatenate) `note` what their result is, in program order; the gather rule then reads the iota
columns as batching dims (`as_batching`), so an operand split like its indices stays split.

A fact is {column: dim} (column None: the whole value) meaning value[..., column] equals the
position along `dim`.
"""
from __future__ import annotations

import dataclasses

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
    import numpy as np
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


def as_batching(eqn):
    """(gather eqn with its iota columns as batching dims, index columns kept), or None."""
    f = _fact(eqn.inputs[1])
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    op_shape, idx_shape = eqn.inputs[0].shape, eqn.inputs[1].shape
    if not f or None in f or dn.operand_batching_dims:
        return None
    iota = {}
    for j, b in f.items():
        od = dn.start_index_map[j]
        if od in dn.collapsed_slice_dims and sizes[od] == 1 and op_shape[od] == idx_shape[b]:
            iota[j] = (od, b)
    keep = [j for j in range(idx_shape[-1]) if j not in iota]
    if not iota or not keep:
        return None
    new = lax.GatherDimensionNumbers(
        offset_dims=dn.offset_dims,
        collapsed_slice_dims=tuple(d for d in dn.collapsed_slice_dims
                                   if d not in {od for od, _ in iota.values()}),
        start_index_map=tuple(dn.start_index_map[j] for j in keep),
        operand_batching_dims=tuple(od for od, _ in iota.values()),
        start_indices_batching_dims=tuple(b for _, b in iota.values()))
    shaped = _Shaped(tuple(idx_shape[:-1]) + (len(keep),))
    return dataclasses.replace(eqn, params=dict(eqn.params, dimension_numbers=new),
                               inputs=[eqn.inputs[0], shaped]), keep
