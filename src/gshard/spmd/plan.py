"""The reshard planner (DESIGN §5) as data: `plan(src, dst, shape, sizes) -> [Step]`.

One mesh axis group at a time: partial -> split = ReduceScatter; partial -> replicated =
AllReduce; split -> split on another dim = AllToAll; split -> replicated = AllGather; replicated ->
split = local slice (no communication); same tiling in another device order = CollectivePermute.
An uneven dim whose tiling changes is gathered whole and trimmed first (marked on its step).

The plan is pure: `spmd/reshard.py` executes it on a local shard, `step_bytes` / `plan_cost` price
it (the dot rule chooses among layouts with it), and tests check it without devices.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..spec import ShardingSpec

COMMUNICATING = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute")


@dataclass(frozen=True)
class Step:
    """One step of a reshard: `kind` is a collective kind, "slice" (take this device's part of a
    dim, no communication) or "add_partial" (become a partial sum: this value on one device of
    the axes, zeros elsewhere). `dim`: the dim gathered / scattered / sliced, or the dim an
    AllToAll takes the axes away from (`to_dim` receives them)."""
    kind: str
    axes: tuple[str, ...]
    before: ShardingSpec
    after: ShardingSpec
    dim: int = -1
    to_dim: int = -1
    perm: tuple[tuple[int, int], ...] = ()
    whole: bool = False       # an uneven dim gathered whole
    full: bool = False        # the whole tensor ends on every device (full replication)

    @property
    def communicates(self) -> bool:
        return self.kind in COMMUNICATING


def plan(src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int],
         sizes: Mapping[str, int]) -> list[Step]:
    """The steps that take a value of global `shape` from `src` to `dst`."""
    if src == dst:
        return []
    if _permutable(src, dst, sizes):
        axes = tuple(a for a in sizes if a in set(src.used_axes()))
        return [Step("collective_permute", axes, src, dst, perm=tuple(permutation(src, dst, axes, sizes)))]
    steps: list[Step] = []
    cur = src
    for stage in (_gather_uneven, _reduce_partials, _remove_axes, _add_axes, _add_partials):
        for step in stage(cur, dst, tuple(shape), sizes):
            steps.append(step)
            cur = step.after
    assert cur == dst, (src, dst, cur)
    return steps


# ----- pricing ----------------------------------------------------------------------------------
def step_bytes(step: Step, shape, itemsize: int, sizes) -> int:
    """Per-device payload of a step, as `low.collectives` records it: the operand's bytes, or the
    gathered result's bytes for an AllGather; 0 for local steps."""
    if not step.communicates:
        return 0
    local = list(step.before.local_shape(shape, sizes))
    if step.kind == "all_gather":
        local[step.dim] *= math.prod(sizes[a] for a in step.axes)
    if step.kind == "reduce_scatter":  # the operand padded to whole tiles
        local[step.dim] = step.after.local_shape(shape, sizes)[step.dim] * _tiles(step.axes, sizes)
    return math.prod(local) * itemsize


def plan_cost(steps: list[Step], shape, itemsize: int, sizes) -> float:
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


# ----- stage 0: uneven dims whose tiling changes are gathered whole and trimmed -----------------
def _gather_uneven(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    for d in range(cur.rank):
        src_axes, dst_axes = cur.dims[d], dst.dims[d]
        if not src_axes or src_axes == dst_axes:
            continue
        if _even(shape[d], src_axes, sizes) and _even(shape[d], dst_axes, sizes):
            continue
        after = cur.with_dim(d, ())
        yield Step("all_gather", src_axes, cur, after, dim=d, whole=True,
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
        if ext and (_even(shape[d], want, sizes) or (not have and tuple(ext) == tuple(want))):
            # uneven: the whole dim is padded to the tiles and reduce-scattered (padded tiles)
            keep = tuple(a for a in cur.partial if a not in ext)
            after = cur.with_dim(d, have + tuple(ext)).with_partial(keep)
            yield Step("reduce_scatter", tuple(ext), cur, after, dim=d)
            cur = after
            todo = [a for a in todo if a not in ext]
    if todo:
        after = cur.with_partial(tuple(a for a in cur.partial if a not in todo))
        yield Step("all_reduce", tuple(todo), cur, after)


# ----- stage 2: remove axes: AllToAll when the axis moves to another dim, else AllGather --------
def _remove_axes(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    for d in range(cur.rank):
        while not _is_prefix(cur.dims[d], dst.dims[d]):
            step = _all_to_all(cur, dst, shape, sizes, d) or _gather_suffix(cur, dst, d)
            yield step
            cur = step.after


def _all_to_all(cur: ShardingSpec, dst: ShardingSpec, shape, sizes, d: int):
    have = cur.dims[d]
    local = cur.local_shape(shape, sizes)
    for k in range(_common(have, dst.dims[d]), len(have)):  # the longest movable suffix first
        axes = have[k:]
        t = _tiles(axes, sizes)
        for d2 in range(cur.rank):
            if d2 == d or not _is_prefix(cur.dims[d2] + axes, dst.dims[d2]):
                continue
            if local[d2] % t == 0 and _even(shape[d2], dst.dims[d2], sizes):
                after = cur.with_dim(d, have[:k]).with_dim(d2, cur.dims[d2] + axes)
                return Step("all_to_all", axes, cur, after, dim=d, to_dim=d2)
    return None


def _gather_suffix(cur: ShardingSpec, dst: ShardingSpec, d: int) -> Step:
    have = cur.dims[d]
    k = _common(have, dst.dims[d])
    after = cur.with_dim(d, have[:k])
    full = not after.used_axes() and not after.partial
    return Step("all_gather", have[k:], cur, after, dim=d, full=full)


# ----- stage 3: add axes by local slicing -------------------------------------------------------
def _add_axes(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    for d in range(cur.rank):
        have, want = cur.dims[d], dst.dims[d]
        extra = want[len(have):]
        if extra:
            after = cur.with_dim(d, have + tuple(extra))
            yield Step("slice", tuple(extra), cur, after, dim=d)
            cur = after


def _add_partials(cur: ShardingSpec, dst: ShardingSpec, shape, sizes):
    new = tuple(a for a in dst.partial if a not in cur.partial)
    if new or cur.partial != dst.partial:
        yield Step("add_partial", new, cur, dst)


# ----- same tiling, another device order: CollectivePermute -----------------------------------
def _permutable(src: ShardingSpec, dst: ShardingSpec, sizes) -> bool:
    if src.partial != dst.partial or set(src.used_axes()) != set(dst.used_axes()):
        return False
    return all(src.tiles(d, sizes) == dst.tiles(d, sizes) for d in range(src.rank))


def _tile_coords(spec: ShardingSpec, coords: dict, sizes) -> tuple[int, ...]:
    out = []
    for axes in spec.dims:
        t = 0
        for a in axes:
            t = t * sizes[a] + coords[a]
        out.append(t)
    return tuple(out)


def permutation(src: ShardingSpec, dst: ShardingSpec, axes, sizes) -> list[tuple[int, int]]:
    """(source device, destination device) pairs, as linear indices over `axes`."""
    owner = {}
    grid = list(itertools.product(*[range(sizes[a]) for a in axes]))
    for lin, c in enumerate(grid):
        owner[_tile_coords(dst, dict(zip(axes, c)), sizes)] = lin
    return [(lin, owner[_tile_coords(src, dict(zip(axes, c)), sizes)]) for lin, c in enumerate(grid)]
