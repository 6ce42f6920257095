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
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec

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
    fn: Any = None             # the jitted program (no donation), for calls under jax transforms
    mesh: Any = None           # the device mesh it runs on (the user's own mesh object)
    in_dtypes: list = field(default_factory=list)
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
        if self.in_shapes == self.padded_shapes:  # one batched transfer
            return jax.device_put(list(args), list(self.in_shardings))
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
    return spec.holdable(shape, sizes).drop_partial().to_partition_spec()


def _trim(x, shape):
    if tuple(x.shape) == tuple(shape):
        return x
    return x[tuple(slice(0, n) for n in shape)]


def build(graph, prop, mesh: MeshInfo, avals, donate=()) -> Program:
    """Trace the per-device program once (its jaxpr and collectives come from that trace, and
    the executable is lowered from it). It runs on the user's own mesh object (Auto, Explicit or
    mixed axes), so its outputs mix with the user's arrays in any later jax call."""
    sizes = mesh.sizes
    in_specs = [prop.spec(v) for v in graph.invars]
    out_specs = [prop.spec(x).drop_partial() for x in graph.outvars]
    in_shapes = [tuple(a.shape) for a in avals]
    padded = [s.padded_shape(n, sizes) for s, n in zip(in_specs, in_shapes)]
    out_shapes = [tuple(x.shape) for x in graph.outvars]
    device_mesh, holder = mesh.mesh, {}

    def body(*local):
        rec = coll.Recorder()
        holder["rec"] = rec
        return tuple(run_graph(Ctx(mesh, rec, prop), graph, prop, local))

    in_p = [s.to_partition_spec() for s in in_specs]
    even = [even_pspec(s, n, sizes) for s, n in zip(out_specs, out_shapes)]
    smap = jax.shard_map(body, mesh=device_mesh, in_specs=tuple(in_p), out_specs=tuple(even),
                         check_vma=False)  # uneven outputs leave gathered (run_graph records it)

    def outer(*flat):
        flat = [enter(x, device_mesh, p) for x, p in zip(flat, in_p)]
        return tuple(_leave(o, n, device_mesh, e) for o, n, e in zip(smap(*flat), out_shapes, even))

    typed = [_typed_aval(p, a.dtype, device_mesh, s) for p, a, s in zip(padded, avals, in_p)]
    if mesh.is_abstract:
        with mesh_context(device_mesh):
            traced = jax.jit(outer).trace(*typed)
        return Program(None, _inner(traced.jaxpr), list(holder["rec"].records), [], [],
                       in_shapes, padded)
    ins = tuple(NamedSharding(device_mesh, placement_pspec(device_mesh, p)) for p in in_p)
    outs = tuple(NamedSharding(device_mesh, e) for e in even)
    traced, fn = _jit(outer, typed, ins, outs, donate, device_mesh)
    return Program(traced, _inner(traced.jaxpr), list(holder["rec"].records), list(ins),
                   list(outs), in_shapes, padded, fn=fn, mesh=device_mesh,
                   in_dtypes=[a.dtype for a in avals])


def _jit(outer, typed, ins, outs, donate, device_mesh):
    """The traced program (donating as asked) and its jax.jit without donation (for calls under
    the user's jax transforms)."""
    with mesh_context(device_mesh):
        traced = jax.jit(outer, in_shardings=ins, out_shardings=outs,
                         donate_argnums=tuple(donate)).trace(*typed)
    return traced, jax.jit(outer, in_shardings=ins, out_shardings=outs)


# ----- the user's mesh axis types -----------------------------------------------------------------
def explicit_axes(device_mesh) -> set:
    """The mesh axes of Explicit type (sharding carried in the arrays' types)."""
    types = getattr(device_mesh, "axis_types", None) or ()
    return {n for n, t in zip(device_mesh.axis_names, types) if t == AxisType.Explicit}


def _restricted(pspec: PartitionSpec, axes: set) -> PartitionSpec:
    """`pspec` over `axes` only (the others dropped)."""
    def keep(e):
        names = (e,) if isinstance(e, str) else tuple(e or ())
        kept = tuple(a for a in names if a in axes)
        return None if not kept else kept[0] if len(kept) == 1 else kept
    return PartitionSpec(*[keep(e) for e in pspec])


def placement_pspec(device_mesh, pspec: PartitionSpec) -> PartitionSpec:
    """How an input is placed before the call: its whole spec, except on a mixed mesh (Explicit
    and Auto axes), where a jax.Array holds only the Explicit part (the rest is constrained
    inside the program)."""
    axes = explicit_axes(device_mesh)
    mixed = axes and len(axes) < len(device_mesh.axis_names)
    return _restricted(pspec, axes) if mixed else pspec


def enter(x, device_mesh, pspec: PartitionSpec):
    """`x` with its type sharded as `pspec` over the mesh's Explicit axes (what jax.shard_map
    demands of its operands there); Auto axes are placed by jax.jit's in_shardings (on a
    mixed mesh, by a sharding constraint)."""
    axes = explicit_axes(device_mesh)
    if not axes:
        return x
    x = jax.sharding.reshard(x, NamedSharding(device_mesh, _restricted(pspec, axes)))
    auto = set(device_mesh.axis_names) - axes
    if auto:
        x = jax.lax.with_sharding_constraint(x, NamedSharding(device_mesh, _restricted(pspec, auto)))
    return x


def _leave(x, shape, device_mesh, even: PartitionSpec):
    """An output trimmed to its true shape; over Explicit axes its type is first made the even
    spec (an uneven dim cannot stay split in a jax.Array)."""
    if tuple(x.shape) == tuple(shape):
        return x
    axes = explicit_axes(device_mesh)
    if axes:
        x = jax.sharding.reshard(x, NamedSharding(device_mesh, _restricted(even, axes)))
    return _trim(x, shape)


def _typed_aval(shape, dtype, device_mesh, pspec):
    """The abstract input: typed with its sharding over Explicit axes."""
    axes = explicit_axes(device_mesh)
    if not axes:
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(device_mesh,
                                                                     _restricted(pspec, axes)))


def mesh_context(device_mesh):
    """Trace with `device_mesh` as JAX's context mesh (the user may have set another)."""
    am = device_mesh if isinstance(device_mesh, AbstractMesh) else device_mesh.abstract_mesh
    return jax.sharding.use_abstract_mesh(am)


def _inner(closed) -> ClosedJaxpr:
    for e in closed.jaxpr.eqns:
        if e.primitive.name == "shard_map":
            return ClosedJaxpr(e.params["jaxpr"], ())
    raise AssertionError("no shard_map in the traced program")


def manual_region(fn: Callable, mesh, in_specs, out_specs) -> Callable:
    """A per-device region (gshard.manual): fn sees local shards and may call collectives.
    On a mesh with Explicit axes the operands are first resharded to `in_specs` (as
    jax.shard_map requires of their types)."""
    smap = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    if not explicit_axes(mesh):
        return smap

    def call(*args):
        from .compat import broadcast_prefix
        prefix = (in_specs,) * len(args) if isinstance(in_specs, PartitionSpec) else in_specs
        leaves, tree = jax.tree_util.tree_flatten(args)
        specs = broadcast_prefix(tuple(prefix), args, is_leaf=lambda p: isinstance(p, PartitionSpec))
        placed = [enter(a, mesh, p) for a, p in zip(leaves, specs)]
        with mesh_context(mesh):
            return smap(*jax.tree_util.tree_unflatten(tree, placed))
    return call
