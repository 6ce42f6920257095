"""gshard.partition(fn, mesh): trace, propagate, partition, run (DESIGN §6 contract)."""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import rules  # noqa: F401  (registers every rule)
from .annotate import annotate_p, resolve
from .jax_shardings import (committed_annotation, constraint_annotation, flat_specs,
                            spec_annotation, typed_annotation, unconstrained)
from .rules.annotation import RESHARD, SHARDING_CONSTRAINT
from .device_assignment import layout, refinement
from .errors import GShardError
from .manual import partition_mesh
from .mesh import MeshInfo
from .spec import ShardingSpec
from .propagate.engine import Propagation, check_supported, propagate
from .runtime import Program, build, mesh_context
from .compose import is_traced, traced_call
from .trace.graph import Eqn, Graph, Value, trace


def partition(fn: Callable, mesh, *, in_specs=None, out_specs=None,
              donate_argnums=()) -> "Partitioned":
    """Partition `fn` (written for one device, annotated) over `mesh` as one SPMD program.

    `in_specs` / `out_specs`: like jax.jit's in_shardings / out_shardings, pytree prefixes of
    PartitionSpec, NamedSharding or None (None: propagated). Committed jax.Array inputs with a
    NamedSharding on `mesh` keep their placement. `donate_argnums`: positional arguments whose
    buffers the call may reuse."""
    if not callable(fn):
        raise GShardError(f"gshard.partition: fn must be callable, got {type(fn).__name__}\n  fix: "
                          f"pass the function itself, gshard.partition(fn, mesh)")
    return Partitioned(fn, MeshInfo.of(mesh), in_specs, out_specs, _donate(donate_argnums))


def _donate(donate_argnums) -> tuple[int, ...]:
    donate = (donate_argnums,) if isinstance(donate_argnums, int) else tuple(donate_argnums)
    if not all(isinstance(i, (int, np.integer)) and i >= 0 for i in donate):
        raise GShardError(f"gshard.partition: donate_argnums={donate_argnums!r} must be "
                          f"non-negative positional argument indices\n  fix: e.g. donate_argnums=(0,)")
    return tuple(int(i) for i in donate)


_ARRAY = type(jax.numpy.zeros(()))   # jax.Array's concrete type (ArrayImpl)


