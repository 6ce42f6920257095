"""Reshapes that merge or split a dim whose split does not divide it: the operand keeps the split
on the group's major dim, the flat blocks are realigned by a halo exchange (as XLA does) or,
where cheaper, the longest dividing prefix of the axes is kept; never gathered whole. Bytes per
device in the compiled HLO at most XLA's for the same shardings; values and gradients equal the
unpartitioned function."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import gshard
from gshard.testing import assert_close
from gshard.testing.xla import auto_mesh, hlo_collectives, xla_collectives

MESHES = {"8": (8,), "2x4": (2, 4), "4x2": (4, 2), "2x2x2": (2, 2, 2)}
NAMES = {1: ("x",), 2: ("data", "model"), 3: ("a", "b", "c")}
CASES = [  # (input shape, operand split, reshaped to, result split); A first axis, ALL every
    ((12, 10), ("ALL", None), (120,), ("ALL",)),
    ((6, 8), ("ALL", None), (48,), ("ALL",)),
    ((6, 10), ("ALL", None), (60,), ("ALL",)),
    ((120,), ("ALL",), (12, 10), ("ALL", None)),
    ((48,), ("ALL",), (6, 8), ("ALL", None)),
    ((6, 8), ("A", None), (48,), ("ALL",)),
    ((4, 6, 10), (None, "ALL", None), (4, 60), (None, "ALL")),
]
PARAMS = [(c, m) for c in range(len(CASES)) for m in MESHES]


def _dims(dims, names):
    out = {"A": names[0], "ALL": tuple(names) if len(names) > 1 else names[0]}
    return tuple(out[d] if d else None for d in dims)


@pytest.mark.parametrize("case, mesh_name", PARAMS, ids=[
    f"{'x'.join(map(str, CASES[c][0]))}-to-{'x'.join(map(str, CASES[c][2]))}-{m}" for c, m in PARAMS])
def test_uneven_reshape(case, mesh_name):
    shape, src, new, dst = CASES[case]
    names = NAMES[len(MESHES[mesh_name])]
    mesh = auto_mesh(MESHES[mesh_name], names)
    src, dst = _dims(src, names), _dims(dst, names)

    def f(x):
        y = jnp.reshape(gshard.mesh_split(jnp.sin(x), src), new)
        return jnp.cos(gshard.mesh_split(y, dst))
    x = np.random.default_rng(case).normal(size=shape).astype(np.float32)
    pf = gshard.partition(f, mesh, out_specs=P())
    low = pf.lower(x)
    ours = sum(c.bytes for c in hlo_collectives(low.program.call.as_text()))
    assert ours == sum(c.bytes for c in low.collectives)
    xla = sum(c.bytes for c in xla_collectives(f, mesh, (x,), out_shardings=[P()]))
    assert ours <= xla, f"gshard {ours} B > XLA {xla} B\n{low.explain(values=False)}"
    assert not any(c.whole_dim for c in low.collectives), low.explain(values=False)
    assert_close(pf(x), jax.jit(f)(x), what="value")
    g = jax.grad(lambda v: jnp.sum(f(v) * jnp.arange(np.prod(new)).reshape(new)))
    assert_close(gshard.partition(g, mesh)(x), jax.jit(g)(x), what="gradient")
