"""Minimal programs the fuzzer (and issue 11) found wrong, each now a regression test, plus the
interpreter's invariants and the full-replication warning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import gshard
from gshard.spmd.interpret import InvariantError
from gshard.testing import assert_close

rng = np.random.default_rng(0)


def _mesh3():
    return jax.make_mesh((2, 2, 2), ("a", "b", "c"))


def _same(fn, *args, mesh=None, grad_argnums=None):
    mesh = mesh or _mesh3()
    pf = gshard.partition(fn, mesh)
    assert_close(pf(*args), jax.jit(fn)(*args), what="forward")
    if grad_argnums is not None:
        def loss(*a):
            return sum(jnp.sum(jnp.sin(o)) for o in jax.tree_util.tree_leaves(fn(*a)))
        g = jax.grad(loss, argnums=grad_argnums)
        assert_close(gshard.partition(g, mesh)(*args), jax.jit(g)(*args), what="gradient")
    return pf.lower(*args)


def _kinds(low):
    return [c.kind for c in low.collectives]


# 1. a partial sum reduced twice ---------------------------------------------------------------
def test_mean_of_split_times_vector_reduced_once():
    x, c = rng.normal(size=10).astype(np.float32), rng.normal(size=1).astype(np.float32)
    low = _same(lambda x, c: jnp.mean(gshard.mesh_split(x, ("a",))) * c, x, c, grad_argnums=(0, 1))
    assert _kinds(low) == ["all_reduce"], low.explain()


def test_scalar_einsum_times_matrix_reduced_once():
    c, v = rng.normal(size=(7, 11)).astype(np.float32), rng.normal(size=52).astype(np.float32)

    def f(c, v):
        v = gshard.mesh_split(v, ("b",))
        return c * jnp.einsum("a,a->", v, v)
    low = _same(f, c, v, grad_argnums=(0, 1))
    assert _kinds(low) == ["all_reduce"], low.explain()


# 2. lookups from a split table whose ids or result use the table's axis ------------------------
def test_take_from_split_table_result_split_on_same_axis():
    table, ids = rng.normal(size=12).astype(np.float32), rng.integers(0, 12, (3, 4)).astype(np.int32)

    def f(table, ids):
        t = gshard.mesh_split(table, ("a",))
        return gshard.mesh_split(jnp.take(t, ids, axis=0), (None, "a"))
    _same(f, table, ids, grad_argnums=(0,))


def test_take_along_axis_from_split_rows():
    x, ids = rng.normal(size=(8, 6)).astype(np.float32), rng.integers(0, 8, (5, 6)).astype(np.int32)

    def f(x, ids):
        x = gshard.mesh_split(x, ("a", "b"))
        return gshard.mesh_split(jnp.take_along_axis(x, gshard.mesh_split(ids, ("a", None)), axis=0),
                                 ("a", "b"))
    _same(f, x, ids, grad_argnums=(0,))


@pytest.mark.parametrize("how", ["add", "set"])
def test_gradient_of_indexed_update_on_split_operand(how):
    x, u = rng.normal(size=(9, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    i = np.array([1, 7, 3, 8], np.int32)

    def f(x, u, i):
        x = gshard.mesh_split(x, (("a", "b"), "c"))
        y = getattr(x.at[gshard.mesh_split(i, ("a",))], how)(gshard.mesh_split(u, ("a", None)))
        return gshard.mesh_split(y * 2.0, ("a", None))
    _same(f, x, u, i, grad_argnums=(0, 1))


@pytest.mark.parametrize("mode", ["clip", "fill"])
def test_out_of_range_ids_follow_the_gather_mode(mode):
    table = rng.normal(size=(10, 3)).astype(np.float32)
    ids = np.array([[-3, 0, 9], [10, 14, 4]], np.int32)

    def f(table, ids):
        t = gshard.mesh_split(table, ("a", None))
        return jnp.take(t, ids, axis=0, mode=mode)
    _same(f, table, ids)


# 3. reshape with `dimensions` (a transpose before the reshape), and grouped-conv gradients -----
def test_reshape_with_dimensions_no_annotation():
    x = rng.normal(size=(3, 4)).astype(np.float32)
    _same(lambda x: lax.reshape(x, (4, 3), dimensions=(1, 0)), x, grad_argnums=(0,))


def test_reshape_with_dimensions_split():
    x = rng.normal(size=(4, 6, 2)).astype(np.float32)

    def f(x):
        return lax.reshape(gshard.mesh_split(x, ("a", "b", None)), (12, 4), dimensions=(1, 2, 0))
    _same(f, x, grad_argnums=(0,))


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_input_gradient(groups):
    x = rng.normal(size=(2, 4, 9)).astype(np.float32)
    k = rng.normal(size=(4, 4 // groups, 3)).astype(np.float32) * 0.3

    def f(x, k):
        x = gshard.mesh_split(x, ("a", None, None))
        return lax.conv_general_dilated(x, k, (1,), "SAME", feature_group_count=groups,
                                        dimension_numbers=("NCH", "OIH", "NCH"))
    _same(f, x, k, grad_argnums=(0, 1))


# 4. a dynamic_slice whose start must be clamped, result split ---------------------------------
@pytest.mark.parametrize("start", [9, -4, 3])
def test_dynamic_slice_clamped_start_split_result(start):
    z = rng.normal(size=(10, 6)).astype(np.float32)

    def f(z, s):
        return gshard.mesh_split(lax.dynamic_slice(z, (s, 0), (4, 6)), ("a", "b"))
    _same(f, z, np.int32(start), grad_argnums=(0,))

    def g(z, u, s):
        return gshard.mesh_split(lax.dynamic_update_slice(gshard.mesh_split(z, ("a", "b")), u, (s, 1)),
                                 ("c", None))
    _same(g, z, rng.normal(size=(3, 4)).astype(np.float32), np.int32(start), grad_argnums=(0, 1))


# 5. gradients of cond / switch (JAX emits empty2 for the other branch's residuals) ------------
def test_cond_gradient_with_branch_residuals():
    x = rng.normal(size=(10, 6)).astype(np.float32)

    def f(x, p):
        x = gshard.mesh_split(x, ("a", None))
        return lax.cond(p > 0, lambda t: jnp.sin(t) * t, lambda t: jnp.exp(jnp.cos(t)), x)
    for p in (1.0, -1.0):
        _same(f, x, np.float32(p), grad_argnums=(0,))


def test_switch_gradient():
    x = rng.normal(size=(8, 5)).astype(np.float32)

    def f(x, i):
        x = gshard.mesh_split(x, (None, ("b", "c")))
        return lax.switch(i, [lambda t: t * t, jnp.tanh, lambda t: jnp.exp(t) * jnp.sin(t)], x)
    for i in (0, 1, 2):
        _same(f, x, np.int32(i), grad_argnums=(0,))


# ----- invariants -------------------------------------------------------------------------------
def test_a_rule_that_keeps_a_reduced_partial_is_stopped(monkeypatch):
    import gshard.api  # noqa: F401
    from jax.extend.core import primitives as P
    from gshard.registry import RULES
    from gshard.spmd.shard import Local
    rule = RULES[P.mul_p]

    def double_counting(ctx, eqn, ins, targets):
        ins = [ctx.reshard(x, x.spec.drop_partial()) for x in ins]  # reduces ...
        (out,) = rule.part(ctx, eqn, ins, targets)
        return [Local(out.val, out.spec.with_partial(("a",)), out.shape)]  # ... and claims partial
    monkeypatch.setitem(RULES, P.mul_p, rule.__class__(**{**rule.__dict__, "part": double_counting}))
    x = np.ones(10, np.float32)
    with pytest.raises(InvariantError, match="reduced twice"):
        gshard.partition(lambda x: jnp.sum(gshard.mesh_split(x, ("a",))) * 2.0, _mesh3()).lower(x)


def test_a_rule_with_a_wrong_local_shape_is_stopped(monkeypatch):
    import gshard.api  # noqa: F401
    from jax.extend.core import primitives as P
    from gshard.registry import RULES
    from gshard.spmd.shard import Local
    rule = RULES[P.sin_p]

    def bad(ctx, eqn, ins, targets):
        (out,) = rule.part(ctx, eqn, ins, targets)
        return [Local(out.val[:1], out.spec, out.shape)]
    monkeypatch.setitem(RULES, P.sin_p, rule.__class__(**{**rule.__dict__, "part": bad}))
    with pytest.raises(InvariantError, match="expected local"):
        gshard.partition(lambda x: jnp.sin(gshard.mesh_split(x, ("a",))), _mesh3()).lower(
            np.ones(8, np.float32))


# ----- full replication is always marked --------------------------------------------------------
def test_uneven_dim_gathered_whole_is_marked_even_when_split_again(monkeypatch):
    from gshard.spmd import plan, plan_uneven
    x = rng.normal(size=(4, 8)).astype(np.float32)

    def f(x):  # 4 rows over 8 tiles -> over 4: tile 3 needs rows from 2 tiles back
        x = gshard.mesh_split(x, (("a", "b", "c"), None))
        return gshard.mesh_split(jnp.sin(x), (("a", "b"), None))
    low = _same(f, x)  # a halo exchange from two tiles away: nothing gathered whole
    assert not any(c.warning for c in low.collectives), low.explain()
    assert "collective_permute" in {c.kind for c in low.collectives}
    monkeypatch.setattr(plan_uneven, "MAX_HOPS", 1)  # no halo that far: gathered whole, marked
    monkeypatch.setattr(plan, "_plan", plan._plan.__wrapped__)
    low = _same(f, x)
    marked = [c for c in low.collectives if c.warning]
    assert marked and marked[0].kind == "all_gather", low.explain()
    assert "WARNING" in low.explain()


# ----- a halo over two mesh axes named out of mesh order (ppermute numbers devices in mesh order)
@pytest.mark.parametrize("axes", [("c", "a"), ("b", "a"), ("a", "c")])
def test_halo_over_axes_out_of_mesh_order(axes):
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    k = rng.normal(size=(4, 3, 3)).astype(np.float32) * 0.3

    def f(x, k):
        x = gshard.mesh_split(x, (None, None, axes))
        return lax.conv_general_dilated(x, k, (1,), "SAME", dimension_numbers=("NCH", "OIH", "NCH"))
    low = _same(f, x, k, grad_argnums=(0, 1))
    assert "collective_permute" in _kinds(low), low.explain()


# ----- NaN across shards: jnp.max / min / argmax / argmin propagate it --------------------------
@pytest.mark.parametrize("fn", [jnp.max, jnp.min, jnp.argmax, jnp.argmin])
def test_nan_in_one_shard_wins_the_reduction(fn):
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    x[0, 5] = x[1, 6] = np.nan
    _same(lambda a: fn(gshard.mesh_split(a, (None, ("a", "b", "c"))), axis=1), x)


def test_padded_tiles_pass_through_elementwise_math():
    """A split finer than its dim (6 rows over 8 devices: ZeRO's update of a small parameter)
    stays split through elementwise math between operands that hold it: no gather but the
    output's own (a jax.Array holds no uneven split), right values."""
    import gshard
    mesh = jax.make_mesh((8,), ("x",))

    def f(m, w):
        m = gshard.mesh_split(m, ("x",))
        out = 0.9 * m + 0.1 * jnp.square(jnp.sum(w, 0))
        return gshard.mesh_split(out, ("x",))
    args = [np.random.default_rng(i).normal(size=s).astype(np.float32) for i, s in
            enumerate([(6,), (3, 6)])]
    pf = gshard.partition(f, mesh)
    np.testing.assert_allclose(np.asarray(pf(*args)), np.asarray(jax.jit(f)(*args)), rtol=1e-6)
    (gather,) = pf.lower(*args).collectives   # only the output's, into its (6,) jax.Array
    assert gather.kind == "all_gather" and "holds no uneven split" in gather.reason


# ----- NaN/inf against a convolution's image padding (seed 2027 case 109) ------------------------
def test_fuzz_case_2027_109_is_xla_padding_semantics():
    """A conv kernel gradient whose cotangent holds NaN (take mode='fill') over a spatially split
    image: gshard's halo windows pad with zeros, so taps that meet only padding are 0 * NaN = NaN,
    exactly the explicitly padded convolution; XLA:CPU skips the padding for this small shape."""
    from gshard.testing.fuzz.check import run_case
    from gshard.testing.fuzz.gen import random_program
    out = run_case(random_program(2027, 109))
    assert out.klass == "xla_reference" and "padded explicitly" in out.detail, out


def test_explicit_padding_is_the_same_function():
    """The fuzzer's second reference: pads and input dilation by lax.pad, VALID convolutions;
    equal to the original on finite inputs, gradients (lhs-dilated convs) included."""
    from gshard.testing.fuzz.check import explicit_padding
    x = rng.normal(size=(2, 3, 11)).astype(np.float32)
    k = rng.normal(size=(4, 3, 3)).astype(np.float32)

    def loss(x, k):
        y = lax.conv_general_dilated(x, k, (2,), ((3, 1),), rhs_dilation=(2,),
                                     dimension_numbers=("NCH", "OIH", "NCH"))
        return jnp.sum(jnp.sin(y))
    g = jax.value_and_grad(loss, argnums=(0, 1))
    assert "lhs_dilation=(2,)" in str(jax.make_jaxpr(g)(x, k))  # the input gradient dilates
    assert_close(jax.jit(explicit_padding(g))(x, k), jax.jit(g)(x, k))


@pytest.mark.parametrize("mesh_shape", [(8,), (2, 4)])
def test_forward_conv_with_inf_kernel_spatially_split(mesh_shape):
    """An inf kernel tap over a split, padded image: 0 * inf = NaN at the edge outputs whose
    window meets the padding at that tap, as unpartitioned."""
    axes = ("a", "b")[:len(mesh_shape)]
    mesh = jax.make_mesh(mesh_shape, axes)
    x = rng.normal(size=(2, 3, 13)).astype(np.float32)
    k = rng.normal(size=(4, 3, 3)).astype(np.float32)
    k[1, 2, 0] = np.inf

    def f(x, k):
        x = gshard.mesh_split(x, (None, None, axes))
        return lax.conv_general_dilated(x, k, (2,), ((3, 2),), rhs_dilation=(2,),
                                        dimension_numbers=("NCH", "OIH", "NCH"))
    got, ref = gshard.partition(f, mesh)(x, k), jax.jit(f)(x, k)
    assert np.isnan(np.asarray(ref)).any() and np.isfinite(np.asarray(ref)).any()
    assert_close(got, ref)
    assert "collective_permute" in _kinds(gshard.partition(f, mesh).lower(x, k))
