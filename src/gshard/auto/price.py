"""Price one assignment of the decision points: lower it with the real partitioner and run the
cost model over the per-device program (one source of truth: the rules, the reshard planner and
gshard.cost; nothing here re-implements either).

An assignment is a tuple of candidate indices, one per point. Prices are cached per assignment.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import jax

from .points import AUTO

TOL = 0.02  # step times within 2% are a tie (the CPU profile is measured: noise)


@dataclass(frozen=True)
class Price:
    step_s: float
    peak_bytes: float
    collective_bytes: float
    compute_s: float
    collective_s: float
    fits: bool
    specs: tuple = ()        # the lowering's resolved spec of every input leaf (PartitionSpec)
    error: str | None = None  # the lowering failed: never chosen

    def as_dict(self) -> dict:
        return {"step_s": self.step_s, "peak_bytes": int(self.peak_bytes),
                "collective_bytes": int(self.collective_bytes), "compute_s": self.compute_s,
                "collective_s": self.collective_s, "fits": self.fits}


def failed(error: str) -> Price:
    inf = math.inf
    return Price(inf, inf, inf, inf, inf, False, (), error)


def better(a: Price, b: Price, tol: float = TOL) -> bool:
    """Is `a` clearly better than `b`? Fitting beats not fitting; two plans over the limit
    compare by peak memory; two that fit by step time (a gap under `tol` is a tie), then
    collective bytes, then peak memory."""
    if a.error or b.error:
        return b.error is not None and a.error is None
    if a.fits != b.fits:
        return a.fits
    if not a.fits:
        return a.peak_bytes < b.peak_bytes * (1 - tol / 4)
    if a.step_s < b.step_s * (1 - tol):
        return True
    if b.step_s < a.step_s * (1 - tol):
        return False
    if a.collective_bytes != b.collective_bytes:
        return a.collective_bytes < b.collective_bytes
    return a.peak_bytes < b.peak_bytes * (1 - tol)


class Pricer:
    """Lowers and prices assignments of `points` for `fn` on `mesh` (cached)."""

    def __init__(self, fn, mesh, args, leaves, tree, points, hardware, memory_limit):
        from ..cost import get_hardware

        self.fn, self.mesh, self.args = fn, mesh, args
        self.leaves, self.tree, self.points = leaves, tree, points
        self.sizes = {n: int(mesh.shape[n]) for n in mesh.axis_names}
        self.hw = get_hardware(hardware, num_devices=max(1, math.prod(self.sizes.values())))
        self.memory_limit = float(self.hw.hbm_bytes if memory_limit is None else memory_limit)
        self.cache: dict = {}
        self.lowerings = 0
        self.lower_seconds = 0.0

    def in_specs(self, assign: tuple) -> tuple:
        """The in_specs pytree (matching args) of an assignment: the user's fixed specs, the
        points' chosen candidates, None elsewhere."""
        specs = [leaf.fixed for leaf in self.leaves]
        for point, c in zip(self.points, assign):
            for i in point.leaves:
                specs[i] = point.candidates[c]
        return jax.tree_util.tree_unflatten(self.tree, specs)

    def lower(self, assign: tuple):
        import gshard
        pf = gshard.partition(self.fn, self.mesh, in_specs=self.in_specs(assign))
        return pf, pf.lower(*self.args)

    def __call__(self, assign: tuple) -> Price:
        assign = tuple(assign)
        if assign not in self.cache:
            self.cache[assign] = self._price(assign)
        return self.cache[assign]

    def _price(self, assign: tuple) -> Price:
        from ..errors import GShardError
        t0 = time.perf_counter()
        try:
            _, low = self.lower(assign)
        except GShardError as e:  # e.g. a candidate the user's annotations cannot take
            return failed(f"{type(e).__name__}: {str(e).splitlines()[0]}")
        finally:
            self.lowerings += 1
            self.lower_seconds += time.perf_counter() - t0
        return self.price_lowered(low)

    def price_lowered(self, low) -> Price:
        from ..cost import estimate
        r = estimate(low.per_device_jaxpr, low.collectives, low.mesh.sizes, self.hw)
        coll_bytes = sum(c.bytes * c.count for c in r.collectives)
        specs = tuple(s.to_partition_spec() for s in low.in_specs)
        return Price(r.step_time_s, r.peak_bytes, coll_bytes, r.compute_time_s,
                     r.total_collective_time_s, r.peak_bytes <= self.memory_limit, specs)

    def spec_of(self, point_index: int, c: int) -> str:
        from .points import spec_text
        return spec_text(self.points[point_index].candidates[c])

    def summary(self, assign: tuple) -> str:
        """One line: each point's spec where it is not left to propagation."""
        parts = [f"{p.name}={p.candidates[c]}" for p, c in zip(self.points, assign)
                 if p.candidates[c] is not AUTO]
        return ", ".join(parts) if parts else "propagation only"
