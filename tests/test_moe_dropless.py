"""The dropless MoE layer (and shared experts) against a loop over experts: values and
gradients, one device (block-grouped matmul) and expert-parallel through gshard's partitioner."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gshard.moe import moe_layer, route
from gshard.moe.dropless import grouped_ffn

G, S, M, E, H, F = 2, 16, 6, 8, 5, 7


def _params(seed, e=E):
    ks = jax.random.split(jax.random.key(seed), 7)
    return dict(x=jax.random.normal(ks[0], (G, S, M)),
                wg=jax.random.normal(ks[1], (M, e)) * 1.5,
                wi=jax.random.normal(ks[2], (e, M, H)) * 0.5,
                wo=jax.random.normal(ks[3], (e, H, M)) * 0.5,
                swi=jax.random.normal(ks[4], (M, F)) * 0.5,
                swo=jax.random.normal(ks[5], (F, M)) * 0.5,
                bias=jax.random.normal(ks[6], (e,)) * 0.3)


def loop_reference(x, wg, wi, wo, swi=None, swo=None, pads=None, *, k, **route_kwargs):
    """Every expert on every token, weighted by the route's weight of that expert (0 if not
    chosen); plus the shared FFN. Differentiable, no sorting, no blocks."""
    w, idx = route(jnp.einsum("GSM,ME->GSE", x, wg), k=k, **route_kwargs)  # [G, S, k]
    comb = jnp.sum(jax.nn.one_hot(idx, wi.shape[0]) * w[..., None], axis=2)  # [G, S, E]
    if pads is not None:
        comb = comb * (1.0 - pads)[..., None]
    out = 0.0
    for e in range(wi.shape[0]):
        out = out + comb[..., e:e + 1] * (jax.nn.relu(x @ wi[e]) @ wo[e])
    if swi is not None:
        out = out + jax.nn.relu(x @ swi) @ swo
    return out


def _all(fn):
    """One compiled program: (outputs, (loss, grads of all six arguments))."""
    def loss(*a):
        out = fn(*a)
        return jnp.mean(out[0] ** 2), out
    def run(*a):
        (lv, out), g = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True)(*a)
        return out, lv, g
    return jax.jit(run)


CASES = [  # (k, route kwargs, block, with pads)
    (2, {}, 4, False),
    (1, {"normalize": False}, 8, True),
    (4, {"score": "sigmoid", "bias": True, "expert_groups": 4, "top_groups": 2, "scale": 2.0},
     4, True),
    (8, {"score": "sigmoid"}, None, False),          # fine-grained: every expert taken
]


@pytest.mark.parametrize("k,kw,block,with_pads", CASES)
def test_dropless_equals_loop_over_experts(k, kw, block, with_pads):
    p = _params(k)
    kw = dict(kw, bias=p["bias"]) if kw.get("bias") else kw
    pads = (jax.random.uniform(jax.random.key(9), (G, S)) < 0.2).astype(jnp.float32) \
        if with_pads else None

    def layer(x, wg, wi, wo, swi, swo):
        return moe_layer(x, wg, wi, wo, dispatch="dropless", k=k, shared_wi=swi, shared_wo=swo,
                         paddings=pads, block=block, **kw)

    def ref(*a):
        return loop_reference(*a, pads=pads, k=k, **kw), None

    args = [p[n] for n in ("x", "wg", "wi", "wo", "swi", "swo")]
    (out, aux), lv, g = _all(layer)(*args)
    (want, _), lr, gr = _all(ref)(*args)
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(lv, lr, rtol=1e-5)
    for a, b in zip(g, gr):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    real = G * S if pads is None else float(jnp.sum(1.0 - pads))
    assert float(jnp.sum(aux["tokens_per_expert"])) == k * real          # nothing dropped
    assert float(aux["first_dropped_frac"]) == 0.0 and float(aux["aux_loss"]) > 0


def test_grouped_ffn_skewed_load_and_bf16():
    """All tokens on one expert (the static row bound's worst case) and bf16 activations."""
    p = _params(3)
    T = G * S
    x = p["x"].reshape(T, M)
    idx = jnp.stack([jnp.zeros(T, jnp.int32), jnp.arange(T, dtype=jnp.int32) % E], 1)
    idx = idx.at[:, 1].set(jnp.where(idx[:, 1] == 0, 1, idx[:, 1]))
    w = jax.random.uniform(jax.random.key(1), (T, 2))
    got = jax.jit(lambda *a: grouped_ffn(*a, block=8))(x, w, idx, p["wi"], p["wo"])
    want = sum(w[:, j:j + 1] * jax.vmap(lambda xt, e: jax.nn.relu(xt @ p["wi"][e]) @ p["wo"][e])(
        x, idx[:, j]) for j in range(2))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    bf = jax.jit(lambda *a: grouped_ffn(*a, block=8))(x.astype(jnp.bfloat16), w, idx, p["wi"],
                                                      p["wo"])
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf, np.float32), want, atol=0.1, rtol=0.05)


