"""The MoE layer (Algorithm 2) against a loop-over-experts numpy reference; einsum == gather."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gshard.moe import MoEAxes, moe_layer

G, S, M, E, H = 2, 8, 6, 4, 5


def _params(seed, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(ks[0], (G, S, M))
    wg = jax.random.normal(ks[1], (M, E)) * 1.5
    wi = jax.random.normal(ks[2], (E, M, H)) * 0.5
    wo = jax.random.normal(ks[3], (E, H, M)) * 0.5
    return x.astype(dtype), wg, wi, wo


def _np_routes(logits, C, pads):
    """{(g, s): [(e, gate)]}: Algorithm 1 one token at a time (top-2, policy "all")."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    routes = {}
    for g in range(logits.shape[0]):
        count = np.zeros(logits.shape[-1], int)
        order = np.argsort(-p[g], axis=-1, kind="stable")[:, :2]          # [S, 2]
        for j in range(2):                                                # firsts, then seconds
            for s in range(logits.shape[1]):
                if pads[g, s]:
                    continue
                e1, e2 = order[s]
                gate = p[g, s, order[s, j]] / (p[g, s, e1] + p[g, s, e2] + 1e-9)
                e = order[s, j]
                if count[e] < C:
                    routes.setdefault((g, s), []).append((e, gate))
                count[e] += 1
            count = np.minimum(count, C)
    return routes


def ref_moe(x, wg, wi, wo, C, pads=None):
    """for each token, for each of its kept experts: gate · expert_ffn(token)."""
    x, wg, wi, wo = (np.asarray(a, np.float64) for a in (x, wg, wi, wo))
    pads = np.zeros(x.shape[:2]) if pads is None else np.asarray(pads)
    out = np.zeros_like(x)
    for (g, s), rs in _np_routes(x @ wg, C, pads).items():
        for e, gate in rs:
            out[g, s] += gate * (np.maximum(x[g, s] @ wi[e], 0.0) @ wo[e])
    return out


@functools.partial(jax.jit, static_argnames=("dispatch", "C", "kind", "axes", "D"))
def _layer(x, wg, wi, wo, pads=None, *, dispatch="einsum", C=3, kind="top2", axes=None, D=None):
    return moe_layer(x, wg, wi, wo, dispatch=dispatch, capacity=C, kind=kind, paddings=pads,
                     mesh_axes=axes, num_partitions=D)


@pytest.mark.parametrize("C", [2, 8])
def test_einsum_layer_matches_loop_reference(C):
    x, wg, wi, wo = _params(0)
    pads = jnp.zeros((G, S)).at[1, 2].set(1.0).at[0, 5].set(1.0)
    out, aux = _layer(x, wg, wi, wo, pads, C=C)
    np.testing.assert_allclose(out, ref_moe(x, wg, wi, wo, C, pads), atol=1e-4, rtol=1e-4)
    assert (np.asarray(out)[np.asarray(pads) == 1] == 0).all()
    assert set(aux) >= {"aux_loss", "z_loss", "tokens_per_expert", "first_dropped_frac",
                        "second_dropped_frac", "router_entropy"}
    assert float(np.asarray(aux["tokens_per_expert"]).sum()) <= 2 * (G * S - 2)


@pytest.mark.parametrize("kind", ["top2", "top1", "expert_choice"])
def test_gather_equals_einsum_values_and_grads(kind):
    x, wg, wi, wo = _params(1)
    pads = jnp.zeros((G, S)).at[0, 3].set(1.0)

    def loss(dispatch, x, wg, wi, wo):
        out, aux = moe_layer(x, wg, wi, wo, dispatch=dispatch, capacity=3, kind=kind,
                             paddings=pads)
        return jnp.sum(out * jnp.cos(out)) + aux["aux_loss"] + aux["z_loss"], out

    vals = {}
    for d in ("einsum", "gather"):
        f = jax.jit(jax.value_and_grad(functools.partial(loss, d), argnums=(0, 1, 2, 3),
                                       has_aux=True))
        vals[d] = f(x, wg, wi, wo)
    (le, oe), ge = vals["einsum"]
    (lg, og), gg = vals["gather"]
    np.testing.assert_allclose(og, oe, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lg, le, rtol=1e-5)
    for a, b in zip(gg, ge):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_annotations_are_identity_and_present():
    x, wg, wi, wo = _params(2)
    plain, _ = _layer(x, wg, wi, wo)
    for kw in (dict(axes="x"), dict(axes=MoEAxes(group="data", expert=("data", "model"),
                                                 hidden=None)), dict(D=2)):
        out, _ = _layer(x, wg, wi, wo, **kw)
        np.testing.assert_array_equal(out, plain)
    for dispatch in ("einsum", "gather"):
        fn = functools.partial(moe_layer, dispatch=dispatch, capacity=3, mesh_axes="x")
        jaxpr = jax.make_jaxpr(fn)(x, wg, wi, wo)
        anns = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "gshard_annotate"]
        # inputs, wg, wi, wo, dispatched [E,G,C,M], expert outputs, outputs; the gather path
        # also pins its expert-major gather G-split (local) before the E split (AllToAll)
        assert len(anns) == (7 if dispatch == "einsum" else 8)
        specs = [e.params["ann"].mapping for e in anns]
        assert (("x",), (), (), ()) in specs                # E split: dispatched inputs
        assert specs.count((("x",), (), ())) == 4   # inputs, outputs (G); wi, wo (E)
        if dispatch == "gather":                    # expert-major [E, G, C, M] split on G
            assert specs.count(((), ("x",), (), ())) == 2
    none = jax.make_jaxpr(functools.partial(moe_layer, capacity=3))(x, wg, wi, wo)
    assert not [e for e in none.jaxpr.eqns if e.primitive.name == "gshard_annotate"]


