"""Per-device cost estimate of a partitioned program: time, memory, bytes.

``step_time_s = compute_time_s + sum(collective_time_s.values())`` (no overlap, default) or
``max(compute, collectives)`` with ``overlap=True``. ``compute_time_s`` sums the roofline time
``max(flops / peak, hbm_bytes / hbm_bw)`` of each equation (:mod:`gshard.cost.flops`), plus,
on a calibrated CPU profile, the host time of the call and of each kernel it launches;
collective times come from :mod:`gshard.cost.collective_time`; memory from
:mod:`gshard.cost.memory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .collective_time import KINDS, collective_time, group_size
from .combine import combine_groups
from .flops import EqnCost, eqn_costs, roofline_time
from .hardware import get_hardware
from .memory import memory_report


@dataclass(frozen=True)
class CollectiveCost:
    kind: str
    axes: tuple
    bytes: float        # per device per execution (all_gather: result bytes)
    group_size: int
    count: float        # executions (scan length etc.)
    time_s: float       # total over ``count``
    source: str = ""
    combined: int = 1   # AllReduces XLA's combiner merges into this one


@dataclass(frozen=True)
class EqnTime:
    cost: EqnCost
    time_s: float


@dataclass(frozen=True)
class CostReport:
    hardware: str
    flops: float
    transcendentals: float
    hbm_bytes: float
    compute_time_s: float
    collective_time_s: dict
    step_time_s: float
    peak_bytes: float
    weight_bytes_replicated: float
    weight_bytes_distributed: float
    opt_state_bytes: float
    activation_bytes: float
    hbm_capacity: float
    overlap: bool = False
    approx: bool = False   # a while loop was counted with an assumed trip count
    per_eqn: tuple = field(default=(), repr=False)       # EqnTime, program order
    collectives: tuple = field(default=(), repr=False)   # CollectiveCost

    @property
    def weight_bytes(self) -> float:
        return self.weight_bytes_replicated + self.weight_bytes_distributed

    @property
    def total_collective_time_s(self) -> float:
        return sum(self.collective_time_s.values())

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hbm_capacity

    @property
    def roofline_fraction(self) -> float:
        """Share of the step spent computing (the paper's "% of roofline" proxy)."""
        return self.compute_time_s / self.step_time_s if self.step_time_s else 1.0

    def as_dict(self) -> dict:
        keys = ("hardware flops transcendentals hbm_bytes compute_time_s step_time_s peak_bytes "
                "weight_bytes_replicated weight_bytes_distributed opt_state_bytes "
                "activation_bytes hbm_capacity overlap approx").split()
        d = {k: getattr(self, k) for k in keys}
        d["collective_time_s"] = dict(self.collective_time_s)
        d["weight_bytes"] = self.weight_bytes
        return d

    def format(self, top: int = 10) -> str:
        """A terminal table: totals, collectives by kind, memory, the ``top`` costliest eqns."""
        return format_report(self, top)


def _collectives_from_eqns(costs, axis_sizes, hw) -> list[CollectiveCost]:
    out = []
    for c in costs:
        if c.collective is None:
            continue
        t = collective_time(c.collective, c.comm_bytes, c.axes, axis_sizes, hw)
        out.append(CollectiveCost(c.collective, c.axes, c.comm_bytes,
                                  group_size(c.axes, axis_sizes), c.count, t * c.count, c.source))
    return out


def _collectives_from_records(records, axis_sizes, hw) -> list[CollectiveCost]:
    out = []
    for r in records:
        axes = (r.axes,) if isinstance(r.axes, str) else tuple(r.axes)
        t = collective_time(r.kind, r.bytes, axes, axis_sizes, hw)
        out.append(CollectiveCost(r.kind, axes, float(r.bytes), group_size(axes, axis_sizes),
                                  1.0, t, str(getattr(r, "source", "") or "")))
    return out


def _combined(colls, costs, jaxpr, axis_sizes, hw) -> list[CollectiveCost]:
    """`colls` (one per collective equation, in `costs` order) with the AllReduces XLA's
    combiner merges replaced by one each; unchanged if the two lists do not line up."""
    eqns = [c for c in costs if c.collective is not None]
    if len(eqns) != len(colls) or any(e.collective != c.kind for e, c in zip(eqns, colls)):
        return list(colls)
    groups = combine_groups(jaxpr)
    members: dict = {}   # group (or a collective left alone) -> its collectives, program order
    for i, (e, c) in enumerate(zip(eqns, colls)):
        members.setdefault(groups.get(e.path, ("alone", i)), []).append(c)
    return [_merge(group, axis_sizes, hw) for group in members.values()]


def _merge(group: list, axis_sizes, hw) -> CollectiveCost:
    if len(group) == 1:
        return group[0]
    nbytes, axes = sum(c.bytes for c in group), group[0].axes
    return CollectiveCost("all_reduce", axes, nbytes, group[0].group_size, 1.0,
                          collective_time("all_reduce", nbytes, axes, axis_sizes, hw),
                          f"{len(group)} AllReduces combined (first: {group[0].source})",
                          len(group))


def _host_time(costs, hw) -> float:
    """Per-call and per-kernel host time (calibrated CPU profiles; 0 on accelerators)."""
    if not (hw.op_overhead_s or hw.launch_s):
        return 0.0
    return hw.launch_s + hw.op_overhead_s * sum(c.kernels for c in costs)


def _by_kind(colls) -> dict:
    by_kind = {k: 0.0 for k in KINDS}
    for c in colls:
        by_kind[c.kind] = by_kind.get(c.kind, 0.0) + c.time_s
    return by_kind


def estimate(per_device_jaxpr, collectives=None, axis_sizes=None, hardware="tpu-v3", *,
             input_roles=None, input_replicated=None, overlap: bool = False,
             fuse: bool = True, while_trips: int = 1, combine: bool = True) -> CostReport:
    """Estimate one execution of ``per_device_jaxpr`` (local shapes) on ``hardware``.

    ``collectives``: records with ``.kind/.axes/.bytes/.source`` (``low.collectives``); when
    given they are timed once each and the jaxpr's collective equations add no time. When None,
    the jaxpr's own psum/all_gather/... equations are timed (with scan multiplicity).
    ``axis_sizes``: mesh axis name → size, major → minor. ``hardware``: a Hardware or preset
    name ("cpu" is calibrated with the mesh's device count sharing this host).
    ``input_roles`` / ``input_replicated``: see :func:`gshard.cost.memory.memory_report`.
    ``fuse`` / ``while_trips``: see :func:`gshard.cost.flops.eqn_costs`.
    ``combine``: price independent AllReduces as XLA's combiner runs them, merged
    (:mod:`gshard.cost.combine`); False: one latency per recorded AllReduce.
    """
    axis_sizes = dict(axis_sizes or {})
    hw = get_hardware(hardware, num_devices=max(1, math.prod(axis_sizes.values())))
    costs = eqn_costs(per_device_jaxpr, fuse=fuse, while_trips=while_trips)
    times = tuple(EqnTime(c, roofline_time(c, hw)) for c in costs)
    if collectives is None:
        colls = _collectives_from_eqns(costs, axis_sizes, hw)
    else:
        colls = _collectives_from_records(collectives, axis_sizes, hw)
    if combine:
        colls = _combined(colls, costs, per_device_jaxpr, axis_sizes, hw)
    by_kind = _by_kind(colls)
    compute = sum(t.time_s for t in times) + _host_time(costs, hw)
    comm = sum(by_kind.values())
    mem = memory_report(per_device_jaxpr, input_roles, input_replicated)
    return CostReport(
        hardware=hw.name, flops=sum(c.flops for c in costs),
        transcendentals=sum(c.transcendentals for c in costs),
        hbm_bytes=sum(c.bytes for c in costs), compute_time_s=compute,
        collective_time_s=by_kind, step_time_s=max(compute, comm) if overlap else compute + comm,
        peak_bytes=mem.peak_bytes, weight_bytes_replicated=mem.weight_bytes_replicated,
        weight_bytes_distributed=mem.weight_bytes_distributed,
        opt_state_bytes=mem.opt_state_bytes, activation_bytes=mem.activation_bytes,
        hbm_capacity=hw.hbm_bytes, overlap=overlap, approx=any(c.approx for c in costs),
        per_eqn=times, collectives=tuple(colls))


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _secs(t: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def _gib(b: float) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if b >= 1 << shift:
            return f"{b / (1 << shift):.3f} {unit}"
    return f"{b:.0f} B"


def _summary_lines(r: CostReport) -> list[str]:
    rows = [("hardware", r.hardware), ("FLOPs / device", _si(r.flops, "FLOP")),
            ("HBM bytes / device", _si(r.hbm_bytes, "B")),
            ("compute (roofline)", _secs(r.compute_time_s))]
    rows += [(f"  {k}", _secs(t)) for k, t in r.collective_time_s.items() if t > 0]
    rows += [("collectives", _secs(r.total_collective_time_s)),
             ("step" + (" (overlap)" if r.overlap else ""), _secs(r.step_time_s)),
             ("peak memory", f"{_gib(r.peak_bytes)} of {_gib(r.hbm_capacity)}"
              + ("" if r.fits else "  ** DOES NOT FIT **")),
             ("  weights replicated", _gib(r.weight_bytes_replicated)),
             ("  weights distributed", _gib(r.weight_bytes_distributed)),
             ("  optimizer state", _gib(r.opt_state_bytes)),
             ("  activations", _gib(r.activation_bytes))]
    if r.approx:
        rows.append(("note", "while loops counted with an assumed trip count"))
    return [f"{k:<24}{v}" for k, v in rows]


def format_report(r: CostReport, top: int = 10) -> str:
    lines = _summary_lines(r)
    ranked = sorted(r.per_eqn, key=lambda e: -e.time_s)[:top]
    if ranked:
        lines += ["", f"{'eqn':<26}{'primitive':<20}{'FLOPs':>12}{'bytes':>12}{'time':>10}  source"]
        lines += [f"{e.cost.path[-25:]:<26}{e.cost.primitive[:19]:<20}{_si(e.cost.flops, ''):>12}"
                  f"{_si(e.cost.bytes, 'B'):>12}{_secs(e.time_s):>10}  {e.cost.source}"
                  for e in ranked]
    if r.collectives:
        lines += ["", f"{'collective':<20}{'axes':<18}{'n':>6}{'bytes':>12}{'time':>10}  source"]
        lines += [f"{c.kind:<20}{','.join(c.axes):<18}{c.group_size:>6}{_si(c.bytes, 'B'):>12}"
                  f"{_secs(c.time_s):>10}  {c.source}" for c in r.collectives]
    return "\n".join(lines)
