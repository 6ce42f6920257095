"""dot_general, from einsum dimension roles: batch, contracting, lhs-free, rhs-free.

Batch-matched splits compute locally; contracting splits give a partial sum (reduced lazily:
AllReduce, or ReduceScatter when the consumer wants the result split); free-dim splits stay local.
Among the shardings the target and the operands suggest, the one moving the fewest bytes wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
from jax.extend.core import primitives as P

from ..spmd.shard import Local
from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.plan import reshard_cost


@dataclass(frozen=True)
class Roles:
    lb: tuple
    rb: tuple
    lc: tuple
    rc: tuple
    lf: tuple
    rf: tuple

    @staticmethod
    def of(eqn) -> "Roles":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lr, rr = len(eqn.inputs[0].shape), len(eqn.inputs[1].shape)
        lf = tuple(d for d in range(lr) if d not in lc and d not in lb)
        rf = tuple(d for d in range(rr) if d not in rc and d not in rb)
        return Roles(tuple(lb), tuple(rb), tuple(lc), tuple(rc), lf, rf)


@dataclass(frozen=True)
class Plan:
    """Mesh axes per role: one tuple per batch / lhs-free / rhs-free / contracting dim."""
    batch: tuple
    lfree: tuple
    rfree: tuple
    contract: tuple

    def axes(self):
        return [a for group in (self.batch, self.lfree, self.rfree, self.contract) for t in group
                for a in t]

    def valid(self) -> bool:
        ax = self.axes()
        return len(ax) == len(set(ax))

    def lhs(self, r: Roles, rank: int) -> ShardingSpec:
        return _spec(rank, zip(r.lb, self.batch), zip(r.lc, self.contract), zip(r.lf, self.lfree))

    def rhs(self, r: Roles, rank: int) -> ShardingSpec:
        return _spec(rank, zip(r.rb, self.batch), zip(r.rc, self.contract), zip(r.rf, self.rfree))

    def out(self) -> ShardingSpec:
        partial = tuple(a for t in self.contract for a in t)
        return ShardingSpec(tuple(self.batch) + tuple(self.lfree) + tuple(self.rfree), partial)


def _spec(rank, *pairs) -> ShardingSpec:
    dims = [()] * rank
    for group in pairs:
        for d, axes in group:
            dims[d] = tuple(axes)
    return ShardingSpec(tuple(dims))


def _dims(spec, rank):
    return spec.dims if spec is not None else ((),) * rank


# ----- propagation ------------------------------------------------------------------------------
def prop_dot(eqn, ins, outs, mesh):
    r = Roles.of(eqn)
    lr, rr = len(eqn.inputs[0].shape), len(eqn.inputs[1].shape)
    ld, rd = _dims(ins[0], lr), _dims(ins[1], rr)
    nb, nlf = len(r.lb), len(r.lf)
    out_rank = len(eqn.outputs[0].shape)
    od = _dims(outs[0], out_rank)
    batch = [ld[i] or rd[j] for i, j in zip(r.lb, r.rb)]
    fwd = ShardingSpec(tuple(batch) + tuple(ld[i] for i in r.lf) + tuple(rd[i] for i in r.rf))
    contract = [ld[i] or rd[j] for i, j in zip(r.lc, r.rc)]
    ob, olf, orf = od[:nb], od[nb:nb + nlf], od[nb + nlf:]
    lhs = _spec(lr, zip(r.lb, ob), zip(r.lf, olf), zip(r.lc, contract))
    rhs = _spec(rr, zip(r.rb, ob), zip(r.rf, orf), zip(r.rc, contract))
    return [lhs, rhs], [fwd]


# ----- partitioning -----------------------------------------------------------------------------
def _contract_choice(r: Roles, lhs: Local, rhs: Local, used: set, lbig: bool):
    out = []
    for i, j in zip(r.lc, r.rc):
        la, ra = lhs.spec.dims[i], rhs.spec.dims[j]
        if la == ra or not ra:
            pick = la
        elif not la:
            pick = ra
        else:
            pick = la if lbig else ra
        if set(pick) & used:
            pick = ()
        used |= set(pick)
        out.append(pick)
    return tuple(out)


def _candidates(r: Roles, lhs: Local, rhs: Local, target: ShardingSpec):
    nb, nlf = len(r.lb), len(r.lf)
    lbig = math.prod(lhs.shape) >= math.prod(rhs.shape)
    t = target.dims
    used = set(target.used_axes())
    yield Plan(t[:nb], t[nb:nb + nlf], t[nb + nlf:], _contract_choice(r, lhs, rhs, used, lbig))
    ld, rd = lhs.spec.dims, rhs.spec.dims
    big, small = (ld, rd) if lbig else (rd, ld)
    bl, bs = (r.lb, r.rb) if lbig else (r.rb, r.lb)
    batch = tuple(big[i] or small[j] for i, j in zip(bl, bs))
    lfree, rfree = tuple(ld[i] for i in r.lf), tuple(rd[i] for i in r.rf)
    used = {a for g in (batch, lfree, rfree) for tt in g for a in tt}
    yield Plan(batch, lfree, rfree, _contract_choice(r, lhs, rhs, used, lbig))


def _cost(plan: Plan, r: Roles, lhs: Local, rhs: Local, target, out_shape, out_item, sizes):
    lspec, rspec = plan.lhs(r, lhs.rank), plan.rhs(r, rhs.rank)
    c = reshard_cost(lhs.spec, lspec, lhs.shape, lhs.dtype.itemsize, sizes)
    c += reshard_cost(rhs.spec, rspec, rhs.shape, rhs.dtype.itemsize, sizes)
    return c + reshard_cost(plan.out(), target, out_shape, out_item, sizes)


def _partials(plan: Plan, lhs: Local, rhs: Local):
    """Which operand's partial sum may ride through the (linear) dot."""
    used = set(plan.axes())
    lp = lhs.spec.partial if not rhs.spec.partial and not set(lhs.spec.partial) & used else ()
    rp = rhs.spec.partial if not lhs.spec.partial and not set(rhs.spec.partial) & used else ()
    return lp, rp


@rule(P.dot_general_p, prop=prop_dot)
def part_dot(ctx, eqn, ins, targets):
    lhs, rhs = ins
    r = Roles.of(eqn)
    out_v = eqn.outputs[0]
    item = jnp.dtype(out_v.aval.dtype).itemsize
    plans = [p for p in _candidates(r, lhs, rhs, targets[0]) if p.valid()]
    plan = min(plans, key=lambda p: _cost(p, r, lhs, rhs, targets[0], out_v.shape, item, ctx.sizes))
    lp, rp = _partials(plan, lhs, rhs)
    lx = ctx.reshard(lhs, plan.lhs(r, lhs.rank).with_partial(lp), "dot_general lhs")
    rx = ctx.reshard(rhs, plan.rhs(r, rhs.rank).with_partial(rp), "dot_general rhs")
    lx, rx = ctx.masked(lx, r.lc, 0), ctx.masked(rx, r.rc, 0)
    val = eqn.prim.bind(lx.val, rx.val, **eqn.params)
    out = plan.out()
    return [Local(val, out.with_partial(ctx.new_partial(out.partial) + lp + rp), out_v.shape)]
