"""Auto-sharding: gshard chooses the input shardings (DESIGN §6, §13).

    plan = gshard.autoshard(step, mesh, params, batch, hardware="cpu", memory_limit=2**30)
    plan.in_specs; plan.partitioned(params, batch); print(plan.explain())
"""
from .core import autoshard
from .plan import AutoPlan

__all__ = ["autoshard", "AutoPlan"]