class Partitioned:
    def __init__(self, fn: Callable, mesh: MeshInfo, in_specs=None, out_specs=None, donate=()):
        self.fn = fn
        self.mesh = mesh
        self.in_specs, self.out_specs, self.donate = in_specs, out_specs, donate
        self._cache: dict = {}
        self._placed: dict = {}   # pytree structure -> programs callable on placed arrays

    def lower(self, *args) -> "Lowered":
        _check_donate(self.donate, args)
        leaves, in_tree = jax.tree_util.tree_flatten(args)
        avals = _avals(args, leaves)
        inputs = _input_annotations(self, leaves, in_tree)
        sig = (in_tree, tuple((a.shape, str(a.dtype)) for a in avals))
        key = sig + (inputs,)
        if key not in self._cache:
            self._cache[key] = self._reuse(sig, leaves) or _lower(self, in_tree, avals, inputs)
        return self._cache[key]

    def _reuse(self, sig, leaves):
        """A lowering of the same signature whose inputs already sit where these committed
        arrays are (the outputs of the previous step fed back): no second partitioning."""
        if is_traced(leaves):
            return None
        for key, low in self._cache.items():
            if key[:2] != sig or low.program.traced is None:
                continue
            have = [getattr(x, "sharding", None) if getattr(x, "committed", False) else None
                    for x in leaves]
            if all(h is None or _same_layout(h, s) for h, s in
                   zip(have, low.program.jit_in_shardings)):
                return low
        return None

    def __call__(self, *args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        low = self._placed_hit(tree, leaves)
        if low is not None:  # the arrays already sit where a built program wants them
            return jax.tree_util.tree_unflatten(low.out_tree, low.program.call(*leaves))
        if is_traced(leaves):
            return traced_call(self, args)
        low = self.lower(*args)
        if low.program.call is None:
            raise GShardError(f"the mesh {self.mesh.describe()} is abstract (no devices): use "
                              f".lower(...) to inspect it, or pass a concrete jax.sharding.Mesh")
        outs = low.program.call(*low.program.place(leaves))
        self._remember(tree, low)
        return jax.tree_util.tree_unflatten(low.out_tree, outs)

    def _placed_hit(self, tree, leaves):
        """The dispatch fast path (as jax.jit's): a program built for this pytree whose inputs
        are exactly these committed arrays' shapes, dtypes and shardings (no padding to do) is
        called directly, with no re-lowering and no placement."""
        for low in self._placed.get(tree, ()):
            want = low.program.in_shardings
            if all(type(x) is _ARRAY and x.shape == n and x.dtype == d and
                   (x.sharding is s or x.sharding == s)
                   for x, n, d, s in zip(leaves, low.program.in_shapes, low.program.in_dtypes, want)):
                return low
        return None

    def _remember(self, tree, low) -> None:
        if low.program.in_shapes != low.program.padded_shapes:
            return  # uneven inputs are padded on every call: no fast path
        lows = self._placed.setdefault(tree, [])
        if not any(have is low for have in lows):
            lows.insert(0, low)
            del lows[8:]


def _same_layout(a, b) -> bool:
    try:
        return a.is_equivalent_to(b, len(b.spec))
    except Exception:  # noqa: BLE001 - another sharding type
        return False


def _check_donate(donate, args) -> None:
    bad = [i for i in donate if i >= len(args)]
    if bad:
        raise GShardError(f"gshard.partition: donate_argnums={donate} names argument {bad[0]}, but "
                          f"the function was called with {len(args)} positional argument(s)\n  "
                          f"fix: donate only indices below {len(args)}")


def _avals(args, leaves) -> tuple:
    try:
        return tuple(_aval(x) for x in leaves)
    except (TypeError, ValueError):
        pass
    for path, x in jax.tree_util.tree_flatten_with_path(args)[0]:
        try:
            _aval(x)
        except (TypeError, ValueError):
            where = "args" + jax.tree_util.keystr(path)
            raise GShardError(
                f"gshard.partition: argument {where} is a {type(x).__name__} ({x!r:.40}), not an "
                f"array\n  fix: pass arrays (jax or numpy), Python numbers or pytrees of them; "
                f"give a non-array setting by closing over it (functools.partial) as with "
                f"jax.jit") from None
    raise AssertionError("unreachable")


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

    def explain(self, **kw) -> str:
        """The explain view; `values=False` omits the per-value listing."""
        from .explain import explain
        return explain(self, **kw)


def _input_annotations(pf: Partitioned, leaves, in_tree) -> tuple:
    """Per input leaf: (kind, Annotation) from in_specs ("in_specs", fixed) or a committed
    array's NamedSharding ("committed", kept unless an in_spec says otherwise), or None."""
    specs = flat_specs(pf.in_specs, in_tree, "in_specs")
    out = []
    for i, (x, s) in enumerate(zip(leaves, specs)):
        ann = spec_annotation(s, len(np.shape(x)), pf.mesh, f"in_specs entry for input {i}")
        if ann is not None:
            out.append(("in_specs", ann))
            continue
        ann = committed_annotation(x, pf.mesh, i)
        out.append(("committed", ann) if ann is not None else None)
    return tuple(out)


_SHARED_TRACES: list = []   # stack of caches, see sharing_traces()


@contextlib.contextmanager
def sharing_traces():
    """Inside, lowering the same function on the same mesh and input avals again (with other
    in_specs: autoshard's candidates) reuses the first trace instead of tracing again."""
    _SHARED_TRACES.append({})
    try:
        yield
    finally:
        _SHARED_TRACES.pop()


def _trace(pf: Partitioned, in_tree, avals):
    """(graph, output tree) of pf.fn on `avals`, from the innermost sharing_traces() cache."""
    key = None
    if _SHARED_TRACES:
        key = (pf.fn, pf.mesh, id(pf.mesh.mesh), in_tree,
               tuple((a.shape, a.dtype, getattr(a, "weak_type", False)) for a in avals))
        hit = _SHARED_TRACES[-1].get(key)
        if hit is not None:
            return hit
    fn, base, holder = pf.fn, pf.mesh, {}

    @functools.wraps(fn)  # JAX's tracing errors then name the user's function
    def flat_fn(*flat):
        out = fn(*jax.tree_util.tree_unflatten(in_tree, flat))
        leaves, holder["tree"] = jax.tree_util.tree_flatten(out)
        return leaves

    with partition_mesh(base), _mesh_context_for(base):
        graph, _ = trace(flat_fn, *avals)
    if key is not None:
        _SHARED_TRACES[-1][key] = (graph, holder["tree"])
    return graph, holder["tree"]


def _lower(pf: Partitioned, in_tree, avals, inputs) -> Lowered:
    base = pf.mesh
    t0 = time.perf_counter()
    graph, out_tree = _trace(pf, in_tree, avals)
    holder = {"tree": out_tree}
    t1 = time.perf_counter()
    graph = constrain_outputs(graph, flat_specs(pf.out_specs, holder["tree"], "out_specs"), base)
    mesh, fixed, seeds = resolve_annotations(graph, base)
    _resolve_inputs(graph, mesh, inputs, fixed, seeds)
    check_supported(graph)
    prop = propagate(graph, mesh, fixed, seeds)
    t2 = time.perf_counter()
    donate = _donated_leaves(pf.donate, in_tree)
    program = build(graph, prop, mesh, avals, donate)
    t3 = time.perf_counter()
    timings = {"trace_s": t1 - t0, "propagate_s": t2 - t1, "partition_s": t3 - t2}
    return Lowered(graph, prop, mesh, program, holder["tree"], t3 - t0, timings)


def _mesh_context_for(mesh: MeshInfo):
    """The partition's mesh (its Auto form: nothing is typed) is JAX's context mesh while `fn`
    is traced, unless the user set one: a bare PartitionSpec in with_sharding_constraint then
    names its axes. Explicit-mode code (reshard, out_sharding=) runs under the user's
    jax.set_mesh, as under jax.jit."""
    if not jax.sharding.get_abstract_mesh().empty:
        return contextlib.nullcontext()
    return mesh_context(mesh.auto_mesh())


def resolve_annotations(graph: Graph, base: MeshInfo):
    """Refine the mesh for shard() layouts, then resolve every annotation to a fixed spec (a
    with_sharding_constraint with unconstrained dims only seeds its result)."""
    anns = [e for e in graph.eqns if e.prim is annotate_p]
    lays = [layout(e.params["ann"], base, e.inputs[0].shape) for e in anns
            if e.params["ann"].kind == "shard"]
    mesh = base.refine(refinement(lays, base)) if lays else base
    fixed, seeds = {}, {}
    for e in anns:
        ann = e.params["ann"]
        spec = resolve(ann, mesh, e.inputs[0].shape)
        fixed[e.outputs[0]] = (spec, f"annotation {ann.describe()} at {ann.where}")
    for e in graph.eqns:
        ann = (constraint_annotation(e, base) if e.prim in (SHARDING_CONSTRAINT, RESHARD)
               else typed_annotation(e, base))
        if ann is not None:
            spec = resolve(ann, mesh, e.inputs[0].shape)
            why = f"{e.prim.name} {spec.to_partition_spec()} at {e.where}"
            (seeds if unconstrained(e) else fixed)[e.outputs[0]] = (spec, why)
    for e in graph.eqns:
        if e.prim.name == "shard_map":  # a gshard.manual region: its results are fixed
            for o, p in zip(e.outputs, e.params["out_specs"]):
                fixed[o] = (ShardingSpec.from_partition_spec(p, len(o.shape)),
                            f"result of a manual region at {e.where}")
    return mesh, fixed, seeds


def _resolve_inputs(graph: Graph, mesh: MeshInfo, inputs, fixed: dict, seeds: dict):
    for v, entry in zip(graph.invars, inputs):
        if entry is None:
            continue
        kind, ann = entry
        spec = resolve(ann, mesh, v.shape)
        if kind == "in_specs":
            fixed[v] = (spec, f"in_specs {spec.to_partition_spec()}")
        else:
            seeds[v] = (spec, f"committed input sharding {spec.to_partition_spec()}")


def constrain_outputs(graph: Graph, specs: list, mesh: MeshInfo) -> Graph:
    """out_specs: each constrained output goes through an annotation equation."""
    if all(s is None for s in specs):
        return graph
    eqns, outs = list(graph.eqns), []
    for i, (x, s) in enumerate(zip(graph.outvars, specs)):
        ann = spec_annotation(s, len(x.shape), mesh, f"out_specs entry for output {i}")
        if ann is None:
            outs.append(x)
            continue
        y = Value(x.aval)
        eqns.append(Eqn(len(eqns), annotate_p, [x], [y], {"ann": ann},
                        f"out_specs entry for output {i} of the gshard.partition call"))
        outs.append(y)
    return Graph(graph.invars, outs, eqns, graph.consts)


def _donated_leaves(donate, in_tree) -> tuple[int, ...]:
    if not donate:
        return ()
    counts = [t.num_leaves for t in in_tree.children()]
    starts = np.cumsum([0] + counts)
    return tuple(j for a in donate for j in range(starts[a], starts[a + 1]))
