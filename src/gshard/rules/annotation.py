"""The annotation primitive: its result is fixed to the user's spec; its operand is resharded."""
from __future__ import annotations

from ..annotate import annotate_p
from ..registry import rule
from ..spmd.local import Local


def prop_annotation(eqn, ins, outs, mesh):
    return [outs[0]], [None]


@rule(annotate_p, prop=prop_annotation, fwd_level=0)
def part_annotation(ctx, eqn, ins, targets):
    ann = eqn.params["ann"]
    x = ctx.reshard(ins[0], targets[0], f"user annotation {ann.describe()}")
    return [Local(x.val, x.spec, x.shape)]
