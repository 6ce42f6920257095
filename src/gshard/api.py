"""gshard.partition(fn, mesh): trace, propagate, partition, run (DESIGN §6 contract)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import rules  # noqa: F401  (registers every rule)
from .annotate import annotate_p, resolve
from .device_assignment import layout, refinement
from .errors import GShardError
from .manual import partition_mesh
from .mesh import MeshInfo
from .spec import ShardingSpec
from .propagate.engine import Propagation, check_supported, propagate
from .runtime import Program, build, place
from .trace.graph import Graph, trace


def partition(fn: Callable, mesh) -> "Partitioned":
    """Partition `fn` (written for one device, annotated) over `mesh` as one SPMD program."""
    return Partitioned(fn, MeshInfo.of(mesh))


class Partitioned:
    def __init__(self, fn: Callable, mesh: MeshInfo):
        self.fn = fn
        self.mesh = mesh
        self._cache: dict = {}

    def lower(self, *args) -> "Lowered":
        leaves, in_tree = jax.tree_util.tree_flatten(args)
        avals = tuple(_aval(x) for x in leaves)
        key = (in_tree, tuple((a.shape, str(a.dtype)) for a in avals))
        if key not in self._cache:
            self._cache[key] = _lower(self.fn, self.mesh, in_tree, avals)
        return self._cache[key]

    def __call__(self, *args):
        low = self.lower(*args)
        if low.program.call is None:
            raise GShardError(f"the mesh {self.mesh.describe()} is abstract (no devices): use "
                              f".lower(...) to inspect it, or pass a concrete jax.sharding.Mesh")
        leaves = jax.tree_util.tree_leaves(args)
        outs = low.program.call(*place(leaves, low.program.in_shardings))
        return jax.tree_util.tree_unflatten(low.out_tree, outs)


def _aval(x) -> jax.ShapeDtypeStruct:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended):  # typed PRNG keys
            return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
        return jax.ShapeDtypeStruct(tuple(x.shape), jnp.dtype(x.dtype) if not _is64(x.dtype)
                                    else jnp.asarray(np.zeros((), x.dtype)).dtype)
    return jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype)


def _is64(dtype) -> bool:
    return not jax.config.jax_enable_x64 and jnp.dtype(dtype).itemsize == 8


@dataclass
class Lowered:
    """The partitioned program for one input signature."""
    graph: Graph
    prop: Propagation
    mesh: MeshInfo
    program: Program
    out_tree: Any
    partition_seconds: float
    timings: dict = field(default_factory=dict)

    @property
    def per_device_jaxpr(self):
        return self.program.per_device_jaxpr

    @property
    def collectives(self) -> list:
        return self.program.collectives

    @property
    def in_specs(self):
        return [self.prop.spec(v) for v in self.graph.invars]

    @property
    def out_specs(self):
        return [self.prop.spec(v).drop_partial() for v in self.graph.outvars]

    def explain(self) -> str:
        from .explain import explain
        return explain(self)


def _lower(fn, base: MeshInfo, in_tree, avals) -> Lowered:
    t0 = time.perf_counter()
    holder = {}

    def flat_fn(*flat):
        out = fn(*jax.tree_util.tree_unflatten(in_tree, flat))
        leaves, holder["tree"] = jax.tree_util.tree_flatten(out)
        return leaves

    with partition_mesh(base):
        graph, _ = trace(flat_fn, *avals)
    t1 = time.perf_counter()
    mesh, fixed = resolve_annotations(graph, base)
    check_supported(graph)
    prop = propagate(graph, mesh, fixed)
    t2 = time.perf_counter()
    program = build(graph, prop, mesh, avals)
    t3 = time.perf_counter()
    timings = {"trace_s": t1 - t0, "propagate_s": t2 - t1, "partition_s": t3 - t2}
    return Lowered(graph, prop, mesh, program, holder["tree"], t3 - t0, timings)


def resolve_annotations(graph: Graph, base: MeshInfo):
    """Refine the mesh for shard() layouts, then resolve every annotation to a fixed spec."""
    anns = [e for e in graph.eqns if e.prim is annotate_p]
    lays = [layout(e.params["ann"], base, e.inputs[0].shape) for e in anns
            if e.params["ann"].kind == "shard"]
    mesh = base.refine(refinement(lays, base)) if lays else base
    fixed = {}
    for e in anns:
        ann = e.params["ann"]
        spec = resolve(ann, mesh, e.inputs[0].shape)
        fixed[e.outputs[0]] = (spec, f"annotation {ann.describe()} at {ann.where}")
    for e in graph.eqns:
        if e.prim.name == "shard_map":  # a gshard.manual region: its results are fixed
            for o, p in zip(e.outputs, e.params["out_specs"]):
                fixed[o] = (ShardingSpec.from_partition_spec(p, len(o.shape)),
                            f"result of a manual region at {e.where}")
    return mesh, fixed
