"""The per-device program: evaluate the flat graph on local shards, one rule per equation."""
from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp

from ..propagate.engine import Propagation
from ..spec import ShardingSpec
from ..trace.graph import Graph, Lit, Value
from .local import Ctx
from .shard import Local
from ..registry import RULES


def literal(x: Lit) -> Local:
    return Local(jnp.asarray(x.val, x.aval.dtype), ShardingSpec.replicated(len(x.shape)), x.shape)


def run_graph(ctx: Ctx, graph: Graph, prop: Propagation, local_args) -> list:
    """Run `graph` on this device's shards; returns the local output values at their specs."""
    ctx.prop = prop
    env = {v: Local(a, prop.spec(v), v.shape) for v, a in zip(graph.invars, local_args)}
    read = run_eqns(ctx, graph, env, prop)
    ctx.at(None)
    specs = [prop.spec(x).drop_partial() for x in graph.outvars]
    # a jax.Array cannot hold an uneven split: such outputs leave gathered, by a recorded reshard
    targets = [s.holdable(x.shape, ctx.mesh.sizes) for s, x in zip(specs, graph.outvars)]
    sources = output_sources(graph)
    locs = combine_partials(ctx, [read(x) for x in graph.outvars], targets, sources)
    out = []
    for loc, t, s, src in zip(locs, targets, specs, sources):
        ctx.rec.source = src
        why = "program output" if t == s else f"program output: {UNEVEN_OUTPUT}"
        out.append(ctx.reshard(loc, t, why).val)
    return out


UNEVEN_OUTPUT = "a jax.Array holds no uneven split"


def output_sources(graph: Graph) -> list[str]:
    """Per program output, the user's line that computed it."""
    producer = {id(o): e for e in graph.eqns for o in e.outputs}
    inputs = {id(v) for v in graph.invars}
    out = []
    for i, x in enumerate(graph.outvars):
        if id(x) in producer:
            out.append(f"{producer[id(x)].where} (output {i})")
        elif id(x) in inputs:
            out.append(f"output {i} (an input returned unchanged)")
        else:
            out.append(f"output {i} (a constant)")
    return out


def combine_partials(ctx: Ctx, locs: list, targets: list, sources: list) -> list:
    """Reduce the outputs left as partial sums over the same axes in one combined AllReduce
    (gradients of replicated weights, typically), unless a ReduceScatter serves one better."""
    groups: dict = {}
    for i, (loc, t) in enumerate(zip(locs, targets)):
        p = loc.spec.partial
        if p and not set(p) & set(t.used_axes()) and jnp.issubdtype(loc.dtype, jnp.floating):
            groups.setdefault(p, []).append(i)
    out = list(locs)
    for axes, idx in groups.items():
        if len(idx) < 2:
            continue
        why = f"partial sums from {locs[idx[0]].origin or 'the program'} and others, at the output"
        ctx.rec.source = sources[idx[0]]
        vals = ctx.all_reduce_many([locs[i].val for i in idx], axes, why)
        for i, v in zip(idx, vals):
            out[i] = Local(v, locs[i].spec.with_partial(()), locs[i].shape)
    return out


class InvariantError(AssertionError):
    """A partition rule broke an invariant of the per-device program (a gshard bug)."""


def check_results(ctx: Ctx, eqn, outs: list) -> None:
    """Every result has its spec's local shape and dtype, and is a partial sum only over axes an
    operand was partial over or the rule itself contracted: a reduced value never stays partial,
    so every partial sum is reduced exactly once."""
    if len(outs) != len(eqn.outputs):
        raise InvariantError(f"rule for {eqn.prim.name} at {eqn.where} returned {len(outs)} results")
    allowed = ctx.allowed_partial(eqn)
    for o, loc in zip(eqn.outputs, outs):
        want = loc.spec.local_shape(o.shape, ctx.sizes)
        if tuple(loc.val.shape) != want or loc.shape != o.shape or loc.val.dtype != o.aval.dtype:
            raise InvariantError(
                f"rule for {eqn.prim.name} at {eqn.where}: local {loc.val.dtype}{list(loc.val.shape)} "
                f"for spec {loc.spec} of {o.aval.str_short()} (expected local {list(want)})")
        extra = set(loc.spec.partial) - allowed
        if extra:
            raise InvariantError(
                f"rule for {eqn.prim.name} at {eqn.where} marks its result partial over {sorted(extra)} "
                f"but no operand it used was partial there: that sum would be reduced twice")


def run_sub(ctx: Ctx, graph: Graph, ins: list) -> list:
    """Run a loop or branch body on Locals bound to its inputs; returns its output Locals."""
    env = dict(zip(graph.invars, ins))
    outer = ctx.eqn
    with ctx.scope():
        read = run_eqns(ctx, graph, env, ctx.prop)
        outs = [read(x) for x in graph.outvars]
    ctx.at(outer)  # back to the loop / branch equation for what its rule does next
    return outs


def run_eqns(ctx: Ctx, graph: Graph, env: dict, prop: Propagation):
    def read(x):
        return literal(x) if isinstance(x, Lit) else env[x]

    ctx.at(None)
    for v, c in graph.consts.items():
        full = Local(jnp.asarray(c), ShardingSpec.replicated(len(v.shape)), v.shape)
        env[v] = ctx.reshard(full, prop.spec(v), "closed-over constant placed by its spec")
    uses = fanout(graph)
    flow = (_readers(graph), env)         # for rules that look one reader ahead
    for eqn in graph.eqns:
        ctx.flow = flow                   # (a body run by the previous rule set its own)
        ins = [read(x) for x in eqn.inputs]
        targets = [prop.spec(o) for o in eqn.outputs]
        outs = RULES[eqn.prim].part(ctx.begin(eqn), eqn, ins, targets)
        check_results(ctx, eqn, outs)
        for o, loc in zip(eqn.outputs, outs):
            if loc.spec.partial and not loc.origin:
                inherited = [i.origin for i in ins if i.spec.partial and i.origin]
                loc = replace(loc, origin=inherited[0] if inherited
                              else f"{eqn.prim.name} at {eqn.where}")
            if loc.spec.partial and uses.get(o, 0) > 1:  # one reduction shared by its users
                loc = ctx.reshard(loc, targets[eqn.outputs.index(o)].drop_partial(),
                                  f"a partial sum read by {uses[o]} ops, reduced once")
            env[o] = loc
    return read


def _readers(graph: Graph) -> dict:
    """Value -> the equations that read it; a program or body output counts as None."""
    out: dict = {}
    for e in graph.eqns:
        for x in {id(x): x for x in e.inputs if isinstance(x, Value)}.values():
            out.setdefault(x, []).append(e)
    for x in graph.outvars:
        if isinstance(x, Value):
            out.setdefault(x, []).append(None)
    return out


def fanout(graph: Graph) -> dict:
    """Value -> number of distinct equations (and program outputs) that read it."""
    out: dict = {}
    for e in graph.eqns:
        for x in {id(x): x for x in e.inputs if isinstance(x, Value)}.values():
            out[x] = out.get(x, 0) + 1
    for x in graph.outvars:
        if isinstance(x, Value):
            out[x] = out.get(x, 0) + 1
    return out
