"""gshard.autoshard(fn, mesh, *args, hardware="cpu", memory_limit=None) (DESIGN §6, §13)."""
from __future__ import annotations

import dataclasses
import numbers
import time

import jax
from jax.sharding import AbstractMesh, Mesh

from ..errors import GShardError
from .plan import (AutoPlan, Decision, candidate_text, check_values, summary_row,
                   xla_peak_bytes)
from .depth import depth_of
from .points import annotated_inputs, decision_points, leaves_of, spec_text
from .price import Pricer, better
from .search import search

VERIFY_TRIES = 3  # plans tried, best first, when XLA's compiled peak is over the limit
REPRICE = 3       # with layer stacks extrapolated: the best plans re-priced in full


def autoshard(fn, mesh, *args, hardware="cpu", memory_limit=None, in_specs=None,
              check: bool = True) -> AutoPlan:
    """Choose input shardings for `fn` on `mesh` by a search priced with gshard's cost model.

    `args`: arrays or jax.ShapeDtypeStruct (pytrees); `mesh`: a jax.sharding.Mesh or
    AbstractMesh; `hardware`: a cost-model profile ("cpu" measures this host, "tpu-v3", "h100",
    "h200") or a gshard.cost.Hardware; `memory_limit`: bytes per device (None: the profile's
    memory per device); `in_specs`: your own specs for some inputs (kept as they are, like
    the annotations inside `fn`). On a concrete mesh the chosen plan is run once against `fn`
    unpartitioned (`check=False` skips that) and XLA's memory analysis of the compiled program
    must fit `memory_limit` too."""
    t0 = time.perf_counter()
    _check_inputs(mesh, memory_limit, hardware)
    from .. import api as gshard

    with gshard.sharing_traces():       # every candidate lowers the same trace
        plan = _autoshard(fn, mesh, args, hardware, memory_limit, in_specs, check)
    plan.search_seconds = time.perf_counter() - t0
    return plan


def _autoshard(fn, mesh, args, hardware, memory_limit, in_specs, check) -> AutoPlan:
    from .. import api as gshard

    leaves, tree = leaves_of(args, in_specs)
    base = gshard.partition(fn, mesh, in_specs=in_specs).lower(*args)
    marked = annotated_inputs(base.graph)
    leaves = [dataclasses.replace(lf, annotated=lf.index in marked) for lf in leaves]
    names = tuple(mesh.axis_names)
    sizes = tuple(int(mesh.shape[n]) for n in names)
    points = decision_points(leaves, names, sizes)
    pricer = Pricer(fn, mesh, args, leaves, tree, points, hardware, memory_limit,
                    depth_of(args, in_specs))
    pricer.check_depth(base)
    result = search(pricer, leaves, len(args))
    plan = _choose(fn, mesh, args, pricer, result["ranked"], check and not _abstract(mesh))
    plan.fixed = [(lf.path, "in_specs" if lf.fixed is not None else "annotated in fn")
                  for lf in leaves if lf.fixed is not None or lf.annotated]
    return plan


def _abstract(mesh) -> bool:
    return not isinstance(mesh, Mesh)


def _check_inputs(mesh, memory_limit, hardware):
    if not isinstance(mesh, (Mesh, AbstractMesh)):
        raise GShardError(
            f"gshard.autoshard: mesh must be a jax.sharding.Mesh or AbstractMesh, got "
            f"{type(mesh).__name__}.\n  fix: jax.make_mesh((2, 4), ('data', 'model')), or "
            "jax.sharding.AbstractMesh((2048,), ('x',)) to plan without devices")
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(
            memory_limit, numbers.Real) or memory_limit <= 0):
        raise GShardError(
            f"gshard.autoshard: memory_limit must be a positive number of bytes per device, "
            f"got {memory_limit!r}.\n  fix: e.g. memory_limit=16 * 2**30, or None for the "
            "hardware profile's memory")
    from ..cost import get_hardware
    if isinstance(hardware, str) and hardware.lower() == "cpu":
        return  # measured on first use
    try:
        get_hardware(hardware)
    except (ValueError, AttributeError) as e:
        raise GShardError(f"gshard.autoshard: {e}\n  fix: pass one of those names or a "
                          "gshard.cost.Hardware") from None


