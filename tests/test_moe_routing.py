"""route (DeepSeek-V3's gate) against a straightforward numpy gate; update_bias; the sort-based
slots of the capacity path bit for bit against the cumsum formulation of Algorithm 1."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functools
import importlib
gt = importlib.import_module("gshard.moe.gating")
from gshard.moe import route, update_bias


# ----- DeepSeek-V3's gate, one token at a time in numpy -----------------------------------------
def np_gate(logits, k, score, bias, n_groups, top_groups, normalize, scale):
    logits = np.asarray(logits, np.float64)
    T, E = logits.shape
    weights, indices = np.zeros((T, k)), np.zeros((T, k), int)
    for t in range(T):
        if score == "softmax":
            s = np.exp(logits[t] - logits[t].max())
            s = s / s.sum()
        else:
            s = 1.0 / (1.0 + np.exp(-logits[t]))
        c = s + (0.0 if bias is None else np.asarray(bias, np.float64))
        if n_groups > 1:
            per = E // n_groups
            gscore = [np.sort(c[g * per:(g + 1) * per])[::-1][:2].sum() for g in range(n_groups)]
            keep = np.argsort(-np.asarray(gscore), kind="stable")[:top_groups]
            c = np.where(np.isin(np.arange(E) // per, keep), c, -np.inf)
        idx = np.argsort(-c, kind="stable")[:k]
        w = s[idx]
        if normalize:
            w = w / w.sum()
        weights[t], indices[t] = w * scale, idx
    return weights, indices


@pytest.mark.parametrize("score,with_bias,groups,top_groups,k,normalize,scale", [
    ("softmax", False, 1, 1, 2, True, 1.0),
    ("softmax", False, 1, 1, 3, False, 1.0),
    ("sigmoid", False, 1, 1, 4, True, 1.0),
    ("sigmoid", True, 1, 1, 8, True, 2.5),
    ("sigmoid", True, 4, 2, 6, True, 2.5),       # DeepSeek-V3's shape of gate, scaled down
    ("softmax", True, 8, 3, 4, False, 1.0),
    ("sigmoid", False, 4, 1, 2, True, 1.0),
    ("sigmoid", True, 32, 4, 4, True, 1.0),      # groups of one expert: scored by top-1
])
def test_route_equals_numpy_deepseek_gate(score, with_bias, groups, top_groups, k, normalize,
                                          scale):
    rng = np.random.default_rng(hash((score, with_bias, groups, k)) % 2**32)
    T, E = 64, 32
    logits = rng.standard_normal((T, E)).astype(np.float32) * 2
    bias = (rng.standard_normal(E) * 0.3).astype(np.float32) if with_bias else None
    w, i = route(jnp.asarray(logits), k=k, score=score,
                 bias=None if bias is None else jnp.asarray(bias), expert_groups=groups,
                 top_groups=top_groups, normalize=normalize, scale=scale)
    ww, wi = np_gate(logits, k, score, bias, groups, top_groups, normalize, scale)
    assert w.dtype == jnp.float32 and i.dtype == jnp.int32 and w.shape == (T, k)
    np.testing.assert_array_equal(np.asarray(i), wi)
    np.testing.assert_allclose(np.asarray(w), ww, atol=1e-6, rtol=0)
    if with_bias:     # the bias changes the choice on this fixture, never the weights' source
        _, i0 = route(jnp.asarray(logits), k=k, score=score, expert_groups=groups,
                      top_groups=top_groups)
        assert (np.asarray(i0) != wi).any()


def test_route_bad_arguments():
    x = jnp.zeros((4, 8))
    with pytest.raises(ValueError, match="expert_groups"):
        route(x, k=2, expert_groups=3)
    with pytest.raises(ValueError, match="top_groups"):
        route(x, k=2, expert_groups=4, top_groups=5)
    with pytest.raises(ValueError, match="k=5"):
        route(x, k=5, expert_groups=4, top_groups=2)
    with pytest.raises(ValueError, match="score"):
        route(x, k=2, score="relu")
    with pytest.raises(ValueError, match="bias"):
        route(x, k=2, bias=jnp.zeros(7))


def test_update_bias_balances_a_skewed_load():
    """Logits favouring a few experts; routing with the bias and updating it from each step's
    load drives the max/mean load toward 1, without touching the weights' source."""
    rng = np.random.default_rng(0)
    T, E, k = 512, 16, 2
    skew = np.linspace(2.0, -2.0, E).astype(np.float32)
    bias = jnp.zeros(E)
    step = jax.jit(lambda b, x: route(x, k=k, score="sigmoid", bias=b)[1])
    ratios = []
    for _ in range(300):
        x = jnp.asarray(rng.standard_normal((T, E)).astype(np.float32) + skew)
        load = jnp.zeros(E).at[step(bias, x).reshape(-1)].add(1.0)
        ratios.append(float(load.max() / load.mean()))
        bias = update_bias(bias, load, 1e-2)
    assert ratios[0] > 3.0, ratios[0]
    assert np.mean(ratios[-20:]) < 1.5, ratios[-20:]
    b = np.asarray(bias)
    assert b[0] < 0 < b[-1]          # the favoured expert pushed down, the shunned one up
    np.testing.assert_allclose(update_bias(jnp.zeros(3), jnp.array([3., 1., 2.]), 0.5),
                               [-0.5, 0.5, 0.0])


