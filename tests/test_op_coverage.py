"""Issue 3: convolutions with halos, uneven shapes, prefix ops, indexing, control flow, random,
manual regions — each equal to the unpartitioned run (gradients too), collectives counted."""
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gshard
from gshard.spmd.interpret import UNEVEN_OUTPUT
from gshard.testing import assert_close

MESHES = [(4,), (8,), (2, 4)]


def _mesh(shape):
    return jax.make_mesh(shape, ("x",) if len(shape) == 1 else ("data", "x"))


@pytest.fixture(params=MESHES, ids=lambda s: "x".join(map(str, s)))
def mesh(request):
    return _mesh(request.param)


def _kinds(low):
    """The collectives of the ops (an uneven output's gather into its jax.Array not counted)."""
    return Counter(c.kind for c in low.collectives if UNEVEN_OUTPUT not in c.reason)


def _check(fn, args, mesh, argnums=(0,), rtol=1e-4, atol=1e-4):
    pf = gshard.partition(fn, mesh)
    assert_close(pf(*args), jax.jit(fn)(*args), rtol, atol, "forward")
    loss = lambda *a: sum(jnp.sum(jnp.sin(o)) for o in jax.tree_util.tree_leaves(fn(*a))  # noqa: E731
                          if jnp.issubdtype(o.dtype, jnp.floating))
    g = jax.grad(loss, argnums=argnums)
    pg = gshard.partition(g, mesh)
    assert_close(pg(*args), jax.jit(g)(*args), rtol, atol, "gradients")
    return pf.lower(*args), pg.lower(*args)


# ----- convolutions -----------------------------------------------------------------------------
def _two_convs(stride=1, padding="SAME", dil=1, fmt="NCHW"):
    dn = (fmt, "OIHW", fmt)
    wdim = fmt.index("W")

    def f(x, k1, k2):
        spec = [None] * 4
        spec[wdim] = "x"
        x = gshard.mesh_split(x, tuple(spec))  # the paper's split(inputs, 3, D)
        h = jax.lax.conv_general_dilated(x, gshard.replicate(k1), (stride, stride), padding,
                                         rhs_dilation=(dil, dil), dimension_numbers=dn)
        h = jax.nn.relu(h)
        return jax.lax.conv_general_dilated(h, gshard.replicate(k2), (1, 1), "SAME",
                                            dimension_numbers=dn)
    return f


@pytest.mark.parametrize("stride, padding, dil, fmt, W", [
    (1, "SAME", 1, "NCHW", 16), (2, "SAME", 1, "NCHW", 16), (1, "VALID", 1, "NHWC", 18),
    (1, "SAME", 2, "NCHW", 16), (1, ((2, 0), (1, 2)), 1, "NHWC", 13)])
def test_stacked_3x3_convs_width_split(mesh, stride, padding, dil, fmt, W):
    rng = np.random.default_rng(0)
    shape = (2, 3, 6, W) if fmt == "NCHW" else (2, 6, W, 3)
    args = (rng.normal(size=shape).astype(np.float32), 0.3 * rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            0.3 * rng.normal(size=(4, 4, 3, 3)).astype(np.float32))
    fwd, bwd = _check(_two_convs(stride, padding, dil, fmt), args, mesh, (0, 1, 2))
    kinds = _kinds(fwd)
    assert kinds["collective_permute"] >= 2, fwd.explain()
    if padding == "SAME":  # other paddings of uneven widths drift past a neighbour's rows on 8
        assert kinds["all_gather"] == 0, fwd.explain()
        if stride == 1:
            assert _kinds(bwd)["all_gather"] == 0, bwd.explain()


