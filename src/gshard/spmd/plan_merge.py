"""CollectivePermute rounds that join tiles: each destination tile is r source tiles (a coarser
tiling on other axes, e.g. rows over a 4-way axis -> rows over a 2-way one), received one piece a
round, instead of gathering over the whole source axis and slicing.

A source tile is held by R_s devices and needed, as one of the R = prod(r) pieces of its
destination tile, by R_d = R * R_s devices. In round k the destination replica rho (its index
over the axes its spec leaves unused) receives piece (rho + k) mod R from source replica
rho // R: every source sends once a round, every device receives its whole destination tile
in R rounds. Bytes per device: the destination tile, the least any plan can receive. Used
for pairs (R = 2): more rounds would make the program grow with the mesh.
"""
from __future__ import annotations

import itertools
import math

from ..spec import ShardingSpec
from .plan_permute import _linear, _tile, free_axes, unravel
from .plan_uneven import Infeasible, shift
from .step import Step

MAX_ROUNDS = 2   # more rounds than an AllGather's one collective: kept to joining pairs


def merge_step(src: ShardingSpec, dst: ShardingSpec, shape, sizes) -> Step | None:
    """The CollectivePermute rounds from src to a coarser dst, or None where none applies."""
    if src.partial != dst.partial:
        return None
    axes = tuple(a for a in sizes if a in set(src.used_axes()) | set(dst.used_axes()))
    merge, post = [], None
    for d, n in enumerate(shape):
        ts, td = src.tiles(d, sizes), dst.tiles(d, sizes)
        if ts % td:
            return None
        merge.append(ts // td)
        old, new = merge[-1] * -(-n // ts), -(-n // td)
        if old != new and td > 1:   # uneven: the joined blocks realigned
            if post is not None:
                return None
            try:
                post = shift(n, d, dst.dims[d], old, new, sizes) or False
            except Infeasible:
                return None
    if not 1 < math.prod(merge) <= MAX_ROUNDS:
        return None
    rounds = tuple(merge_rounds(src, dst, axes, sizes, merge))
    return Step("collective_permute", axes, src, dst, rounds=rounds, merge=tuple(merge),
                post=post or None)


def merge_rounds(src, dst, axes, sizes, merge):
    """Per round, the (source, destination) pairs (linear indices over `axes`)."""
    grid = [dict(zip(axes, c)) for c in itertools.product(*[range(sizes[a]) for a in axes])]
    s_free, d_free = free_axes(src, axes), free_axes(dst, axes)
    where = {(_tile(src, c, sizes), _linear(c, s_free, sizes)): lin for lin, c in enumerate(grid)}
    total = math.prod(merge)
    for k in range(total):
        pairs = []
        for lin, c in enumerate(grid):
            rho = _linear(c, d_free, sizes)
            piece = unravel((rho + k) % total, merge)
            tile = tuple(t * r + p for t, r, p in zip(_tile(dst, c, sizes), merge, piece))
            pairs.append((where[(tile, rho // total)], lin))
        assert sorted(s for s, _ in pairs) == list(range(len(grid))), (src, dst)
        yield tuple(pairs)
