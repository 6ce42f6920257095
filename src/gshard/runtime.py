"""The only builder of jax.shard_map: the per-device program under jax.jit.

Inputs are padded to whole tiles (uneven dims) and placed by their propagated specs; outputs
are trimmed back to their true shapes and returned as jax Arrays with NamedShardings matching the
propagated output specs (an uneven dim cannot be held sharded by a jax.Array, so it comes back
replicated on that dim).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr
from jax.sharding import NamedSharding, PartitionSpec

from . import collectives as coll
from .mesh import MeshInfo
from .spmd.interpret import run_graph
from .spmd.local import Ctx
from .spec import ShardingSpec


@dataclass
class Program:
    """The built SPMD program: its jitted callable, per-device jaxpr and collectives."""
    call: Callable | None
    per_device_jaxpr: Any
    collectives: list
    in_shardings: list
    out_shardings: list


def even_pspec(spec: ShardingSpec, shape, sizes) -> PartitionSpec:
    """The PartitionSpec a jax.Array can hold: uneven dims replicated."""
    uneven = set(spec.uneven_dims(shape, sizes))
    return ShardingSpec(tuple(() if d in uneven else a for d, a in enumerate(spec.dims))
                        ).to_partition_spec()


def _pad(x, shape, padded):
    if tuple(shape) == tuple(padded):
        return x
    return jnp.pad(x, [(0, p - n) for n, p in zip(shape, padded)])


def _trim(x, shape):
    if tuple(x.shape) == tuple(shape):
        return x
    return x[tuple(slice(0, n) for n in shape)]


def build(graph, prop, mesh: MeshInfo, avals, donate=()) -> Program:
    sizes = mesh.sizes
    in_specs = [prop.spec(v) for v in graph.invars]
    out_specs = [prop.spec(x).drop_partial() for x in graph.outvars]
    in_shapes = [tuple(a.shape) for a in avals]
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
        padded = [_pad(x, n, s.padded_shape(n, sizes)) for x, n, s in zip(flat, in_shapes, in_specs)]
        outs = smap(*padded)
        return tuple(_trim(o, n) for o, n in zip(outs, out_shapes))

    closed = jax.make_jaxpr(outer)(*avals)
    per_device = _inner(closed)
    records = list(holder["rec"].records)
    if mesh.is_abstract:
        return Program(None, per_device, records, [], [])
    amesh = mesh.auto_mesh()
    ins = [NamedSharding(amesh, even_pspec(s, n, sizes)) for s, n in zip(in_specs, in_shapes)]
    outs = [NamedSharding(amesh, even_pspec(s, n, sizes)) for s, n in zip(out_specs, out_shapes)]
    jitted = jax.jit(outer, in_shardings=tuple(ins), out_shardings=tuple(outs),
                     donate_argnums=tuple(donate))
    return Program(jitted, per_device, records, ins, outs)


def _inner(closed) -> ClosedJaxpr:
    for e in closed.jaxpr.eqns:
        if e.primitive.name == "shard_map":
            return ClosedJaxpr(e.params["jaxpr"], ())
    raise AssertionError("no shard_map in the traced program")


def place(args, shardings):
    """Put each input where its propagated spec says (numpy or any jax.Array sharding)."""
    return [jax.device_put(a, s) for a, s in zip(args, shardings)]


def manual_region(fn: Callable, mesh, in_specs, out_specs) -> Callable:
    """A per-device region (gshard.manual): fn sees local shards and may call collectives."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
