"""Every collective of the compiled program is in `low.collectives`: outputs with an uneven split
(which no jax.Array can hold) leave gathered by the interpreter's own, recorded reshard, not by an
AllGather XLA adds outside the per-device program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gshard
from conftest import MESH_SHAPES, make_mesh
from gshard.testing.xla import hlo_collectives

CASES = {  # name: (fn, input shapes, annotation per input)
    "uneven rows": (lambda x: jnp.sin(x), [(30, 64)], [("A", None)]),
    "uneven both dims": (lambda x: x * 2.0, [(13, 10)], [("A", "B")]),
    "even and uneven outputs": (lambda x, w: (x @ w, (x @ w).sum(0)), [(30, 16), (16, 24)],
                                [("A", None), (None, "B")]),
}


def _axes(mesh):
    names = mesh.axis_names
    return {"A": names[0], "B": names[-1] if len(names) > 1 else None}


def _annotated(fn, anns, mesh):
    ax = _axes(mesh)

    def f(*xs):
        xs = [gshard.mesh_split(x, tuple(ax.get(a) if a else None for a in ann))
              for x, ann in zip(xs, anns)]
        return fn(*xs)
    return f


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_collectives_are_the_reported_ones(case, mesh):
    fn, shapes, anns = CASES[case]
    rng = np.random.default_rng(0)
    args = [rng.normal(size=s).astype(np.float32) for s in shapes]
    pf = gshard.partition(_annotated(fn, anns, mesh), mesh)
    low = pf.lower(*args)
    compiled = sorted(c.kind for c in hlo_collectives(low.program.call.as_text()))
    reported = sorted(c.kind for c in low.collectives)
    assert compiled == reported, (compiled, low.explain(values=False))
    got, want = pf(*args), jax.jit(fn)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_an_uneven_output_gather_names_the_users_line():
    mesh = jax.make_mesh((8,), ("x",))
    low = gshard.partition(lambda x: gshard.mesh_split(jnp.sin(x), ("x", None)), mesh).lower(
        np.ones((30, 64), np.float32))
    (gather,) = low.collectives
    assert gather.kind == "all_gather" and gather.bytes == 32 * 64 * 4
    assert "holds no uneven split" in gather.reason
    assert "test_collective_report.py" in gather.source


def test_a_manual_regions_own_collectives_are_reported_with_the_users_line():
    mesh = jax.make_mesh((8,), ("x",))

    def body(a):                                              # [16, 8] per device
        moved = jax.lax.all_to_all(a, "x", 0, 0, tiled=True)  # the user's AllToAll
        return moved + jax.lax.psum(a.sum(), "x")             # the user's AllReduce

    def f(x):
        return gshard.manual(body, in_specs=("x", None), out_specs=("x", None))(x) * 2.0

    x = jnp.asarray(np.random.default_rng(3).standard_normal((128, 8)), jnp.float32)
    low = gshard.partition(f, mesh).lower(x)
    mine = [c for c in low.collectives if c.reason == "written in a gshard.manual region"]
    assert sorted(c.kind for c in mine) == ["all_reduce", "all_to_all"]
    a2a = next(c for c in mine if c.kind == "all_to_all")
    assert a2a.bytes == 16 * 8 * 4 and "test_collective_report.py" in a2a.source
    compiled = hlo_collectives(low.program.call.as_text())
    assert sorted(c.kind for c in compiled) == sorted(c.kind for c in low.collectives)
    placed = jax.device_put(x, jax.NamedSharding(mesh, jax.P("x")))
    ref = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=jax.P("x"), out_specs=jax.P("x")))
    assert np.allclose(gshard.partition(f, mesh)(x), ref(placed) * 2.0, atol=1e-5)


RESHARDS = {  # name: (rows, src dims, dst dims) in placeholders: A first axis, B last, ALL every
    "uneven rows to columns (all-to-all, trimmed)": (30, ("ALL", None), (None, "ALL")),
    "uneven rows split further (halo exchange)": (30, ("A", None), ("AB", None)),
    "rows to another axis (permute of pieces)": (30, ("A", None), ("B", None)),
    "rows joined from a larger axis (permute rounds)": (30, ("B", None), ("A", None)),
    "axes reordered after an all-to-all": (32, ("B", "A"), ("AB", None)),
    "mostly padding rows gathered as a sum": (3, ("ALL", None), (None, None)),
}
ONE_AXIS = ("uneven rows to columns (all-to-all, trimmed)", "mostly padding rows gathered as a sum")


def _dims(entry, names):
    if entry is None:
        return None
    if entry == "ALL":
        return tuple(names)
    return tuple({"A": names[0], "B": names[-1]}[c] for c in entry)


@pytest.mark.parametrize("case,shape", [(c, s) for c in RESHARDS for s in MESH_SHAPES
                                        if len(s) > 1 or c in ONE_AXIS])
def test_reshard_steps_are_the_reported_ones(case, shape):
    """The planner's halo exchanges, permutes and trimmed AllToAlls: every collective the
    compiled program runs is reported, with its bytes (cases that move a split between two
    axes run on the meshes that have two)."""
    mesh = make_mesh(shape)
    rows, src, dst = RESHARDS[case]
    names = mesh.axis_names
    src, dst = [_dims(e, names) for e in src], [_dims(e, names) for e in dst]
    flat = [a for e in src + dst if e for a in e]

    def f(x):
        return gshard.mesh_split(jnp.cos(gshard.mesh_split(jnp.sin(x), src)), dst)
    x = np.random.default_rng(0).normal(size=(rows, 16)).astype(np.float32)
    pf = gshard.partition(f, mesh)
    low = pf.lower(x)
    compiled = hlo_collectives(low.program.call.as_text())
    assert sorted(c.kind for c in compiled) == sorted(c.kind for c in low.collectives), flat
    assert sum(c.bytes for c in compiled) == sum(c.bytes for c in low.collectives)
    np.testing.assert_allclose(np.asarray(pf(x)), np.asarray(jax.jit(f)(x)), rtol=1e-5, atol=1e-5)
