"""A flat, analysable copy of a traced jaxpr.

`jit`, `custom_jvp_call`, `custom_vjp_call` and `remat` are inlined (their numerics are those of
their body), so propagation sees one program; `scan`, `while` and `cond` stay as equations whose
rules recurse into their bodies. Dead equations are dropped.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
from jax.extend.core import primitives as P
from jax.extend import core as jcore

from ..errors import source_line

_ids = itertools.count()


class Value:
    """A program value: one tensor in the unpartitioned program."""
    __slots__ = ("id", "aval")

    def __init__(self, aval):
        self.id = next(_ids)
        self.aval = aval

    @property
    def shape(self):
        return tuple(self.aval.shape)

    def __repr__(self):
        return f"v{self.id}:{self.aval.str_short()}"


@dataclass(frozen=True)
class Lit:
    """A literal constant operand."""
    val: Any
    aval: Any

    @property
    def shape(self):
        return tuple(self.aval.shape)


@dataclass
class Eqn:
    index: int
    prim: Any
    inputs: list
    outputs: list
    params: dict
    source_info: Any = field(repr=False, default=None)
    subs: list = field(default_factory=list, repr=False)  # body graphs of scan / while / cond

    @property
    def where(self) -> str:
        if isinstance(self.source_info, str):  # an equation gshard added (out_specs)
            return self.source_info
        return source_line(self.source_info)


@dataclass
class Graph:
    invars: list
    outvars: list
    eqns: list
    consts: dict  # Value -> concrete array

    def users(self) -> dict:
        out: dict = {}
        for e in self.eqns:
            for x in e.inputs:
                if isinstance(x, Value):
                    out.setdefault(x, []).append(e)
        return out


INLINE = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr"}


def trace(fn: Callable, *avals) -> tuple[Graph, Any]:
    """Trace `fn` at `avals` (flat) and return the flat Graph and the output tree."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*avals)
    graph = from_closed_jaxpr(closed)
    return dce(graph), out_shape


def from_closed_jaxpr(closed, outer_src=None) -> Graph:
    env: dict = {}
    consts: dict = {}
    for v, c in zip(closed.jaxpr.constvars, closed.consts):
        env[v] = Value(v.aval)
        consts[env[v]] = c
    invars = [env.setdefault(v, Value(v.aval)) for v in closed.jaxpr.invars]
    eqns: list = []
    outs = _inline(closed.jaxpr, env, eqns, consts, outer_src)
    return Graph(invars, outs, eqns, consts)


def _atom(env, a):
    if isinstance(a, jcore.Literal):
        return Lit(a.val, a.aval)
    return env[a]


def _has_user_frame(source_info) -> bool:
    from jax._src import source_info_util
    try:
        return source_info_util.user_frame(source_info.traceback) is not None
    except Exception:  # pragma: no cover - defensive: jax internals changed
        return False


def _inline(jaxpr, env, eqns, consts, outer_src=None):
    near = outer_src  # the user's line for equations JAX emitted with none of their own
    for e in jaxpr.eqns:
        ins = [_atom(env, a) for a in e.invars]
        key = INLINE.get(e.primitive.name)
        src = e.source_info
        if _has_user_frame(src):
            near = src if outer_src is None else near
        elif near is not None:
            src = near  # a cached inner trace or an internal op: point at the user's call
        if key is not None and key in e.params:
            outs = _inline_call(e.params[key], ins, eqns, consts, src)
            for v, o in zip(e.outvars, outs):
                env[v] = o
            continue
        outs = [Value(v.aval) for v in e.outvars]
        for v, o in zip(e.outvars, outs):
            env[v] = o
        subs = [dce(from_closed_jaxpr(j, src)) for j in _bodies(e)]
        for eqn in _canonical(e.primitive, ins, outs, dict(e.params), src, subs):
            eqns.append(dataclasses.replace(eqn, index=len(eqns)))
    return [_atom(env, a) for a in jaxpr.outvars]


def _canonical(prim, ins, outs, params, src, subs) -> list:
    """The equation in the forms the rules know: `reshape(x, dimensions=perm)` is a transpose
    by `perm` followed by a plain reshape (JAX's grouped-convolution gradients emit it)."""
    if prim is P.reshape_p and params.get("dimensions") is not None:
        perm = tuple(params["dimensions"])
        x = ins[0]
        moved = Value(x.aval.update(shape=tuple(x.shape[p] for p in perm)))
        return [Eqn(0, P.transpose_p, [x], [moved], {"permutation": perm}, src),
                Eqn(0, prim, [moved], outs, dict(params, dimensions=None), src)]
    return [Eqn(0, prim, ins, outs, params, src, subs)]


def _bodies(e) -> list:
    """The closed jaxprs of a control-flow equation, in the order its rule expects."""
    name = e.primitive.name
    if name == "scan":
        return [e.params["jaxpr"]]
    if name == "while":
        return [e.params["cond_jaxpr"], e.params["body_jaxpr"]]
    if name == "cond":
        return list(e.params["branches"])
    return []


def walk(graph: "Graph"):
    """Every equation of a graph and of the bodies nested in it."""
    for e in graph.eqns:
        yield e
        for sub in e.subs:
            yield from walk(sub)


def _inline_call(sub, ins, eqns, consts, src):
    inner = sub.jaxpr if hasattr(sub, "consts") else sub
    env: dict = {}
    if hasattr(sub, "consts"):
        for v, c in zip(inner.constvars, sub.consts):
            env[v] = Value(v.aval)
            consts[env[v]] = c
    for v, x in zip(inner.invars, ins):
        env[v] = x
    return _inline(inner, env, eqns, consts, src)


def dce(graph: Graph) -> Graph:
    live = {x for x in graph.outvars if isinstance(x, Value)}
    kept = []
    for e in reversed(graph.eqns):
        effectful = bool(getattr(e, "effects", None))
        if effectful or any(o in live for o in e.outputs):
            kept.append(e)
            live |= {x for x in e.inputs if isinstance(x, Value)}
    kept.reverse()
    for i, e in enumerate(kept):
        e.index = i
    consts = {v: c for v, c in graph.consts.items() if v in live}
    return Graph(graph.invars, graph.outvars, kept, consts)
