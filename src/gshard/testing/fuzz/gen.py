"""Random annotated programs: 3-12 ops from every rule family, annotations between them.

Annotations use the paper's whole API: mesh_split (a dim over one or two axes, uneven dims),
split, replicate and shard (a device assignment that is a reshape / transpose of the mesh order).
"""
from __future__ import annotations

import math

import numpy as np

from . import ops, ops_flow, ops_index
from .builder import Builder, HypothesisChooser, RandomChooser
from .program import MESHES, Program

FAMILIES = {
    "elementwise": ops.elementwise, "einsum": ops.einsum, "reduce": ops.reduce,
    "reshape": ops.reshape, "transpose": ops.transpose, "broadcast": ops.broadcast,
    "concatenate": ops.concatenate, "slice": ops.slice_, "pad": ops.pad,
    "cumulative": ops.cumulative, "softmax": ops.softmax, "take": ops_index.take,
    "take_along_axis": ops_index.take_along_axis, "scatter": ops_index.scatter,
    "dynamic_slice": ops_index.dynamic_slice, "sort": ops_index.sort, "top_k": ops_index.top_k,
    "one_hot": ops_index.one_hot, "conv": ops_flow.conv, "scan": ops_flow.scan,
    "while": ops_flow.while_, "cond": ops_flow.cond, "pool": ops_flow.pool, "random": ops.random,
}
WEIGHTS = {"elementwise": 4, "einsum": 3, "reduce": 3, "reshape": 3}


def generate(ch, mesh: str, grad: bool, seed: int = 0) -> Program:
    """One random program on `mesh` (a key of MESHES)."""
    b = Builder(ch, mesh, grad, seed)
    first = b.new_input(b.shape(ch.int(1, 3)))
    annotate(b, first)
    names = [n for n in FAMILIES for _ in range(WEIGHTS.get(n, 1))]
    n_ops = ch.int(3, 12)
    done, tries = 0, 0
    while done < n_ops and tries < 6 * n_ops:
        tries += 1
        made = len(b.ops)
        if FAMILIES[ch.pick(names)](b):
            done += 1
            if ch.coin(0.4):
                annotate(b, b.pool[-1])
        else:
            del b.ops[made:]
    outs = _outputs(b)
    return b.program(outs)


def _outputs(b: Builder) -> list[str]:
    """Up to four values no op reads, the latest first (so most ops are live)."""
    made = {v.name for op in b.ops for v in op.outs}
    sinks = [n for n in b.sinks() if n in made] or [b.pool[-1].name]
    outs = sinks[::-1][:4]
    floats = [v.name for v in b.pool if v.dtype == "f32"]
    if b.grad and floats and not any(b.var(n).dtype == "f32" for n in outs):
        outs.append(floats[-1])  # value_and_grad needs a float output
    return outs


# ----- annotations ------------------------------------------------------------------------------
def annotate(b: Builder, v) -> bool:
    if v.rank == 0:
        return False
    kind = b.ch.int(0, 10)
    if kind == 10:  # jax's own annotation, on the partition's mesh
        spec = mesh_split_spec(b, v)
        return bool(b.add("annotate", "jax.lax.with_sharding_constraint({0}, jax.sharding."
                          f"NamedSharding(auto_mesh, jax.sharding.PartitionSpec(*{spec})))", [v], True))
    if kind <= 5:
        return bool(b.add("annotate", f"gshard.mesh_split({{0}}, {mesh_split_spec(b, v)})", [v], True))
    if kind == 6:
        return bool(b.add("annotate", "gshard.replicate({0})", [v], True))
    if kind == 7:
        n = b.ch.pick(_split_counts(b))
        return bool(b.add("annotate", f"gshard.split({{0}}, {b.ch.int(0, v.rank - 1)}, {n})", [v], True))
    grid = device_assignment(b, v.shape)
    return bool(b.add("annotate", f"gshard.shard({{0}}, np.array({grid.tolist()}))", [v], True))


def mesh_split_spec(b: Builder, v) -> tuple:
    free = list(b.axes)
    spec = []
    for n in v.shape:
        entry = None
        if free and b.ch.coin(0.45):
            a = free.pop(b.ch.int(0, len(free) - 1))
            entry = a
            if free and b.ch.coin(0.2):  # a dim over two axes
                entry = (a, free.pop(b.ch.int(0, len(free) - 1)))
        spec.append(entry)
    return tuple(spec)


def _split_counts(b: Builder) -> list[int]:
    sizes = list(b.axes.values())
    total = math.prod(sizes)
    return [total] + [s for s in sizes if sizes.count(s) == 1 and s != total]


def device_assignment(b: Builder, shape) -> np.ndarray:
    """A tile grid of device ids: the mesh's devices factored into primes, each factor given to
    a tensor dim, in a drawn major-to-minor order (a reshape / transpose of the device order)."""
    n = math.prod(MESHES[b.mesh])
    factors = [p for p in _primes(n)]
    owner = [b.ch.int(0, len(shape) - 1) for _ in factors]
    order = list(range(len(factors)))
    for i in range(len(order) - 1, 0, -1):
        j = b.ch.int(0, i)
        order[i], order[j] = order[j], order[i]
    ids = np.arange(n).reshape([factors[j] for j in order])  # digits in the drawn order
    by_dim = sorted(range(len(factors)), key=lambda j: owner[j])
    ids = ids.transpose([order.index(j) for j in by_dim])
    grid = [math.prod(factors[j] for j in by_dim if owner[j] == d) for d in range(len(shape))]
    return ids.reshape(grid)


def _primes(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def random_program(seed: int, index: int, mesh: str | None = None, grad: bool | None = None) -> Program:
    """Case `index` of a campaign with `seed`: replayable from the two numbers."""
    ch = RandomChooser([seed, index])
    mesh = mesh or ch.pick(list(MESHES))
    grad = ch.coin(0.5) if grad is None else grad
    prog = generate(ch, mesh, grad, seed=seed * 1_000_003 + index)
    return prog.replace(outer=outer_mode(seed, index, grad))


def outer_mode(seed: int, index: int, grad: bool) -> str:
    """One case in three calls the partitioned function from outside: under jax.jit (forward
    programs) or differentiated by jax.value_and_grad (gradient programs). Drawn from its own
    stream, so a seed's programs are the ones it always made."""
    if np.random.default_rng([seed, index, 3]).random() >= 1 / 3:
        return "none"
    return "grad" if grad else "jit"


def hypothesis_program(data, mesh: str, grad: bool) -> Program:
    ch = HypothesisChooser(data)
    return generate(ch, mesh, grad, seed=ch.int(0, 2**16))
