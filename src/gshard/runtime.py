"""The only builder of jax.shard_map: the per-device program under jax.jit, traced once.

Inputs are padded to whole tiles (uneven dims) on the host or shard by shard on the devices and
placed by their propagated specs, so no device holds an uneven input whole; outputs are trimmed
back to their true shapes and returned as jax Arrays with NamedShardings matching the propagated
output specs (an uneven dim cannot be held sharded by a jax.Array, so it comes back replicated on
that dim).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr
from jax.sharding import NamedSharding, PartitionSpec

from . import collectives as coll
from .mesh import MeshInfo
from .spmd.interpret import run_graph
from .spmd.local import Ctx
from .spec import ShardingSpec


@dataclass
class Program:
    """The built SPMD program: traced once; `call` takes the placed (padded, sharded) inputs."""
    traced: Any
    per_device_jaxpr: Any
    collectives: list
    in_shardings: list         # of the padded inputs: uneven dims sharded too
    out_shardings: list
    in_shapes: list = field(default_factory=list)
    padded_shapes: list = field(default_factory=list)
    _compiled: Any = None

    @property
    def call(self) -> Callable | None:
        """The compiled executable (compiled on first use, from the one trace)."""
        if self.traced is None:
            return None
        if self._compiled is None:
            self._compiled = self.traced.lower().compile()
        return self._compiled

    @property
    def jit_in_shardings(self) -> list:
        """The inputs' shardings as a jax.jit baseline takes unpadded inputs (uneven dims whole)."""
        return [NamedSharding(s.mesh, even_pspec(_spec_of(s), n, _sizes(s))) for s, n in
                zip(self.in_shardings, self.in_shapes)]

    def place(self, args) -> list:
        """Each input padded to whole tiles and placed by its spec: no device holds an uneven
        input whole."""
        return [_place_one(a, n, p, s) for a, n, p, s in
                zip(args, self.in_shapes, self.padded_shapes, self.in_shardings)]


def _spec_of(sharding) -> ShardingSpec:
    return ShardingSpec.from_partition_spec(sharding.spec, len(sharding.spec))


def _sizes(sharding) -> dict:
    return dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_sizes))


def _place_one(a, shape, padded, sharding):
    if tuple(shape) == tuple(padded):
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array):  # pad on the devices, each computing its own shard
        return _device_pad(tuple(shape), tuple(padded), sharding)(a)
    a = np.asarray(a)
    return jax.device_put(np.pad(a, [(0, p - n) for n, p in zip(shape, padded)]), sharding)


@functools.lru_cache(maxsize=256)
def _device_pad(shape, padded, sharding):
    return jax.jit(lambda x: jnp.pad(x, [(0, p - n) for n, p in zip(shape, padded)]),
                   out_shardings=sharding)


def even_pspec(spec: ShardingSpec, shape, sizes) -> PartitionSpec:
    """The PartitionSpec a jax.Array of `shape` can hold: uneven dims replicated."""
    uneven = set(spec.uneven_dims(shape, sizes))
    dims = tuple(() if d in uneven else a for d, a in enumerate(spec.dims))
    return ShardingSpec(dims).to_partition_spec()


def _trim(x, shape):
    if tuple(x.shape) == tuple(shape):
        return x
    return x[tuple(slice(0, n) for n in shape)]


def build(graph, prop, mesh: MeshInfo, avals, donate=()) -> Program:
    """Trace the per-device program once (its jaxpr and collectives come from that trace, and
    the executable is lowered from it)."""
    sizes = mesh.sizes
    in_specs = [prop.spec(v) for v in graph.invars]
    out_specs = [prop.spec(x).drop_partial() for x in graph.outvars]
    in_shapes = [tuple(a.shape) for a in avals]
    padded = [s.padded_shape(n, sizes) for s, n in zip(in_specs, in_shapes)]
    out_shapes = [tuple(x.shape) for x in graph.outvars]
    holder: dict = {}

    def body(*local):
        rec = coll.Recorder()
        holder["rec"] = rec
        return tuple(run_graph(Ctx(mesh, rec, prop), graph, prop, local))

    smap = jax.shard_map(body, mesh=mesh.auto_mesh(),
                         in_specs=tuple(s.to_partition_spec() for s in in_specs),
                         out_specs=tuple(s.to_partition_spec() for s in out_specs), check_vma=False)

    def outer(*flat):
        return tuple(_trim(o, n) for o, n in zip(smap(*flat), out_shapes))

    padded_avals = [jax.ShapeDtypeStruct(p, a.dtype) for p, a in zip(padded, avals)]
    if mesh.is_abstract:
        traced = jax.jit(outer).trace(*padded_avals)
        return Program(None, _inner(traced.jaxpr), list(holder["rec"].records), [], [],
                       in_shapes, padded)
    amesh = mesh.auto_mesh()
    ins = [NamedSharding(amesh, s.to_partition_spec()) for s in in_specs]
    outs = [NamedSharding(amesh, even_pspec(s, n, sizes)) for s, n in zip(out_specs, out_shapes)]
    jitted = jax.jit(outer, in_shardings=tuple(ins), out_shardings=tuple(outs),
                     donate_argnums=tuple(donate))
    traced = jitted.trace(*padded_avals)
    return Program(traced, _inner(traced.jaxpr), list(holder["rec"].records), ins, outs,
                   in_shapes, padded)


def _inner(closed) -> ClosedJaxpr:
    for e in closed.jaxpr.eqns:
        if e.primitive.name == "shard_map":
            return ClosedJaxpr(e.params["jaxpr"], ())
    raise AssertionError("no shard_map in the traced program")


def manual_region(fn: Callable, mesh, in_specs, out_specs) -> Callable:
    """A per-device region (gshard.manual): fn sees local shards and may call collectives."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