def _choose(fn, mesh, args, pricer: Pricer, ranked: list, verify: bool) -> AutoPlan:
    """The best plan that fits: predicted by the cost model, and on a concrete mesh also by
    XLA's memory analysis of the compiled program; checked against `fn` before returning."""
    fitting = [(a, p) for a, p in ranked if p.fits and not p.error]
    if pricer.depth:
        fitting = _in_full(pricer, fitting[:REPRICE])
    if not fitting:
        _no_fit(pricer, ranked)
    over = []
    for assign, price in fitting[:VERIFY_TRIES]:
        plan = _build(fn, mesh, args, pricer, assign, price, ranked)
        if not verify:
            return plan
        low = plan.partitioned.lower(*args)
        plan.checked = check_values(fn, plan.partitioned, args)
        plan.measured_peak_bytes = xla_peak_bytes(low)
        if plan.measured_peak_bytes is None or plan.measured_peak_bytes <= pricer.memory_limit:
            return plan
        over.append(plan.measured_peak_bytes)
    raise GShardError(
        f"gshard.autoshard: the best {len(over)} plan(s) fit memory_limit="
        f"{pricer.memory_limit:.0f} bytes by the cost model but not by XLA's memory analysis "
        f"of the compiled program ({', '.join(str(b) for b in over)} bytes).\n  fix: raise "
        "memory_limit a little, or use more devices")


def _in_full(pricer: Pricer, rows: list) -> list:
    """Re-price extrapolated plans on the whole program; the fitting ones, best first."""
    full = [(a, pricer.full_price(a)) for a, _ in rows]
    full = [(a, p) for a, p in full if p.fits and not p.error]
    out = []
    while full:
        best = 0
        for j in range(1, len(full)):
            if better(full[j][1], full[best][1]):
                best = j
        out.append(full.pop(best))
    return out


def _no_fit(pricer: Pricer, ranked: list):
    ok = [p for _, p in ranked if not p.error]
    if not ok:
        first = next((p.error for _, p in ranked if p.error), "nothing was priced")
        raise GShardError(f"gshard.autoshard: no candidate plan could be lowered: {first}")
    least = min(ok, key=lambda p: p.peak_bytes)
    raise GShardError(
        f"gshard.autoshard: no plan found fits memory_limit={pricer.memory_limit:.0f} bytes per "
        f"device; the smallest of {len(ok)} plans tried needs {least.peak_bytes:.0f} bytes "
        f"(in_specs {', '.join(str(s) for s in least.specs)}).\n  fix: raise memory_limit, "
        "use a mesh with more devices, or shrink the model / batch")


def _build(fn, mesh, args, pricer: Pricer, assign: tuple, best, ranked: list) -> AutoPlan:
    """The plan for `assign`: its resolved input specs fixed as in_specs, re-priced as returned."""
    from .. import api as gshard

    in_specs = jax.tree_util.tree_unflatten(pricer.tree, list(best.specs))
    pf = gshard.partition(fn, mesh, in_specs=in_specs)
    low = pf.lower(*args)
    final = pricer.price_lowered(low)
    notes = [pricer.depth_note] if pricer.depth_note else []
    est = pricer(assign)
    if pricer.depth and not est.error:
        notes.append(f"chosen plan: extrapolated step {est.step_s:.4g} s, peak "
                     f"{est.peak_bytes:.0f} B; full lowering {final.step_s:.4g} s, "
                     f"{final.peak_bytes:.0f} B ({est.step_s / final.step_s - 1:+.1%}, "
                     f"{est.peak_bytes / final.peak_bytes - 1:+.1%})")
    ok = [(a, p) for a, p in ranked if not p.error]
    rows = [summary_row(pricer, a, p) for a, p in ok]
    return AutoPlan(
        in_specs=in_specs, partitioned=pf,
        predicted={"step_s": final.step_s, "peak_bytes": int(final.peak_bytes),
                   "collective_bytes": int(final.collective_bytes)},
        candidates=rows, search_seconds=0.0, mesh=low.mesh.describe(), hardware=pricer.hw.name,
        memory_limit=pricer.memory_limit, decisions=_decisions(pricer, assign, low),
        lowerings=pricer.lowerings,
        candidate_in_specs=[jax.tree_util.tree_unflatten(pricer.tree, list(p.specs))
                            for _, p in ok],
        failures=[p.error for _, p in ranked if p.error], notes=notes)


def _decisions(pricer: Pricer, assign: tuple, low) -> list[Decision]:
    """Each point at `assign` against its best alternative (a different program)."""
    mine = pricer(assign)
    users = low.graph.users()
    out = []
    for i, point in enumerate(pricer.points):
        alt, alt_p = None, None
        for c in range(len(point.candidates)):
            trial = assign[:i] + (c,) + assign[i + 1:]
            p = pricer(trial)
            if c == assign[i] or (not p.error and p.specs == mine.specs):
                continue
            if alt_p is None or better(p, alt_p) or (alt_p.error and not p.error):
                alt, alt_p = c, p
        leaf = point.leaves[0]
        first = users.get(low.graph.invars[leaf], [])
        out.append(Decision(point.describe(), point.shape, candidate_text(point, assign[i]),
                            spec_text(mine.specs[leaf]),
                            first[0].where if first else "(unused)",
                            None if alt is None else candidate_text(point, alt), alt_p, mine))
    return out
