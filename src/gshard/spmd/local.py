"""The partitioning context handed to every partition rule (the shard type, Local: shard.py)."""
from __future__ import annotations

import contextlib
from typing import Any

import jax.numpy as jnp
from jax import lax

from .. import collectives as coll
from ..mesh import MeshInfo
from ..spec import ShardingSpec
from .halo import realign
from .plan import reshard_cost
from .reshard import reshard
from .shard import Local


class Ctx:
    """What a partition rule may use: the mesh, resharding, masking, recorded collectives."""

    def __init__(self, mesh: MeshInfo, recorder: coll.Recorder, prop=None):
        self.mesh = mesh
        self.prop = prop
        self.rec = recorder
        self.eqn = None
        self._memo: dict = {}  # (id(Local), spec) -> (Local, resharded Local): one reshard per value
        self._fed: dict = {}   # id(eqn) -> partial axes of the operands its rule was given
        self._made: dict = {}  # id(eqn) -> partial axes its rule created (contracted splits)
        self._masks: dict = {}  # (local shape, ((dim, n, axes), ...)) -> bool mask: built once
        self.flow = ({}, {})    # (Value -> its reading eqns, Value -> Local so far): this graph

    @property
    def sizes(self) -> dict[str, int]:
        return self.mesh.sizes

    @contextlib.contextmanager
    def scope(self):
        """A fresh reshard memo and mask cache for a loop or branch body (its values live in an
        inner trace: an outer trace's value must not leak into it)."""
        saved, self._memo, self._masks = (self._memo, self._masks), {}, {}
        try:
            yield self
        finally:
            self._memo, self._masks = saved

    def at(self, eqn):
        self.eqn = eqn
        self.rec.source = eqn.where if eqn is not None else "<program output>"
        return self

    def begin(self, eqn):
        """Start the partition rule of `eqn`: fresh operand / created partial-sum records."""
        self._fed[id(eqn)], self._made[id(eqn)] = set(), set()
        return self.at(eqn)

    def new_partial(self, axes) -> tuple[str, ...]:
        """Declare that the current rule makes its result a partial sum over `axes`."""
        self._made.setdefault(id(self.eqn), set()).update(axes)
        return tuple(axes)

    def readers(self, v) -> list:
        """The equations of the current graph that read `v` (None: a program / body output)."""
        return self.flow[0].get(v, [])

    def placed(self, v):
        """The Local of an already partitioned value of the current graph, or None."""
        return self.flow[1].get(v)

    def allowed_partial(self, eqn) -> set:
        """Axes a result of `eqn` may be partial over: an operand's, or ones its rule made."""
        return self._fed.get(id(eqn), set()) | self._made.get(id(eqn), set())

    def reshard(self, x: Local, spec: ShardingSpec, reason: str = "") -> Local:
        if set(spec.partial) & set(spec.used_axes()):  # a split axis cannot stay unreduced
            spec = spec.with_partial(tuple(a for a in spec.partial if a not in spec.used_axes()))
        self._fed.setdefault(id(self.eqn), set()).update(spec.partial)
        if x.spec == spec:
            return x
        key = (id(x), spec)
        if key not in self._memo:
            self._memo[key] = (x, reshard(self, x, spec, reason))
        return self._memo[key][1]

    def cost(self, x: Local, spec: ShardingSpec) -> float:
        """Bytes resharding x to spec would move per device: 0 when that reshard is already done
        (a forward pass's gather reused by the backward)."""
        if x.spec == spec or (id(x), spec) in self._memo:
            return 0.0
        return reshard_cost(x.spec, spec, x.shape, jnp.dtype(x.dtype).itemsize, self.sizes)

    def shard_index(self, axes) -> Any:
        return coll.axis_index(axes)

    # ----- collectives: the only way a rule communicates ----------------------------------------
    def all_reduce(self, val, axes, why: str, op: str = "sum", *, full=False):
        return coll.all_reduce(self.rec, val, tuple(axes), why, op=op, full=full)

    def all_reduce_many(self, vals: list, axes, why: str) -> list:
        return coll.all_reduce_many(self.rec, vals, tuple(axes), why)

    def all_gather(self, val, axes, dim: int, why: str, *, full=False, whole=False):
        return coll.all_gather(self.rec, val, tuple(axes), dim, why, full=full, whole=whole)

    def reduce_scatter(self, val, axes, dim: int, why: str):
        return coll.reduce_scatter(self.rec, val, tuple(axes), dim, why)

    def all_to_all(self, val, axes, split_dim: int, concat_dim: int, why: str):
        return coll.all_to_all(self.rec, val, tuple(axes), split_dim, concat_dim, why)

    def collective_permute(self, val, axes, perm, why: str):
        """`perm`: (source, destination) pairs of linear indices over `axes` in the given order
        (as axis_index numbers them); ppermute numbers devices in mesh order, so re-index."""
        order = tuple(a for a in self.mesh.names if a in set(axes))
        if order != tuple(axes):
            perm = [(_reindex(s, axes, order, self.sizes), _reindex(d, axes, order, self.sizes))
                    for s, d in perm]
        return coll.collective_permute(self.rec, val, order, perm, why)

    def realign(self, val, halo, why: str):
        """A halo exchange (spmd/step.py Halo) of val's uneven dim: its blocks realigned."""
        return realign(self, val, halo, why)

    def valid_mask(self, x: Local, dims) -> Any:
        """Bool array of x's local shape: False at padding positions of the uneven `dims`. Built
        once per (local shape, uneven dims and their axes) in this program body, shared by every
        consumer (one iota / compare chain, not one per rule)."""
        local = tuple(x.val.shape)
        parts = tuple((d, x.shape[d], tuple(x.spec.dims[d])) for d in dims
                      if x.spec.dims[d] and x.shape[d] % x.spec.tiles(d, self.sizes))
        if not parts:
            return None
        key = (local, parts)
        if key not in self._masks:
            mask = self._dim_mask(local, *parts[0])
            for p in parts[1:]:
                mask = mask & self._dim_mask(local, *p)
            self._masks[key] = mask
        return self._masks[key]

    def _dim_mask(self, local, d: int, n: int, axes):
        """Positions of dim `d` (global length n, split over `axes`) that hold real data."""
        key = (local, ((d, n, axes),))
        if key not in self._masks:
            pos = lax.broadcasted_iota(jnp.int32, local, d) + self.shard_index(axes) * local[d]
            self._masks[key] = pos < n
        return self._masks[key]

    def masked(self, x: Local, dims, fill) -> Local:
        mask = self.valid_mask(x, dims)
        if mask is None:
            return x
        return Local(jnp.where(mask, x.val, jnp.asarray(fill, x.dtype)), x.spec, x.shape)


def _reindex(i: int, axes, order, sizes) -> int:
    """Linear index `i` over `axes` (first major) as a linear index over `order`."""
    coords = {}
    for a in reversed(tuple(axes)):
        i, coords[a] = divmod(i, sizes[a])
    out = 0
    for a in order:
        out = out * sizes[a] + coords[a]
    return out

