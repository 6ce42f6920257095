"""The search: seeds, then coordinate descent over the decision points, every move priced by a
real lowering (DESIGN §13, first step; see docs/autoshard.md for what it does not do yet).

Seeds: propagation only; everything replicated; data-parallel (the leading dim of every leaf
outside the first argument -- the parameters, by the `step(params, batch, ...)` convention --
split over the whole mesh, and over each axis alone), with the rest replicated or left to
propagation. From the best two seeds, coordinate descent: for each point in turn, every
candidate with the others held, keep the best (:func:`price.better`); repeat until a pass
changes nothing. Then the fewest annotations: a point whose choice propagation reproduces
anyway is left to propagation. The answer is the best of every plan priced.
"""
from __future__ import annotations

from .points import AUTO, Point
from .price import Price, Pricer, better

MAX_PASSES = 4
DESCENT_SEEDS = 1


def seeds(points: list[Point], leaves, names: tuple, nargs: int) -> dict[str, tuple]:
    """Named starting assignments (insertion order is the tie-break order)."""
    n = len(points)
    out = {"propagation only": (0,) * n, "replicated": (1,) * n}
    batch_axes = [tuple(names)] + ([(a,) for a in names] if len(names) > 1 else [])
    for axes in batch_axes:
        label = ",".join(axes)
        for rest, tag in ((1, "replicated"), (0, "propagated")):
            assign = tuple(_dp_choice(p, leaves, axes, rest, nargs) for p in points)
            out.setdefault(f"data-parallel over {label}, rest {tag}", assign)
    return out


def _dp_choice(point: Point, leaves, axes: tuple, rest: int, nargs: int) -> int:
    if not all(_batch_like(leaves[i], nargs) for i in point.leaves):
        return rest
    want = axes[0] if len(axes) == 1 else axes
    for c, spec in enumerate(point.candidates):
        if spec is not AUTO and len(spec) == 1 and spec[0] == want:
            return c
    return rest


def _batch_like(leaf, nargs: int) -> bool:
    """Outside the first argument (the parameters by convention), or the only argument."""
    return nargs == 1 or not leaf.path.startswith("args[0]")


def descend(pricer: Pricer, start: tuple) -> tuple:
    """Coordinate descent from `start`; returns the final assignment."""
    cur, cur_p = tuple(start), pricer(start)
    for _ in range(MAX_PASSES):
        moved = False
        for i, point in enumerate(pricer.points):
            for c in range(len(point.candidates)):
                if c == cur[i]:
                    continue
                trial = cur[:i] + (c,) + cur[i + 1:]
                p = pricer(trial)
                if better(p, cur_p):
                    cur, cur_p, moved = trial, p, True
        if not moved:
            break
    return cur


def fewest_annotations(pricer: Pricer, assign: tuple) -> tuple:
    """Leave a point to propagation where that lowers to the very same input specs."""
    cur = tuple(assign)
    for i in range(len(cur)):
        if cur[i] == 0:
            continue
        trial = cur[:i] + (0,) + cur[i + 1:]
        p, q = pricer(trial), pricer(cur)
        if not p.error and p.specs == q.specs:
            cur = trial
    return cur


def ranked(pricer: Pricer) -> list[tuple[tuple, Price]]:
    """Every priced plan, one per distinct program (its resolved input specs), best first: by
    step time, with near-ties (price.TOL) going to fewer collective bytes."""
    seen: dict = {}
    for assign, p in pricer.cache.items():
        key = p.specs if not p.error else ("error", assign)
        if key not in seen or _decided(assign) < _decided(seen[key][0]):
            seen[key] = (assign, p)
    rows = sorted(seen.values(), key=lambda r: _order(r[1]))
    if not rows:
        return rows
    best = 0
    for j in range(1, len(rows)):
        if better(rows[j][1], rows[best][1]):
            best = j
    return [rows[best]] + rows[:best] + rows[best + 1:]


def _decided(assign: tuple) -> int:
    """Points not left to propagation (fewer annotations for the same program win)."""
    return sum(1 for c in assign if c != 0)


def _order(p: Price) -> tuple:
    if p.error:
        return (2, 0.0, 0.0, 0.0)
    if not p.fits:
        return (1, p.peak_bytes, p.step_s, p.collective_bytes)
    return (0, p.step_s, p.collective_bytes, p.peak_bytes)


def search(pricer: Pricer, leaves, nargs: int) -> dict:
    """Run the search; returns the seeds' prices and the ranked plans."""
    points = pricer.points
    named = seeds(points, leaves, tuple(pricer.sizes), nargs)
    seed_prices = {name: pricer(a) for name, a in named.items()}
    order = sorted(named, key=lambda k: _order(seed_prices[k]))
    starts = []
    for name in order:
        if named[name] not in starts:
            starts.append(named[name])
        if len(starts) == DESCENT_SEEDS:
            break
    for s in starts:
        fewest_annotations(pricer, descend(pricer, s))
    return {"seeds": seed_prices, "named": named, "ranked": ranked(pricer)}
