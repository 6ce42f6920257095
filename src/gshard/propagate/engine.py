"""Sharding propagation (GShard §3.2, as XLA implements it): a fixed point over the whole program.

User annotations are fixed. Rules propose specs forward (operands -> results) and backward
(results -> operands); a value only takes a strictly more specific spec (more tiles), so the
iteration terminates. Priority levels: 0 pass-through ops, 1 everything else, 2 broadcasts
backward, 3 broadcasts forward. Every value records why it has its spec.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ..errors import UnsupportedPrimitiveError
from ..mesh import MeshInfo
from ..registry import RULES, Rule
from ..spec import ShardingSpec, merge
from ..trace.graph import Graph, Value, walk

LEVELS = 4


@dataclass
class Propagation:
    mesh: MeshInfo
    specs: dict
    why: dict
    fixed: set
    versions: dict = field(default_factory=dict)   # Value -> times its spec changed

    def spec(self, x) -> ShardingSpec:
        if isinstance(x, Value):
            return self.specs.get(x) or ShardingSpec.replicated(len(x.shape))
        return ShardingSpec.replicated(len(x.shape))


def propagate(graph: Graph, mesh: MeshInfo, fixed: dict, seeds: dict | None = None) -> Propagation:
    """Propagate from `fixed` (Value -> spec with a reason) to every value of `graph`. `seeds`
    (same form) are starting specs that propagation may refine but never undo."""
    state = Propagation(mesh, {}, {}, set())
    for v, (spec, why) in fixed.items():
        state.specs[v], state.why[v] = spec, why
        state.fixed.add(v)
    for v, (spec, why) in (seeds or {}).items():
        if v not in state.fixed:
            state.specs[v], state.why[v] = spec, why
    for level in range(LEVELS):
        _run_level(graph, state, level)
    for v in _all_values(graph):
        if state.specs.get(v) is None:
            state.specs[v] = ShardingSpec.replicated(len(v.shape))
            state.why[v] = "default: no rule gave it a sharding (replicated)"
    return state


def _run_level(graph: Graph, state: Propagation, level: int):
    """Forward and backward sweeps until nothing changes. An equation whose operands and
    results kept their specs since it last ran is skipped: its rule (a function of those specs)
    would propose what it proposed then, which changed nothing more."""
    eqns = [(e, None if e.subs else tuple(x for x in (*e.inputs, *e.outputs)
                                           if isinstance(x, Value))) for e in walk(graph)]
    seen: dict = {}
    for _ in range(10_000):
        changed = False
        for eqn, vals in eqns:
            changed |= _apply_if_stale(eqn, vals, state, level, seen)
        for eqn, vals in reversed(eqns):
            changed |= _apply_if_stale(eqn, vals, state, level, seen)
        if not changed:
            return


def _apply_if_stale(eqn, vals, state: Propagation, level: int, seen: dict) -> bool:
    if vals is None:                   # loop / branch bodies: ties reach inside, always rerun
        return _apply(eqn, state, level)
    get = state.versions.get
    snap = tuple([get(x, 0) for x in vals])
    key = id(eqn)
    if seen.get(key) == snap:
        return False
    seen[key] = snap
    return _apply(eqn, state, level)


def _apply_ties(eqn, rule: Rule, state: Propagation) -> bool:
    """Loop/branch bodies: outer values and body values take each other's specs."""
    changed = False
    for outer, inner, to_inner, to_outer in rule.ties(eqn):
        why = f"through the body of eqn #{eqn.index} {eqn.prim.name}"
        if isinstance(outer, Value) and state.specs.get(outer) is not None:
            changed |= _offer(state, inner, to_inner(state.specs[outer]), why, eqn)
        if isinstance(inner, Value) and state.specs.get(inner) is not None:
            changed |= _offer(state, outer, to_outer(state.specs[inner]), why, eqn)
    return changed


