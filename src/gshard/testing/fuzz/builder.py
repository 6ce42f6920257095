"""Choices and the program builder: every op is checked with jax.eval_shape as it is added.

A `Chooser` is where randomness comes from: `RandomChooser` (numpy, seeded: a campaign's case i
is replayable from (seed, i)) or `HypothesisChooser` (hypothesis `data.draw`, so the CI fuzz test
gets hypothesis' shrinking and example database). The generator is written once against it.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from .program import DTYPES, MESHES, AXES, Op, Program, Var, namespace

MAX_ELEMENTS = 2048


class RandomChooser:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def int(self, lo: int, hi: int) -> int:
        """An int in [lo, hi]."""
        return int(self.rng.integers(lo, hi + 1))

    def coin(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, seq):
        return seq[self.int(0, len(seq) - 1)]


class HypothesisChooser(RandomChooser):
    """Draws through hypothesis: simpler draws (0, False, the first item) shrink toward smaller
    programs."""

    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def coin(self, p: float) -> bool:
        return self.data.draw(self.st.integers(0, 999)) >= 1000 - round(p * 1000)


class Builder:
    """The program under construction: its inputs, ops, and the pool of values to draw from."""

    def __init__(self, ch, mesh: str, grad: bool, seed: int):
        self.ch, self.mesh, self.grad, self.seed = ch, mesh, grad, seed
        self.inputs: list[Var] = []
        self.ops: list[Op] = []
        self.pool: list[Var] = []
        self._n = 0

    @property
    def axes(self) -> dict[str, int]:
        shape = MESHES[self.mesh]
        return dict(zip(AXES[len(shape)], shape))

    def name(self) -> str:
        self._n += 1
        return f"v{self._n - 1}"

    # ----- values -------------------------------------------------------------------------------
    def new_input(self, shape, dtype="f32", lo=0, hi=1) -> Var:
        v = Var(self.name(), tuple(int(n) for n in shape), dtype, lo, hi)
        self.inputs.append(v)
        self.pool.append(v)
        return v

    def shape(self, rank: int | None = None, lo: int = 1) -> tuple[int, ...]:
        rank = self.ch.int(1, 3) if rank is None else rank
        for _ in range(20):
            dims = tuple(self.ch.int(lo, 12) for _ in range(rank))
            if math.prod(dims) <= MAX_ELEMENTS:
                return dims
        return (lo,) * rank

    def pick(self, pred=lambda v: True, recent: bool = True) -> Var | None:
        cands = [v for v in self.pool if pred(v)]
        if not cands:
            return None
        if recent and self.ch.coin(0.4):
            return cands[-1]
        unused = [v for v in cands if v.name in self.sinks()]
        if unused and self.ch.coin(0.6):  # keep most of the program live
            return self.ch.pick(unused)
        return self.ch.pick(cands)

    def sinks(self) -> list[str]:
        """Values no op reads yet (the program's outputs are drawn from them)."""
        used = {a for op in self.ops for a in op.args}
        return [v.name for v in self.pool if v.name not in used]

    def pick_float(self, min_rank: int = 0, max_rank: int = 4) -> Var:
        v = self.pick(lambda v: v.dtype == "f32" and min_rank <= v.rank <= max_rank)
        return v if v is not None else self.new_input(self.shape(max(min_rank, 1)))

    # ----- ops ----------------------------------------------------------------------------------
    def add(self, family: str, fmt: str, args, annotation: bool = False) -> tuple[Var, ...] | None:
        """Append `fmt.format(*args)` if JAX accepts it; None (nothing added) if not."""
        args = tuple(a.name if isinstance(a, Var) else a for a in args)
        outs = self._shapes(fmt, args)
        if outs is None:
            return None
        vars_ = tuple(Var(self.name(), s, d) for s, d in outs)
        self.ops.append(Op(family, fmt, args, vars_, annotation))
        self.pool.extend(vars_)
        return vars_

    def _shapes(self, fmt: str, args):
        known = {v.name: v for v in self.pool}
        names = sorted(set(args), key=args.index)
        ns = namespace()
        exec(Program(self.mesh, (), (), ()).mesh_source(), ns)  # noqa: S102 - mesh, auto_mesh
        try:
            fn = eval(f"lambda {', '.join(names)}: {fmt.format(*args)}", ns)  # noqa: S307
            structs = [jax.ShapeDtypeStruct(known[n].shape, DTYPES[known[n].dtype]) for n in names]
            res = jax.eval_shape(fn, *structs)
        except Exception:  # noqa: BLE001 - an op JAX rejects is simply not added
            return None
        leaves = jax.tree_util.tree_leaves(res)
        out = []
        for leaf in leaves:
            d = _dtype_name(leaf.dtype)
            if d is None or 0 in leaf.shape or math.prod(leaf.shape) > 4 * MAX_ELEMENTS:
                return None
            out.append((tuple(leaf.shape), d))
        return out if out else None

    def var(self, name: str) -> Var:
        return next(v for v in self.pool if v.name == name)

    def program(self, outputs) -> Program:
        return Program(self.mesh, tuple(self.inputs), tuple(self.ops), tuple(outputs),
                       self.grad, self.seed)


def _dtype_name(dtype) -> str | None:
    import jax.numpy as jnp
    if dtype == jnp.float32:
        return "f32"
    if dtype == jnp.int32:
        return "i32"
    if dtype == jnp.bool_:
        return "bool"
    return None
