"""ShardingSpec: how one tensor is laid out over the mesh (DESIGN §2).

For every tensor dim, a tuple of mesh-axis names (major to minor; empty = not split), plus
`partial`: mesh axes over which the value is an unreduced sum. Mesh axes not named are replicas.
A dim of size n split k ways is stored as ceil(n/k) on every device, padded at the high end.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from jax.sharding import PartitionSpec

Dims = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class ShardingSpec:
    dims: Dims
    partial: tuple[str, ...] = ()

    # ----- construction -------------------------------------------------------------------------
    @staticmethod
    def replicated(rank: int) -> "ShardingSpec":
        return ShardingSpec(((),) * rank)

    @staticmethod
    def from_partition_spec(pspec: Sequence, rank: int) -> "ShardingSpec":
        entries = list(pspec) + [None] * (rank - len(pspec))
        return ShardingSpec(tuple(_axes_of(e) for e in entries))

    # ----- queries ------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return len(self.dims)

    def used_axes(self) -> tuple[str, ...]:
        return tuple(a for d in self.dims for a in d)

    def dim_of_axis(self, axis: str) -> int | None:
        for i, d in enumerate(self.dims):
            if axis in d:
                return i
        return None

    def tiles(self, dim: int, sizes: Mapping[str, int]) -> int:
        return math.prod(sizes[a] for a in self.dims[dim])

    def num_tiles(self, sizes: Mapping[str, int]) -> int:
        return math.prod(sizes[a] for a in self.used_axes())

    def local_shape(self, shape: Sequence[int], sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(-(-n // self.tiles(i, sizes)) for i, n in enumerate(shape))

    def padded_shape(self, shape: Sequence[int], sizes: Mapping[str, int]) -> tuple[int, ...]:
        loc = self.local_shape(shape, sizes)
        return tuple(l * self.tiles(i, sizes) for i, l in enumerate(loc))

    def is_uneven(self, shape: Sequence[int], sizes: Mapping[str, int]) -> bool:
        return tuple(shape) != self.padded_shape(shape, sizes)

    def uneven_dims(self, shape: Sequence[int], sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(i for i, n in enumerate(shape) if n % self.tiles(i, sizes))

    def holdable(self, shape: Sequence[int], sizes: Mapping[str, int]) -> "ShardingSpec":
        """The spec a jax.Array of `shape` can hold: uneven dims replicated."""
        uneven = set(self.uneven_dims(shape, sizes))
        return ShardingSpec(tuple(() if d in uneven else a for d, a in enumerate(self.dims)),
                            self.partial)

    def is_replicated(self) -> bool:
        return not self.used_axes() and not self.partial

    # ----- transformation -----------------------------------------------------------------------
    def with_dim(self, dim: int, axes: Sequence[str]) -> "ShardingSpec":
        dims = list(self.dims)
        dims[dim] = tuple(axes)
        return ShardingSpec(tuple(dims), self.partial)

    def with_partial(self, partial: Sequence[str]) -> "ShardingSpec":
        return ShardingSpec(self.dims, tuple(partial))

    def drop_partial(self) -> "ShardingSpec":
        return ShardingSpec(self.dims)

    def drop_dims(self, dims: Sequence[int]) -> "ShardingSpec":
        drop = set(dims)
        return ShardingSpec(tuple(d for i, d in enumerate(self.dims) if i not in drop), self.partial)

    def without_axes(self, axes: Sequence[str]) -> "ShardingSpec":
        gone = set(axes)
        return ShardingSpec(tuple(tuple(a for a in d if a not in gone) for d in self.dims),
                            tuple(a for a in self.partial if a not in gone))

    def to_partition_spec(self) -> PartitionSpec:
        return PartitionSpec(*[_pspec_entry(d) for d in self.dims])

    def validate(self) -> None:
        used = list(self.used_axes()) + list(self.partial)
        dup = {a for a in used if used.count(a) > 1}
        if dup:
            raise ValueError(f"mesh axis {sorted(dup)} used twice in {self}")

    # ----- printing -----------------------------------------------------------------------------
    def __str__(self) -> str:
        parts = [f"S({i})[{','.join(d)}]" if d else "R" for i, d in enumerate(self.dims)]
        text = " ".join(parts) if parts else "scalar"
        if self.partial:
            text += f" partial[{','.join(self.partial)}]"
        return text

    def __repr__(self) -> str:
        return f"ShardingSpec({list(self.dims)!r}, partial={self.partial!r})"


def _axes_of(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def _pspec_entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


@functools.lru_cache(maxsize=1 << 16)
def merge(current: ShardingSpec | None, proposal: ShardingSpec | None) -> ShardingSpec | None:
    """Merge a proposal into the current spec, dim by dim, keeping every compatible split.

    A dim takes the proposal's axes when the current axes are a prefix of them and the added axes
    are unused elsewhere. Returns the merged spec (may equal `current`).
    """
    if proposal is None:
        return current
    if current is None:
        return proposal.drop_partial()
    used = set(current.used_axes())
    dims = list(current.dims)
    for i, (cur, new) in enumerate(zip(current.dims, proposal.dims)):
        if len(new) > len(cur) and new[: len(cur)] == cur:
            extra = new[len(cur):]
            if not (set(extra) & used):
                dims[i] = new
                used |= set(extra)
    return ShardingSpec(tuple(dims), current.partial)


def relocate(spec: ShardingSpec | None, whole: Sequence[int], shape: Sequence[int],
             sizes: Mapping[str, int]) -> ShardingSpec | None:
    """`spec` with the dims in `whole` unsplit, their axes moved to another dim where they
    divide it evenly (the largest such dim), so an op that needs some dims whole keeps the rest
    of the work split (an AllToAll) instead of replicating it. Axes with no such dim are dropped."""
    if spec is None:
        return None
    dims = [() if d in whole else a for d, a in enumerate(spec.dims)]
    moved = [a for d in whole for a in spec.dims[d]]
    for a in moved:
        best = None
        for d, n in enumerate(shape):
            if d in whole:
                continue
            t = math.prod(sizes[x] for x in dims[d]) * sizes[a]
            if n % t == 0 and n >= t and (best is None or n > shape[best]):
                best = d
        if best is not None:
            dims[best] = dims[best] + (a,)
    return ShardingSpec(tuple(dims), spec.partial)
