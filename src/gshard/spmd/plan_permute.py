"""CollectivePermute reshards: each device receives its whole destination tile from one device
whose source tile contains it (a change of device order, or of which replicas hold which tile).

Applies when, per dim, the destination tiling refines the source tiling: the destination tile
count is r times the source's, and one source block is r destination blocks (always for even
dims; for an uneven one after a halo exchange lines the padded blocks up). Over the axes the
two specs use, a source tile is held by as many devices as need one of its r pieces, so a
bijection exists: a source device sends piece `f // R` (f: its index over the axes its source
spec leaves unused; R: the destination's replica count) to the replica `f % R` of that piece.
The piece is a pure function of the device's axis index: no per-device table.
"""
from __future__ import annotations

import itertools
import math

from ..spec import ShardingSpec
from .plan_uneven import Infeasible, shift
from .step import Step


def permute_step(src: ShardingSpec, dst: ShardingSpec, shape, sizes) -> Step | None:
    """The one-step CollectivePermute plan from src to dst, or None where none applies."""
    if src.partial != dst.partial:
        return None
    used = set(src.used_axes()) | set(dst.used_axes())
    axes = tuple(a for a in sizes if a in used)
    if not axes:
        return None
    sub, pre = [], None
    for d, n in enumerate(shape):
        ts, td = src.tiles(d, sizes), dst.tiles(d, sizes)
        if td % ts:
            return None
        sub.append(td // ts)
        old, new = -(-n // ts), sub[-1] * -(-n // td)
        if old != new:   # uneven: source blocks realigned to whole destination pieces
            if pre is not None:
                return None
            try:
                pre = shift(n, d, src.dims[d], old, new, sizes) or False
            except Infeasible:
                return None
    perm = tuple(pairs(src, dst, axes, sizes, sub))
    return Step("collective_permute", axes, src, dst, perm=perm, pre=pre or None,
                sub=tuple(sub) if any(r > 1 for r in sub) or pre is not None else ())


def free_axes(spec: ShardingSpec, axes) -> tuple[str, ...]:
    """The axes of `axes` the spec does not split on (its replicas there), in that order."""
    return tuple(a for a in axes if a not in set(spec.used_axes()))


def _linear(coords: dict, axes, sizes) -> int:
    out = 0
    for a in axes:
        out = out * sizes[a] + coords[a]
    return out


def _tile(spec: ShardingSpec, coords: dict, sizes) -> tuple[int, ...]:
    return tuple(_linear(coords, dim_axes, sizes) for dim_axes in spec.dims)


def unravel(i: int, radices) -> tuple[int, ...]:
    """Mixed-radix digits of i (first radix major)."""
    out = []
    for r in reversed(tuple(radices)):
        i, k = divmod(i, r)
        out.append(k)
    return tuple(reversed(out))


def pairs(src: ShardingSpec, dst: ShardingSpec, axes, sizes, sub) -> list[tuple[int, int]]:
    """(source device, destination device) pairs, as linear indices over `axes`."""
    grid = [dict(zip(axes, c)) for c in itertools.product(*[range(sizes[a]) for a in axes])]
    s_free, d_free = free_axes(src, axes), free_axes(dst, axes)
    reps = math.prod(sizes[a] for a in d_free)
    where = {(_tile(dst, c, sizes), _linear(c, d_free, sizes)): lin for lin, c in enumerate(grid)}
    out = []
    for lin, c in enumerate(grid):
        piece, rep = divmod(_linear(c, s_free, sizes), reps)
        tile = tuple(t * r + p for t, r, p in zip(_tile(src, c, sizes), sub, unravel(piece, sub)))
        out.append((lin, where[(tile, rep)]))
    assert sorted(d for _, d in out) == list(range(len(grid))), (src, dst)
    return out
