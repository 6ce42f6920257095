"""The only module that calls jax.lax collectives. Every call is recorded with its reason.

Record `.bytes` is the per-device payload: the operand's bytes, or the result's bytes for an
AllGather (the full-size buffer each device ends with).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute")


@dataclass(frozen=True)
class Collective:
    kind: str
    axes: tuple[str, ...]
    bytes: int
    source: str
    reason: str
    shape: tuple[int, ...] = ()
    dtype: str = ""
    op: str = ""
    full_replication: bool = False   # the whole tensor ends on every device
    whole_dim: bool = False          # an (uneven) split dim gathered whole

    @property
    def warning(self) -> str:
        if self.full_replication:
            return "full replication"
        return "split dim gathered whole" if self.whole_dim else ""

    def __str__(self) -> str:
        warn = f"  [WARNING: {self.warning}]" if self.warning else ""
        op = f"({self.op})" if self.op else ""
        return (f"{self.kind}{op} over {list(self.axes)}: {self.bytes:,} B/device "
                f"{self.dtype}{list(self.shape)} — {self.reason} @ {self.source}{warn}")


class Recorder:
    """Collects the collectives one trace of the per-device program inserts."""

    def __init__(self):
        self.records: list[Collective] = []
        self.source = "<unknown>"

    def add(self, kind, axes, x, reason, *, op="", result=None, full=False, whole=False):
        ref = result if result is not None else x
        nbytes = math.prod(ref.shape) * jnp.dtype(ref.dtype).itemsize
        self.records.append(Collective(kind, tuple(axes), int(nbytes), self.source, reason,
                                       tuple(x.shape), str(x.dtype), op, full, whole))


def _name(axes):
    return tuple(axes) if len(axes) > 1 else axes[0]


def axis_index(axes) -> jax.Array:
    """Linear index of this device over `axes` (first axis major); 0 for no axes."""
    if not axes:
        return jnp.int32(0)
    return jax.lax.axis_index(_name(tuple(axes)))


def _low_float(dtype) -> bool:
    """float16 / bfloat16 (and narrower floats): summed across devices at float32, as XLA does."""
    dtype = jnp.dtype(dtype)
    return jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4


def _wide_sum(fn, x, axes):
    """A cross-device sum of `x` accumulated at float32 when x is a narrow float."""
    if _low_float(x.dtype):
        return fn(x.astype(jnp.float32), axes).astype(x.dtype)
    return fn(x, axes)


def all_reduce(rec: Recorder, x, axes, reason, op="sum", *, full=False):
    fn = {"sum": jax.lax.psum, "max": jax.lax.pmax, "min": jax.lax.pmin}[op]
    rec.add("all_reduce", axes, x, reason, op=op, full=full)
    if x.dtype == jnp.bool_:
        y = fn(x.astype(jnp.int32), _name(axes))
        return y.astype(jnp.bool_)
    return _wide_sum(fn, x, _name(axes)) if op == "sum" else fn(x, _name(axes))


def all_reduce_many(rec: Recorder, xs: list, axes, reason) -> list:
    """One AllReduce (sum) of several arrays over the same axes: flattened into one buffer per
    dtype, reduced once, split back."""
    out: list = [None] * len(xs)
    by_dtype: dict = {}
    for i, x in enumerate(xs):
        by_dtype.setdefault(jnp.dtype(x.dtype), []).append(i)
    for dtype, idx in by_dtype.items():
        flat = jnp.concatenate([jnp.ravel(xs[i]) for i in idx])  # [sum of sizes]
        rec.records.append(Collective("all_reduce", tuple(axes), int(flat.size * dtype.itemsize),
                                      rec.source, f"{reason} ({len(idx)} arrays combined)",
                                      tuple(flat.shape), str(dtype), "sum"))
        total = _wide_sum(jax.lax.psum, flat, _name(tuple(axes)))
        offsets = np.cumsum([0] + [math.prod(xs[i].shape) for i in idx])
        for k, i in enumerate(idx):
            out[i] = total[offsets[k]:offsets[k + 1]].reshape(xs[i].shape)
    return out


def all_gather(rec: Recorder, x, axes, dim, reason, *, full=False, whole=False):
    y = jax.lax.all_gather(x, _name(axes), axis=dim, tiled=True)
    rec.add("all_gather", axes, x, reason, result=y, full=full, whole=whole)
    return y


def reduce_scatter(rec: Recorder, x, axes, dim, reason):
    rec.add("reduce_scatter", axes, x, reason, op="sum")
    scatter = lambda v, a: jax.lax.psum_scatter(v, a, scatter_dimension=dim, tiled=True)  # noqa: E731
    return _wide_sum(scatter, x, _name(axes))


def all_to_all(rec: Recorder, x, axes, split_dim, concat_dim, reason):
    rec.add("all_to_all", axes, x, reason)
    return jax.lax.all_to_all(x, _name(axes), split_dim, concat_dim, tiled=True)


def collective_permute(rec: Recorder, x, axes, perm, reason):
    rec.add("collective_permute", axes, x, reason)
    return jax.lax.ppermute(x, _name(axes), perm=list(perm))
