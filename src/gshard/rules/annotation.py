"""The annotation primitive: its result is fixed to the user's spec; its operand is resharded."""
from __future__ import annotations

from ..annotate import annotate_p
from ..spmd.local import Local
from ..spmd.table import register as register_part
from ..propagate.engine import register as register_prop


def prop_annotation(eqn, ins, outs, mesh):
    return [outs[0]], [None]


register_prop(annotate_p, prop_annotation, fwd_level=0)


@register_part(annotate_p)
def part_annotation(ctx, eqn, ins, targets):
    ann = eqn.params["ann"]
    x = ctx.reshard(ins[0], targets[0], f"user annotation {ann.describe()}")
    return [Local(x.val, x.spec, x.shape)]
