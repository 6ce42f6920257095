from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from gshard.cost import TPU_V3, collective_time, estimate

MESH = AbstractMesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)  # jax 0.11: Explicit by default
SIZES = dict(MESH.shape)


def _per_device(f, in_specs, out_specs, *shapes):
    sm = jax.shard_map(f, mesh=MESH, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    cj = jax.make_jaxpr(sm)(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes))
    (eqn,) = [e for e in cj.jaxpr.eqns if e.primitive.name == "shard_map"]
    return eqn.params["jaxpr"]


def _block(x, w):
    y = jax.lax.psum(x @ w, "model")                          # [8,8] partial over model
    return jax.lax.all_to_all(y, "data", 0, 0, tiled=True)


@pytest.fixture(scope="module")
def inner():
    return _per_device(_block, (P("data", "model"), P("model", None)), P("data", None),
                       (16, 32), (32, 8))


def test_shard_map_body_flops_and_collectives(inner):
    r = estimate(inner, None, SIZES, "tpu-v3", input_roles=["activation", "weight"])
    assert r.flops == 2 * 8 * 8 * 8                           # local [8,8] @ [8,8]
    kinds = {c.kind: c for c in r.collectives}
    assert set(kinds) == {"all_reduce", "all_to_all"}
    assert kinds["all_reduce"].group_size == 4 and kinds["all_to_all"].group_size == 2
    assert kinds["all_reduce"].bytes == 8 * 8 * 4
    assert r.collective_time_s["all_reduce"] == pytest.approx(
        collective_time("all_reduce", 256, ("model",), SIZES, TPU_V3))
    assert r.step_time_s == pytest.approx(r.compute_time_s + r.total_collective_time_s)
    assert r.weight_bytes_distributed == 8 * 8 * 4 and r.peak_bytes >= 2 * 256
    assert r.fits and "all_to_all" in r.format()


def test_records_override_and_overlap(inner):
    recs = [SimpleNamespace(kind="all_to_all", axes=("data",), bytes=1 << 20, source="x.py:1")]
    r = estimate(inner, recs, SIZES, TPU_V3, overlap=True)
    assert r.collective_time_s["all_reduce"] == 0.0
    assert r.collective_time_s["all_to_all"] > 0
    assert r.step_time_s == pytest.approx(max(r.compute_time_s, r.total_collective_time_s))


def test_all_gather_reduce_scatter_permute_pmax():
    def f(x):
        g = jax.lax.all_gather(x, "model", axis=0, tiled=True)
        s = jax.lax.psum_scatter(g, "model", scatter_dimension=0, tiled=True)
        p = jax.lax.ppermute(s, "data", [(0, 1), (1, 0)])
        return jax.lax.pmax(p, ("data", "model"))

    inner = _per_device(f, (P("data", "model"),), P("data", "model"), (16, 32))
    r = estimate(inner, None, SIZES, "gpu")
    by = {c.kind: c for c in r.collectives}
    assert by["all_gather"].bytes == 4 * 8 * 8 * 4           # result bytes
    assert by["reduce_scatter"].bytes == 4 * 8 * 8 * 4
    assert by["collective_permute"].group_size == 2
    assert [c.group_size for c in r.collectives if c.kind == "all_reduce"] == [8]


# ----- XLA's all-reduce combiner, modelled --------------------------------------------------------
def _sums(independent: bool):
    def f(x):
        outs, y = [], x
        for k in range(6):
            s = jax.lax.psum(jnp.sum(y * (k + 1.0)), "model")   # [] partial -> sum over model
            y = x * s if not independent else y
            outs.append(s)
        outs.append(jax.lax.psum(jnp.sum(x), "data"))          # other devices: its own group
        return jnp.stack(outs)
    return f


@pytest.mark.parametrize("independent, groups", [(True, 2), (False, 7)])
def test_independent_allreduces_are_priced_combined(independent, groups):
    inner = _per_device(_sums(independent), (P("data", "model"),), P(), (16, 32))
    merged = estimate(inner, None, SIZES, TPU_V3)
    alone = estimate(inner, None, SIZES, TPU_V3, combine=False)
    assert len(alone.collectives) == 7 and len(merged.collectives) == groups
    assert sum(c.bytes for c in merged.collectives) == sum(c.bytes for c in alone.collectives)
    assert sum(c.combined for c in merged.collectives) == 7
    faster = merged.collective_time_s["all_reduce"] < alone.collective_time_s["all_reduce"]
    assert faster == independent


@pytest.mark.parametrize("independent", [True, False])
def test_combined_count_is_what_xla_compiles(independent):
    """The model's AllReduce count against the compiled HLO of the same shard_map program."""
    from gshard.testing.xla import hlo_collectives
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    sm = jax.jit(jax.shard_map(_sums(independent), mesh=mesh, in_specs=(P("data", "model"),),
                               out_specs=P(), check_vma=False))
    x = jnp.ones((16, 32))
    compiled = [c for c in hlo_collectives(sm.lower(x).compile().as_text()) if c.kind == "all_reduce"]
    inner = _per_device(_sums(independent), (P("data", "model"),), P(), (16, 32))
    assert len(estimate(inner, None, SIZES, TPU_V3).collectives) == len(compiled)
