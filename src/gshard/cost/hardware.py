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
import time
from dataclasses import dataclass

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
    (rendezvous of the participating threads)."""
    bw: float
    latency_s: float = 20e-6
    num_devices: int = 1


Topology = Torus2D | Hierarchical | SharedMemory


@dataclass(frozen=True)
class Hardware:
    """One device's compute and memory, plus the network joining the devices.

    ``flops_bf16`` / ``flops_f32``: dense matmul peak (dot/conv) for 16-bit and 32-bit inputs;
    ``vector_flops``: element-wise/reduction rate (defaults to ``flops_f32``);
    ``hbm_bw`` bytes/s; ``hbm_bytes`` capacity.
    """
    name: str
    flops_bf16: float
    flops_f32: float
    hbm_bw: float
    hbm_bytes: float
    topology: Topology
    vector_flops: float | None = None

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
    return Hardware(name=f"cpu(x{k})", flops_bf16=flops / k, flops_f32=flops / k,
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
    """A preset by name: tpu-v3, h100-cluster (alias gpu, h100), h200 (h200-cluster), or cpu
    (measured once per process by :func:`calibrate_cpu`, split over ``num_devices``)."""
    if isinstance(name, Hardware):
        return name
    key = name.lower()
    if key == "cpu":
        return _cpu(num_devices)
    if key not in PRESETS:
        raise ValueError(f"unknown hardware {name!r}; choose from {sorted(PRESETS) + ['cpu']}")
    return PRESETS[key]
