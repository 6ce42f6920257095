"""XLA's all-reduce combiner, modelled: which AllReduces of a per-device program run as one.

XLA merges independent AllReduces with the same reduction over the same devices into one tuple
AllReduce (one latency, the bytes summed) up to a size threshold, so the compiled program runs
fewer, larger AllReduces than gshard records (haiku ResNet-50, batch-split on 8 CPU devices:
321 recorded, 100 in the compiled HLO, as in XLA's own partitioning of the same step). The model:
in program order, an AllReduce joins the open group of its (reduction, axes) unless it depends on
a member (through any chain of equations) or the group would pass the threshold. AllReduces inside
loops and branches (scan, while, cond) stay as they are.
"""
from __future__ import annotations

from jax.extend.core import Literal

from .flops import COLLECTIVES, _as_jaxpr, _axes, _param_jaxprs, var_bytes

THRESHOLD_BYTES = 30 * 2**20  # XLA's GPU default (xla_gpu_all_reduce_combine_threshold_bytes)
OPAQUE = ("scan", "while", "cond")


def _deps(jaxpr, prefix: str, in_masks: list, found: dict) -> list:
    """Walk `jaxpr` in the order of `eqn_costs`; `found[path]` = (mask of the collectives it
    depends on, its bit, key, bytes) for every collective outside loops and branches."""
    env = dict(zip(jaxpr.invars, in_masks))
    get = lambda v: 0 if isinstance(v, Literal) else env.get(v, 0)  # noqa: E731
    for i, eqn in enumerate(jaxpr.eqns):
        path = f"{prefix}/{i}" if prefix else str(i)
        mask, name, subs = 0, eqn.primitive.name, _param_jaxprs(eqn)
        for v in eqn.invars:
            mask |= get(v)
        if name in COLLECTIVES:
            bit = 1 << len(found)
            found[path] = (mask, bit, (name, _axes(eqn)) if COLLECTIVES[name] == "all_reduce"
                           else None, sum(var_bytes(v) for v in eqn.invars))
            outs = [mask | bit] * len(eqn.outvars)
        elif name not in OPAQUE and len(subs) == 1 and len(subs[0].invars) == len(eqn.invars):
            outs = _deps(subs[0], f"{path}/{name}", [get(v) for v in eqn.invars], found)
        else:
            outs = [mask] * len(eqn.outvars)
        env.update(zip(eqn.outvars, outs))
    return [get(v) for v in jaxpr.outvars]


def combine_groups(jaxpr, threshold: float = THRESHOLD_BYTES) -> dict:
    """path of each combinable AllReduce -> its group number (groups of one included)."""
    found: dict = {}
    _deps(_as_jaxpr(jaxpr), "", [], found)
    open_: dict = {}   # key -> [group, members mask, bytes]
    groups, n = {}, 0
    for path, (mask, bit, key, nbytes) in found.items():
        if key is None:
            continue
        g = open_.get(key)
        if g is None or mask & g[1] or g[2] + nbytes > threshold:
            g = open_[key] = [n, 0, 0]
            n += 1
        g[1] |= bit
        g[2] += nbytes
        groups[path] = g[0]
    return groups
