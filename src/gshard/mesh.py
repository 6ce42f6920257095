"""The device mesh as gshard sees it: named axes, sizes, and refinements of axes into factors.

`shard(x, device_assignment)` may need a mesh axis used as several factors (the paper's [1,2,4]
grid over 8 devices uses x as 2x4). A refined mesh replaces axis `x` by `x_0`, `x_1`, ... over the
same devices in the same order, so shard_map over it is the same machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh

from .errors import GShardError


@dataclass(frozen=True)
class MeshInfo:
    names: tuple[str, ...]
    shape: tuple[int, ...]
    mesh: object = field(compare=False, hash=False, repr=False)
    origin: tuple[tuple[str, tuple[str, ...]], ...] = ()  # original axis -> refined axes

    @staticmethod
    def of(mesh) -> "MeshInfo":
        if isinstance(mesh, MeshInfo):
            return mesh
        if not isinstance(mesh, (Mesh, AbstractMesh)):
            raise GShardError(
                f"gshard.partition needs a jax.sharding.Mesh or AbstractMesh, got {type(mesh).__name__}."
                "\n  fix: build one with jax.make_mesh((8,), ('x',)) or jax.sharding.Mesh(devices, names)")
        names = tuple(mesh.axis_names)
        shape = tuple(int(mesh.shape[n]) for n in names)
        return MeshInfo(names, shape, mesh, tuple((n, (n,)) for n in names))

    # ----- queries ------------------------------------------------------------------------------
    @property
    def sizes(self) -> dict[str, int]:
        return dict(zip(self.names, self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_abstract(self) -> bool:
        return not isinstance(self.mesh, Mesh)

    def expand(self, axis: str) -> tuple[str, ...]:
        """The refined axes standing for an original mesh axis (itself if not refined)."""
        return dict(self.origin).get(axis, (axis,) if axis in self.names else ())

    def original_names(self) -> tuple[str, ...]:
        return tuple(o for o, _ in self.origin)

    def describe(self) -> str:
        return "{" + ", ".join(f"'{n}': {s}" for n, s in zip(self.names, self.shape)) + "}"

    # ----- refinement ---------------------------------------------------------------------------
    def refine(self, factors: Mapping[str, Sequence[int]]) -> "MeshInfo":
        """Split each named axis into the given factor sizes (major to minor)."""
        names, shape, origin = [], [], []
        for name, size in zip(self.names, self.shape):
            fs = tuple(factors.get(name, (size,)))
            assert math.prod(fs) == size, (name, fs, size)
            sub = (name,) if len(fs) == 1 else tuple(f"{name}_{i}" for i in range(len(fs)))
            names += sub
            shape += fs
            origin.append((name, sub))
        return MeshInfo(tuple(names), tuple(shape), self._reshaped(tuple(names), tuple(shape)),
                        tuple(origin))

    def _reshaped(self, names, shape):
        if self.is_abstract:
            return AbstractMesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
        return Mesh(np.asarray(self.mesh.devices).reshape(shape), names,
                    axis_types=(AxisType.Auto,) * len(names))

    def auto_mesh(self):
        """The same mesh with Auto axis types (what shard_map and NamedSharding get)."""
        if self.is_abstract:
            return AbstractMesh(self.shape, self.names, axis_types=(AxisType.Auto,) * len(self.names))
        return Mesh(np.asarray(self.mesh.devices).reshape(self.shape), self.names,
                    axis_types=(AxisType.Auto,) * len(self.names))


def flat_position_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides of the flat device position over mesh axes."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))
