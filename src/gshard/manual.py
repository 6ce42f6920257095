"""Mixing manual and automatic partitioning (GShard §3.2): `gshard.manual(fn, in_specs, out_specs)`.

Inside `gshard.partition`, the region switches to per-device code (the paper's
auto_to_manual_spmd_partition): its operands are resharded to `in_specs`, `fn` runs on local
shards and may call jax.lax collectives over the mesh axes, and its results re-enter automatic
partitioning with `out_specs` (manual_to_auto_spmd_partition). Outside `gshard.partition`, pass
`mesh=` and it runs as a jax.shard_map. Either way the region is first type-checked as
`jax.shard_map` checks it: an output declared replicated over a mesh axis must provably be the
same on every device of that axis (a psum / all_gather / pmax over it, or a value that never
varied), or the call fails naming the output and the user's line.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import jax
import numpy as np
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


def current_partition_mesh():
    """The MeshInfo of the gshard.partition being traced (None outside one)."""
    return _MESH.get()


def _pspec(spec) -> PartitionSpec:
    if isinstance(spec, PartitionSpec):
        return spec
    if spec is None or isinstance(spec, str):
        raise GShardError(f"gshard.manual: spec {spec!r} is not one entry per dim\n  fix: write "
                          f"a tuple, e.g. ('x', None), or a PartitionSpec")
    return PartitionSpec(*[tuple(e) if isinstance(e, list) else e for e in spec])


def _manual_leaf(s) -> bool:
    """A manual region's spec: a PartitionSpec or a tuple of per-dim entries (None included:
    a region's operands and results always have a spec)."""
    names = lambda e: isinstance(e, (tuple, list)) and all(isinstance(a, str) for a in e)  # noqa: E731
    return isinstance(s, PartitionSpec) or (isinstance(s, tuple) and all(
        e is None or isinstance(e, str) or names(e) for e in s))


def is_dims_tuple(s) -> bool:
    """A spec written as a tuple of per-dim entries (axis name, tuple of names or None) with at
    least one name: ('x', None), (('a', 'b'), None). (None, None) is a pytree of two Nones."""
    if not isinstance(s, tuple) or not s:
        return False
    names = lambda e: isinstance(e, tuple) and e and all(isinstance(a, str) for a in e)  # noqa: E731
    return all(e is None or isinstance(e, str) or names(e) for e in s) and any(
        e is not None for e in s)


def manual(fn: Callable, in_specs, out_specs, *, mesh=None) -> Callable:
    """Run `fn` per device: in_specs/out_specs give each operand's / result's split (one entry
    per dim: axis name, tuple of names or None; or a PartitionSpec), pytrees of them for several."""
    where = user_frame()
    ins = jax.tree_util.tree_map(_pspec, in_specs, is_leaf=_manual_leaf)
    outs = jax.tree_util.tree_map(_pspec, out_specs, is_leaf=_manual_leaf)

    def call(*args):
        from .runtime import manual_region
        from .mesh import MeshInfo
        info = _MESH.get()
        if info is None and mesh is None:
            raise GShardError(f"gshard.manual at {where} runs outside gshard.partition without a "
                              f"mesh\n  fix: call it inside a function given to gshard.partition, "
                              f"or pass mesh=jax.make_mesh(...)")
        from .runtime import mesh_context
        target = info.auto_mesh() if info is not None else MeshInfo.of(mesh).mesh
        with mesh_context(target):
            check_region(fn, target, ins, outs, args, where)
            return manual_region(fn, target, ins, outs)(*args)
    return call


def check_region(fn, mesh, ins, outs, args, where: str) -> None:
    """Type-check the region as jax.shard_map does (check_vma=True) on abstract values; the
    region itself then runs unchecked (gshard's specs are the source of truth)."""
    from .mesh import MeshInfo
    amesh = MeshInfo.of(mesh).auto_mesh()
    avals = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), _dtype(a)), args)
    from .runtime import mesh_context

    def check(vma):
        with mesh_context(amesh):
            jax.eval_shape(jax.shard_map(fn, mesh=amesh, in_specs=ins, out_specs=outs,
                                         check_vma=vma), *avals)
    try:
        check(True)
    except (NameError, AssertionError) as e:  # jax's vma check asserts on an unbound axis name
        try:
            check(False)
        except NameError as unbound:
            raise GShardError(f"gshard.manual at {where}: {_unbound(unbound, amesh)}") from None
        raise e
    except ValueError as e:
        if "out_specs" in str(e) and "replicat" in str(e):
            raise GShardError(_replication_message(str(e), where)) from None
        raise


def _dtype(a):
    return a.dtype if hasattr(a, "dtype") else jax.numpy.asarray(a).dtype


def _unbound(e: NameError, mesh) -> str:
    text = str(e)
    name = text.split("axis name:")[-1].split(".")[0].strip() if "axis name" in text else text
    return (f"the region uses mesh axis {name!r}, which the mesh {dict(mesh.shape)} does not "
            f"have\n  fix: use one of {list(mesh.axis_names)} in the collective")


def _replication_message(jax_text: str, where: str) -> str:
    lines = [ln for ln in jax_text.strip().splitlines() if ln.strip() and "check_vma" not in ln]
    detail = "\n".join("    " + ln for ln in lines[:12])
    return (f"gshard.manual at {where}: an output declared replicated by out_specs may differ "
            f"between devices (jax.shard_map's check):\n{detail}\n  fix: reduce or gather it "
            f"over those mesh axes inside the region (jax.lax.psum / pmax / all_gather), or "
            f"declare the output split over them in out_specs")