def test_resnet_block_and_feature_groups():
    mesh = _mesh((4,))
    rng = np.random.default_rng(1)

    def block(x, k1, k2, kd):
        x = gshard.split(x, 3, 4)
        h = jax.lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jax.nn.relu(h - h.mean(axis=(0, 2, 3), keepdims=True))
        h = jax.lax.conv_general_dilated(h, kd, (1, 1), "SAME", feature_group_count=4,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))  # depthwise
        h = jax.lax.conv_general_dilated(h, k2, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return jax.nn.relu(h + x)

    args = (rng.normal(size=(2, 4, 8, 12)).astype(np.float32),
            0.3 * rng.normal(size=(4, 4, 3, 3)).astype(np.float32),
            0.3 * rng.normal(size=(4, 4, 3, 3)).astype(np.float32),
            0.3 * rng.normal(size=(4, 1, 3, 3)).astype(np.float32))
    fwd, _ = _check(block, args, mesh, (0, 1, 2, 3))
    assert _kinds(fwd)["all_gather"] == 0, fwd.explain()


# ----- uneven shapes, reductions, prefix ops ----------------------------------------------------
def test_uneven_rows_split_four_ways():
    mesh = _mesh((4,))
    x = np.random.default_rng(2).normal(size=(10, 6)).astype(np.float32)

    def f(t):
        t = gshard.split(t, 0, 4)  # 10 rows: 3, 3, 3, 1 (+2 padding)
        return (t.sum(0), t.mean(), jax.nn.softmax(t, axis=0), t.max(0), t.min(0),
                jnp.argmax(t, 0), jnp.argmin(t, 0), jax.nn.logsumexp(t, axis=0), t.T @ t)

    _check(f, (x,), mesh)


@pytest.mark.parametrize("op", [jnp.cumsum, jnp.cumprod, jax.lax.cummax, jax.lax.cummin,
                                jax.lax.cumlogsumexp])
@pytest.mark.parametrize("reverse", [False, True])
def test_prefix_ops_over_split_dim(op, reverse):
    mesh = _mesh((4,))
    x = np.random.default_rng(3).uniform(0.5, 1.5, size=(10, 3)).astype(np.float32)

    def f(t):
        t = gshard.split(t, 0, 4)
        if op in (jnp.cumsum, jnp.cumprod):
            return jnp.flip(op(jnp.flip(t, 0), axis=0), 0) if reverse else op(t, axis=0)
        return op(t, axis=0, reverse=reverse)

    pf = gshard.partition(f, mesh)
    assert_close(pf(x), jax.jit(f)(x), 1e-5, 1e-5)


def test_argmax_over_split_dim(mesh):
    x = np.random.default_rng(4).normal(size=(6, 40)).astype(np.float32)
    f = lambda t: jnp.argmax(gshard.mesh_split(t, (None, "x")), axis=1)  # noqa: E731
    pf = gshard.partition(f, mesh)
    np.testing.assert_array_equal(pf(x), np.argmax(x, axis=1))


# ----- indexing ---------------------------------------------------------------------------------
def test_embedding_lookup_from_split_table(mesh):
    rng = np.random.default_rng(5)
    table = rng.normal(size=(50, 6)).astype(np.float32)  # 50 rows: uneven over 8
    ids = rng.integers(0, 50, size=(8, 5)).astype(np.int32)

    def f(t, i):
        t = gshard.mesh_split(t, ("x", None))
        return jnp.take(t, i, axis=0) * 2.0

    fwd, bwd = _check(f, (table, ids), mesh)
    assert _kinds(fwd) == {"all_reduce": 1}, fwd.explain()  # masked local lookup + reduction
    assert _kinds(bwd)["all_gather"] == 0


def test_take_along_axis_at_set_add_dynamic_slices_sort_topk(mesh):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 12)).astype(np.float32)
    idx = rng.integers(0, 12, size=(8, 3)).astype(np.int32)

    def f(t, i, k):
        t = gshard.mesh_split(t, ("x", None))
        a = jnp.take_along_axis(t, i, axis=1)
        b = t.at[2].set(5.0).at[:, 1].add(a[:, 0])
        c = jax.lax.dynamic_update_slice(t, jax.lax.dynamic_slice(t, (k, 0), (3, 12)) + 1, (k, 0))
        v, j = jax.lax.top_k(t, 3)
        return a, b, c, jnp.sort(t, axis=0), v, j, jax.nn.one_hot(i, 12)

    pf = gshard.partition(f, mesh)
    assert_close(pf(x, idx, 2), jax.jit(f)(x, idx, 2), 1e-6, 1e-6)


def test_batched_scatter_add_with_replicated_updates_stays_local(mesh):
    """A scatter-add vmapped over a split batch dim whose updates are replicated (an iota, a
    constant: the routing tables of the MoE gating) slices the updates locally: no gather of
    the indices, no collective at all; values and the gradient of the scattered gates match."""
    rng = np.random.default_rng(11)
    slot = rng.integers(0, 7, size=(8, 12)).astype(np.int32)            # [G, S], 7 = dropped
    gate = rng.normal(size=(8, 12)).astype(np.float32)

    def f(slot, gate):
        slot = gshard.mesh_split(slot, ("x", None))
        gate = gshard.mesh_split(gate, ("x", None))

        def one(sl, ga):                                                # [S], [S] -> [6], [6]
            tok = jnp.full((6,), 12, jnp.int32).at[sl].add(jnp.arange(12) - 12, mode="drop")
            return tok, jnp.zeros((6,)).at[sl].add(ga, mode="drop")
        return jax.vmap(one)(slot, gate)

    fwd, bwd = _check(f, (slot, gate), mesh, argnums=(1,))
    assert not fwd.collectives, fwd.explain()
    assert not bwd.collectives, bwd.explain()


