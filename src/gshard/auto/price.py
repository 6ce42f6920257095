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


def extrapolate(p1, p2, n: int, memory_limit: float, specs: tuple):
    """The N-layer price from the 1- and 2-layer ones (see depth.py's docstring)."""
    if p1.error or p2.error:
        return failed(p1.error or p2.error)
    lin = lambda a, b: a + (n - 1) * (b - a)  # noqa: E731
    peak = lin(p1.peak_bytes, p2.peak_bytes)
    return Price(lin(p1.step_s, p2.step_s), peak, lin(p1.collective_bytes, p2.collective_bytes),
                 lin(p1.compute_s, p2.compute_s), lin(p1.collective_s, p2.collective_s),
                 peak <= memory_limit, specs)


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

    def __init__(self, fn, mesh, args, leaves, tree, points, hardware, memory_limit,
                 depth: int | None = None):
        from ..cost import get_hardware

        self.fn, self.mesh, self.args = fn, mesh, args
        self.leaves, self.tree, self.points = leaves, tree, points
        self.sizes = {n: int(mesh.shape[n]) for n in mesh.axis_names}
        self.hw = get_hardware(hardware, num_devices=max(1, math.prod(self.sizes.values())))
        self.memory_limit = float(self.hw.hbm_bytes if memory_limit is None else memory_limit)
        self.cache: dict = {}
        self.lowerings = 0
        self.lower_seconds = 0.0
        self.depth = depth          # N: price 1- and 2-layer copies and extrapolate (depth.py)
        self.depth_note = ""
        self.views = [self._view(k) for k in (1, 2)] if depth else []

    def _view(self, k: int):
        """The args with every layer stack cut to k layers, and each leaf's point (or None)."""
        from .depth import truncate
        from .points import leaves_of, tie_key
        targs = truncate(tuple(self.args), k)
        tleaves, ttree = leaves_of(targs)
        keymap = {p.key: i for i, p in enumerate(self.points)}
        return targs, tleaves, ttree, [keymap.get(tie_key(lf)) for lf in tleaves]

    def check_depth(self, base_low):
        """Keep depth extrapolation only if it prices the propagation-only plan within 10% of
        its full lowering (`base_low`); otherwise price every plan in full."""
        if not self.depth:
            return
        full = self.price_lowered(base_low)
        try:
            est = self._price_views((0,) * len(self.points))
        except Exception as e:  # noqa: BLE001 - fn may not take a shorter stack
            est, why = None, f"{type(e).__name__}: {e}"
        if est is not None and not est.error and abs(est.step_s / full.step_s - 1) <= 0.10:
            self.depth_note = (f"layer stacks of {self.depth} priced from 1- and 2-layer copies "
                               f"(propagation-only plan: {est.step_s / full.step_s - 1:+.1%} "
                               "against its full lowering)")
            return
        if est is not None:
            why = est.error or f"extrapolation {est.step_s / full.step_s - 1:+.1%} off"
        self.depth_note = f"layer stacks priced in full ({why})"
        self.depth, self.views = None, []
        self.cache.clear()

    def _price_views(self, assign: tuple) -> Price:
        from .. import api as gshard
        from .depth import full_specs
        from .points import tie_key
        prices = []
        for targs, tleaves, ttree, pidx in self.views:
            specs = [None if i is None else self.points[i].candidates[assign[i]] for i in pidx]
            low = gshard.partition(self.fn, self.mesh, in_specs=jax.tree_util.tree_unflatten(
                ttree, specs)).lower(*targs)
            prices.append(self.price_lowered(low))
        specs = full_specs(self.leaves, self.views[1][1], prices[1].specs, tie_key)
        return extrapolate(prices[0], prices[1], self.depth, self.memory_limit, specs)

    def full_price(self, assign: tuple) -> Price:
        """The price of the whole program (no extrapolation)."""
        from ..errors import GShardError
        try:
            return self.price_lowered(self.lower(assign)[1])
        except GShardError as e:
            return failed(f"{type(e).__name__}: {str(e).splitlines()[0]}")

    def in_specs(self, assign: tuple) -> tuple:
        """The in_specs pytree (matching args) of an assignment: the user's fixed specs, the
        points' chosen candidates, None elsewhere."""
        specs = [leaf.fixed for leaf in self.leaves]
        for point, c in zip(self.points, assign):
            for i in point.leaves:
                specs[i] = point.candidates[c]
        return jax.tree_util.tree_unflatten(self.tree, specs)

    def lower(self, assign: tuple):
        from .. import api as gshard
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
            if self.depth:
                return self._price_views(assign)
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
