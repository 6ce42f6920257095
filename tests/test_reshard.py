"""The reshard planner between specs: values preserved, the right collective kinds chosen."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gshard import collectives as coll
from gshard.mesh import MeshInfo
from gshard.spmd.local import Ctx
from gshard.spmd.shard import Local
from gshard.spmd.reshard import reshard
from gshard.spec import ShardingSpec


def run_reshard(mesh, shape, src: ShardingSpec, dst: ShardingSpec, x):
    info = MeshInfo.of(mesh)
    rec = coll.Recorder()
    sizes = info.sizes

    def body(v):
        return reshard(Ctx(info, rec), Local(v, src, shape), dst, "test").val

    smap = jax.shard_map(body, mesh=info.auto_mesh(), in_specs=src.to_partition_spec(),
                         out_specs=dst.drop_partial().to_partition_spec(), check_vma=False)
    pad_src = src.padded_shape(shape, sizes)
    xp = jnp.pad(x, [(0, p - n) for n, p in zip(shape, pad_src)])
    out = jax.jit(smap)(xp)
    return np.asarray(out)[tuple(slice(0, n) for n in shape)], rec.records


def _specs(axes, rank):
    """All specs of `rank` dims using each axis at most once (order within a dim kept)."""
    out = []
    for assign in itertools.product(range(rank + 1), repeat=len(axes)):
        dims = [tuple(a for a, d in zip(axes, assign) if d == i) for i in range(rank)]
        out.append(ShardingSpec(tuple(dims)))
    return out


@pytest.mark.parametrize("shape", [(8, 12), (6, 10)])
def test_all_pairs_2d_mesh(shape):
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    specs = _specs(("a", "b"), 2)
    for src, dst in itertools.product(specs, specs):
        out, _ = run_reshard(mesh, shape, src, dst, x)
        np.testing.assert_array_equal(out, x, err_msg=f"{src} -> {dst}")


def test_kinds_chosen():
    mesh = jax.make_mesh((8,), ("x",))
    x = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    S0, S1, R = (ShardingSpec(d) for d in ((("x",), ()), ((), ("x",)), ((), ())))
    assert [r.kind for r in run_reshard(mesh, (16, 8), S0, S1, x)[1]] == ["all_to_all"]
    assert [r.kind for r in run_reshard(mesh, (16, 8), S0, R, x)[1]] == ["all_gather"]
    assert run_reshard(mesh, (16, 8), R, S0, x)[1] == []


def test_partial_to_split_is_reduce_scatter():
    mesh = jax.make_mesh((4,), ("x",))
    info = MeshInfo.of(mesh)
    rec = coll.Recorder()
    x = np.random.default_rng(2).normal(size=(4, 8, 8)).astype(np.float32)  # one term per device
    src = ShardingSpec(((), ()), partial=("x",))
    dst = ShardingSpec(((), ("x",)))

    def body(v):
        return reshard(Ctx(info, rec), Local(v[0], src, (8, 8)), dst, "t").val[None]

    smap = jax.shard_map(body, mesh=info.auto_mesh(), in_specs=jax.sharding.PartitionSpec("x"),
                         out_specs=jax.sharding.PartitionSpec(None, None, "x"), check_vma=False)
    out = np.asarray(jax.jit(smap)(x))[0]
    np.testing.assert_allclose(out, x.sum(0), rtol=1e-5, atol=1e-5)
    assert [r.kind for r in rec.records] == ["reduce_scatter"]


def test_device_order_change_is_collective_permute():
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    x = np.random.default_rng(3).normal(size=(8, 8)).astype(np.float32)
    src = ShardingSpec((("a", "b"), ()))
    dst = ShardingSpec((("b", "a"), ()))
    out, recs = run_reshard(mesh, (8, 8), src, dst, x)
    np.testing.assert_array_equal(out, x)
    assert [r.kind for r in recs] == ["collective_permute"]
