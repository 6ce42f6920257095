"""Time of one collective, from bytes per device, the group's size and the topology.

``nbytes`` follows ``low.collectives``: the per-device *operand* bytes, except for all_gather,
where it is the per-device *result* bytes (n x the input). ``n`` is the group size (product of
the collective's mesh-axis sizes). α = latency per ring step / hop, β = 1/bandwidth.

TPU 2-D torus (:class:`~gshard.cost.hardware.Torus2D`): the group's ``c = n/cores_per_chip``
chips form an ``a x b`` sub-torus (a ≤ b, as square as possible; 128 cores = 8x8 chips,
2048 = 32x32, the Cloud TPU v3 slice shapes). Mesh axes are assumed laid out on sub-tori, so
groups of one axis do not contend. ``L = 4·link_bw`` is the chip's injection bandwidth
(bidirectional rings in x and y), ``s = (a-1)+(b-1)`` ring steps of the 2-D algorithm:

* all_reduce     ``2(c-1)/c · B/L + 2sα`` -- bandwidth-optimal reduce-scatter + all-gather
  (Patarasuk & Yuan 2009); flat in D. Cores of one chip first reduce on chip (+2B/onchip).
* reduce_scatter ``(c-1)/c · B/L + sα``.
* all_gather     ``(c-1)/c · R/L + sα`` with R = n·input: O(D) for a fixed input.
* all_to_all     ``max(cpc·B(c-1)/c / L,  (n·B/4) / (cut·link_bw)) + α(a+b)/2``: bisection
  bound: half the devices send half their data across the cut of the longer side, which
  crosses ``cut = 2a`` links (torus wrap-around). With a = b = √c, time ∝ √D: 128 → 2048
  cores gives 4x (GShard §5 / Fig. 6 reports ~3.75x; 16 → 2048, 8x vs "~9x").
* collective_permute ``B/link_bw + α`` (neighbour exchange, e.g. a conv halo).

GPU cluster (:class:`~gshard.cost.hardware.Hierarchical`, NCCL-style two-level algorithms):
``g`` group members share a node (NVLink β_nv), ``k = n/g`` nodes (InfiniBand β_ib, 1 NIC/GPU):

* all_reduce     ``2(g-1)/g·B·β_nv + 2(k-1)/k·(B/g)·β_ib`` (+ ring latencies)
* reduce_scatter ``(g-1)/g·B·β_nv + (k-1)/k·(B/g)·β_ib``
* all_gather     ``(g-1)/g·R·β_nv + (k-1)/k·(R/g)·β_ib``
* all_to_all     ``max(B(n-g)/n·β_ib, B(g-1)/n·β_nv)`` (rail-optimised fat tree: full bisection)
* collective_permute ``B·β_ib`` across nodes, ``B·β_nv`` inside one.

Simulated CPU devices (:class:`~gshard.cost.hardware.SharedMemory`): a collective is memory
traffic of ``num_devices x moved`` bytes through the shared host bandwidth, plus a rendezvous
latency; moved per device: all_reduce (n+1)B, reduce_scatter (n+1)B/n, all_gather 2R,
all_to_all 2B, collective_permute 2B. A profile from ``gshard calibrate`` replaces this with the
times measured on this host's simulated devices, per kind and group size, interpolated in bytes.
"""
from __future__ import annotations

import math

import numpy as np

from .hardware import Hardware, Hierarchical, SharedMemory, Torus2D

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute")


def group_size(axes, axis_sizes) -> int:
    """Product of the sizes of ``axes`` (a name or a tuple of names)."""
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(int(axis_sizes[a]) for a in axes)


def torus_shape(chips: int) -> tuple[int, int]:
    """The most square ``a x b`` factorisation (a ≤ b) of ``chips``."""
    a = int(math.isqrt(chips))
    while chips % a:
        a -= 1
    return a, chips // a


