"""The annotation API (DESIGN §6), its transformations, errors, and the runtime contract."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

import gshard
from gshard.annotate import annotate_p


def _ann_eqns(closed):
    return [e for e in closed.jaxpr.eqns if e.primitive is annotate_p]


def test_identity_outside_partition_and_under_transforms():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    f = lambda x: jnp.sin(gshard.split(x, 0, 8)).sum()  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(x), np.sin(x).sum(), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(f)(x), np.cos(x), rtol=1e-5)
    v, g = jax.value_and_grad(f)(x)
    np.testing.assert_allclose(g, np.cos(x), rtol=1e-5)
    grad_jaxpr = jax.make_jaxpr(jax.grad(f))(x)
    assert len(_ann_eqns(grad_jaxpr)) == 2  # the primal and its cotangent are annotated


def test_vmap_inserts_unsplit_dim():
    x = np.ones((3, 8, 4), np.float32)
    closed = jax.make_jaxpr(jax.vmap(lambda t: gshard.mesh_split(t, ("x", None))))(x)
    (eqn,) = _ann_eqns(closed)
    assert eqn.params["ann"].mapping == ((), ("x",), ())
    closed = jax.make_jaxpr(jax.vmap(lambda t: gshard.split(t, 1, 8), in_axes=1))(x)
    assert _ann_eqns(closed)[0].params["ann"].dim == 2


@pytest.mark.parametrize("mapping", [("x", None), (0, -1), PartitionSpec("x")])
def test_mesh_split_spellings(mapping):
    mesh = jax.make_mesh((8,), ("x",))
    x = np.arange(64, dtype=np.float32).reshape(16, 4)
    pf = gshard.partition(lambda t: gshard.mesh_split(t, mapping) * 2.0, mesh)
    assert str(pf.lower(x).out_specs[0]) == "S(0)[x] R"
    np.testing.assert_array_equal(pf(x), x * 2)


def test_split_over_all_devices_and_one_axis():
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    x = np.ones((8, 8), np.float32)
    low = gshard.partition(lambda t: gshard.split(t, 1, 8) + 1, mesh).lower(x)
    assert low.out_specs[0].dims == ((), ("data", "model"))
    low = gshard.partition(lambda t: gshard.split(t, 0, 4) + 1, mesh).lower(x)
    assert low.out_specs[0].dims == (("model",), ())


@pytest.mark.parametrize("bad, words", [
    (lambda t: gshard.split(t, 3, 8), ["split_dimension=3", "shape [8, 8]", "fix"]),
    (lambda t: gshard.mesh_split(t, ("nope", None)), ["unknown mesh axis 'nope'", "['data', 'model']"]),
    (lambda t: gshard.mesh_split(t, ("data", "data")), ["'data' is used for dims 0 and 1"]),
    (lambda t: gshard.split(t, 0, 3), ["no mesh axis has size 3", "mesh_split"]),
    (lambda t: gshard.shard(t, np.array([[0, 1], [2, 3]])), ["not a tiling", "0..7"]),
    (lambda t: gshard.shard(t, np.array([[0, 1, 2, 3], [5, 4, 7, 6]])), ["not a tiling"]),
    (lambda t: gshard.mesh_split(t, ("data",)), ["has 1 entries", "rank 2"]),
])
def test_bad_annotations_clear_errors(bad, words):
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    with pytest.raises(gshard.AnnotationError) as info:
        gshard.partition(bad, mesh).lower(np.ones((8, 8), np.float32))
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    assert "test_annotate_api.py" in msg  # the user's source line


def test_ambiguous_split_asks_for_mesh_split():
    mesh = jax.make_mesh((2, 2, 2), ("a", "b", "c"))
    with pytest.raises(gshard.AnnotationError, match="all have size 2"):
        gshard.partition(lambda t: gshard.split(t, 0, 2) * 1, mesh).lower(np.ones((8, 2)))


def test_unsupported_primitive_named_with_line():
    mesh = jax.make_mesh((8,), ("x",))
    f = lambda t: jnp.linalg.cholesky(gshard.replicate(t))  # noqa: E731
    with pytest.raises(gshard.UnsupportedPrimitiveError) as info:
        gshard.partition(f, mesh).lower(np.eye(4, dtype=np.float32))
    assert "cholesky" in str(info.value) and "test_annotate_api.py" in str(info.value)


def test_abstract_mesh_lowering_with_shape_dtype_structs():
    mesh = AbstractMesh((16, 128), ("data", "model"))

    def f(x, w):
        return gshard.mesh_split(x, ("data", None)) @ gshard.mesh_split(w, (None, "model"))

    args = (jax.ShapeDtypeStruct((64, 256), jnp.float32), jax.ShapeDtypeStruct((256, 1024), jnp.bfloat16))
    low = gshard.partition(f, mesh).lower(*args)
    assert [v.aval.shape for v in low.per_device_jaxpr.jaxpr.invars] == [(4, 256), (256, 8)]
    assert low.collectives == []
    with pytest.raises(gshard.GShardError, match="abstract"):
        gshard.partition(f, mesh)(*args)


def test_inputs_any_sharding_outputs_named_sharding_and_cache():
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    f = lambda x: jnp.tanh(gshard.mesh_split(x, ("data", "model")))  # noqa: E731
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    other = jax.device_put(x, NamedSharding(mesh, PartitionSpec("model", None)))
    pf = gshard.partition(f, mesh)
    for arg in (x, jnp.asarray(x), other):
        out = pf(arg)
        np.testing.assert_allclose(out, np.tanh(x), rtol=1e-6)
        assert out.sharding.spec == PartitionSpec("data", "model")
    assert pf.lower(x) is pf.lower(jnp.asarray(x))  # partitioned once per input signature
    assert "committed" in pf.lower(other).explain()  # a committed sharding is part of it, as in jit


def test_pytrees_in_and_out():
    mesh = jax.make_mesh((8,), ("x",))

    def f(params, batch):
        h = gshard.split(batch["x"], 0, 8) @ params["w"]
        return {"h": h, "total": h.sum()}

    params = {"w": np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)}
    batch = {"x": np.random.default_rng(3).normal(size=(16, 4)).astype(np.float32)}
    out = gshard.partition(f, mesh)(params, batch)
    ref = f(params, batch)
    np.testing.assert_allclose(out["h"], ref["h"], rtol=1e-5)
    np.testing.assert_allclose(out["total"], ref["total"], rtol=1e-4)


def test_uneven_split_sums_softmax_max_argmax():
    mesh = jax.make_mesh((4,), ("x",))
    x = np.random.default_rng(4).normal(size=(10, 6)).astype(np.float32)

    def f(t):
        t = gshard.split(t, 0, 4)  # 10 rows over 4 devices: 3, 3, 3, 1(+2 padding)
        return (t.sum(0), jax.nn.softmax(t, axis=0), t.max(0), jnp.argmax(t, 0), t.mean(),
                jnp.cumsum(t, axis=0))

    out = gshard.partition(f, mesh)(x)
    for a, b in zip(out, f(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_embedding_lookup_and_its_gradient(mesh):
    """Batch-split lookups from a replicated table: local gather; the table's gradient is a
    lazily reduced partial sum (AllReduce), as in data parallelism."""
    table = np.random.default_rng(5).normal(size=(50, 6)).astype(np.float32)
    ids = np.random.default_rng(6).integers(0, 50, size=(8, 5)).astype(np.int32)
    axes = tuple(mesh.axis_names)

    def loss(table, ids):
        ids = gshard.mesh_split(ids, (axes, None))
        emb = jnp.take(gshard.replicate(table), ids, axis=0)  # [B, L, M]
        return jnp.sum(jnp.tanh(emb) * jnp.arange(6.0))

    pf = gshard.partition(jax.value_and_grad(loss), mesh)
    (v, g), (rv, rg) = pf(table, ids), jax.value_and_grad(loss)(table, ids)
    np.testing.assert_allclose(v, rv, rtol=1e-4)
    np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-5)
    kinds = [c.kind for c in pf.lower(table, ids).collectives]
    assert "all_gather" not in kinds
