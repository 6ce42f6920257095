"""The reshard plan as data: every pair of specs on the four meshes (uneven dims included),
checked without devices; a sample executed on devices for values."""
import itertools
import math

import jax
import numpy as np
import pytest

from gshard.spec import ShardingSpec
from gshard.spmd.plan import plan, plan_cost, step_bytes

MESHES = {(8,): ("x",), (2, 4): ("data", "model"), (4, 2): ("data", "model"),
          (2, 2, 2): ("a", "b", "c")}


def specs(axes, rank, partial=True):
    """Every spec of `rank` dims: each axis on a dim (any order within it), unused, or partial."""
    out = set()
    for assign in itertools.product(range(rank + 2), repeat=len(axes)):
        groups = [[a for a, d in zip(axes, assign) if d == i] for i in range(rank)]
        part = tuple(a for a, d in zip(axes, assign) if d == rank + 1)
        if part and not partial:
            continue
        for orders in itertools.product(*[itertools.permutations(g) for g in groups]):
            out.add(ShardingSpec(tuple(tuple(o) for o in orders), part))
    return sorted(out, key=repr)


def _check_plan(src, dst, shape, sizes):
    steps = plan(src, dst, shape, sizes)
    cur = src
    for s in steps:
        assert s.before == cur, (src, dst, steps)
        cur = s.after
        assert len(set(cur.used_axes()) | set(cur.partial)) == len(cur.used_axes()) + len(cur.partial)
        if s.kind == "all_to_all":  # moves axes between dims; both even
            assert s.dim != s.to_dim and cur.dims[s.to_dim][-len(s.axes):] == s.axes
        if s.kind == "all_gather" and s.full:
            assert not cur.used_axes() and not cur.partial
    assert cur == dst
    return steps


@pytest.mark.parametrize("mesh", list(MESHES), ids=lambda m: "x".join(map(str, m)))
@pytest.mark.parametrize("shape", [(8, 12), (6, 10), (3, 5), (1, 16)])
def test_every_pair_of_specs(mesh, shape):
    sizes = dict(zip(MESHES[mesh], mesh))
    all_specs = specs(MESHES[mesh], 2)
    n = 0
    for src, dst in itertools.product(all_specs, all_specs):
        steps = _check_plan(src, dst, shape, sizes)
        n += 1
        assert (not steps) == (src == dst)
        if src.is_replicated() and not dst.partial:  # replicated -> split: slicing only
            assert all(not s.communicates for s in steps), steps
        cost = plan_cost(steps, shape, 4, sizes)
        assert cost == sum(step_bytes(s, shape, 4, sizes) * (2 if s.kind == "all_reduce" else 1)
                           for s in steps)
        assert (cost == 0) == all(not s.communicates for s in steps)
    assert n == len(all_specs) ** 2


def test_collective_kinds_chosen():
    sizes = {"x": 8}
    S0, S1, R = (ShardingSpec(d) for d in ((("x",), ()), ((), ("x",)), ((), ())))
    P = ShardingSpec(((), ()), ("x",))
    kinds = lambda a, b, shape=(16, 8): [s.kind for s in plan(a, b, shape, sizes)]  # noqa: E731
    assert kinds(S0, S1) == ["all_to_all"]
    assert kinds(S0, R) == ["all_gather"]
    assert kinds(R, S0) == ["slice"]
    assert kinds(P, R) == ["all_reduce"]
    assert kinds(P, S1) == ["reduce_scatter"]
    assert kinds(S0, S1, (10, 8)) == ["all_to_all"]  # uneven rows: padded, moved, trimmed
    sizes2 = {"a": 2, "b": 4}
    assert [s.kind for s in plan(ShardingSpec((("a", "b"), ())), ShardingSpec((("b", "a"), ())),
                                 (8, 8), sizes2)] == ["collective_permute"]


def test_uneven_gather_is_marked():
    """Where no halo exchange can realign an uneven dim (17 rows over 256 tiles down to 16: a
    tile would need rows from 8 tiles back) it is gathered whole, and the step says so."""
    steps = plan(ShardingSpec((("x", "y"), ())), ShardingSpec((("x",), ())), (17, 8),
                 {"x": 16, "y": 16})
    assert [s.kind for s in steps] == ["all_gather", "slice"]
    assert steps[0].whole and steps[0].full


def test_bytes_follow_the_record_convention():
    sizes = {"x": 8}
    (g,) = plan(ShardingSpec((("x",), ())), ShardingSpec.replicated(2), (16, 8), sizes)
    assert step_bytes(g, (16, 8), 4, sizes) == 16 * 8 * 4  # an AllGather: its result
    (r,) = plan(ShardingSpec(((), ()), ("x",)), ShardingSpec.replicated(2), (16, 8), sizes)
    assert step_bytes(r, (16, 8), 4, sizes) == 16 * 8 * 4
    (a,) = plan(ShardingSpec((("x",), ())), ShardingSpec(((), ("x",))), (16, 8), sizes)
    assert step_bytes(a, (16, 8), 4, sizes) == math.prod((2, 8)) * 4


@pytest.mark.parametrize("mesh", list(MESHES), ids=lambda m: "x".join(map(str, m)))
def test_plans_execute_to_the_same_values(mesh):
    from test_reshard import run_reshard
    axes = MESHES[mesh]
    m = jax.make_mesh(mesh, axes)
    shape = (6, 5)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    pool = specs(axes, 2, partial=False)
    pick = np.random.default_rng(1).choice(len(pool), size=(24, 2))
    for i, j in pick:
        out, _ = run_reshard(m, shape, pool[i], pool[j], x)
        np.testing.assert_array_equal(out, x, err_msg=f"{pool[i]} -> {pool[j]}")


def test_uneven_partial_sum_is_reduce_scattered_padded():
    """A partial sum onto an uneven split: one ReduceScatter of the zero-padded operand (not an
    AllReduce of the whole and a slice); its bytes are the padded operand's."""
    from test_reshard import run_reshard
    sizes, shape = {"x": 8}, (10, 8)
    P, S0 = ShardingSpec(((), ()), ("x",)), ShardingSpec((("x",), ()))
    (rs,) = plan(P, S0, shape, sizes)
    assert rs.kind == "reduce_scatter" and step_bytes(rs, shape, 4, sizes) == 16 * 8 * 4
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out, recs = run_reshard(jax.make_mesh((8,), ("x",)), shape, P, S0, x)
    np.testing.assert_allclose(out, 8 * x, rtol=1e-6)  # every device held x: the sum is 8x
    assert [r.kind for r in recs] == ["reduce_scatter"]
