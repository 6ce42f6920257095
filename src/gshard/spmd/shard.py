"""A local shard: this device's part of one program value (what rules and reshards pass)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import ShardingSpec


@dataclass(frozen=True)
class Local:
    """This device's shard of a program value: `val` has spec.local_shape(shape)."""
    val: Any
    spec: ShardingSpec
    shape: tuple[int, ...]
    origin: str = field(default="", compare=False)  # where a partial sum was produced

    @property
    def dtype(self):
        return self.val.dtype

    @property
    def rank(self) -> int:
        return len(self.shape)
