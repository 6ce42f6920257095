"""Mixing manual and automatic partitioning (GShard §3.2): `gshard.manual(fn, in_specs, out_specs)`.

Inside `gshard.partition`, the region switches to per-device code (the paper's
auto_to_manual_spmd_partition): its operands are resharded to `in_specs`, `fn` runs on local
shards and may call jax.lax collectives over the mesh axes, and its results re-enter automatic
partitioning with `out_specs` (manual_to_auto_spmd_partition). Outside `gshard.partition`, pass
`mesh=` and it runs as a jax.shard_map.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import jax
from jax.sharding import PartitionSpec

from .errors import GShardError, user_frame

_MESH: contextvars.ContextVar = contextvars.ContextVar("gshard_partition_mesh", default=None)


@contextlib.contextmanager
def partition_mesh(mesh_info):
    """Set while gshard.partition traces the user's function."""
    token = _MESH.set(mesh_info)
    try:
        yield
    finally:
        _MESH.reset(token)


def _pspec(spec) -> PartitionSpec:
    if isinstance(spec, PartitionSpec):
        return spec
    return PartitionSpec(*[tuple(e) if isinstance(e, list) else e for e in spec])


def manual(fn: Callable, in_specs, out_specs, *, mesh=None) -> Callable:
    """Run `fn` per device: in_specs/out_specs give each operand's / result's split (one entry
    per dim: axis name, tuple of names or None; or a PartitionSpec), pytrees of them for several."""
    where = user_frame()
    is_leaf = lambda s: isinstance(s, PartitionSpec) or (isinstance(s, tuple) and all(  # noqa: E731
        e is None or isinstance(e, str) or (isinstance(e, tuple) and all(isinstance(a, str) for a in e))
        for e in s))
    ins = jax.tree_util.tree_map(_pspec, in_specs, is_leaf=is_leaf)
    outs = jax.tree_util.tree_map(_pspec, out_specs, is_leaf=is_leaf)

    def call(*args):
        from .runtime import manual_region
        info = _MESH.get()
        target = info.auto_mesh() if info is not None else mesh
        if target is not None and info is None:
            from .mesh import MeshInfo
            target = MeshInfo.of(mesh).auto_mesh()  # explicit axes would demand sharded inputs
        if target is None:
            raise GShardError(f"gshard.manual at {where} runs outside gshard.partition without a "
                              f"mesh\n  fix: call it inside a function given to gshard.partition, "
                              f"or pass mesh=jax.make_mesh(...)")
        return manual_region(fn, target, ins, outs)(*args)
    return call