def members_per_node(axes, axis_sizes, node_size: int) -> int:
    """How many devices of one group share a node, with devices numbered row-major over the
    mesh axes in ``axis_sizes`` order (major → minor) and nodes holding consecutive ids."""
    names = list(axis_sizes)
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    g = 1
    for ax in axes:
        i = names.index(ax)
        stride = math.prod(int(axis_sizes[x]) for x in names[i + 1:])
        g *= min(int(axis_sizes[ax]), max(1, node_size // stride))
    return min(g, node_size)


def _torus(kind: str, B: float, n: int, t: Torus2D) -> float:
    cpc = t.cores_per_chip
    c = max(1, math.ceil(n / cpc))
    onchip = B / t.onchip_bw if min(n, cpc) > 1 else 0.0
    if c == 1:
        return t.hop_latency_s + (2 if kind == "all_reduce" else 1) * onchip
    a, b = torus_shape(c)
    L, s, al = t.links_per_chip * t.link_bw, (a - 1) + (b - 1), t.hop_latency_s
    frac = (c - 1) / c
    if kind == "all_reduce":
        return 2 * frac * B / L + 2 * s * al + 2 * onchip
    if kind in ("reduce_scatter", "all_gather"):
        return frac * B / L + s * al + onchip
    if kind == "all_to_all":
        cut = 2 * a if b > 2 else a
        inject = cpc * B * frac / L
        bisect = (n * B / 4) / (cut * t.link_bw)
        return max(inject, bisect) + al * (a // 2 + b // 2)
    if kind == "collective_permute":
        return B / t.link_bw + al
    raise ValueError(f"unknown collective kind {kind!r}")


def _hier(kind: str, B: float, n: int, g: int, h: Hierarchical) -> float:
    g = max(1, min(g, n))
    k = max(1, n // g)
    bn, bi, an, ai = 1 / h.intra_bw, 1 / h.inter_bw, h.intra_latency_s, h.inter_latency_s
    fg, fk = (g - 1) / g, (k - 1) / k
    lat = (g - 1) * an + (k - 1) * ai
    if kind == "all_reduce":
        return 2 * (fg * B * bn + fk * (B / g) * bi + lat)
    if kind in ("reduce_scatter", "all_gather"):
        return fg * B * bn + fk * (B / g) * bi + lat
    if kind == "all_to_all":
        return max(B * (n - g) / n * bi, B * (g - 1) / n * bn) + an + (ai if k > 1 else 0.0)
    if kind == "collective_permute":
        return B * bi + ai if k > 1 else B * bn + an
    raise ValueError(f"unknown collective kind {kind!r}")


_MOVED = {"all_reduce": lambda B, n: (n + 1) * B, "reduce_scatter": lambda B, n: (n + 1) * B / n,
          "all_gather": lambda B, n: 2 * B, "all_to_all": lambda B, n: 2 * B,
          "collective_permute": lambda B, n: 2 * B}


def _interpolate(rows, B: float) -> float:
    """Piecewise-linear through measured (bytes, seconds), monotone; the last slope beyond."""
    xs = [b for b, _ in rows]
    ts = np.maximum.accumulate([t for _, t in rows])
    if B <= xs[0]:
        return float(ts[0])
    if B <= xs[-1]:
        return float(np.interp(B, xs, ts))
    slope = (ts[-1] - ts[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else ts[-1] / xs[-1]
    return float(ts[-1] + slope * (B - xs[-1]))


def _measured(kind: str, n: int, m: SharedMemory):
    """The calibrated table for ``kind`` at group size ``n`` (nearest measured size), or None."""
    rows = [(abs(math.log2(g) - math.log2(n)), t) for k, g, t in m.measured if k == kind]
    return min(rows)[1] if rows else None


def _shared(kind: str, B: float, n: int, m: SharedMemory) -> float:
    if kind not in _MOVED:
        raise ValueError(f"unknown collective kind {kind!r}")
    table = _measured(kind, n, m)
    if table:
        return _interpolate(table, B)
    return m.latency_s + max(m.num_devices, n) * _MOVED[kind](B, n) / m.bw


def collective_time_n(kind: str, nbytes: float, n: int, hardware: Hardware, *,
                      per_node: int | None = None) -> float:
    """Seconds for a ``kind`` collective over a group of ``n`` devices (0 when n == 1).
    ``per_node``: group members sharing a GPU node (default: as many as fit)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    topo = hardware.topology
    if isinstance(topo, Torus2D):
        return _torus(kind, float(nbytes), n, topo)
    if isinstance(topo, Hierarchical):
        g = per_node if per_node is not None else min(n, topo.node_size)
        return _hier(kind, float(nbytes), n, g, topo)
    if isinstance(topo, SharedMemory):
        return _shared(kind, float(nbytes), n, topo)
    raise TypeError(f"unknown topology {type(topo).__name__}")


def collective_time(kind: str, nbytes: float, axes, axis_sizes, hardware: Hardware) -> float:
    """Seconds for a collective over mesh ``axes``; ``axis_sizes`` maps name → size in mesh
    order (major → minor), which places groups on GPU nodes."""
    n = group_size(axes, axis_sizes)
    per_node = None
    if isinstance(hardware.topology, Hierarchical):
        per_node = members_per_node(axes, axis_sizes, hardware.topology.node_size)
    return collective_time_n(kind, nbytes, n, hardware, per_node=per_node)