def test_dropless_bad_arguments():
    p = _params(0)
    a = (p["x"], p["wg"], p["wi"], p["wo"])
    with pytest.raises(ValueError, match="route"):
        moe_layer(*a, dispatch="einsum", score="sigmoid")
    with pytest.raises(ValueError, match="shared_wo"):
        moe_layer(*a, dispatch="dropless", shared_wi=p["swi"])
    with pytest.raises(ValueError, match="shared"):
        moe_layer(*a, dispatch="dropless", shared_wi=p["swo"], shared_wo=p["swi"])
    with pytest.raises(ValueError, match="k=9"):
        moe_layer(*a, dispatch="dropless", k=9)


needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


@needs8
@pytest.mark.parametrize("shape,names,axes", [((8,), ("x",), "x"),
                                              ((2, 4), ("data", "model"), ("data", "model"))])
def test_dropless_expert_parallel_matches(shape, names, axes):
    """Groups and experts split over the mesh: values and every gradient equal the one-device
    block path and the loop reference; the routes cross devices by AllToAlls."""
    import gshard
    mesh = jax.make_mesh(shape, names)
    ks = jax.random.split(jax.random.key(11), 5)
    x = jax.random.normal(ks[0], (8, 8, M))
    wg = jax.random.normal(ks[1], (M, 8)) * 1.5
    wi, wo = jax.random.normal(ks[2], (8, M, H)) * 0.5, jax.random.normal(ks[3], (8, H, M)) * 0.5
    swi, swo = jax.random.normal(ks[4], (M, F)) * 0.5, jax.random.normal(ks[4], (F, M)) * 0.5
    kw = dict(dispatch="dropless", k=3, score="sigmoid", expert_groups=4, top_groups=2)

    def step(mesh_axes):
        def loss(*a):
            out, aux = moe_layer(*a[:4], shared_wi=a[4], shared_wo=a[5], mesh_axes=mesh_axes,
                                 **kw)
            return jnp.mean(out ** 2) + 0.01 * aux["aux_loss"]
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))

    args = (x, wg, wi, wo, swi, swo)
    pf = gshard.partition(step(axes), mesh)
    got, one = pf(*args), jax.jit(step(None))(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(one)):
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    ref = jax.jit(lambda *a: loop_reference(*a, k=3, score="sigmoid", expert_groups=4,
                                            top_groups=2))(*args)
    out = gshard.partition(lambda *a: moe_layer(*a[:4], shared_wi=a[4], shared_wo=a[5],
                                                mesh_axes=axes, **kw)[0], mesh)(*args)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    # the routes cross devices inside a gshard.manual region, whose collectives are the
    # compiled program's (gshard's report lists only those it inserts itself)
    from gshard.testing.xla import hlo_collectives
    hlo = hlo_collectives(pf.lower(*args).program.call.as_text())
    kinds = [c.kind for c in hlo]
    assert kinds.count("all_to_all") >= 4, kinds                 # two each way, forward + back
    assert "all_gather" not in kinds, kinds


def _route_reference(x, expert, wi, wo):
    """FFN_{expert[n]}(x[n]) per route, zeros where expert == E."""
    E = wi.shape[0]
    e = jnp.minimum(expert, E - 1)
    y = jax.vmap(lambda xn, en: jax.nn.relu(xn @ wi[en]) @ wo[en])(x, e)
    return jnp.where((expert < E)[:, None], y, 0.0)


@pytest.mark.parametrize("load", ["balanced", "one_busy", "skewed"])
def test_routed_ffn_every_layout_equals_reference(load):
    """Each run-time layout (plain capacity, second tier for the busiest experts, block layout
    for any load) gives the per-route FFN, values and gradients."""
    from gshard.moe.grouped import BUCKETS, _stages, bucket_capacities, routed_ffn
    N, Mm, Hh, Ee = 96, 6, 5, 8
    ks = jax.random.split(jax.random.key(5), 4)
    x = jax.random.normal(ks[0], (N, Mm))
    wi, wo = jax.random.normal(ks[1], (Ee, Mm, Hh)), jax.random.normal(ks[2], (Ee, Hh, Mm))
    base = jnp.arange(N, dtype=jnp.int32) % Ee                            # 12 routes each
    expert = {"balanced": base,
              "one_busy": jnp.where(jnp.arange(N) < 8, 0, base),          # expert 0: 18 routes
              "skewed": jnp.where(jnp.arange(N) < 60, 3, base)}[load]     # expert 3: 64 routes
    expert = expert.at[5].set(Ee)                                         # one route not taken
    want_branch = {"balanced": 0, "one_busy": 1, "skewed": len(bucket_capacities(12, N, Ee))}
    assert int(_stages(expert, Ee, bucket_capacities(12, N, Ee), 8, jax.nn.relu)[1]) \
        == want_branch[load]

    def loss(f):
        return lambda x, wi, wo: jnp.sum(jnp.sin(f(x, expert, wi, wo)))
    got = jax.jit(jax.value_and_grad(loss(lambda *a: routed_ffn(*a, block=8)), (0, 1, 2)))(
        x, wi, wo)
    want = jax.jit(jax.value_and_grad(loss(_route_reference), (0, 1, 2)))(x, wi, wo)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    assert BUCKETS[0][0] > 1.0                                            # headroom over m
