"""Peak live bytes of a per-device jaxpr by a liveness walk, split by role.

Walk: the jaxpr's inputs (invars and constvars) stay alive throughout (no donation); every
other value is allocated when its equation runs and freed after its last use; the jaxpr's
outputs live to the end; outputs nobody uses are freed at once. While an equation runs, the
live set is ``live + max(results, transient)``, where ``transient`` of a sub-jaxpr is its own
peak minus its inputs (which alias the operands already counted):

* call-like (jit, custom_jvp/vjp, shard_map, and *remat/checkpoint*): the region's
  intermediates exist only while it runs, so after a remat region only its outputs (the
  residuals it hands on) stay live -- that is how rematerialisation saves memory;
* ``scan``: body transient + the stacked ``ys`` buffers (allocated in full up front);
* ``while``: max(cond, body); ``cond``: max over branches.

Split: ``weight`` inputs (replicated / distributed, as the caller says), ``opt_state`` inputs,
and activations = everything else at the peak (activation inputs such as the batch, plus all
intermediates).
"""
from __future__ import annotations

from dataclasses import dataclass

from jax.extend.core import Literal

from .flops import _as_jaxpr, _param_jaxprs, var_bytes

ROLES = ("weight", "opt_state", "activation")


@dataclass(frozen=True)
class MemoryReport:
    peak_bytes: float
    weight_bytes_replicated: float
    weight_bytes_distributed: float
    opt_state_bytes: float
    activation_bytes: float
    peak_eqn: int  # index of the top-level equation at the peak (-1: before the first)

    @property
    def weight_bytes(self) -> float:
        return self.weight_bytes_replicated + self.weight_bytes_distributed


def _vars(vs):
    return [v for v in vs if not isinstance(v, Literal) and type(v).__name__ != "DropVar"]


def _transient(jaxpr) -> float:
    peak, inputs, _ = _peak(_as_jaxpr(jaxpr))
    return peak - inputs


def _extra(eqn) -> float:
    """Bytes allocated while ``eqn`` runs, beyond the live set before it."""
    p, name = eqn.params, eqn.primitive.name
    outs = float(sum(var_bytes(v) for v in _vars(eqn.outvars)))
    if name == "scan":
        from ..compat import scan_counts
        ys = sum(var_bytes(v) for v in _vars(eqn.outvars[scan_counts(p)[1]:]))
        return max(outs, _transient(p["jaxpr"]) + ys)
    if name == "while":
        return max(outs, _transient(p["cond_jaxpr"]), _transient(p["body_jaxpr"]))
    if name == "cond":
        return max([outs] + [_transient(b) for b in p["branches"]])
    return max([outs] + [_transient(j) for j in _param_jaxprs(eqn)])


def _last_uses(jaxpr) -> dict:
    last = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in _vars(eqn.invars):
            last[v] = i
    for v in _vars(jaxpr.outvars):
        last[v] = len(jaxpr.eqns)
    return last


def _peak(jaxpr) -> tuple[float, float, int]:
    """(peak bytes incl. inputs, input bytes, index of the peak equation)."""
    inputs = set(_vars(list(jaxpr.invars) + list(jaxpr.constvars)))
    last = _last_uses(jaxpr)
    live = in_bytes = float(sum(var_bytes(v) for v in inputs))
    peak, where = live, -1
    for i, eqn in enumerate(jaxpr.eqns):
        during = live + _extra(eqn)
        if during > peak:
            peak, where = during, i
        live += sum(var_bytes(v) for v in _vars(eqn.outvars) if v in last)
        for v in set(_vars(eqn.invars)):
            if v not in inputs and last.get(v) == i:
                live -= var_bytes(v)
    return peak, in_bytes, where


def peak_live_bytes(jaxpr) -> float:
    """Peak bytes alive at once while running ``jaxpr`` (inputs included)."""
    return _peak(_as_jaxpr(jaxpr))[0]


def memory_report(jaxpr, input_roles=None, input_replicated=None) -> MemoryReport:
    """Peak memory split by role. ``input_roles``: one of ``ROLES`` per invar (default
    'activation'); ``input_replicated``: per invar, True when its sharding is replicated
    (only used for weights; default False = distributed)."""
    j = _as_jaxpr(jaxpr)
    n = len(j.invars)
    roles = list(input_roles) if input_roles is not None else ["activation"] * n
    repl = list(input_replicated) if input_replicated is not None else [False] * n
    if len(roles) != n or len(repl) != n:
        raise ValueError(f"expected {n} input roles and replicated flags, "
                         f"got {len(roles)} and {len(repl)}")
    bad = set(roles) - set(ROLES)
    if bad:
        raise ValueError(f"unknown input roles {sorted(bad)}; use {ROLES}")
    sizes = {"wr": 0.0, "wd": 0.0, "opt": 0.0}
    for v, role, rep in zip(j.invars, roles, repl):
        key = ("wr" if rep else "wd") if role == "weight" else "opt" if role == "opt_state" else None
        if key:
            sizes[key] += var_bytes(v)
    peak, _, where = _peak(j)
    act = peak - sizes["wr"] - sizes["wd"] - sizes["opt"]
    return MemoryReport(peak, sizes["wr"], sizes["wd"], sizes["opt"], act, where)
