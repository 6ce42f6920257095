"""stack/unstack, and computing a primitive whole then slicing it (`part_whole`: small values,
operand-free ones, and a last resort other rules name)."""
from __future__ import annotations

import jax.numpy as jnp

from ..compat import primitive
from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.shard import Local
from .elementwise import merge

STACK, UNSTACK = primitive("stack"), primitive("unstack")


def _insert(spec, axis):
    return None if spec is None else ShardingSpec(spec.dims[:axis] + ((),) + spec.dims[axis:])


def _remove(spec, axis):
    return None if spec is None else ShardingSpec(spec.dims[:axis] + spec.dims[axis + 1:])


def prop_stack(eqn, ins, outs, mesh):
    axis, merged = eqn.params["axis"], None
    for s in ins:
        merged = merge(merged, s)
    bwd = _remove(outs[0], axis)
    return [bwd] * len(ins), [_insert(merged, axis)]


@rule(STACK, prop=prop_stack, fwd_level=0)
def part_stack(ctx, eqn, ins, targets):
    axis, t = eqn.params["axis"], targets[0]
    want = ShardingSpec(t.dims[:axis] + t.dims[axis + 1:])
    vals = [ctx.reshard(x, want, "stack operand").val for x in ins]
    out = Local(jnp.stack(vals, axis), _insert(want, axis), eqn.outputs[0].shape)
    return [ctx.reshard(out, t, "stack result")]


def prop_unstack(eqn, ins, outs, mesh):
    axis, merged = eqn.params["axis"], None
    for s in outs:
        merged = merge(merged, s)
    fwd = _remove(ins[0], axis)
    return [_insert(merged, axis)], [fwd] * len(eqn.outputs)


@rule(UNSTACK, prop=prop_unstack, fwd_level=0)
def part_unstack(ctx, eqn, ins, targets):
    axis, t = eqn.params["axis"], targets[0]
    x = ctx.reshard(ins[0], _insert(t, axis), "unstack operand")
    vals = [jnp.take(x.val, i, axis=axis) for i in range(x.val.shape[axis])]
    outs = [Local(v, t, o.shape) for v, o in zip(vals, eqn.outputs)]
    return [ctx.reshard(o, tt, "unstack result") for o, tt in zip(outs, targets)]


def prop_none(eqn, ins, outs, mesh):
    return [None] * len(ins), [None] * len(eqn.outputs)


def part_whole(ctx, eqn, ins, targets):
    """Compute on whole (replicated) operands, then slice each result to its target spec."""
    vals = [ctx.reshard(x, ShardingSpec.replicated(x.rank), f"{eqn.prim.name} needs whole operands").val
            for x in ins]
    outs = eqn.prim.bind(*vals, **eqn.params)
    outs = outs if eqn.prim.multiple_results else [outs]
    res = []
    for o, v, t in zip(outs, eqn.outputs, targets):
        whole = Local(o, ShardingSpec.replicated(len(v.shape)), v.shape)
        res.append(ctx.reshard(whole, t, f"{eqn.prim.name} result sliced to its spec"))
    return res


# ----- operand-free values autodiff emits (cond's unused residual slots): made locally ---------
CONSTANT = [p for p in (primitive("empty2"),) if p is not None]
rule(CONSTANT, prop=prop_none)(part_whole)
