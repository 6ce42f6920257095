"""The annotation primitive and the paper's API: replicate, split, mesh_split, shard.

One JAX primitive, identity on values, carries an `Annotation`. It has an impl, abstract eval,
an identity MLIR lowering (annotated code runs under plain jax.jit), JVP and transpose that put the
same annotation on tangents and cotangents (so the backward pass is constrained as GShard intends),
and a batching rule (vmap inserts an unsplit dim). Outside `gshard.partition` it is a no-op.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import PartitionSpec

from .errors import AnnotationError, fail, user_frame
from .mesh import MeshInfo
from .spec import ShardingSpec

KINDS = ("replicate", "split", "mesh_split", "shard")


@dataclass(frozen=True)
class Annotation:
    """What the user asked for, before it is resolved against a mesh."""
    kind: str
    rank: int
    dim: int = -1                       # split
    num_partitions: int = 0             # split
    mapping: tuple = ()                 # mesh_split: per dim (), (names...) or int mesh-dim
    assignment: tuple = ()              # shard: flat device ids, row-major over assignment_shape
    assignment_shape: tuple = ()
    where: str = field(default="", compare=False)

    def insert_dim(self, bdim: int) -> "Annotation":
        """The annotation of the same value with an unsplit dim inserted at `bdim` (vmap)."""
        new = dict(rank=self.rank + 1)
        if self.kind == "split":
            new["dim"] = self.dim + (1 if bdim <= self.dim else 0)
        elif self.kind == "mesh_split":
            new["mapping"] = self.mapping[:bdim] + ((),) + self.mapping[bdim:]
        elif self.kind == "shard":
            shape = self.assignment_shape
            new["assignment_shape"] = shape[:bdim] + (1,) + shape[bdim:]
        return dataclasses.replace(self, **new)

    def describe(self) -> str:
        if self.kind == "split":
            return f"split(dim={self.dim}, num_partitions={self.num_partitions})"
        if self.kind == "mesh_split":
            return f"mesh_split({list(self.mapping)})"
        if self.kind == "shard":
            arr = np.array(self.assignment).reshape(self.assignment_shape)
            return f"shard(device_assignment of shape {list(arr.shape)})"
        return "replicate()"


# ----- the primitive ----------------------------------------------------------------------------
annotate_p = Primitive("gshard_annotate")
annotate_p.def_impl(lambda x, *, ann: jax.numpy.asarray(x))
annotate_p.def_abstract_eval(lambda x, *, ann: x)
mlir.register_lowering(annotate_p, lambda ctx, x, *, ann: [x])


def _transpose(ct, x, *, ann):
    return [annotate_p.bind(ct, ann=ann)]


ad.deflinear2(annotate_p, _transpose)


def _batch(args, dims, *, ann):
    (x,), (d,) = args, dims
    if d is None:  # not mapped
        return annotate_p.bind(x, ann=ann), d
    return annotate_p.bind(x, ann=ann.insert_dim(d)), d


batching.primitive_batchers[annotate_p] = _batch


def _bind(x, ann: Annotation):
    return annotate_p.bind(x, ann=ann)


# ----- the paper's API --------------------------------------------------------------------------
def _check_value(x, api: str, where: str) -> None:
    """Annotations take one array (a jax/numpy array or a tracer), not a Python container."""
    if isinstance(x, (list, tuple, dict, str, bytes)) or x is None:
        fail(AnnotationError,
             f"{api}: got a {type(x).__name__}, not an array", where=where,
             fix="pass an array (jnp.asarray(...)); like jax.jit, gshard.partition passes a "
                 "Python list or tuple argument to your function as a pytree of its elements, "
                 "so convert it to an array before the call")


def replicate(x):
    """Annotate `x` as replicated on every device."""
    where = user_frame()
    _check_value(x, "replicate", where)
    return _bind(x, Annotation("replicate", np.ndim(x), where=where))


def split(x, split_dimension: int, num_partitions: int):
    """Split `x` along `split_dimension` into `num_partitions` pieces (over all devices, or over
    the one mesh axis of that size)."""
    _check_value(x, "split", user_frame())
    rank = np.ndim(x)
    dim = _check_dim(split_dimension, rank, np.shape(x), "split")
    if not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        fail(AnnotationError, f"split: num_partitions must be a positive int, got {num_partitions!r}",
             where=user_frame(), fix="pass the number of pieces, e.g. split(x, 0, 8)")
    return _bind(x, Annotation("split", rank, dim=dim, num_partitions=int(num_partitions),
                               where=user_frame()))


def mesh_split(x, dims_mapping):
    """Split `x` over mesh axes: one entry per dim (axis name, tuple of names, None, or the
    paper's integer mesh dim / -1). A PartitionSpec is accepted."""
    where = user_frame()
    _check_value(x, "mesh_split", where)
    rank = np.ndim(x)
    entries = _mapping_entries(dims_mapping, rank, where)
    if len(entries) > rank:
        fail(AnnotationError,
             f"mesh_split: dims_mapping {list(dims_mapping)} has {len(entries)} entries but the tensor "
             f"of shape {list(np.shape(x))} has rank {rank}", where=where,
             fix="give one entry per tensor dim (None for an unsplit dim)")
    if not isinstance(dims_mapping, PartitionSpec) and len(entries) < rank:
        fail(AnnotationError,
             f"mesh_split: dims_mapping {entries} has {len(entries)} entries but the tensor of shape "
             f"{list(np.shape(x))} has rank {rank}", where=where,
             fix="give one entry per tensor dim (None for an unsplit dim)")
    entries += [None] * (rank - len(entries))
    mapping = tuple(_mapping_entry(e, where) for e in entries)
    return _bind(x, Annotation("mesh_split", rank, mapping=mapping, where=where))


def shard(x, device_assignment):
    """Tile `x` by a device assignment (paper A.3): an int array of the tensor's rank whose shape
    is the tile grid and whose entries are device ids (positions in the mesh's device order)."""
    where = user_frame()
    _check_value(x, "shard", where)
    rank = np.ndim(x)
    arr = np.asarray(device_assignment)
    if arr.ndim != rank or not np.issubdtype(arr.dtype, np.integer):
        fail(AnnotationError,
             f"shard: device_assignment must be an int array of rank {rank} (the tensor's shape is "
             f"{list(np.shape(x))}), got dtype {arr.dtype} and shape {list(arr.shape)}", where=where,
             fix="pass an int array whose shape is the tile grid, e.g. [[[0,1,2,3],[4,5,6,7]]]")
    for d, (n, g) in enumerate(zip(np.shape(x), arr.shape)):
        if g > n:
            fail(AnnotationError, f"shard: dim {d} of size {n} cannot be cut into {g} tiles",
                 where=where, fix="use at most as many tiles as the dim has elements")
    return _bind(x, Annotation("shard", rank, assignment=tuple(int(v) for v in arr.ravel()),
                               assignment_shape=tuple(arr.shape), where=where))


def _mapping_entries(dims_mapping, rank: int, where: str) -> list:
    """The dims_mapping as a list of entries; a bare string or None is the user's slip."""
    if dims_mapping is None:
        fail(AnnotationError, "mesh_split: dims_mapping is None", where=where,
             fix="give one entry per tensor dim, e.g. mesh_split(x, ('data', None)); "
                 "gshard.replicate(x) replicates")
    if isinstance(dims_mapping, str):
        fail(AnnotationError,
             f"mesh_split: dims_mapping is the string {dims_mapping!r}, not one entry per dim",
             where=where,
             fix=f"write a tuple with one entry per tensor dim: ({dims_mapping!r},) for a rank-1 "
                 f"tensor, ({dims_mapping!r}, None) for rank 2, or PartitionSpec({dims_mapping!r})")
    try:
        return list(dims_mapping)
    except TypeError:
        fail(AnnotationError, f"mesh_split: dims_mapping {dims_mapping!r} is not a sequence",
             where=where, fix="give one entry per tensor dim, e.g. mesh_split(x, ('data', None))")


def _check_dim(dim, rank, shape, api) -> int:
    if not isinstance(dim, (int, np.integer)) or not -rank <= dim < rank:
        fail(AnnotationError,
             f"{api}: split_dimension={dim!r} is out of range for a tensor of shape {list(shape)} "
             f"(rank {rank})", where=user_frame(),
             fix=f"use a dim in [{-rank}, {rank - 1}]")
    return int(dim) % rank


def _mapping_entry(e, where):
    if e is None or (isinstance(e, (int, np.integer)) and e == -1):
        return ()
    if isinstance(e, (int, np.integer)):
        if e < -1:
            fail(AnnotationError, f"mesh_split: mesh dim {e} is negative", where=where,
                 fix="use a mesh dim index >= 0, or -1 for an unsplit dim")
        return int(e)
    if isinstance(e, str):
        return (e,)
    if isinstance(e, (tuple, list)) and all(isinstance(a, str) for a in e):
        return tuple(e)
    fail(AnnotationError, f"mesh_split: entry {e!r} is not a mesh axis name, tuple of names, "
         f"None, or int mesh dim", where=where,
         fix="write e.g. mesh_split(x, ('data', None)) or mesh_split(x, (('data','model'), None))")


# ----- resolution against a mesh ----------------------------------------------------------------
def resolve(ann: Annotation, mesh: MeshInfo, shape) -> ShardingSpec:
    """The ShardingSpec an annotation asks for on `mesh` (refined for shard() already)."""
    if ann.kind == "replicate":
        return ShardingSpec.replicated(ann.rank)
    if ann.kind == "split":
        return _resolve_split(ann, mesh, shape)
    if ann.kind == "mesh_split":
        return _resolve_mesh_split(ann, mesh, shape)
    from .device_assignment import resolve_shard
    return resolve_shard(ann, mesh, shape)


def _resolve_split(ann: Annotation, mesh: MeshInfo, shape) -> ShardingSpec:
    n = ann.num_partitions
    originals = mesh.original_names()
    sizes = dict(zip(originals, [int(np.prod([mesh.sizes[a] for a in mesh.expand(o)]))
                                 for o in originals]))
    if n == 1:
        return ShardingSpec.replicated(ann.rank)
    if n == mesh.size:
        axes = tuple(a for o in originals for a in mesh.expand(o))
    else:
        match = [o for o in originals if sizes[o] == n]
        if len(match) != 1:
            what = ("no mesh axis has" if not match else f"mesh axes {match} all have")
            fail(AnnotationError,
                 f"split(dim={ann.dim}, num_partitions={n}) on a tensor of shape {list(shape)}: {what} "
                 f"size {n} (mesh {mesh.describe()}, {mesh.size} devices)", where=ann.where,
                 fix=f"use num_partitions={mesh.size} (all devices) or one axis's size, or "
                     f"mesh_split(x, dims_mapping) to name the axis")
        axes = mesh.expand(match[0])
    return ShardingSpec.replicated(ann.rank).with_dim(ann.dim, axes)


def _resolve_mesh_split(ann: Annotation, mesh: MeshInfo, shape) -> ShardingSpec:
    originals = mesh.original_names()
    dims, seen = [], {}
    for d, entry in enumerate(ann.mapping):
        if isinstance(entry, int):
            if entry >= len(originals):
                fail(AnnotationError,
                     f"mesh_split({list(ann.mapping)}) on shape {list(shape)}: mesh dim {entry} does not "
                     f"exist; the mesh {mesh.describe()} has {len(originals)} dims", where=ann.where,
                     fix=f"use a mesh dim in [0, {len(originals) - 1}] or an axis name")
            entry = (originals[entry],)
        for a in entry:
            if a not in originals:
                fail(AnnotationError,
                     f"mesh_split({list(ann.mapping)}) on shape {list(shape)}: unknown mesh axis {a!r}; "
                     f"the mesh has axes {list(originals)}", where=ann.where,
                     fix=f"use one of {list(originals)}")
            if a in seen:
                fail(AnnotationError,
                     f"mesh_split({list(ann.mapping)}) on shape {list(shape)}: mesh axis {a!r} is used "
                     f"for dims {seen[a]} and {d}", where=ann.where,
                     fix="use each mesh axis for at most one tensor dim")
            seen[a] = d
        dims.append(tuple(r for a in entry for r in mesh.expand(a)))
    return ShardingSpec(tuple(dims))
