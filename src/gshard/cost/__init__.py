"""Cost model: per-device FLOPs, HBM bytes, peak memory and step time of a partitioned program,
from its per-device jaxpr and collectives, on a hardware model (no devices needed)."""
from .collective_time import KINDS, collective_time, collective_time_n, group_size
from .flops import EqnCost, eqn_costs, roofline_time, total_flops
from .hardware import (H100_CLUSTER, H200_CLUSTER, PRESETS, TPU_V3, Hardware, Hierarchical,
                       SharedMemory, Torus2D, calibrate_cpu, get_hardware)
from .memory import MemoryReport, memory_report, peak_live_bytes
from .model import CollectiveCost, CostReport, EqnTime, estimate

__all__ = ["KINDS", "collective_time", "collective_time_n", "group_size", "EqnCost",
           "eqn_costs", "roofline_time", "total_flops", "Hardware", "Torus2D", "Hierarchical",
           "SharedMemory", "TPU_V3", "H100_CLUSTER", "H200_CLUSTER", "PRESETS", "calibrate_cpu",
           "get_hardware", "MemoryReport", "memory_report", "peak_live_bytes", "CollectiveCost",
           "CostReport", "EqnTime", "estimate"]
