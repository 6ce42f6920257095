"""Decision points of the auto-sharding search and their candidate specs (DESIGN §13).

A decision point is a group of input leaves tied together: leaves whose pytree paths are equal
up to list/tuple indices below the argument (``args[0]['layers'][3]['wq']`` and
``args[0]['layers'][7]['wq']``), with the same shape and dtype -- identical layers share one
variable. Each point has a short list of candidate specs: ``None`` (let propagation decide),
replicated, each dim split over each mesh axis where the dim is at least the axis size, each dim
split over the whole mesh, and on a 2-axis mesh two dims split over the two axes. Capped at 16.

Leaves the user fixed (an ``in_specs=`` entry, or an annotation / with_sharding_constraint that
reads the input directly) are not decision points: they keep the user's choice.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

MAX_CANDIDATES = 16
_INDEX = re.compile(r"\[\d+\]")
AUTO = None  # the candidate "no in_spec: propagation decides"


@dataclass(frozen=True)
class Leaf:
    index: int          # position in the flattened args
    path: str           # as the user would write it: args[0]['w1']
    shape: tuple
    dtype: object
    fixed: object = None    # the user's in_spec (PartitionSpec / NamedSharding) or None
    annotated: bool = False  # an annotation in fn reads this input directly


@dataclass(frozen=True)
class Point:
    """One variable of the search: the tied leaves and the specs they may take."""
    name: str               # the representative path (with [*] for tied layer indices)
    key: tuple              # the tie key (tie_key of its leaves)
    leaves: tuple           # Leaf indices
    shape: tuple
    candidates: tuple       # PartitionSpec or None (AUTO), AUTO first

    def describe(self) -> str:
        n = len(self.leaves)
        return self.name + (f" ({n} leaves)" if n > 1 else "")


def leaves_of(args, in_specs=None) -> tuple[list[Leaf], object]:
    """The flattened input leaves with their paths, and the args' PyTreeDef."""
    from ..jax_shardings import flat_specs

    flat, tree = jax.tree_util.tree_flatten_with_path(args)
    fixed = flat_specs(in_specs, tree, "in_specs")
    out = []
    for i, ((path, x), spec) in enumerate(zip(flat, fixed)):
        shape, dtype = _shape_dtype(x, f"args{jax.tree_util.keystr(path)}")
        out.append(Leaf(i, "args" + jax.tree_util.keystr(path), shape, dtype, spec))
    return out, tree


def _shape_dtype(x, where: str):
    from ..errors import GShardError

    if isinstance(x, jax.ShapeDtypeStruct) or (hasattr(x, "shape") and hasattr(x, "dtype")):
        return tuple(int(d) for d in x.shape), x.dtype
    if isinstance(x, (int, float, bool, complex, np.number)):
        return (), np.asarray(x).dtype
    raise GShardError(
        f"gshard.autoshard: input {where} is a {type(x).__name__}, not an array."
        "\n  fix: pass arrays (numpy / jax) or jax.ShapeDtypeStruct(shape, dtype) for every "
        "leaf of args")


def tie_key(leaf: Leaf) -> tuple:
    """Leaves equal up to the list/tuple indices below the argument position share a point."""
    name = _wildcard(leaf.path)
    return (name, leaf.shape, str(leaf.dtype))


def _wildcard(path: str) -> str:
    """args[0]['layers'][3]['wq'] -> args[0]['layers'][*]['wq'] (the argument index is kept;
    attribute paths such as args[0].layers[3].w the same)."""
    cut = path.index("]") + 1
    return path[:cut] + _INDEX.sub("[*]", path[cut:])


def decidable(leaf: Leaf) -> bool:
    """A leaf the search chooses for: not fixed by the user, a float/int array of rank >= 1."""
    if leaf.fixed is not None or leaf.annotated or not leaf.shape:
        return False
    return not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended)


def candidates(shape: tuple, names: tuple, sizes: tuple) -> tuple:
    """AUTO, replicated, then splits (see the module docstring), at most MAX_CANDIDATES."""
    rank = len(shape)
    out = [AUTO, P()]
    for d in range(rank):
        for a, s in zip(names, sizes):
            if s > 1 and shape[d] >= s:
                out.append(_split(rank, {d: a}))
    total = math.prod(sizes)
    if len(names) > 1:
        for d in range(rank):
            if shape[d] >= total:
                out.append(_split(rank, {d: tuple(names)}))
    if len(names) == 2 and rank >= 2:
        (a, b), (sa, sb) = names, sizes
        for i in range(rank):
            for j in range(rank):
                if i != j and shape[i] >= sa and shape[j] >= sb and sa > 1 and sb > 1:
                    out.append(_split(rank, {i: a, j: b}))
    return tuple(out[:MAX_CANDIDATES])


def _split(rank: int, where: dict) -> P:
    entries = [where.get(d) for d in range(rank)]
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def decision_points(leaves: list[Leaf], names: tuple, sizes: tuple) -> list[Point]:
    """Group the decidable leaves by tie key (first-seen order) into points."""
    groups: dict = {}
    for leaf in leaves:
        if decidable(leaf):
            groups.setdefault(tie_key(leaf), []).append(leaf)
    points = []
    for key, members in groups.items():
        name, shape, _ = key
        cands = candidates(shape, names, sizes)
        if len(cands) > 1:
            points.append(Point(name if len(members) > 1 else members[0].path, key,
                                tuple(m.index for m in members), shape, cands))
    return points


def annotated_inputs(graph) -> set[int]:
    """Indices of the inputs an annotation / sharding constraint in fn reads directly."""
    from ..annotate import annotate_p
    from ..rules.annotation import RESHARD, SHARDING_CONSTRAINT
    from ..trace.graph import Value

    pos = {v: i for i, v in enumerate(graph.invars)}
    out = set()
    for e in graph.eqns:
        if e.prim is annotate_p or e.prim in (SHARDING_CONSTRAINT, RESHARD):
            x = e.inputs[0]
            if isinstance(x, Value) and x in pos:
                out.add(pos[x])
    return out


def spec_text(spec) -> str:
    """A candidate as the user would write it."""
    if spec is AUTO:
        return "(propagated)"
    return str(spec)