# ----- sort-based slots == Algorithm 1's cumsum slots, bit for bit ------------------------------
def _cumsum_slots(masks, C):
    """The cumsum formulation (the implementation before the sort): [G, S, E] masks."""
    offset = jnp.zeros_like(masks[0][:, :1, :])
    kept_masks, slots = [], []
    for mask in masks:
        pos = (jnp.cumsum(mask, axis=1) - mask + offset) * mask           # [G, S, E]
        kept = mask * (pos < C).astype(mask.dtype)
        offset = offset + jnp.sum(kept, axis=1, keepdims=True)
        kept_masks.append(kept)
        slots.append(jnp.sum(pos, axis=-1).astype(jnp.int32))
    return kept_masks, slots


def _cumsum_gating(logits, k, C, policy, rng, pads):
    """token_choice_gating as it was: combine weights, slot tables and metrics from cumsums."""
    G, S, E = logits.shape
    _, choose_rng, keep_rng = gt._split_rng(rng, policy != "all", policy)
    nonpad = 1.0 - pads
    probs = jax.nn.softmax(logits, axis=-1)
    if policy == "sampling":
        indices = gt._choose(probs, k, policy, choose_rng)
    else:                                             # argmax with earlier choices masked
        indices, taken = [], jnp.zeros(probs.shape, bool)
        for _ in range(k):
            indices.append(jnp.argmax(jnp.where(taken, -jnp.inf, probs), axis=-1))
            taken = taken | jax.nn.one_hot(indices[-1], E, dtype=bool)
    gates = gt._gates(probs, indices, True)
    wanted = gt._wanted(indices, gates, nonpad, policy, 0.5, keep_rng)
    masks = [jax.nn.one_hot(i, E, dtype=jnp.float32) * w[..., None] for i, w in zip(indices, wanted)]
    kept_m, slots = _cumsum_slots(masks, C)
    kept = [jnp.sum(m, -1) for m in kept_m]
    combine = gt._combine(gates, indices, kept, slots, E, C)
    token, gate = gt._routes_to_slots(gates, indices, kept, slots, E, C)
    load = sum(jnp.sum(m, axis=(0, 1)) for m in kept_m)
    return combine, token, gate, load, kept, slots


@pytest.mark.parametrize("policy", gt.SECOND_EXPERT_POLICIES)
@pytest.mark.parametrize("k,E,C", [(2, 8, 3), (3, 16, 2), (1, 4, 5)])
def test_sort_slots_bit_for_bit_with_cumsum(policy, k, E, C):
    G, S = 3, 24
    ks = jax.random.split(jax.random.key(k * 100 + E + C), 3)
    logits = jax.random.normal(ks[0], (G, S, E)) * 2
    pads = (jax.random.uniform(ks[1], (G, S)) < 0.15).astype(jnp.float32)
    rng = ks[2]
    res = jax.jit(functools.partial(gt.token_choice_gating, k=k, capacity=C, with_slots=True,
                                    second_expert_policy=policy))(logits, rng=rng, paddings=pads)
    combine, token, gate, load, kept, slots = jax.jit(_cumsum_gating, static_argnums=(1, 2, 3))(
        logits, k, C, policy, rng, pads)
    for a, b in [(res.combine_weights, combine), (res.slot_token, token),
                 (res.slot_gate, gate), (res.metrics["tokens_per_expert"], load)]:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    dropped = res.metrics["first_dropped_frac"] + res.metrics["second_dropped_frac"]
    assert float(dropped) > 0 or C >= 5                                   # capacity really binds
    if policy != "all":
        return
    # the public assign_slots: same kept masks; same slot wherever kept
    masks = [jax.nn.one_hot(i, E) * w[..., None] for i, w in zip(
        gt._choose(jax.nn.softmax(logits), k, "all", None), [1.0 - pads] * k)]
    km_new, sl_new = jax.jit(gt.assign_slots, static_argnums=1)(masks, C)
    km_old, sl_old = jax.jit(_cumsum_slots, static_argnums=1)(masks, C)
    for a, b, sa, sb in zip(km_new, km_old, sl_new, sl_old):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        on = np.asarray(a).sum(-1) > 0
        np.testing.assert_array_equal(np.asarray(sa)[on], np.asarray(sb)[on])
        assert (np.asarray(sa)[(np.asarray(masks[0]).sum(-1) > 0) & ~on] >= C).all()


def test_sort_ranks_scatter_and_sort_back_agree():
    """Both ways back to position order give every entry its rank among the group's entries
    to the same expert (num_experts = not routed)."""
    from gshard.moe.routing import sort_ranks
    e = jax.random.randint(jax.random.key(2), (3, 40), 0, 6)              # 5 = not routed
    a, b = sort_ranks(e, 5, scatter=True), sort_ranks(e, 5, scatter=False)
    np.testing.assert_array_equal(a, b)
    en = np.asarray(e)
    want = [[int(np.sum(en[g, :r] == en[g, r])) for r in range(40)] for g in range(3)]
    np.testing.assert_array_equal(a, want)
