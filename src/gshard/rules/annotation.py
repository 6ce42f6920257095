"""Annotations (gshard's primitive and jax.lax.with_sharding_constraint): the result is fixed to
the user's spec; the operand is resharded to it."""
from __future__ import annotations

from ..annotate import annotate_p
from ..compat import primitive
from ..registry import rule
from ..spmd.shard import Local

SHARDING_CONSTRAINT = primitive("sharding_constraint")
RESHARD = primitive("reshard")  # jax.sharding.reshard; also the seed of jax.grad's cotangent


def prop_annotation(eqn, ins, outs, mesh):
    return [outs[0]], [None]


def prop_constraint(eqn, ins, outs, mesh):
    """A JAX sharding call: fixed like an annotation (then the forward proposal is ignored), or,
    with unconstrained dims or no mesh, a pass-through."""
    return [outs[0]], [ins[0]]


@rule(annotate_p, prop=prop_annotation, fwd_level=0)
def part_annotation(ctx, eqn, ins, targets):
    ann = eqn.params.get("ann")
    what = f"user annotation {ann.describe()}" if ann else "with_sharding_constraint"
    x = ctx.reshard(ins[0], targets[0], what)
    return [Local(x.val, x.spec, x.shape)]


rule([SHARDING_CONSTRAINT, RESHARD], prop=prop_constraint, fwd_level=0)(part_annotation)
