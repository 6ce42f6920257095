"""scan, while and cond: specs flow through their bodies; bodies run partitioned inside the loop.

Propagation ties each outer value to its body counterpart (a scanned xs drops its leading dim;
a loop carry is the same value on entry, in the body and on exit, so its spec is a fixed point).
Partitioning reshards the operands to the body's specs and runs the body's rules inside
lax.scan / lax.while_loop / lax.switch; predicates and branch indices are made whole first.
"""
from __future__ import annotations

from jax import lax
from jax.extend.core import primitives as P

from ..compat import scan_counts
from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.interpret import run_sub
from ..spmd.shard import Local


def _same(s):
    return s


def _drop0(s):
    return ShardingSpec(s.dims[1:])


def _insert0(s):
    return ShardingSpec(((),) + s.dims)


def _nothing(eqn, ins, outs, mesh):  # pragma: no cover - ties replace the fn for these
    return [None] * len(ins), [None] * len(outs)


# ----- scan -------------------------------------------------------------------------------------
def scan_ties(eqn):
    body = eqn.subs[0]
    nc, ncar = scan_counts(eqn.params)
    bi, bo = body.invars, body.outvars
    ties = [(eqn.inputs[i], bi[i], _same, _same) for i in range(nc)]
    for j in range(ncar):
        ties += [(eqn.inputs[nc + j], bi[nc + j], _same, _same),
                 (eqn.outputs[j], bo[j], _same, _same), (bi[nc + j], bo[j], _same, _same)]
    for k in range(len(bi) - nc - ncar):
        ties.append((eqn.inputs[nc + ncar + k], bi[nc + ncar + k], _drop0, _insert0))
    for k in range(len(bo) - ncar):
        ties.append((eqn.outputs[ncar + k], bo[ncar + k], _drop0, _insert0))
    return ties


def _spec(ctx, x):
    return ctx.prop.spec(x).drop_partial()


def _reshard_all(ctx, xs, specs, why):
    return [ctx.reshard(x, s, why) for x, s in zip(xs, specs)]


@rule(P.scan_p, prop=_nothing, ties=scan_ties)
def part_scan(ctx, eqn, ins, targets):
    body, p = eqn.subs[0], eqn.params
    nc, ncar = scan_counts(p)
    specs = [_spec(ctx, v) for v in body.invars]
    consts = _reshard_all(ctx, ins[:nc], specs[:nc], "scan constant")
    init = _reshard_all(ctx, ins[nc:nc + ncar], specs[nc:nc + ncar], "scan carry on entry")
    xs = _reshard_all(ctx, ins[nc + ncar:], [_insert0(s) for s in specs[nc + ncar:]], "scanned input")
    y_specs = [_spec(ctx, v) for v in body.outvars[ncar:]]

    def step(carry, x):
        locs = consts + [Local(c, s, v.shape) for c, s, v in zip(carry, specs[nc:], body.invars[nc:])]
        locs += [Local(a, s, v.shape) for a, s, v in zip(x, specs[nc + ncar:], body.invars[nc + ncar:])]
        outs = run_sub(ctx, body, locs)
        new = _reshard_all(ctx, outs[:ncar], specs[nc:nc + ncar], "scan carry")
        ys = _reshard_all(ctx, outs[ncar:], y_specs, "scan output")
        return [c.val for c in new], [y.val for y in ys]

    final, ys = lax.scan(step, [c.val for c in init], [x.val for x in xs], length=p["length"],
                         reverse=p["reverse"], unroll=p["unroll"])
    outs = [Local(v, s, o.shape) for v, s, o in zip(final, specs[nc:nc + ncar], eqn.outputs)]
    outs += [Local(v, _insert0(s), o.shape) for v, s, o in zip(ys, y_specs, eqn.outputs[ncar:])]
    return outs


# ----- while ------------------------------------------------------------------------------------
def while_ties(eqn):
    cond, body, p = eqn.subs[0], eqn.subs[1], eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    ties = [(eqn.inputs[i], cond.invars[i], _same, _same) for i in range(cn)]
    ties += [(eqn.inputs[cn + i], body.invars[i], _same, _same) for i in range(bn)]
    for j in range(len(eqn.outputs)):
        b_in, c_in = body.invars[bn + j], cond.invars[cn + j]
        ties += [(eqn.inputs[cn + bn + j], b_in, _same, _same), (eqn.outputs[j], b_in, _same, _same),
                 (b_in, body.outvars[j], _same, _same), (c_in, b_in, _same, _same)]
    return ties


@rule(P.while_p, prop=_nothing, ties=while_ties)
def part_while(ctx, eqn, ins, targets):
    cond, body, p = eqn.subs[0], eqn.subs[1], eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    specs = [_spec(ctx, v) for v in body.invars[bn:]]
    cconsts = _reshard_all(ctx, ins[:cn], [_spec(ctx, v) for v in cond.invars[:cn]], "loop constant")
    bconsts = _reshard_all(ctx, ins[cn:cn + bn], [_spec(ctx, v) for v in body.invars[:bn]],
                           "loop constant")
    init = _reshard_all(ctx, ins[cn + bn:], specs, "loop carry on entry")
    shapes = [o.shape for o in eqn.outputs]

    def carry_locals(vals):
        return [Local(v, s, n) for v, s, n in zip(vals, specs, shapes)]

    def cond_fn(vals):
        (pred,) = run_sub(ctx, cond, cconsts + carry_locals(vals))
        return ctx.reshard(pred, ShardingSpec.replicated(0), "loop predicate").val

    def body_fn(vals):
        outs = run_sub(ctx, body, bconsts + carry_locals(vals))
        return [x.val for x in _reshard_all(ctx, outs, specs, "loop carry")]

    final = lax.while_loop(cond_fn, body_fn, [x.val for x in init])
    return carry_locals(final)


# ----- cond / switch ----------------------------------------------------------------------------
def cond_ties(eqn):
    ties = []
    for branch in eqn.subs:
        ties += [(x, v, _same, _same) for x, v in zip(eqn.inputs[1:], branch.invars)]
        ties += [(o, v, _same, _same) for o, v in zip(eqn.outputs, branch.outvars)]
    return ties


@rule(P.cond_p, prop=_nothing, ties=cond_ties)
def part_cond(ctx, eqn, ins, targets):
    index = ctx.reshard(ins[0], ShardingSpec.replicated(0), "branch index").val
    specs = [_spec(ctx, v) for v in eqn.subs[0].invars]
    ops = _reshard_all(ctx, ins[1:], specs, "branch operand")
    outs = [t.drop_partial() for t in targets]

    def branch_fn(graph):
        def fn(*vals):
            locs = [Local(v, s, x.shape) for v, s, x in zip(vals, specs, graph.invars)]
            res = run_sub(ctx, graph, locs)
            return [r.val for r in _reshard_all(ctx, res, outs, "branch result")]
        return fn

    vals = lax.switch(index, [branch_fn(g) for g in eqn.subs], *[x.val for x in ops])
    return [Local(v, s, o.shape) for v, s, o in zip(vals, outs, eqn.outputs)]