# ----- control flow and random -----------------------------------------------------------------
def test_scanned_stack_of_layers_with_gradient(mesh):
    rng = np.random.default_rng(7)
    ws = 0.3 * rng.normal(size=(3, 16, 32)).astype(np.float32)
    x = rng.normal(size=(8, 16)).astype(np.float32)

    def f(ws, x):
        x = gshard.mesh_split(x, ("x", None)) if "data" not in mesh.axis_names else \
            gshard.mesh_split(x, ("data", None))

        def layer(h, w):
            w = gshard.mesh_split(w, (None, "x"))
            return jax.checkpoint(lambda h: jnp.tanh(h @ w) @ w.T)(h), h.sum()
        h, sums = jax.lax.scan(layer, x, ws)
        return h, sums

    _check(f, (ws, x), mesh, (0, 1))


def test_while_loop_and_cond_over_split_state(mesh):
    x = np.random.default_rng(8).normal(size=(8, 12)).astype(np.float32)

    def f(t):
        t = gshard.mesh_split(t, ("x", None))
        t = jax.lax.while_loop(lambda v: jnp.abs(v).sum() < 500.0, lambda v: v * 1.5 + 0.1, t)
        t = jax.lax.cond(t.sum() > 0, lambda a: a * 2.0, lambda a: a - 1.0, t)
        return jax.lax.switch(1, [jnp.sin, jnp.cos, jnp.tanh], t)

    pf = gshard.partition(f, mesh)
    assert_close(pf(x), jax.jit(f)(x), 1e-5, 1e-5)


@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key], ids=["raw", "typed"])
def test_random_numbers_equal_unpartitioned(mesh, make_key):
    def f(key, x):
        x = gshard.mesh_split(x, ("x", None))
        keep = jax.random.bernoulli(key, 0.7, x.shape)
        return jnp.where(keep, x / 0.7, 0.0) + jax.random.normal(jax.random.fold_in(key, 1), x.shape)

    key, x = make_key(3), np.ones((16, 8), np.float32)
    pf = gshard.partition(f, mesh)
    assert_close(pf(key, x), jax.jit(f)(key, x), 1e-6, 1e-6)


# ----- manual regions: the paper's Gather-based dispatch inside an automatic MoE layer ---------
def _moe(manual: bool, D: int, C: int):
    from gshard.moe.gating import top2_gating
    from gshard.moe.layer import gather_dispatch

    def f(x, logits, wi, wo):
        x, logits = gshard.split(x, 0, D), gshard.split(logits, 0, D)  # [G, S, M], [G, S, E]
        wi, wo = gshard.split(wi, 0, D), gshard.split(wo, 0, D)
        r = top2_gating(logits, capacity=C, with_slots=True)
        if manual:
            def dispatch(xl, tok):  # per device: [G/D, S, M], [G/D, E, C]
                d = gather_dispatch(xl, tok)  # [E, G/D, C, M]: a local gather
                return jax.lax.all_to_all(d, "x", 0, 1, tiled=True)  # [E/D, G, C, M]
            d = gshard.manual(dispatch, in_specs=(("x", None, None), ("x", None, None)),
                              out_specs=("x", None, None, None))(x, r.slot_token)
        else:
            d = gather_dispatch(x, r.slot_token)
        h = jax.nn.relu(jnp.einsum("EGCM,EMH->EGCH", d, wi))
        y = gshard.split(jnp.einsum("EGCH,EHM->GECM", h, wo), 0, D)
        return jnp.einsum("GSEC,GECM->GSM", r.combine_weights, y)
    return f


def test_manual_gather_dispatch_inside_auto_moe():
    D, C = 8, 4
    mesh = _mesh((D,))
    rng = np.random.default_rng(9)
    args = (rng.normal(size=(8, 8, 4)).astype(np.float32), rng.normal(size=(8, 8, 8)).astype(np.float32),
            0.3 * rng.normal(size=(8, 4, 16)).astype(np.float32), 0.3 * rng.normal(size=(8, 16, 4)).astype(np.float32))
    pf = gshard.partition(_moe(True, D, C), mesh)
    assert_close(pf(*args), jax.jit(_moe(False, D, C))(*args), 1e-5, 1e-5)
    low = pf.lower(*args)
    gathers = [c for c in low.collectives if c.kind == "all_gather"]
    assert all(c.dtype.startswith("int") for c in gathers), low.explain()  # no activation gathered
    assert any(c.kind == "all_to_all" for c in low.collectives)  # the combine's AllToAll
    assert "result of a manual region" in low.explain()


def test_manual_outside_partition_needs_a_mesh():
    with pytest.raises(gshard.GShardError, match="pass mesh="):
        gshard.manual(lambda a: a, in_specs=(("x",),), out_specs=("x",))(jnp.ones(8))
    mesh = _mesh((8,))
    out = gshard.manual(lambda a: jax.lax.psum(a, "x"), in_specs=(("x",),), out_specs=(None,),
                        mesh=mesh)(jnp.arange(8.0))
    np.testing.assert_allclose(out, [28.0])
