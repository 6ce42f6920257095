"""The partition rule table: primitive -> rule(ctx, eqn, ins: list[Local], targets) -> outs."""
from __future__ import annotations

RULES: dict = {}


def register(prims):
    """Decorator: register the partition rule for one primitive or a list of them."""
    def deco(fn):
        for p in prims if isinstance(prims, (list, tuple)) else [prims]:
            RULES[p] = fn
        return fn
    return deco