def test_2d_mesh_axes_subtract():
    x, wg, wi, wo = _params(3)
    axes = MoEAxes(group=("data", "model"), expert="data", hidden="model")
    jaxpr = jax.make_jaxpr(functools.partial(moe_layer, capacity=3, mesh_axes=axes))(
        x, wg, wi, wo)
    specs = [e.params["ann"].mapping for e in jaxpr.jaxpr.eqns
             if e.primitive.name == "gshard_annotate"]
    assert (("data",), ("model",), (), ()) in specs      # [E,G,C,M]: G keeps "model"
    assert (("data",), (), ("model",)) in specs           # wi [E,M,H]: H on model
    assert (("data", "model"), (), (), ()) in specs       # [G,E,C,M]: G on both


def test_bf16_activations():
    x, wg, wi, wo = _params(4, jnp.bfloat16)
    for d in ("einsum", "gather"):
        out, aux = _layer(x, wg, wi, wo, dispatch=d)
        assert out.dtype == jnp.bfloat16 and aux["aux_loss"].dtype == jnp.float32
        ref = ref_moe(np.asarray(x, np.float32), wg, wi, wo, 3)
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1, rtol=0.05)


def test_bad_arguments():
    x, wg, wi, wo = _params(5)
    with pytest.raises(ValueError):
        moe_layer(x, wg, wi, wo, dispatch="scatter")
    with pytest.raises(ValueError):
        moe_layer(x, wg, wi[:, :, :2], wo)
    with pytest.raises(ValueError):
        moe_layer(x, wg, wi, wo, mesh_axes="x", num_partitions=2)


needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices: "
                            "XLA_FLAGS=--xla_force_host_platform_device_count=8")


@needs8
def test_partitioned_einsum_layer_two_all_to_alls():
    import gshard
    mesh = jax.make_mesh((8,), ("x",))
    ks = jax.random.split(jax.random.key(6), 4)
    x = jax.random.normal(ks[0], (8, 8, M))
    wg = jax.random.normal(ks[1], (M, 8))
    wi, wo = jax.random.normal(ks[2], (8, M, H)), jax.random.normal(ks[3], (8, H, M))

    def f(x, wg, wi, wo):
        return moe_layer(x, wg, wi, wo, capacity=4, mesh_axes="x")[0]

    pf = gshard.partition(f, mesh)
    np.testing.assert_allclose(pf(x, wg, wi, wo), jax.jit(f)(x, wg, wi, wo), atol=1e-5)
    kinds = [c.kind for c in pf.lower(x, wg, wi, wo).collectives]
    assert kinds.count("all_to_all") == 2 and "all_gather" not in kinds


@needs8
@pytest.mark.parametrize("shape,names,axes", [
    ((8,), ("x",), "x"),
    ((2, 4), ("data", "model"), ("data", "model")),
    ((2, 2, 2), ("a", "b", "c"), ("a", "b", "c")),
])
def test_partitioned_gather_layer_train_step_only_all_to_alls(shape, names, axes):
    """The gather path's training step (values and every gradient) on 1-D and 2-D meshes: two
    AllToAlls each way, no AllGather/ReduceScatter of activations or of routing tables; the only
    AllReduces are the router-weight gradient and the loss."""
    import gshard
    mesh = jax.make_mesh(shape, names)
    Gs, Ss, Es = 8, 16, 8
    ks = jax.random.split(jax.random.key(7), 4)
    x = jax.random.normal(ks[0], (Gs, Ss, M))
    wg = jax.random.normal(ks[1], (M, Es)) * 1.5
    wi, wo = jax.random.normal(ks[2], (Es, M, H)), jax.random.normal(ks[3], (Es, H, M))

    def step(x, wg, wi, wo):
        def loss(*a):
            out, aux = moe_layer(*a, dispatch="gather", capacity=3, mesh_axes=axes)
            return jnp.mean(out ** 2) + 0.01 * aux["aux_loss"]
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(x, wg, wi, wo)

    pf = gshard.partition(step, mesh)
    got, want = pf(x, wg, wi, wo), jax.jit(step)(x, wg, wi, wo)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    recs = pf.lower(x, wg, wi, wo).collectives
    kinds = [c.kind for c in recs]
    assert kinds.count("all_to_all") == 4, kinds
    assert set(kinds) <= {"all_to_all", "all_reduce"}, kinds
    assert kinds.count("all_reduce") <= 3, kinds     # wg gradient, loss, aux loss


@needs8
def test_partitioned_gather_layer_2d_subtract_matches():
    """Groups on "data", experts on ("data", "model"): values and gradients match; the routing
    tables' scatters stay local on "data" (what is left: gathers on "model", in the note)."""
    import gshard
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    ks = jax.random.split(jax.random.key(8), 4)
    x = jax.random.normal(ks[0], (8, 16, M))
    wg = jax.random.normal(ks[1], (M, 8)) * 1.5
    wi, wo = jax.random.normal(ks[2], (8, M, H)), jax.random.normal(ks[3], (8, H, M))
    axes = MoEAxes(group="data", expert=("data", "model"))

    def step(x, wg, wi, wo):
        def loss(*a):
            return jnp.mean(moe_layer(*a, dispatch="gather", capacity=3, mesh_axes=axes)[0] ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(x, wg, wi, wo)

    pf = gshard.partition(step, mesh)
    for a, b in zip(jax.tree.leaves(pf(x, wg, wi, wo)), jax.tree.leaves(jax.jit(step)(x, wg, wi, wo))):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    recs = pf.lower(x, wg, wi, wo).collectives
    assert not [r for r in recs if r.kind == "all_gather" and "data" in r.axes and
                r.dtype.startswith("int")], "routing tables must not be gathered over the groups"
