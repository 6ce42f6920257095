"""Uneven dims in the reshard planner: the halo exchanges that keep a dim's padded layout.

A dim of length n over T tiles is stored as blocks of ceil(n/T) rows, padded at the high end.
Gathering t of its tiles (T -> T/t) leaves blocks of ceil(n/T)*t rows; splitting t ways more
(T -> T*t) cuts blocks of ceil(n/T) rows into t pieces. Where those block lengths differ from the
new tiling's ceil(n/T'), the rows shift between neighbouring tiles: a halo exchange (one
CollectivePermute of the boundary rows, one more per tile further away) realigns them, as
XLA's partitioner does, instead of gathering the dim whole. A shift from more than MAX_HOPS tiles
away is infeasible (`Infeasible`); the planner then gathers the dim whole (reported).
"""
from __future__ import annotations

import math

from .step import Halo


MAX_HOPS = 3   # a halo exchange takes rows from at most this many tiles away


class Infeasible(Exception):
    """A halo exchange would need rows from more than MAX_HOPS tiles away."""


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _tiles(axes, sizes) -> int:
    return math.prod(sizes[a] for a in axes)


def before_split(n: int, axes, t: int, dim: int, sizes) -> Halo | None:
    """The realignment a dim of length n tiled over `axes` needs before each tile is cut into t
    pieces (a slice, ReduceScatter or AllToAll onto it): None when the blocks already align (or
    the dim is not split yet: local padding does)."""
    tiles = _tiles(axes, sizes)
    old, piece = _ceil(n, tiles), _ceil(n, tiles * t)
    if tiles == 1 or old == piece * t:
        return None
    return shift(n, dim, tuple(axes), old, piece * t, sizes)


def after_merge(n: int, axes, t: int, dim: int, sizes) -> Halo | None:
    """The realignment after t tiles of a dim are joined (an AllGather or AllToAll off it),
    leaving it tiled over `axes`: None when the joined blocks align (or the dim is whole: a trim
    does)."""
    tiles = _tiles(axes, sizes)
    old, new = _ceil(n, tiles * t) * t, _ceil(n, tiles)
    if tiles == 1 or old == new:
        return None
    return shift(n, dim, tuple(axes), old, new, sizes)


def shift(n: int, dim: int, axes, old: int, new: int, sizes) -> Halo | None:
    """The halo exchange from blocks of `old` to blocks of `new` rows over `axes`' tiles."""
    data = [i for i in range(_tiles(axes, sizes)) if i * new < n]  # tiles holding real rows
    if new < old:   # tile i starts i*(old-new) rows early: tails of the tiles before it
        need = max(i * (old - new) for i in data)
        span = need + old
    else:           # tile i starts i*(new-old) rows late and runs into the heads of the next
        need = max(max(0, min((i + 1) * new, n) - (i + 1) * old) for i in data)
        span = max([old + need] + [i * (new - old) + new for i in data])
    if need == 0:   # only the first tile holds data: a trim or local padding does
        return None
    hops = _ceil(need, old)
    if hops > MAX_HOPS:
        raise Infeasible(f"dim {dim}: {old} -> {new} rows over {list(axes)}: {hops} tiles away")
    return Halo(dim, tuple(axes), old, new, need - (hops - 1) * old, span, hops)


def halo_elems(h: Halo | None, local) -> int:
    """Elements one device sends in the halo exchange `h` (its buffer's shape `local`)."""
    if h is None:
        return 0
    return math.prod(h.received if i == h.dim else n for i, n in enumerate(local))