def _apply(eqn, state: Propagation, level: int) -> bool:
    rule = RULES[eqn.prim]
    if rule.ties is not None:
        return _apply_ties(eqn, rule, state)
    fwd_level, bwd_level = rule.levels_of(eqn)
    fwd, bwd = level >= fwd_level, level >= bwd_level
    if not (fwd or bwd):
        return False
    ins = [state.specs.get(x) if isinstance(x, Value) else None for x in eqn.inputs]
    outs = [state.specs.get(x) for x in eqn.outputs]
    in_props, out_props = rule.prop(eqn, ins, outs, state.mesh)
    changed = False
    if fwd:
        for v, p in zip(eqn.outputs, out_props):
            changed |= _offer(state, v, p, f"forward from eqn #{eqn.index} {eqn.prim.name}", eqn,
                              exact=rule.carries_padded and _held(eqn, state, v, p))
    if bwd:
        for v, p in zip(eqn.inputs, in_props):
            changed |= _offer(state, v, p, f"backward from eqn #{eqn.index} {eqn.prim.name}", eqn,
                              exact=eqn.prim.name == "gshard_annotate"
                              or (rule.carries_padded and _held(eqn, state, v, p)))
    return changed


def _held(eqn, state: Propagation, v, proposal) -> bool:
    """A split with padded tiles (finer than the dim has elements: ZeRO's update of a small
    parameter over many replicas) that a same-shaped neighbour already holds passes on unchanged
    through elementwise math instead of being dropped there and regathered."""
    if proposal is None or not isinstance(v, Value):
        return False
    return any(isinstance(x, Value) and x is not v and x.shape == v.shape
               and state.specs.get(x) is not None and state.specs[x].dims == proposal.dims
               for x in (*eqn.inputs, *eqn.outputs))


def _offer(state: Propagation, v, proposal, reason: str, eqn, exact: bool = False) -> bool:
    """`exact`: an annotation's own spec offered to its operand, kept even where it splits a
    dim into more tiles than elements (padded tiles: what the user asked for)."""
    if proposal is None or not isinstance(v, Value) or v in state.fixed:
        return False
    proposal = sanitize(proposal, v.shape, state.mesh, exact)
    cur = state.specs.get(v)
    new = merge(cur, proposal)
    if new is None or new == cur:
        return False
    if cur is not None and new.num_tiles(state.mesh.sizes) <= cur.num_tiles(state.mesh.sizes):
        return False
    state.specs[v] = new
    state.why[v] = f"{reason} ({eqn.where})"
    state.versions[v] = state.versions.get(v, 0) + 1
    return True


def sanitize(spec: ShardingSpec, shape, mesh: MeshInfo, exact: bool = False) -> ShardingSpec:
    """Drop partial, repeated axes, and (unless exact) splits finer than the dim has elements."""
    return _sanitize(spec, tuple(shape), mesh.names, mesh.shape, exact)


@functools.lru_cache(maxsize=1 << 16)
def _sanitize(spec: ShardingSpec, shape: tuple, names: tuple, sizes: tuple, exact: bool):
    size = dict(zip(names, sizes))
    seen, dims = set(), []
    for n, axes in zip(shape, spec.dims):
        keep, tiles = [], 1
        for a in axes:
            if a in seen or a not in size or (tiles * size[a] > n and not exact):
                break
            keep.append(a)
            seen.add(a)
            tiles *= size[a]
        dims.append(tuple(keep))
    return ShardingSpec(tuple(dims))


def _all_values(graph: Graph):
    seen = list(graph.invars)
    for e in walk(graph):
        for sub in e.subs:
            seen += sub.invars + list(sub.consts)
        seen += [x for x in e.inputs if isinstance(x, Value)]
        seen += e.outputs
    return seen


def check_supported(graph: Graph):
    """Fail before running if a primitive has no propagation or partition rule."""
    for e in walk(graph):
        if e.prim not in RULES:
            shapes = ", ".join(str(x.aval.str_short()) for x in e.inputs)
            raise UnsupportedPrimitiveError(
                f"gshard has no sharding rule for primitive '{e.prim.name}' (operands: {shapes})"
                f"\n  at {e.where}"
                f"\n  fix: rewrite this op with supported ones (see `python -m gshard rules`), or wrap "
                f"the region in gshard.manual(...) to write its per-device code yourself")
