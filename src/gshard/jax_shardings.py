"""The shardings JAX code already carries, read as gshard annotations.

`jax.lax.with_sharding_constraint` (a NamedSharding, or a bare PartitionSpec under `jax.set_mesh`)
is a `mesh_split`; `in_specs=` / `out_specs=` of `gshard.partition` follow `jax.jit`'s
`in_shardings` / `out_shardings` (pytree prefixes of PartitionSpec, NamedSharding or None); a
committed jax.Array placed with a NamedSharding on the partition's mesh keeps that placement.
A sharding on another mesh is an error naming the user's line, never silently dropped.
"""
from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .annotate import Annotation
from .errors import AnnotationError, fail
from .mesh import MeshInfo
from .manual import is_dims_tuple


def is_spec_leaf(x) -> bool:
    """A leaf of in_specs / out_specs: None, a PartitionSpec, a NamedSharding, a string (an
    error, reported as such) or a tuple of per-dim entries in gshard.manual's style."""
    return x is None or isinstance(x, (PartitionSpec, NamedSharding, str)) or is_dims_tuple(x)


def _mesh_of(sharding):
    return getattr(sharding, "mesh", None)


def _has_explicit_axes(sharding) -> bool:
    mesh = _mesh_of(sharding)
    types = getattr(mesh, "axis_types", None) or ()
    return any(t == jax.sharding.AxisType.Explicit for t in types)


def check_mesh(sharding, mesh: MeshInfo, what: str, where: str) -> None:
    """A NamedSharding must live on the partition's mesh: same axis names and sizes (and, for a
    concrete mesh, the same devices)."""
    m = _mesh_of(sharding)
    if m is None:
        return
    names = tuple(m.axis_names)
    sizes = tuple(int(m.shape[n]) for n in names)
    same = names == mesh.original_names() and sizes == tuple(
        int(np.prod([mesh.sizes[a] for a in mesh.expand(n)])) for n in names)
    if same and isinstance(m, Mesh) and not mesh.is_abstract:
        base = np.asarray(mesh.mesh.devices).ravel().tolist()
        same = np.asarray(m.devices).ravel().tolist() == base
    if not same:
        have = "{" + ", ".join(f"'{n}': {s}" for n, s in zip(names, sizes)) + "}"
        fail(AnnotationError,
             f"{what} uses a sharding on mesh {have}, but gshard.partition runs on mesh "
             f"{mesh.describe()}", where=where,
             fix="build the NamedSharding on the mesh given to gshard.partition, or pass a bare "
                 "PartitionSpec (under jax.set_mesh(mesh) for with_sharding_constraint)")


def annotation_of(pspec, rank: int, where: str, what: str) -> Annotation:
    """A mesh_split Annotation for a PartitionSpec (unconstrained dims left unsplit)."""
    entries = list(pspec) + [None] * (rank - len(pspec))
    if len(entries) > rank:
        fail(AnnotationError, f"{what}: PartitionSpec {pspec} has {len(entries)} entries for a "
             f"value of rank {rank}", where=where, fix="give at most one entry per dim")
    mapping = []
    for e in entries:
        if e is None or e is PartitionSpec.UNCONSTRAINED:
            mapping.append(())
        elif isinstance(e, str):
            mapping.append((e,))
        else:
            mapping.append(tuple(e))
    return Annotation("mesh_split", rank, mapping=tuple(mapping), where=where)


def constraint_annotation(eqn, mesh: MeshInfo) -> Annotation | None:
    """The annotation a `sharding_constraint` / `reshard` equation stands for (None: a reshard
    with no mesh, a no-op here)."""
    sharding = eqn.params.get("sharding", eqn.params.get("dst_sharding"))
    what = "with_sharding_constraint" if "sharding" in eqn.params else "jax.sharding.reshard"
    if isinstance(sharding, PartitionSpec) or (_mesh_of(sharding) is not None
                                               and not tuple(_mesh_of(sharding).axis_names)):
        return None
    if what != "with_sharding_constraint" and not _has_explicit_axes(sharding):
        return None  # a reshard on Auto axes changes no type (jnp inserts these itself)
    if not isinstance(sharding, NamedSharding):
        fail(AnnotationError, f"{what}: gshard reads NamedSharding / PartitionSpec constraints, "
             f"got {type(sharding).__name__}", where=eqn.where,
             fix="use NamedSharding(mesh, PartitionSpec(...)) or a PartitionSpec under jax.set_mesh")
    check_mesh(sharding, mesh, what, eqn.where)
    return annotation_of(sharding.spec, len(eqn.inputs[0].shape), eqn.where, what)


def typed_annotation(eqn, mesh: MeshInfo) -> Annotation | None:
    """An explicit-mode sharding request carried by an op (`out_sharding=` of jnp.einsum /
    jnp.dot / jax.random / ...): its result is fixed there, as jax.jit would type it."""
    sharding = eqn.params.get("out_sharding")
    if not isinstance(sharding, NamedSharding) or not any(e is not None for e in sharding.spec):
        return None
    if not tuple(sharding.mesh.axis_names):
        return None
    check_mesh(sharding, mesh, f"out_sharding of {eqn.prim.name}", eqn.where)
    return annotation_of(sharding.spec, len(eqn.outputs[0].shape), eqn.where,
                         f"out_sharding of {eqn.prim.name}")


def unconstrained(eqn) -> bool:
    sharding = eqn.params.get("sharding", eqn.params.get("dst_sharding",
                                                          eqn.params.get("out_sharding")))
    return bool(eqn.params.get("unconstrained_dims")) or any(
        e is PartitionSpec.UNCONSTRAINED for e in sharding.spec)


# ----- jit-style in_specs / out_specs -----------------------------------------------------------
def flat_specs(prefix, tree, what: str) -> list:
    """Broadcast a pytree prefix of specs over `tree` (a PyTreeDef): one entry per leaf."""
    from .compat import broadcast_prefix
    if prefix is None:
        return [None] * tree.num_leaves
    dummy = jax.tree_util.tree_unflatten(tree, [0] * tree.num_leaves)
    try:
        return broadcast_prefix(prefix, dummy, is_leaf=is_spec_leaf)
    except ValueError as e:
        fail(AnnotationError, f"{what} does not match the structure of the arguments: {e}",
             fix=f"give {what} as a pytree prefix of the arguments (one entry per positional "
                 f"argument, or a single spec for all)")


def spec_annotation(entry, rank: int, mesh: MeshInfo, what: str) -> Annotation | None:
    if entry is None:
        return None
    if isinstance(entry, str):
        fail(AnnotationError, f"{what} is the string {entry!r}, not a sharding",
             where="the gshard.partition call",
             fix=f"write PartitionSpec({entry!r}) (dim 0 split over {entry!r}), or a tuple with one "
                 f"entry per dim such as ({entry!r}, None)")
    if isinstance(entry, NamedSharding):
        check_mesh(entry, mesh, what, "the gshard.partition call")
        entry = entry.spec
    return annotation_of(entry, rank, "the gshard.partition call", what)


def committed_annotation(x, mesh: MeshInfo, index: int) -> Annotation | None:
    """A committed jax.Array's NamedSharding on the partition's mesh, as an annotation."""
    if isinstance(x, jax.core.Tracer):  # no placement yet: the caller's jit places it
        return None
    sharding = getattr(x, "sharding", None)
    if not getattr(x, "committed", False) or not isinstance(sharding, NamedSharding):
        return None
    check_mesh(sharding, mesh, f"input {index} (a committed jax.Array)", "the gshard.partition call")
    return annotation_of(sharding.spec, len(x.shape), f"input {index}'s committed sharding",
                         f"input {index}")
