"""Hardware models for the cost model: peak FLOP/s, HBM, and a network topology.

All figures are *per device* as the mesh sees it (a TPU v3 core, one GPU, one simulated CPU
device); bandwidths are bytes/s in one direction. Sources are cited on each preset.

Topologies (used by :mod:`gshard.cost.collective_time`):

* :class:`Torus2D` -- the TPU v2/v3 pod: chips on a 2-D torus, 4 ICI links per chip
  (±x, ±y), ``cores_per_chip`` mesh devices per chip sharing those links.
* :class:`Hierarchical` -- a GPU cluster: ``node_size`` GPUs on an NVSwitch (full bisection
  NVLink), nodes joined by InfiniBand with one NIC per GPU (rail-optimised fat tree).
* :class:`SharedMemory` -- simulated devices in one host process: a collective is a memcpy
  through the host memory system, whose bandwidth all devices share.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GiB = 1 << 30


@dataclass(frozen=True)
class Torus2D:
    """2-D torus of chips. ``link_bw``: bytes/s per link per direction; ``hop_latency_s``:
    per hop / per ring step (ICI is sub-microsecond per hop; 1 us includes DMA set-up)."""
    link_bw: float
    hop_latency_s: float = 1e-6
    cores_per_chip: int = 1
    links_per_chip: int = 4
    onchip_bw: float = 450e9


@dataclass(frozen=True)
class Hierarchical:
    """Nodes of ``node_size`` devices on NVLink/NVSwitch, nodes on InfiniBand (1 NIC/GPU)."""
    node_size: int
    intra_bw: float
    inter_bw: float
    intra_latency_s: float = 3e-6
    inter_latency_s: float = 10e-6


@dataclass(frozen=True)
class SharedMemory:
    """Devices share one memory system of ``bw`` bytes/s; ``latency_s`` per collective
    (rendezvous of the participating threads). ``measured``: ``(kind, group size, ((bytes,
    seconds), ...))`` tables from ``gshard calibrate``, interpolated where present."""
    bw: float
    latency_s: float = 20e-6
    num_devices: int = 1
    measured: tuple = ()


Topology = Torus2D | Hierarchical | SharedMemory


@dataclass(frozen=True)
class Hardware:
    """One device's compute and memory, plus the network joining the devices.

    ``flops_bf16`` / ``flops_f32``: dense matmul peak (dot/conv) for 16-bit and 32-bit inputs;
    ``vector_flops``: element-wise/reduction rate (defaults to ``flops_f32``);
    ``hbm_bw`` bytes/s; ``hbm_bytes`` capacity; ``op_overhead_s``: host time per kernel
    launched, ``launch_s``: per program call (both measured by ``gshard calibrate`` on CPU; 0
    for accelerators, where they hide behind the device's queue).
    """
    name: str
    flops_bf16: float
    flops_f32: float
    hbm_bw: float
    hbm_bytes: float
    topology: Topology
    vector_flops: float | None = None
    op_overhead_s: float = 0.0
    launch_s: float = 0.0
    matmul_table: tuple = ()   # ((M, K, N), FLOP/s) measured on a grid (gshard calibrate)

    def matmul_rate(self, mkn) -> float:
        """FLOP/s of one (M, K, N) matmul: the calibrated grid, interpolated in log2 of each
        dim (clamped to the grid's range)."""
        grid = sorted({d for (dims, _) in self.matmul_table for d in dims})
        rates = {dims: r for dims, r in self.matmul_table}
        lg = np.log2(grid)
        pos = [float(np.clip(np.log2(max(d, 1)), lg[0], lg[-1])) for d in mkn]
        corners = [_bracket(lg, p) for p in pos]
        total = 0.0
        for pick in np.ndindex(2, 2, 2):
            w, dims = 1.0, []
            for axis, (lo, hi, f) in enumerate(corners):
                w *= f if pick[axis] else 1 - f
                dims.append(grid[hi if pick[axis] else lo])
            total += w * np.log(rates[tuple(dims)])
        return float(np.exp(total))

    def matmul_flops(self, dtype) -> float:
        """Peak matmul FLOP/s for operands of ``dtype`` (≤16-bit → bf16 rate)."""
        try:
            small = np.dtype(dtype).itemsize <= 2
        except TypeError:
            small = False
        return self.flops_bf16 if small else self.flops_f32

    @property
    def vector_rate(self) -> float:
        return self.vector_flops or self.flops_f32

    def replace(self, **kw) -> "Hardware":
        return dataclasses.replace(self, **kw)


# TPU v3, per TensorCore (the paper's "device"/"partition": 2048 cores = 1024 chips).
# Cloud TPU v3 docs (https://cloud.google.com/tpu/docs/v3): 123 TFLOP/s bf16 per chip, 32 GiB
# HBM2 at 900 GB/s per chip, 2 TensorCores per chip, pod = 1024 chips on a 2-D torus,
# all-reduce bandwidth 340 TB/s per pod (= 332 GB/s per chip ≈ 4 links x 83 GB/s),
# bisection 6.4 TB/s per pod (64 links cut in a 32x32 torus → 50 GB/s per link per direction).
# We take ~70 GB/s per link per direction, between those two derivations.
# f32 matmuls run on the bf16 MXU at DEFAULT precision (one bf16 pass), hence the same peak.
# The vector unit rate is not published; 1/8 of the MXU peak is an estimate (element-wise
# ops are HBM-bound at these rates anyway).
TPU_V3 = Hardware(
    name="tpu-v3", flops_bf16=61.5e12, flops_f32=61.5e12, hbm_bw=450e9, hbm_bytes=16 * GiB,
    topology=Torus2D(link_bw=70e9, hop_latency_s=1e-6, cores_per_chip=2, onchip_bw=450e9),
    vector_flops=61.5e12 / 8)

# NVIDIA H100 SXM5 datasheet (https://www.nvidia.com/en-us/data-center/h100/): 989 TFLOP/s
# bf16 dense, 495 TFLOP/s TF32 dense (XLA's default f32 matmul on Hopper), 67 TFLOP/s FP32
# (vector), 80 GB HBM3 at 3.35 TB/s, NVLink 4 at 900 GB/s bidirectional (450 GB/s per
# direction) through NVSwitch within an 8-GPU HGX node; ConnectX-7 NDR InfiniBand
# 400 Gb/s = 50 GB/s per GPU per direction between nodes.
H100_CLUSTER = Hardware(
    name="h100-cluster", flops_bf16=989e12, flops_f32=495e12, hbm_bw=3.35e12, hbm_bytes=80e9,
    topology=Hierarchical(node_size=8, intra_bw=450e9, inter_bw=50e9),
    vector_flops=67e12)

# NVIDIA H200 SXM (https://www.nvidia.com/en-us/data-center/h200/): same compute as H100 SXM,
# 141 GB HBM3e at 4.8 TB/s; same NVLink 4 / NDR InfiniBand fabric.
H200_CLUSTER = H100_CLUSTER.replace(name="h200-cluster", hbm_bw=4.8e12, hbm_bytes=141e9)


def _bracket(lg, p: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``p`` and the fraction of the way to the upper one."""
    hi = int(min(np.searchsorted(lg, p), len(lg) - 1))
    lo = max(hi - 1, 0)
    return lo, hi, 0.0 if hi == lo else float((p - lg[lo]) / (lg[hi] - lg[lo]))


def _time_best(fn, reps: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def calibrate_cpu(num_devices: int = 1, *, n: int = 384, mb: int = 32) -> Hardware:
    """Measure this host (< 1 s): an ``n``-cube f32 matmul and a ``mb`` MiB memcpy in numpy.

    ``num_devices`` simulated devices (``--xla_force_host_platform_device_count``) share the
    host's cores and memory bandwidth, so each device gets 1/num_devices of both.
    """
    a = np.ones((n, n), np.float32)
    flops = 2 * n ** 3 / _time_best(lambda: a @ a)
    src = np.ones(mb << 18, np.float32)
    dst = np.empty_like(src)
    bw = 2 * src.nbytes / _time_best(lambda: np.copyto(dst, src))  # read + write
    k = max(1, num_devices)
    return Hardware(name=f"cpu(x{k}, quick numpy estimate: run gshard calibrate)",
                    flops_bf16=flops / k, flops_f32=flops / k,
                    hbm_bw=bw / k, hbm_bytes=_host_memory() / k,
                    topology=SharedMemory(bw=bw, num_devices=k), vector_flops=flops / k / 4)


def _host_memory() -> float:
    try:
        import os
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16.0 * GiB


@functools.lru_cache(maxsize=None)
def _cpu(num_devices: int) -> Hardware:
    return calibrate_cpu(num_devices)


PRESETS = {"tpu-v3": TPU_V3, "tpu_v3": TPU_V3, "h100-cluster": H100_CLUSTER, "gpu": H100_CLUSTER,
           "h100": H100_CLUSTER, "h200": H200_CLUSTER, "h200-cluster": H200_CLUSTER}


def get_hardware(name: str | Hardware, *, num_devices: int = 1) -> Hardware:
    """A preset by name: tpu-v3, h100-cluster (alias gpu, h100), h200 (h200-cluster), or cpu:
    the profile ``gshard calibrate`` wrote for this host and ``num_devices`` when there is one,
    else measured once per process by :func:`calibrate_cpu` (numpy, split over the devices);
    or the path of a ``.json`` profile written by ``gshard calibrate --out``."""
    if isinstance(name, Hardware):
        return name
    key = name.lower()
    if key.endswith(".json"):
        return read(name)
    if key == "cpu":
        return load(num_devices) or _cpu(num_devices)
    if key not in PRESETS:
        raise ValueError(f"unknown hardware {name!r}; choose from {sorted(PRESETS) + ['cpu']} "
                         "or give a .json profile from `gshard calibrate --out`")
    return PRESETS[key]


# Profiles written by `gshard calibrate` (gshard.cost.calibrate measures them).

def profile_path(num_devices: int) -> Path:
    root = os.environ.get("GSHARD_PROFILE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "gshard", "hardware")
    return Path(root) / f"cpu-{int(num_devices)}.json"


def _host() -> dict:
    return {"node": platform.node(), "cpus": os.cpu_count() or 1, "machine": platform.machine()}


def to_hardware(profile: dict) -> Hardware:
    """The cost model's Hardware for a profile dict (from :func:`measure` or a JSON file)."""
    D = int(profile["num_devices"])
    table = tuple((kind, int(n), tuple((float(b), float(t)) for b, t in rows))
                  for kind, by_n in profile["collectives"].items() for n, rows in by_n.items())
    bw = float(profile["hbm_bw"]) * D
    return Hardware(name=profile.get("name", f"cpu(x{D}, calibrated)"),
                    flops_bf16=float(profile["flops_f32"]), flops_f32=float(profile["flops_f32"]),
                    hbm_bw=float(profile["hbm_bw"]), hbm_bytes=float(profile["hbm_bytes"]),
                    topology=SharedMemory(bw=bw, num_devices=D, measured=table),
                    vector_flops=float(profile["flops_f32"]) / 4,
                    op_overhead_s=float(profile["op_overhead_s"]),
                    matmul_table=tuple(((int(m), int(k), int(n)), float(r))
                                       for m, k, n, r in profile.get("matmul", ())),
                    launch_s=float(profile["launch_s"]))


def read(path: str | Path) -> Hardware:
    """A profile file written by ``gshard calibrate`` (``hardware="my-cpu.json"``)."""
    try:
        return to_hardware(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"hardware profile {str(path)!r} cannot be read ({type(e).__name__}: "
                         f"{e}); write one with `gshard calibrate --out {path}`") from None


def load(num_devices: int, path: str | Path | None = None) -> Hardware | None:
    """The saved profile for this host and device count, or None (absent or another host)."""
    path = Path(path) if path else profile_path(num_devices)
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text())
    except ValueError:
        return None
    if int(profile.get("num_devices", -1)) != int(num_devices):
        return None
    if profile.get("host", {}).get("cpus") != _host()["cpus"]:
        return None
    return to_hardware(profile)
