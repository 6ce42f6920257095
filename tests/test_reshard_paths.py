"""The reshard paths that keep uneven dims padded and move pieces by CollectivePermute, executed
on devices: halo exchanges before a split or after a join, AllToAlls off and onto uneven dims,
CollectivePermutes of destination pieces and rounds that join tiles, a mostly-padding dim
gathered as an AllReduce of its real rows. Every plan using one of
them (on the four meshes, uneven shapes, partial sums as sources) is priced like the collectives
it records, and a deterministic sample is run for values."""
import itertools

import jax
import numpy as np
import pytest

from gshard import collectives as coll
from gshard.mesh import MeshInfo
from gshard.spec import ShardingSpec
from gshard.spmd.local import Ctx
from gshard.spmd.plan import plan, plan_cost, step_bytes
from gshard.spmd.reshard import reshard
from gshard.spmd.shard import Local
from test_reshard_plan import MESHES, specs

SHAPES = [(6, 5), (13, 10), (3, 17)]


def _new_path(step) -> bool:
    return bool(step.pre or step.post or step.sub or step.merge) or step.kind == "all_to_all" or (
        step.kind == "all_reduce" and step.dim >= 0)  # an uneven dim gathered as a sum


def _pairs(axes, sizes, shape, k, seed):
    pool = specs(axes, 2)
    found = [(s, d) for s, d in itertools.product(pool, pool)
             if not d.partial and any(_new_path(st) for st in plan(s, d, shape, sizes))]
    pick = np.random.default_rng(seed).permutation(len(found))[:k]
    return [found[i] for i in sorted(pick)]


def run(mesh, shape, src: ShardingSpec, dst: ShardingSpec, x):
    """x (every device holding x over src's partial axes: the sum is x times their size)
    resharded from src to dst; the global result and the collective records."""
    info = MeshInfo.of(mesh)
    rec = coll.Recorder()

    def body(v):
        return reshard(Ctx(info, rec), Local(v, src, shape), dst, "test").val

    smap = jax.shard_map(body, mesh=info.auto_mesh(), in_specs=src.to_partition_spec(),
                         out_specs=dst.to_partition_spec(), check_vma=False)
    pad = src.padded_shape(shape, info.sizes)
    out = jax.jit(smap)(np.pad(x, [(0, p - n) for n, p in zip(shape, pad)]))
    return np.asarray(out)[tuple(slice(0, n) for n in shape)], rec.records


@pytest.mark.parametrize("mesh", list(MESHES), ids=lambda m: "x".join(map(str, m)))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_new_paths_values_and_bytes(mesh, shape):
    axes = MESHES[mesh]
    sizes = dict(zip(axes, mesh))
    m = jax.make_mesh(mesh, axes)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for src, dst in _pairs(axes, sizes, shape, 10, seed=len(axes) * 7 + shape[0]):
        steps = plan(src, dst, shape, sizes)
        out, recs = run(m, shape, src, dst, x)
        times = np.prod([sizes[a] for a in src.partial]) if src.partial else 1
        np.testing.assert_allclose(out, x * times, rtol=1e-5, atol=1e-5, err_msg=f"{src} -> {dst}")
        priced = sum(step_bytes(s, shape, 4, sizes) for s in steps)
        assert priced == sum(r.bytes for r in recs), (src, dst, steps, recs)
        assert plan_cost(steps, shape, 4, sizes) >= priced


def test_every_new_plan_chains_on_the_largest_mesh():
    """Over every pair of specs on 2x2x2 and the uneven shapes: no dim gathered whole (a halo
    exchange or a permute always applies at these sizes)."""
    axes, mesh = MESHES[(2, 2, 2)], (2, 2, 2)
    sizes = dict(zip(axes, mesh))
    pool = specs(axes, 2)
    for shape in SHAPES:
        for src, dst in itertools.product(pool, pool):
            assert not any(s.whole for s in plan(src, dst, shape, sizes)), (src, dst, shape)
