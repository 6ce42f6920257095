"""A partitioned function behaves like the jax.jit function it stands in for: JAX's default
(Explicit) meshes, outputs that mix with the user's arrays, jax.jit / jax.grad / jax.vmap around
it, checked manual regions, clear errors, float16 sums at float32, source lines everywhere."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import gshard

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 16)).astype(np.float32)
W1 = RNG.normal(size=(16, 32)).astype(np.float32)
W2 = RNG.normal(size=(32, 16)).astype(np.float32)


def mlp(x, w1, w2):
    x = gshard.mesh_split(x, ("data", None))
    w1 = gshard.mesh_split(w1, (None, "model"))
    return jax.nn.relu(x @ w1) @ w2


def make(types):
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=types)


TYPES = {"explicit": (AxisType.Explicit,) * 2, "auto": (AxisType.Auto,) * 2,
         "mixed": (AxisType.Explicit, AxisType.Auto)}


# ----- 1. manual regions are checked as jax.shard_map checks them -------------------------------
def test_manual_refuses_an_unproven_replicated_output_outside_partition():
    mesh8 = jax.make_mesh((8,), ("x",))
    v = np.arange(64, dtype=np.float32).reshape(8, 8)
    region = gshard.manual(lambda a: a * jax.lax.axis_index("x"), in_specs=("x", None),
                           out_specs=(None, None), mesh=mesh8)
    with pytest.raises(gshard.GShardError, match=r"(?s)test_jax_citizen.py:\d+.*replicated.*psum"):
        region(v)
    ok = gshard.manual(lambda a: jax.lax.psum(a, "x"), in_specs=("x", None),
                       out_specs=(None, None), mesh=mesh8)(v)
    np.testing.assert_allclose(ok, v.reshape(8, 1, 8).sum(0))


def test_manual_refuses_an_unproven_replicated_output_inside_partition():
    mesh8 = jax.make_mesh((8,), ("x",))

    def fn(a):
        return gshard.manual(lambda b: b + jax.lax.axis_index("x"), in_specs=("x", None),
                             out_specs=(None, None))(a)
    with pytest.raises(gshard.GShardError, match="declared replicated"):
        gshard.partition(fn, mesh8)(np.zeros((8, 8), np.float32))


# ----- 2. Explicit, Auto and mixed meshes; explicit-mode annotations ----------------------------
@pytest.mark.parametrize("kind", TYPES)
def test_every_axis_type_partitions_and_returns_on_the_users_mesh(kind):
    mesh = make(TYPES[kind])
    y = gshard.partition(mlp, mesh)(X, W1, W2)
    np.testing.assert_allclose(y, mlp(X, W1, W2), rtol=1e-5, atol=1e-5)
    assert y.sharding.mesh == mesh and y.sharding.spec == P("data", None)


def test_reshard_under_set_mesh_is_an_annotation():
    mesh = jax.make_mesh((2, 4), ("data", "model"))

    def f(x, w):
        return jax.sharding.reshard(x @ w, P("data", "model")) * 2
    with jax.set_mesh(mesh):
        pf = gshard.partition(f, mesh)
        y = pf(X, W1)
        assert pf.lower(X, W1).out_specs[0].to_partition_spec() == P("data", "model")
        want = jax.jit(f)(X, W1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert y.sharding.spec == P("data", "model")

    def g(x, w):  # a bare PartitionSpec names the partition's mesh: no jax.set_mesh needed
        return jax.lax.with_sharding_constraint(x @ w, P("data", "model")) * 2
    auto = make(TYPES["auto"])
    assert gshard.partition(g, auto).lower(X, W1).out_specs[0].to_partition_spec() == P("data", "model")


def test_out_sharding_of_an_op_is_an_annotation():
    mesh = jax.make_mesh((2, 4), ("data", "model"))

    def f(x, w):
        return jnp.einsum("bd,df->bf", x, w, out_sharding=P("data", "model")) + 1
    with jax.set_mesh(mesh):
        low = gshard.partition(f, mesh).lower(X, W1)
    assert low.out_specs[0].to_partition_spec() == P("data", "model")


def test_explicit_abstract_mesh_lowers():
    amesh = jax.sharding.AbstractMesh((2, 4), ("data", "model"), axis_types=TYPES["explicit"])
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (X, W1, W2)]
    low = gshard.partition(mlp, amesh).lower(*args)
    assert [c.kind for c in low.collectives] == ["all_reduce"]


# ----- 3. outputs mix with the user's arrays ------------------------------------------------------
def test_outputs_mix_with_arrays_placed_on_the_users_mesh():
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    xs = jax.device_put(X, NamedSharding(mesh, P("data", None)))
    y = gshard.partition(mlp, mesh)(X, W1, W2)
    np.testing.assert_allclose(y + xs, mlp(X, W1, W2) + X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jnp.add)(y, xs), mlp(X, W1, W2) + X, rtol=1e-5, atol=1e-5)


# ----- 4. jax.jit / jax.grad / jax.vmap around a partitioned function ------------------------------
def tree(a, b, idx):
    x = gshard.mesh_split(a, ("data", None))
    h = jnp.tanh(x @ b["w"])      # [B, F]
    h = gshard.mesh_split(h, ("data", "model"))
    return (h ** 2).sum(axis=1) + jnp.take(b["e"], idx).sum(), idx * 2


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_jit_grad_and_vmap_around_partition(kind):
    mesh = make(TYPES[kind])
    a = np.random.default_rng(1).normal(size=(6, 12)).astype(np.float32)    # [B, D]
    b = {"w": np.random.default_rng(2).normal(size=(12, 10)).astype(np.float32),
         "e": np.arange(7, dtype=np.float32)}
    idx = np.array([1, 3, 6], np.int32)
    pf = gshard.partition(tree, mesh)
    loss = lambda fn: lambda a, b: (fn(a, b, idx)[0] ** 3).sum()  # noqa: E731
    ref_v, ref_g = jax.value_and_grad(loss(tree), argnums=(0, 1))(a, b)
    v, g = jax.jit(jax.value_and_grad(loss(pf), argnums=(0, 1)))(a, b)
    with jax.set_mesh(mesh):
        g2 = jax.grad(loss(pf), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(v, ref_v, rtol=1e-5)
    for got in (g, g2):
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(ref_g)):
            # float32 sums in another order: an error relative to the gradient's scale
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5 * np.abs(y).max())
    jitted = jax.jit(pf)(a, b, idx)
    np.testing.assert_allclose(jitted[0], tree(a, b, idx)[0], rtol=1e-5)
    np.testing.assert_array_equal(jitted[1], idx * 2)
    batch = np.random.default_rng(3).normal(size=(3, 6, 12)).astype(np.float32)
    vm = jax.vmap(lambda a: pf(a, b, idx)[0])(batch)
    np.testing.assert_allclose(vm, jax.vmap(lambda a: tree(a, b, idx)[0])(batch), rtol=1e-5)


def test_forward_mode_is_refused_with_the_fix():
    pf = gshard.partition(mlp, make(TYPES["auto"]))
    with pytest.raises(gshard.GShardError, match="(?s)forward mode.*fix: partition the derivative"):
        jax.jvp(lambda x: pf(x, W1, W2), (X,), (X,))


def test_grad_of_uneven_dims_inside_jit():
    mesh = jax.make_mesh((8,), ("x",))

    def f(v, w):
        return jnp.sin(gshard.mesh_split(v, ("x", None)) * w).sum(0)   # 10 rows over 8 devices
    v = np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32)
    w = np.random.default_rng(5).normal(size=(3,)).astype(np.float32)
    pf = gshard.partition(f, mesh)
    g = jax.jit(jax.grad(lambda v, w: pf(v, w).sum(), argnums=(0, 1)))(v, w)
    r = jax.grad(lambda v, w: f(v, w).sum(), argnums=(0, 1))(v, w)
    for x, y in zip(g, r):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ----- 5. errors in the user's terms ----------------------------------------------------------------
AUTO = make(TYPES["auto"])


@pytest.mark.parametrize("fn, args, kw, pattern", [
    (lambda x: gshard.mesh_split(x, "data"), (X,), {}, r"string 'data'.*\('data', None\)"),
    (lambda x: gshard.mesh_split(x, "x"), (np.ones(8, np.float32),), {}, r"string 'x'"),
    (lambda x: gshard.mesh_split(x, None), (X,), {}, "dims_mapping is None"),
    (lambda x: x * 2, ("abc",), {}, r"argument args\[0\] is a str"),
    (lambda x: gshard.mesh_split(x, ("data", None)), ([[1.0, 2.0], [3.0, 4.0]],), {},
     "mesh_split: got a list"),
    (lambda x: x * 2, (X,), {"donate_argnums": (5,)}, r"donate_argnums=\(5,\) names argument 5"),
    (lambda x: x * 2, (X,), {"out_specs": "data"}, r"out_specs entry for output 0 is the string"),
])
def test_unclear_inputs_get_one_clear_error(fn, args, kw, pattern):
    with pytest.raises(gshard.GShardError, match=f"(?s){pattern}"):
        gshard.partition(fn, AUTO, **kw)(*args)


def test_python_control_flow_error_names_the_users_function():
    def user_fn_with_if(x):
        return x if x.sum() > 0 else -x
    with pytest.raises(jax.errors.TracerBoolConversionError, match="user_fn_with_if"):
        gshard.partition(user_fn_with_if, AUTO)(X)


def test_tuple_style_in_specs_are_accepted():
    y = gshard.partition(lambda x: x * 2, AUTO, in_specs=(("data", None),))(X)
    assert y.sharding.spec == P("data", None)
    np.testing.assert_allclose(y, X * 2)


def test_psum_over_a_missing_axis_names_the_axis():
    def fn(x):
        return gshard.manual(lambda a: jax.lax.psum(a, "nope"), in_specs=("data", None),
                             out_specs=(None, None))(x)
    with pytest.raises(gshard.GShardError, match="(?s)mesh axis .nope.*fix: use one of"):
        gshard.partition(fn, AUTO)(X)


def test_reversed_shard_assignment_says_what_is_wrong():
    mesh8 = jax.make_mesh((8,), ("x",))
    fn = lambda x: gshard.shard(x, np.arange(8)[::-1].reshape(8, 1))  # noqa: E731
    with pytest.raises(gshard.AnnotationError, match="run backwards along tile dim 0"):
        gshard.partition(fn, mesh8)(X)


# ----- 6. float16 / bfloat16 partial sums at float32 ----------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_narrow_float_sums_accumulate_at_float32(dtype):
    mesh = jax.make_mesh((8,), ("a",))
    v = np.full((1000,), 60.0, dtype)
    got = gshard.partition(lambda v: gshard.mesh_split(v, ("a",)).sum(), mesh)(v)
    want = jax.jit(lambda v: v.sum())(v)
    assert float(got) == float(want)
    if dtype == np.float16:
        assert float(got) == 60000.0


# ----- 7. source lines for every collective, the library's own models included -----------------
def test_program_output_collectives_name_the_users_line():
    low = gshard.partition(mlp, AUTO).lower(X, W1, W2)
    assert low.collectives and all("test_jax_citizen.py" in c.source for c in low.collectives)


def test_library_models_have_source_lines():
    from gshard.moe.layer import moe_layer
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
    G, S, M, E, H = 8, 8, 8, 8, 16
    x = np.random.default_rng(6).normal(size=(G, S, M)).astype(np.float32)
    wg = np.random.default_rng(7).normal(size=(M, E)).astype(np.float32)
    wi = np.random.default_rng(8).normal(size=(E, M, H)).astype(np.float32)
    wo = np.random.default_rng(9).normal(size=(E, H, M)).astype(np.float32)
    fn = lambda x, wg, wi, wo: moe_layer(x, wg, wi, wo, mesh_axes=("x",))[0]  # noqa: E731
    low = gshard.partition(fn, mesh).lower(x, wg, wi, wo)
    assert low.collectives
    assert all("gshard/moe/" in c.source for c in low.collectives), [c.source for c in low.collectives]


def test_moe_layer_without_mesh_axes_under_partition_warns_at_the_callers_line():
    from gshard.moe.layer import moe_layer
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (8, 16, 8))                        # [G, S, M]
    wg = jax.random.normal(k[1], (8, 4))                           # [M, E]
    wi = jax.random.normal(k[2], (4, 8, 16))                       # [E, M, H]
    wo = jax.random.normal(k[3], (4, 16, 8))                       # [E, H, M]
    mesh = jax.make_mesh((8,), ("x",))

    def unsplit(x, wg, wi, wo):
        return moe_layer(x, wg, wi, wo, dispatch="gather")[0]

    def whole(x, wg, wi, wo):
        return moe_layer(x, wg, wi, wo, dispatch="gather", mesh_axes=())[0]

    with pytest.warns(UserWarning, match=r"4 experts are not split.*mesh_axes=\(\)") as rec:
        got = gshard.partition(unsplit, mesh)(x, wg, wi, wo)
    assert rec[0].filename == __file__
    np.testing.assert_allclose(got, unsplit(x, wg, wi, wo), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gshard.partition(whole, mesh)(x, wg, wi, wo)   # opted out: quiet
        unsplit(x, wg, wi, wo)                          # outside gshard.partition: quiet


def test_a_constant_output_has_a_source_and_its_value():
    mesh = jax.make_mesh((8,), ("x",))
    x = np.arange(16, dtype=np.float32)
    pf = gshard.partition(lambda x: (gshard.mesh_split(x, ("x",)) * 2, jnp.float32(0.5)), mesh)
    y, c = pf(x)
    np.testing.assert_array_equal(y, x * 2)
    assert float(c) == 0.5


def test_placed_arrays_skip_lowering_and_placement_and_others_do_not(monkeypatch):
    mesh = jax.make_mesh((8,), ("x",))
    pf = gshard.partition(lambda x, w: gshard.mesh_split(x, ("x", None)) @ w, mesh)
    x, w = np.ones((16, 8), np.float32), np.arange(32, dtype=np.float32).reshape(8, 4)
    y = pf(x, w)
    xs, ws = pf.lower(x, w).program.place([x, w])
    with monkeypatch.context() as m:
        m.setattr(pf, "lower", lambda *a: pytest.fail("placed arrays were lowered again"))
        np.testing.assert_array_equal(pf(xs, ws), y)
        np.testing.assert_array_equal(pf({"a": xs}["a"], ws), y)
    other = jax.device_put(x, NamedSharding(mesh, P(None, "x")))   # placed another way
    np.testing.assert_array_equal(pf(other, ws), x @ w)
    assert pf(other, ws).sharding.spec == P("x", None)
