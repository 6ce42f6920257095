"""FLOPs and HBM bytes of every equation of a (per-device) jaxpr.

Counting rules (per execution; ``EqnCost`` holds totals = per execution x ``count``):

* ``dot_general``: ``2 · |lhs| · prod(rhs free dims)`` = 2·batch·M·N·K.
* ``conv_general_dilated``: ``2 · |out| · |rhs| / O`` (O = rhs output-feature size), i.e.
  2 x output elements x (kernel window x input features per group).
* element-wise arithmetic: 1 flop per output element; transcendentals (exp, log, tanh, ...)
  are counted in ``transcendentals``, not ``flops`` (as XLA's cost analysis does).
* reductions and cumulative ops: 1 flop per input element. Everything else: 0 flops.
* HBM bytes: operands read + results written. Slices/gathers read only what they return;
  in-place updates (dynamic_update_slice, scatter) touch only the update. Reshapes and
  gshard annotations are free (bitcasts). With ``fuse=True`` (default) a value passed between
  two fusible ops (element-wise, broadcast, convert, transpose, iota; reductions consume
  fused inputs) never goes to HBM, as in XLA's loop/input fusion.
* Sub-jaxprs are recursed into: jit/pjit, closed_call, custom_jvp_call, custom_vjp_call,
  remat (checkpoint), shard_map (its body is per-device), any other eqn with jaxpr params
  (x1); ``scan`` multiplies by ``length``; ``while`` counts cond+body ``while_trips`` times
  (default once) and flags them ``approx``; ``cond`` takes its most expensive branch.
* Collective primitives (psum, pmax, pmin, all_gather, reduce_scatter/psum_scatter,
  all_to_all, ppermute) get ``collective`` = their kind, ``axes`` and ``comm_bytes`` (operand
  bytes; result bytes for all_gather, the ``low.collectives`` convention); their time comes
  from :mod:`gshard.cost.collective_time`, not from the roofline.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

ELEMENTWISE = frozenset(
    "add sub mul div rem max min neg abs sign floor ceil round nextafter clamp select_n and or "
    "xor not eq ne lt le gt ge square integer_pow add_any copysign shift_left "
    "shift_right_logical shift_right_arithmetic population_count is_finite imag real conj "
    "complex clz".split())
TRANSCENDENTAL = frozenset(
    "exp exp2 log log1p expm1 tanh logistic sin cos tan asin acos atan atan2 sinh cosh asinh "
    "acosh atanh sqrt rsqrt cbrt pow erf erfc erf_inv lgamma digamma igamma igammac "
    "random_gamma_grad bessel_i0e bessel_i1e polygamma zeta regularized_incomplete_beta".split())
REDUCTION = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin "
    "cumsum cumprod cummax cummin cumlogsumexp reduce_precision".split())
FUSIBLE = ELEMENTWISE | TRANSCENDENTAL | frozenset(
    "broadcast_in_dim convert_element_type iota transpose copy copy_p reduce_precision".split())
FREE = frozenset("reshape squeeze expand_dims gshard_annotate pvary pbroadcast axis_index "
                 "optimization_barrier".split())
PARTIAL_READ = frozenset("slice dynamic_slice gather".split())
IN_PLACE = frozenset("dynamic_update_slice scatter scatter_add scatter_mul scatter_min "
                     "scatter_max".split())
COLLECTIVES = {"psum": "all_reduce", "psum_invariant": "all_reduce", "pmax": "all_reduce",
               "pmin": "all_reduce", "all_gather": "all_gather", "all_gather_invariant":
               "all_gather", "reduce_scatter": "reduce_scatter", "psum_scatter":
               "reduce_scatter", "all_to_all": "all_to_all", "ppermute": "collective_permute"}


@dataclass(frozen=True)
class EqnCost:
    """Cost of one leaf equation, totals over its ``count`` executions."""
    path: str
    primitive: str
    flops: float
    transcendentals: float
    bytes: float
    count: float = 1.0
    matmul_dtype: str | None = None
    collective: str | None = None
    axes: tuple = ()
    comm_bytes: float = 0.0
    approx: bool = False
    source: str = ""
    kernels: float = 0.0   # kernels launched (x count): a result not fused into its users
    mkn: tuple = ()        # dot_general: (M, K, N) of one matmul


def aval_bytes(aval) -> int:
    """Bytes of an abstract value (0 for tokens and other shapeless values)."""
    shape = getattr(aval, "shape", None)
    if shape is None:
        return 0
    try:
        itemsize = np.dtype(aval.dtype).itemsize
    except TypeError:  # extended dtypes, e.g. PRNG keys
        itemsize = getattr(aval.dtype, "itemsize", 8) or 8
    return int(math.prod(shape)) * int(itemsize)


def var_bytes(v) -> int:
    if isinstance(v, Literal) or type(v).__name__ == "DropVar":
        return 0
    return aval_bytes(v.aval)


def _size(v) -> int:
    return int(math.prod(getattr(v.aval, "shape", ())))


def _source(eqn) -> str:
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - best effort
        return ""


def _axes(eqn) -> tuple:
    ax = eqn.params.get("axes", eqn.params.get("axis_name", ()))
    ax = ax if isinstance(ax, (tuple, list)) else (ax,)
    return tuple(a for a in ax if isinstance(a, str))


def _dot_flops(eqn) -> float:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    rhs_free = [d for i, d in enumerate(rhs) if i not in set(rc) | set(rb)]
    return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _dot_mkn(eqn) -> tuple:
    """(M, K, N) of one matmul of a dot_general (batch dims repeat it): free lhs, contracted,
    free rhs element counts."""
    if eqn.primitive.name != "dot_general":
        return ()
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    m = math.prod(d for i, d in enumerate(lhs) if i not in set(lc) | set(lb))
    n = math.prod(d for i, d in enumerate(rhs) if i not in set(rc) | set(rb))
    return (int(m), int(math.prod(lhs[i] for i in lc)), int(n))


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params.get("dimension_numbers")
    o_dim = dn.rhs_spec[0] if dn is not None else 0
    return 2.0 * _size(eqn.outvars[0]) * math.prod(rhs) / max(1, rhs[o_dim])


def _flops(eqn) -> tuple[float, float]:
    name = eqn.primitive.name
    if name == "dot_general":
        return _dot_flops(eqn), 0.0
    if name == "conv_general_dilated":
        return _conv_flops(eqn), 0.0
    if name in ELEMENTWISE:
        return float(sum(_size(v) for v in eqn.outvars)), 0.0
    if name in TRANSCENDENTAL:
        return 0.0, float(sum(_size(v) for v in eqn.outvars))
    if name in REDUCTION:
        return float(sum(_size(v) for v in eqn.invars if not isinstance(v, Literal))), 0.0
    return 0.0, 0.0


def _matmul_dtype(eqn) -> str | None:
    if eqn.primitive.name not in ("dot_general", "conv_general_dilated"):
        return None
    dts = [np.dtype(v.aval.dtype) for v in eqn.invars[:2]]
    return str(max(dts, key=lambda d: d.itemsize))


class _Scope:
    """Which values of one jaxpr are materialised in HBM (for the fusion heuristic)."""

    def __init__(self, jaxpr: Jaxpr, fuse: bool):
        self.fuse = fuse
        self.producer, self.consumers = {}, {}
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if not isinstance(v, Literal):
                    self.consumers.setdefault(v, []).append(eqn)
            for v in eqn.outvars:
                self.producer[v] = eqn
        self.outs = {v for v in jaxpr.outvars if not isinstance(v, Literal)}

    def _fused_use(self, v) -> bool:
        """True when every use of ``v`` is a fusible op (through free reshapes)."""
        if v in self.outs:
            return False
        for c in self.consumers.get(v, ()):
            n = c.primitive.name
            if n in FREE:
                if not all(self._fused_use(o) for o in c.outvars):
                    return False
            elif n not in FUSIBLE and n not in REDUCTION:
                return False
        return True

    def materialized(self, v) -> bool:
        if not self.fuse:
            return True
        p = self.producer.get(v)
        while p is not None and p.primitive.name in FREE and p.invars:
            p = self.producer.get(p.invars[0]) if not isinstance(p.invars[0], Literal) else None
        if p is None or p.primitive.name not in FUSIBLE:
            return True
        return not self._fused_use(v)


def _hbm_bytes(eqn, scope: _Scope) -> float:
    name = eqn.primitive.name
    if name in FREE:
        return 0.0
    ins = [v for v in eqn.invars if not isinstance(v, Literal)]
    outs = sum(var_bytes(v) for v in eqn.outvars if scope.materialized(v))
    if name in PARTIAL_READ:
        return 2.0 * outs + sum(var_bytes(v) for v in ins[1:])
    if name in IN_PLACE:
        upd, idx = (ins[1], ins[2:]) if name == "dynamic_update_slice" else (ins[2], ins[1:2])
        return 2.0 * var_bytes(upd) + sum(var_bytes(v) for v in idx)
    fusing = name in FUSIBLE or name in REDUCTION
    reads = sum(var_bytes(v) for v in ins if not fusing or scope.materialized(v))
    return float(reads + outs)


def _as_jaxpr(j) -> Jaxpr:
    return j.jaxpr if isinstance(j, ClosedJaxpr) else j


def _param_jaxprs(eqn) -> list[Jaxpr]:
    out = []
    for val in eqn.params.values():
        for j in (val if isinstance(val, (tuple, list)) else (val,)):
            if isinstance(j, (Jaxpr, ClosedJaxpr)):
                out.append(_as_jaxpr(j))
    return out


def _weight(costs: list[EqnCost]) -> tuple[float, float]:
    return (sum(c.flops + c.transcendentals for c in costs), sum(c.bytes for c in costs))


def _sub_costs(eqn, path: str, count: float, fuse: bool, trips: int) -> list[EqnCost] | None:
    """Leaf costs of a control-flow / call equation, or None for a leaf equation."""
    name, p = eqn.primitive.name, eqn.params
    if name == "scan":
        return _walk(_as_jaxpr(p["jaxpr"]), f"{path}/scan", count * p["length"], fuse, trips)
    if name == "while":
        out = []
        for key in ("cond_jaxpr", "body_jaxpr"):
            sub = _walk(_as_jaxpr(p[key]), f"{path}/{key[:4]}", count * trips, fuse, trips)
            out += [_approx(c) for c in sub]
        return out
    if name == "cond":
        branches = [_walk(_as_jaxpr(b), f"{path}/cond{i}", count, fuse, trips)
                    for i, b in enumerate(p["branches"])]
        return max(branches, key=_weight) if branches else []
    subs = _param_jaxprs(eqn)
    if not subs:
        return None
    out = []
    for i, j in enumerate(subs):
        out += _walk(j, f"{path}/{name}" + (f"{i}" if len(subs) > 1 else ""), count, fuse, trips)
    return out


def _approx(c: EqnCost) -> EqnCost:
    return dataclasses.replace(c, approx=True)


def _leaf(eqn, path: str, count: float, scope: _Scope) -> EqnCost:
    name = eqn.primitive.name
    fl, tr = _flops(eqn)
    kind = COLLECTIVES.get(name)
    comm = 0.0
    if kind is not None:
        vs = eqn.outvars if kind == "all_gather" else eqn.invars
        comm = float(sum(var_bytes(v) for v in vs))
    return EqnCost(path=path, primitive=name, flops=fl * count, transcendentals=tr * count,
                   bytes=_hbm_bytes(eqn, scope) * count, count=count,
                   matmul_dtype=_matmul_dtype(eqn), collective=kind,
                   axes=_axes(eqn) if kind else (), comm_bytes=comm, source=_source(eqn),
                   kernels=count * _launches(eqn, kind, scope), mkn=_dot_mkn(eqn))


def _launches(eqn, kind, scope: _Scope) -> int:
    """1 when the equation runs as its own kernel (not free, not a collective, not fused)."""
    if kind is not None or eqn.primitive.name in FREE:
        return 0
    return int(any(scope.materialized(v) for v in eqn.outvars))


def _walk(jaxpr: Jaxpr, prefix: str, count: float, fuse: bool, trips: int) -> list[EqnCost]:
    scope = _Scope(jaxpr, fuse)
    out: list[EqnCost] = []
    for i, eqn in enumerate(jaxpr.eqns):
        path = f"{prefix}/{i}" if prefix else str(i)
        sub = _sub_costs(eqn, path, count, fuse, trips)
        out.extend(sub if sub is not None else [_leaf(eqn, path, count, scope)])
    return out


def eqn_costs(jaxpr, *, fuse: bool = True, while_trips: int = 1) -> list[EqnCost]:
    """Leaf-equation costs of a ``Jaxpr`` / ``ClosedJaxpr``, sub-jaxprs flattened in order;
    ``path`` is the index path, e.g. ``"3/scan/1"`` (eqn 1 of the scan body at eqn 3)."""
    return _walk(_as_jaxpr(jaxpr), "", 1.0, fuse, while_trips)


def total_flops(jaxpr, **kw) -> float:
    """Sum of ``flops`` over :func:`eqn_costs` (transcendentals excluded)."""
    return sum(c.flops for c in eqn_costs(jaxpr, **kw))


def roofline_time(cost: EqnCost, hardware) -> float:
    """``max(flops / peak, bytes / hbm_bw)``; matmuls use the dtype's matmul peak, the rest the
    vector rate (transcendentals count as flops there). Collectives: 0 (timed separately).
    A calibrated profile's matmul table gives a dot's rate by its (M, K, N) instead."""
    if cost.collective is not None:
        return 0.0
    if cost.mkn and hardware.matmul_table:
        return cost.flops / hardware.matmul_rate(cost.mkn)     # measured: memory included
    if cost.matmul_dtype is not None:
        compute = cost.flops / hardware.matmul_flops(cost.matmul_dtype)
    else:
        compute = (cost.flops + cost.transcendentals) / hardware.vector_rate
    return max(compute, cost.bytes / hardware.hbm_bw)
