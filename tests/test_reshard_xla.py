"""Reshards against XLA's own: a value annotated one way, then another (the second annotation a
reshard), partitioned by gshard and by jax.jit with XLA's propagation of the same shardings
(outputs placed alike). gshard's collective bytes per device, counted in the compiled HLO, are at
most XLA's; values and gradients equal the unpartitioned function. The families: an uneven dim
moved to another dim (AllToAll, padded and trimmed), partially replicated -> tiled (halo exchange
of boundary rows, or a CollectivePermute of pieces), a change of which devices hold which tile
(CollectivePermute), an AllToAll over a sub-group of the axes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gshard
from gshard.spec import ShardingSpec
from gshard.testing import assert_close
from gshard.testing.xla import auto_mesh, hlo_collectives, xla_collectives

MESHES = {"8": (8,), "2x4": (2, 4), "4x2": (4, 2), "2x2x2": (2, 2, 2)}
# family: [(src dims, dst dims)] in placeholders: A = first axis, B = last axis, ALL = every axis
FAMILIES = {
    "tiled->tiled": [(("ALL", None), (None, "ALL")), (("AB", None), ("BA", None))],
    "partial-replicate->tiled": [(("A", None), ("AB", None)), (("A", None), ("BA", None)),
                                 (("B", None), ("AB", None))],
    "device order": [(("A", None), ("B", None)), (("B", None), ("A", None))],
    "sub-group all-to-all": [(("A", None), (None, "A")), (("AB", None), ("A", "B")),
                             (("B", "A"), ("AB", None))],
}
SHAPES = [(32, 64), (30, 64), (6, 20)]


def _axes(entry, names):
    ax = {"A": names[0], "B": names[-1]}
    if entry is None:
        return None
    if entry == "ALL":
        return tuple(names)
    return tuple(ax[c] for c in entry) if len(entry) > 1 else ax[entry]


def _valid(dims, names):
    used = [a for e in dims if e is not None for a in ((e,) if isinstance(e, str) else e)]
    return len(used) == len(set(used))


def _case(fam, i, mesh_name):
    names = {1: ("x",), 2: ("data", "model"), 3: ("a", "b", "c")}[len(MESHES[mesh_name])]
    src, dst = ([_axes(e, names) for e in dims] for dims in FAMILIES[fam][i])
    if not (_valid(src, names) and _valid(dst, names)) or src == dst:
        return None
    return names, src, dst


def _fn(src, dst):
    def f(x):
        x = gshard.mesh_split(jnp.sin(x), src)
        return gshard.mesh_split(jnp.cos(x), dst) * 2.0
    return f


CASES = [(fam, i, m, s) for fam, pairs in FAMILIES.items() for i in range(len(pairs))
         for m in MESHES for s in SHAPES if _case(fam, i, m) is not None]  # pairs the mesh has


@pytest.mark.parametrize("fam, i, mesh_name, shape", CASES,
                         ids=[f"{f}-{i}-{m}-{s[0]}x{s[1]}" for f, i, m, s in CASES])
def test_reshard_bytes_at_most_xla(fam, i, mesh_name, shape):
    names, src, dst = _case(fam, i, mesh_name)
    mesh = auto_mesh(MESHES[mesh_name], names)
    out = ShardingSpec.from_partition_spec(dst, 2).holdable(shape, dict(mesh.shape))
    out = out.to_partition_spec()
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    f = _fn(src, dst)
    pf = gshard.partition(f, mesh, out_specs=out)
    low = pf.lower(x)
    ours = hlo_collectives(low.program.call.as_text())
    assert sorted(c.kind for c in ours) == sorted(c.kind for c in low.collectives)
    theirs = xla_collectives(f, mesh, (x,), out_shardings=[out])
    mine, xla = sum(c.bytes for c in ours), sum(c.bytes for c in theirs)
    assert mine == sum(c.bytes for c in low.collectives)
    assert mine <= xla, f"gshard {mine} B > XLA {xla} B\n{low.explain(values=False)}"
    assert not any(c.whole_dim for c in low.collectives), low.explain(values=False)
    assert_close(pf(x), jax.jit(f)(x), what="value")
    g = jax.grad(lambda v: jnp.sum(f(v) ** 2))
    assert_close(gshard.partition(g, mesh)(x), jax.jit(g)(x), what="gradient")
