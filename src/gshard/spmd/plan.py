"""The reshard planner (DESIGN §5) as data: `plan(src, dst, shape, sizes) -> [Step]`.

One mesh axis group at a time: partial -> split = ReduceScatter; partial -> replicated =
AllReduce; split -> split on another dim = AllToAll; split -> replicated = AllGather; replicated ->
split = local slice (no communication); a change of which devices hold which tile =
CollectivePermute (`spmd/plan_permute.py`). An uneven dim keeps its padded layout: where a step
changes its tiling, a halo exchange of boundary rows realigns its blocks (`spmd/plan_uneven.py`);
only where that cannot work is it gathered whole first (marked on its step, reported). Of the
candidate plans the one moving the fewest bytes is taken.

The plan is pure: `spmd/reshard.py` executes it on a local shard, `step_bytes` / `plan_cost` price
it (the dot rule chooses among layouts with it), and tests check it without devices.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Mapping, Sequence

from ..spec import ShardingSpec
from .plan_merge import merge_step
from .plan_permute import permute_step
from .plan_uneven import Infeasible, after_merge, before_split, halo_elems
from .step import COMMUNICATING, Halo, Step

__all__ = ["COMMUNICATING", "Halo", "Step", "plan", "plan_cost", "reshard_cost", "step_bytes"]


def plan(src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int],
         sizes: Mapping[str, int]) -> list[Step]:
    """The steps that take a value of global `shape` from `src` to `dst`."""
    return list(_plan(src, dst, tuple(shape), tuple(sizes.items())))


@functools.lru_cache(maxsize=16384)
def _plan(src: ShardingSpec, dst: ShardingSpec, shape, items) -> tuple[Step, ...]:
    if src == dst:
        return ()
    sizes = dict(items)
    cands = [_staged(src, dst, shape, sizes, halos=True)]
    cp = permute_step(src, dst, shape, sizes)
    cands.append((cp,) if cp is not None else None)
    joined = merge_step(src, dst, shape, sizes)
    cands.append((joined,) if joined is not None else None)
    cands.append(_staged(src, dst, shape, sizes, halos=False))
    if src.partial:  # axes moved off a dim first can make room for a ReduceScatter onto it
        cands.append(_staged(src, dst, shape, sizes, halos=True, remove_first=True))
    cands += [_then_permute(src, mid, dst, shape, sizes) for mid in _reorders(dst)]
    return min((c for c in cands if c is not None), key=lambda s: plan_cost(s, shape, 1, sizes))


def _reorders(dst: ShardingSpec):
    """dst with the axes of some dims in another order: the same tiles on other devices."""
    for dims in itertools.product(*[itertools.permutations(d) for d in dst.dims]):
        if dims != dst.dims:
            yield ShardingSpec(dims, dst.partial)


def _then_permute(src, mid, dst, shape, sizes) -> tuple[Step, ...] | None:
    """A staged plan to `mid` (dst's tiles in another device order), then a CollectivePermute."""
    first, cp = _staged(src, mid, shape, sizes, halos=True), permute_step(mid, dst, shape, sizes)
    return None if first is None or cp is None else first + (cp,)


def _staged(src, dst, shape, sizes, halos: bool, remove_first=False) -> tuple[Step, ...] | None:
    """The stage-by-stage plan; without halos, uneven dims whose tiling changes are gathered
    whole first. None where a needed halo exchange is infeasible."""
    stages = (_reduce_partials, _remove_axes, _add_axes, _add_partials)
    if remove_first:
        stages = (_remove_axes, _reduce_partials, _add_axes, _add_partials)
    steps: list[Step] = []
    cur = src
    try:
        for stage in stages if halos else (_gather_uneven,) + stages:
            for step in stage(cur, dst, shape, sizes):
                steps.append(step)
                cur = step.after
    except Infeasible:
        return None
    assert cur == dst, (src, dst, cur)
    return tuple(steps)


# ----- pricing ----------------------------------------------------------------------------------
def step_bytes(step: Step, shape, itemsize: int, sizes) -> int:
    """Per-device payload of a step, as `low.collectives` records it: the operand's bytes, or the
    gathered result's bytes for an AllGather, plus the boundary rows of its halo exchanges; 0
    for local steps."""
    if not step.communicates:
        return 0
    before, after = step.before.local_shape(shape, sizes), step.after.local_shape(shape, sizes)
    halo = halo_elems(step.pre, before) + halo_elems(step.post, after)
    return (_main_elems(step, before, after, sizes) + halo) * itemsize


def _main_elems(step: Step, before, after, sizes) -> int:
    if step.kind not in COMMUNICATING:
        return 0
    local = list(after if step.kind == "all_reduce" else before)
    if step.kind == "all_gather":
        local[step.dim] *= _tiles(step.axes, sizes)
    if step.kind == "reduce_scatter":  # the operand padded to whole tiles
        local[step.dim] = after[step.dim] * _tiles(step.axes, sizes)
    if step.kind == "all_to_all":      # the receiving dim padded to whole tiles
        local[step.to_dim] = after[step.to_dim] * _tiles(step.axes, sizes)
    if step.kind == "collective_permute":  # the destination tile (over its rounds)
        return math.prod(before) * len(step.rounds) if step.merge else math.prod(after)
    return math.prod(local)


def plan_cost(steps, shape, itemsize: int, sizes) -> float:
    """Bytes a plan moves per device, an AllReduce counted twice (reduce + broadcast)."""
    return float(sum(step_bytes(s, shape, itemsize, sizes) * (2 if s.kind == "all_reduce" else 1)
                     for s in steps))


def reshard_cost(src: ShardingSpec, dst: ShardingSpec, shape, itemsize: int, sizes) -> float:
    return plan_cost(plan(src, dst, shape, sizes), shape, itemsize, sizes)


# ----- helpers ----------------------------------------------------------------------------------
def _tiles(axes, sizes) -> int:
    return math.prod(sizes[a] for a in axes)


def _even(n: int, axes, sizes) -> bool:
    return n % _tiles(axes, sizes) == 0


def _is_prefix(a, b) -> bool:
    return tuple(b[: len(a)]) == tuple(a)


def _common(cur, want) -> int:
    k = 0
    while k < min(len(cur), len(want)) and cur[k] == want[k]:
        k += 1
    return k


# ----- fallback: uneven dims whose tiling changes are gathered whole and trimmed ----------------
def _gather_uneven(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    for d in range(cur.rank):
        src_axes, dst_axes = cur.dims[d], dst.dims[d]
        if not src_axes or src_axes == dst_axes:
            continue
        if _even(shape[d], src_axes, sizes) and _even(shape[d], dst_axes, sizes):
            continue
        after = cur.with_dim(d, ())
        whole = _common(src_axes, dst_axes) > 0  # gathered past the axes it keeps
        yield Step("all_gather", src_axes, cur, after, dim=d, whole=whole,
                   full=not after.used_axes() and not after.partial)
        cur = after


# ----- stage 1: partial sums -> ReduceScatter where the destination splits, else AllReduce -----
def _reduce_partials(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    todo = [a for a in cur.partial if a not in dst.partial]
    if not todo:
        return
    for d in range(cur.rank):
        have, want = cur.dims[d], dst.dims[d]
        if not _is_prefix(have, want):
            continue
        ext = []
        for a in want[len(have):]:
            if a not in todo or a in cur.used_axes():
                break
            ext.append(a)
        if ext:  # uneven: the dim realigned, padded to the tiles and reduce-scattered
            pre = before_split(shape[d], have, _tiles(ext, sizes), d, sizes)
            keep = tuple(a for a in cur.partial if a not in ext)
            after = cur.with_dim(d, have + tuple(ext)).with_partial(keep)
            yield Step("reduce_scatter", tuple(ext), cur, after, dim=d, pre=pre)
            cur = after
            todo = [a for a in todo if a not in ext]
    if todo:
        after = cur.with_partial(tuple(a for a in cur.partial if a not in todo))
        yield Step("all_reduce", tuple(todo), cur, after)


# ----- stage 2: remove axes: AllToAll when the axis moves to another dim, else AllGather --------
def _remove_axes(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    yield from _removal(cur, dst, shape, sizes)


def _removal(cur: ShardingSpec, dst: ShardingSpec, shape, sizes) -> list[Step]:
    """AllToAlls while any applies, else the cheapest order of the remaining gathers (an uneven
    dim gathered before the others is trimmed before they multiply it)."""
    todo = [d for d in range(cur.rank) if not _is_prefix(cur.dims[d], dst.dims[d])]
    if not todo:
        return []
    step = next((s for d in todo if (s := _all_to_all(cur, dst, shape, sizes, d))), None)
    if step is not None:
        return [step] + _removal(step.after, dst, shape, sizes)
    options = []
    for d in todo:
        try:
            g = _gather_suffix(cur, dst, shape, sizes, d)
            options.append([g] + _removal(g.after, dst, shape, sizes))
        except Infeasible:
            continue
    if not options:
        raise Infeasible(f"{cur} -> {dst}")
    return min(options, key=lambda steps: plan_cost(steps, shape, 1, sizes))


def _all_to_all(cur: ShardingSpec, dst: ShardingSpec, shape, sizes, d: int):
    have = cur.dims[d]
    for k in range(_common(have, dst.dims[d]), len(have)):  # the longest movable suffix first
        axes = have[k:]
        t = _tiles(axes, sizes)
        for d2 in range(cur.rank):
            if d2 == d or not _is_prefix(cur.dims[d2] + axes, dst.dims[d2]):
                continue
            try:
                pre = before_split(shape[d2], cur.dims[d2], t, d2, sizes)
                post = after_merge(shape[d], have[:k], t, d, sizes)
            except Infeasible:
                continue
            after = cur.with_dim(d, have[:k]).with_dim(d2, cur.dims[d2] + axes)
            return Step("all_to_all", axes, cur, after, dim=d, to_dim=d2, pre=pre, post=post)
    return None


def _gather_suffix(cur: ShardingSpec, dst: ShardingSpec, shape, sizes, d: int) -> Step:
    have = cur.dims[d]
    k = _common(have, dst.dims[d])
    after = cur.with_dim(d, have[:k])
    full = not after.used_axes() and not after.partial
    if k == 0 and 2 * shape[d] < _tiles(have, sizes) * cur.local_shape(shape, sizes)[d]:
        # mostly padding: each tile's rows summed into a zero buffer of the real length
        return Step("all_reduce", have, cur, after, dim=d, full=full)
    post = after_merge(shape[d], have[:k], _tiles(have[k:], sizes), d, sizes)
    return Step("all_gather", have[k:], cur, after, dim=d, full=full, post=post)


# ----- stage 3: add axes by local slicing (after a halo exchange where blocks misalign) ---------
def _add_axes(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    for d in range(cur.rank):
        have, want = cur.dims[d], dst.dims[d]
        extra = want[len(have):]
        if extra:
            pre = before_split(shape[d], have, _tiles(extra, sizes), d, sizes)
            after = cur.with_dim(d, have + tuple(extra))
            yield Step("slice", tuple(extra), cur, after, dim=d, pre=pre)
            cur = after


def _add_partials(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    new = tuple(a for a in dst.partial if a not in cur.partial)
    if new or cur.partial != dst.partial:
        yield Step("add_partial", new, cur, dst)
