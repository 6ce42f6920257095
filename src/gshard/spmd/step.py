"""One step of a reshard plan (data only): what `spmd/plan.py` returns and `spmd/reshard.py` runs."""
from __future__ import annotations

from dataclasses import dataclass

from ..spec import ShardingSpec

COMMUNICATING = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute")


@dataclass(frozen=True)
class Halo:
    """A realignment of an uneven dim's blocks over its tiles (a halo exchange): tile i holds
    rows [i*old, (i+1)*old) of the padded dim and ends with rows [i*new, (i+1)*new). Each tile
    receives `rows` boundary rows from the tile `hops` away by one CollectivePermute, and the
    whole blocks of the tiles between by one each: the tails of tiles i-1.. when new < old,
    the heads of tiles i+1.. when new > old."""
    dim: int
    axes: tuple[str, ...]      # the dim's tiling while it shifts
    old: int
    new: int
    rows: int
    span: int                  # buffer length the new block is cut from (own + halo + zeros)
    hops: int = 1

    @property
    def received(self) -> int:
        """Rows one tile receives in all."""
        return (self.hops - 1) * self.old + self.rows

    @property
    def backward(self) -> bool:
        return self.new < self.old


@dataclass(frozen=True)
class Step:
    """One step of a reshard: `kind` is a collective kind, "slice" (take this device's part of a
    dim, no communication) or "add_partial" (become a partial sum: this value on one device of
    the axes, zeros elsewhere). `dim`: the dim gathered / scattered / sliced, or the dim an
    AllToAll takes the axes away from (`to_dim` receives them). `pre` / `post`: a halo exchange
    of an uneven dim before / after the main operation. `sub` (CollectivePermute): per dim, the
    number of destination tiles in one source tile (each source sends one of them); `merge`:
    per dim, the number of source tiles in one destination tile, received over `rounds` (one
    CollectivePermute each: `spmd/plan_merge.py`)."""
    kind: str
    axes: tuple[str, ...]
    before: ShardingSpec
    after: ShardingSpec
    dim: int = -1
    to_dim: int = -1
    perm: tuple[tuple[int, int], ...] = ()
    whole: bool = False       # an uneven dim gathered whole (the last resort)
    full: bool = False        # the whole tensor ends on every device (full replication)
    pre: Halo | None = None
    post: Halo | None = None
    sub: tuple[int, ...] = ()
    merge: tuple[int, ...] = ()
    rounds: tuple[tuple[tuple[int, int], ...], ...] = ()

    @property
    def communicates(self) -> bool:
        return self.kind in COMMUNICATING or self.pre is not None or self.post is not None
