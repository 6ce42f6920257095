"""The device mesh as gshard sees it: named axes, sizes, and refinements of axes into factors.

`shard(x, device_assignment)` may need a mesh axis used as several factors (the paper's [1,2,4]
grid over 8 devices uses x as 2x4). A refined mesh replaces axis `x` by `x_0`, `x_1`, ... over the
same devices in the same order, so shard_map over it is the same machine.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
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
    def sizes(self) -> Mapping[str, int]:
        """Axis name -> size, major to minor (read-only, built once: propagation asks often)."""
        cached = self.__dict__.get("_sizes")
        if cached is None:
            cached = MappingProxyType(dict(zip(self.names, self.shape)))
            object.__setattr__(self, "_sizes", cached)
        return cached

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


# ----- the one --mesh spelling ------------------------------------------------------------------
class MeshSpecError(GShardError):
    """A malformed mesh spelling (`--mesh data=2,model=4`)."""


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_mesh_spec(text: str, *, rest: bool = False) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``"data=2,model=4"`` -> (("data", "model"), (2, 4)); with `rest`, one size may be -1
    (the remaining devices, resolved by the caller). Raises MeshSpecError with the fix."""
    if not text or not text.strip():
        raise MeshSpecError("empty mesh: spell it NAME=SIZE[,NAME=SIZE...], e.g. data=2,model=4")
    names, shape = [], []
    for part in text.split(","):
        part = part.strip()
        if part.count("=") != 1:
            raise MeshSpecError(f"mesh axis {part!r} is not NAME=SIZE (e.g. data=2,model=4)")
        name, size = (x.strip() for x in part.split("="))
        if not _NAME.match(name):
            raise MeshSpecError(f"mesh axis name {name!r} in {part!r} is not an identifier "
                                f"(letters, digits, _)")
        ok = size.isdigit() and int(size) >= 1 or (rest and size == "-1")
        if not ok:
            raise MeshSpecError(f"mesh axis size {size!r} in {part!r} is not a positive integer"
                                + (" (or -1: the rest of the devices)" if rest else ""))
        if name in names:
            raise MeshSpecError(f"mesh axis {name!r} appears twice in {text!r}; each axis once")
        names.append(name)
        shape.append(int(size))
    if shape.count(-1) > 1:
        raise MeshSpecError(f"at most one mesh size may be -1 in {text!r}")
    return tuple(names), tuple(shape)
