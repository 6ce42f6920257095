"""The XLA baseline: the same annotated program partitioned by XLA's own sharding propagation.

* `xla_annotations(mesh)`: a context in which every gshard annotation (replicate, split,
  mesh_split, shard -- wherever it is called) becomes `jax.lax.with_sharding_constraint(x,
  NamedSharding(mesh, P(...)))` with the PartitionSpec gshard itself resolves for it. Trace under
  `jax.jit` inside it, on a mesh with Auto axis types (`auto_mesh`) (DESIGN §9).
* `hlo_collectives(text)`: collectives of a compiled (SPMD-partitioned) HLO module, with gshard's
  bytes convention (per device: operand bytes; result bytes for all-gather).
* `xla_collectives(fn, mesh, args, in_shardings)`: both at once for one function.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from .. import annotate as _annotate
from ..mesh import MeshInfo

AXES = {1: ("x",), 2: ("data", "model"), 3: ("a", "b", "c")}


def auto_mesh(shape, names=None):
    """A mesh with Auto axis types (what with_sharding_constraint needs)."""
    names = names or AXES[len(shape)]
    return jax.make_mesh(tuple(shape), tuple(names), axis_types=(AxisType.Auto,) * len(shape))


def annotation_pspec(ann, mesh, shape) -> P:
    """The PartitionSpec gshard resolves an annotation to on `mesh`."""
    info = MeshInfo.of(mesh)
    spec = _annotate.resolve(ann, info, shape)
    return spec.to_partition_spec()


@contextlib.contextmanager
def xla_annotations(mesh):
    """Within the context, gshard annotations are with_sharding_constraint calls on `mesh`."""
    if any(t != AxisType.Auto for t in mesh.axis_types):
        raise ValueError("with_sharding_constraint needs a mesh with Auto axis types (auto_mesh)")
    saved = _annotate._bind

    def bind(x, ann):
        pspec = annotation_pspec(ann, mesh, np.shape(x))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, pspec))

    _annotate._bind = bind
    try:
        yield
    finally:
        _annotate._bind = saved


# ----- HLO collectives ---------------------------------------------------------------------------
HLO_KINDS = {"all-reduce": "all_reduce", "all-gather": "all_gather",
             "reduce-scatter": "reduce_scatter", "all-to-all": "all_to_all",
             "collective-permute": "collective_permute"}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|"
                 r"collective-permute)(-start)?\((.*)$")


def _shape_bytes(text: str) -> int:
    total = 0
    for dt, dims in _SHAPE.findall(text):
        if dt not in _DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES[dt]
    return total


@dataclass(frozen=True)
class HloCollective:
    kind: str
    bytes: int
    line: str


_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|[a-z][a-z0-9]*\[[0-9,]*\](?:\{[^}]*\})?)\s")
_NAME = re.compile(r"%([\w.\-]+)")


def hlo_collectives(text: str) -> list[HloCollective]:
    """Collectives in compiled HLO text (per-device shapes), gshard's bytes convention.

    Compiled HLO prints operands by name only, so operand shapes come from their definitions."""
    shapes = {}
    for line in text.splitlines():
        d = _DEF.match(line)
        if d:
            shapes[d.group(1)] = d.group(2)
    out = []
    for line in text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        result, op, start, rest = m.groups()
        kind = HLO_KINDS[op]
        depth, end = 1, len(rest)          # operands: up to the call's closing paren
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                end = i
                break
        operands = rest[:end]
        if _SHAPE.search(operands) is None:   # by name only: look the shapes up
            operands = " ".join(shapes.get(n, "") for n in _NAME.findall(operands))
        if kind == "all_gather":
            nbytes = _shape_bytes(result) - (_shape_bytes(operands) if start else 0)
        else:
            nbytes = _shape_bytes(operands)
        out.append(HloCollective(kind, nbytes, line.strip()))
    return out


def summarize(records) -> tuple[int, dict]:
    """(total bytes, {kind: count}) for gshard records or HloCollectives."""
    counts: dict = {}
    for r in records:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return sum(r.bytes for r in records), counts


def fmt_counts(counts: dict) -> str:
    short = {"all_reduce": "AR", "all_gather": "AG", "reduce_scatter": "RS",
             "all_to_all": "A2A", "collective_permute": "CP"}
    return " ".join(f"{short[k]}{v}" for k, v in sorted(counts.items())) or "-"


def xla_collectives(fn, mesh, args, in_shardings=None, out_shardings=None) -> list[HloCollective]:
    """The collectives XLA inserts for `fn` (gshard annotations as constraints) on `mesh`
    (Auto axes), the inputs placed by `in_shardings` (PartitionSpecs; default replicated), the
    outputs by `out_shardings` (PartitionSpecs, one per output leaf; default XLA's choice)."""
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    specs = in_shardings or [P()] * len(leaves)
    shardings = tuple(NamedSharding(mesh, getattr(s, "spec", s)) for s in specs)

    def flat_fn(*flat):
        return jax.tree_util.tree_leaves(fn(*jax.tree_util.tree_unflatten(in_tree, flat)))

    outs = None if out_shardings is None else [NamedSharding(mesh, getattr(s, "spec", s))
                                               for s in out_shardings]
    with xla_annotations(mesh):
        lowered = jax.jit(flat_fn, in_shardings=shardings, out_shardings=outs).lower(*leaves)
    return hlo_collectives(lowered.compile().as_text())
