"""A random annotated program as data: inputs, one statement per op, outputs; rendered as source.

The rendered source is the single truth: the runner executes it, the shrinker edits the op list
and renders again, and a failure is written out as the same text in a standalone script.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import gshard

MESHES = {"8": (8,), "2x4": (2, 4), "4x2": (4, 2), "2x2x2": (2, 2, 2)}
AXES = {1: ("x",), 2: ("data", "model"), 3: ("a", "b", "c")}
DTYPES = {"f32": jnp.float32, "i32": jnp.int32, "bool": jnp.bool_}


@dataclass(frozen=True)
class Var:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "f32" | "i32" | "bool"
    lo: int = 0  # int inputs: values drawn from [lo, hi)
    hi: int = 1

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Op:
    """One statement `outs = fmt.format(*args)`: `args` are the variable names it reads."""
    family: str
    fmt: str
    args: tuple[str, ...]
    outs: tuple[Var, ...]
    annotation: bool = False

    def line(self) -> str:
        lhs = ", ".join(v.name for v in self.outs)
        return f"{lhs} = {self.fmt.format(*self.args)}"


OUTER = ("none", "jit", "grad")  # called directly; under jax.jit; jax.value_and_grad outside


@dataclass(frozen=True)
class Program:
    mesh: str
    inputs: tuple[Var, ...]
    ops: tuple[Op, ...]
    outputs: tuple[str, ...]
    grad: bool = False
    seed: int = 0
    outer: str = "none"     # how the partitioned function is called: OUTER
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    # ----- queries ------------------------------------------------------------------------------
    def var(self, name: str) -> Var:
        for v in self.inputs:
            if v.name == name:
                return v
        for op in self.ops:
            for v in op.outs:
                if v.name == name:
                    return v
        raise KeyError(name)

    def float_inputs(self) -> list[int]:
        return [i for i, v in enumerate(self.inputs) if v.dtype == "f32"]

    def families(self) -> list[str]:
        return sorted({op.family for op in self.ops})

    def replace(self, **kw) -> "Program":
        return dataclasses.replace(self, **kw)

    # ----- source -------------------------------------------------------------------------------
    def body_source(self) -> str:
        params = ", ".join(v.name for v in self.inputs)
        lines = [f"def f({params}):"]
        lines += [f"    {op.line()}" for op in self.ops]
        lines.append(f"    return ({', '.join(self.outputs)},)")
        return "\n".join(lines)

    def args_source(self) -> str:
        lines = [f"rng = np.random.default_rng({self.seed})"]
        for v in self.inputs:
            lines.append(f"{v.name} = {_input_expr(v)}")
        lines.append(f"args = ({', '.join(v.name for v in self.inputs)},)")
        return "\n".join(lines)

    def target_source(self) -> str:
        """`target`: the function compared (f, or value_and_grad of a loss of f's outputs)."""
        if not self.grad:
            return "target = f"
        return ("def loss_of(fn):\n"
                "    def loss(*a):\n"
                "        outs = [o for o in fn(*a) if jnp.issubdtype(o.dtype, jnp.floating)]\n"
                "        return sum(jnp.sum(jnp.sin(o + 0.25 * k)) for k, o in enumerate(outs))\n"
                "    return loss\n"
                f"target = jax.value_and_grad(loss_of(f), argnums={self.argnums()})")

    def argnums(self) -> tuple[int, ...]:
        return tuple(self.float_inputs())

    def gshard_source(self) -> str:
        """`partitioned` (the gshard.partition whose lowering is checked) and `run` (how the
        program calls it: directly, under jax.jit, or differentiated from outside)."""
        if self.outer == "grad":
            return ("partitioned = gshard.partition(f, mesh)\n"
                    f"run = jax.jit(jax.value_and_grad(loss_of(partitioned), "
                    f"argnums={self.argnums()}))")
        wrap = "jax.jit(partitioned)" if self.outer == "jit" else "partitioned"
        return f"partitioned = gshard.partition(target, mesh)\nrun = {wrap}"

    def mesh_source(self) -> str:
        """`mesh` for gshard, `auto_mesh` for the program's with_sharding_constraint calls, and
        `one_device`: the same axis names on one device, so the reference run is unpartitioned
        (XLA's own partitioner never runs in the reference)."""
        shape, names = MESHES[self.mesh], AXES[len(MESHES[self.mesh])]
        auto = f"axis_types=(jax.sharding.AxisType.Auto,) * {len(shape)}"
        return (f"mesh = jax.make_mesh({shape}, {names})\n"
                f"auto_mesh = jax.make_mesh({shape}, {names}, {auto})\n"
                f"one_device = jax.make_mesh({(1,) * len(shape)}, {names}, {auto}, "
                f"devices=jax.devices()[:1])")

    # ----- execution ----------------------------------------------------------------------------
    def build(self, reference: bool = False):
        """(target function, args, mesh) from the rendered source; for the unpartitioned
        reference, with_sharding_constraint calls name a one-device mesh."""
        ns = namespace()
        exec(self.mesh_source(), ns)  # noqa: S102 - our own generated program
        exec(self.body_source(), ns)  # noqa: S102
        exec(self.args_source(), ns)  # noqa: S102
        exec(self.target_source(), ns)  # noqa: S102
        if reference:
            ns["auto_mesh"] = ns["one_device"]
        return ns["target"], ns["args"], ns["mesh"]

    def build_gshard(self):
        """(run, partitioned, args): the gshard side as gshard_source() renders it."""
        ns = namespace()
        for src in (self.mesh_source(), self.body_source(), self.args_source(),
                    self.target_source(), self.gshard_source()):
            exec(src, ns)  # noqa: S102 - our own generated program
        return ns["run"], ns["partitioned"], ns["args"]


def namespace() -> dict:
    return {"jax": jax, "jnp": jnp, "lax": lax, "np": np, "gshard": gshard}


def _input_expr(v: Var) -> str:
    shape = tuple(v.shape)
    if v.dtype == "f32":
        return f"rng.normal(size={shape}).astype(np.float32)"
    if v.dtype == "i32":
        return f"rng.integers({v.lo}, {v.hi}, size={shape}).astype(np.int32)"
    return f"rng.random(size={shape}) < 0.5"


SCRIPT = '''"""A program on which gshard.partition disagreed with the unpartitioned run ({klass}).

{detail}
Run: XLA_FLAGS=--xla_force_host_platform_device_count=8 python THIS_FILE
"""
import os
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import gshard
from gshard.testing import assert_close

{mesh}

{body}

{args}
{target}
real_mesh, auto_mesh = auto_mesh, one_device  # the reference: unpartitioned
ref = jax.jit(target)(*args)
auto_mesh = real_mesh
{gshard}
got = run(*args)
assert_close(got, ref, rtol=2e-3, atol=2e-3)
print("ok: gshard matches jax.jit")
'''


def script(prog: Program, klass: str, detail: str) -> str:
    return SCRIPT.format(klass=klass, detail=detail.strip(), body=prog.body_source(),
                         args=prog.args_source(), target=prog.target_source(),
                         mesh=prog.mesh_source(), gshard=prog.gshard_source())
