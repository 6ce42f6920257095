"""GShard gating (DESIGN §7) against a slow numpy loop of Algorithm 1, plus the extensions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gshard
from gshard.moe import compute_capacity
from gshard.moe import expert_choice_gating as _ec
from gshard.moe import gating as _gating
from gshard.moe import top1_gating as _top1
from gshard.moe import top2_gating as _top2
from gshard.moe import topk_gating as _topk


def jitted(fn):
    """fn under jax.jit with python-scalar/str keywords static (eager op-by-op is slow on CPU)."""
    def call(logits, **kw):
        arrays = {k: v for k, v in kw.items() if v is not None and hasattr(v, "shape")}
        static = {k: v for k, v in kw.items() if k not in arrays}
        return jax.jit(lambda x, a: fn(x, **a, **static))(logits, arrays)
    return call


top2_gating, top1_gating, topk_gating = map(jitted, (_top2, _top1, _topk))
expert_choice_gating, gating = map(jitted, (_ec, _gating))


def _logits(seed, G=3, S=12, E=4, scale=2.0):
    return jax.random.normal(jax.random.key(seed), (G, S, E)) * scale


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_top2(logits, C, paddings=None, keep_second=None):
    """Algorithm 1, one token at a time: all first choices in order, then all second choices
    (after the kept first choices); slot >= C dropped. keep_second [G,S] bool overrides."""
    probs = _softmax(logits)
    G, S, E = probs.shape
    pads = np.zeros((G, S)) if paddings is None else np.asarray(paddings)
    combine = np.zeros((G, S, E, C))
    for g in range(G):
        count = np.zeros(E, int)
        e1 = [int(np.argmax(probs[g, s])) for s in range(S)]
        e2 = []
        for s in range(S):
            p = probs[g, s].copy()
            p[e1[s]] = -1.0
            e2.append(int(np.argmax(p)))
        g1 = np.array([probs[g, s, e1[s]] for s in range(S)])
        g2 = np.array([probs[g, s, e2[s]] for s in range(S)])
        g1, g2 = g1 / (g1 + g2 + 1e-9), g2 / (g1 + g2 + 1e-9)
        for s in range(S):
            if pads[g, s] == 0:
                if count[e1[s]] < C:
                    combine[g, s, e1[s], count[e1[s]]] = g1[s]
                count[e1[s]] += 1
        count = np.minimum(count, C)            # second choices go after the kept first ones
        for s in range(S):
            if pads[g, s] == 0 and (keep_second is None or keep_second[g, s]):
                if count[e2[s]] < C:
                    combine[g, s, e2[s], count[e2[s]]] = g2[s]
                count[e2[s]] += 1
    return combine


@pytest.mark.parametrize("C", [1, 2, 3, 8])
def test_top2_matches_numpy_algorithm1(C):
    logits = _logits(0, G=3, S=10, E=4)
    res = top2_gating(logits, capacity=C)
    np.testing.assert_allclose(res.combine_weights, ref_top2(logits, C), atol=1e-6)
    assert res.combine_weights.dtype == jnp.float32 and res.dispatch_mask.dtype == jnp.bool_
    np.testing.assert_array_equal(res.dispatch_mask, res.combine_weights > 0)


def test_capacity_and_slots_invariants():
    logits = _logits(1, G=4, S=16, E=4)
    res = top2_gating(logits, capacity=3)
    d = np.asarray(res.dispatch_mask)
    assert d.sum(axis=1).max() <= 1                       # each slot holds at most one token
    assert (d.sum(axis=(1, 3)) <= 3).all()               # capacity never exceeded
    assert d.sum(axis=(2, 3)).max() <= 2                  # each token holds at most 2 slots
    assert d.sum() < 4 * 16 * 2                            # this capacity forces drops
    # slots are filled from 0 without holes
    per_expert = d.sum(axis=1)                            # [G, E, C]
    assert (np.diff(per_expert, axis=-1) <= 0).all()


def test_capacity_rule():
    assert compute_capacity(8, 4, 2.0) == 4               # int(4) -> 4
    assert compute_capacity(10, 4, 2.0) == 8              # int(5) -> rounded up to 8
    assert compute_capacity(4, 8, 2.0) == 4               # int(1) -> at least 4
    assert compute_capacity(64, 4, 2.0) == 32
    assert compute_capacity(64, 4, 2.0, capacity=5) == 5
    assert top2_gating(_logits(0, S=10), capacity_factor=2.0).combine_weights.shape[-1] == 8


def test_gates_normalised_before_dropping():
    logits = _logits(2, G=1, S=8, E=2)                    # E=2: every token's two gates sum to 1
    full = top2_gating(logits, capacity=8).combine_weights.sum(axis=(2, 3))
    np.testing.assert_allclose(full, 1.0, atol=1e-6)
    tight = np.asarray(top2_gating(logits, capacity=2).combine_weights)
    probs = _softmax(logits)
    kept = tight.sum(-1)                                  # [G, S, E]: un-renormalised survivors
    nz = kept > 0
    np.testing.assert_allclose(kept[nz], probs[nz], atol=1e-6)


def test_aux_loss_uniform_router_is_one():
    zeros = jnp.zeros((2, 8, 4))
    assert float(top2_gating(zeros, capacity=4).aux_loss) == pytest.approx(1.0, abs=1e-6)
    # perfectly balanced, confident router: token s prefers expert s % E
    E, S = 4, 8
    onehot = jax.nn.one_hot(jnp.arange(S) % E, E)[None] * 20.0
    assert float(top2_gating(onehot, capacity=4).aux_loss) == pytest.approx(1.0, abs=1e-5)
    # collapsed router: every token prefers expert 0 -> about E
    collapsed = jnp.zeros((1, S, E)).at[..., 0].set(20.0)
    assert float(top2_gating(collapsed, capacity=4).aux_loss) == pytest.approx(E, rel=1e-3)


def test_aux_loss_matches_numpy():
    logits = _logits(3, G=2, S=6, E=3)
    p = _softmax(logits)
    m1 = np.eye(3)[p.argmax(-1)]
    want = np.mean([np.mean(m1[g].mean(0) * p[g].mean(0)) for g in range(2)]) * 9
    assert float(top2_gating(logits, capacity=1).aux_loss) == pytest.approx(want, rel=1e-5)


def test_random_policy_frequency():
    G, S, E = 4, 256, 4
    logits = jax.random.normal(jax.random.key(4), (G, S, E)) * 1.5
    res = top2_gating(logits, capacity=2 * S, second_expert_policy="random",
                      rng=jax.random.key(5))
    p = _softmax(logits)
    ps = np.sort(p, -1)
    g2 = ps[..., -2] / (ps[..., -1] + ps[..., -2] + 1e-9)
    want_p = np.minimum(1.0, 2.0 * g2)                    # keep iff 2·g2 > u
    kept2 = np.asarray(res.dispatch_mask).sum(axis=(2, 3)) - 1   # first always kept here
    n_kept, n = kept2.sum(), kept2.size
    std = math.sqrt(np.sum(want_p * (1 - want_p)))
    assert abs(n_kept - want_p.sum()) < 4 * std
    assert 0.05 < kept2.mean() < 0.95                      # the test can fail both ways
    # threshold 0.25 keeps more: min(1, 4·g2)
    res2 = top2_gating(logits, capacity=2 * S, second_expert_policy="random",
                       second_expert_threshold=0.25, rng=jax.random.key(5))
    assert np.asarray(res2.dispatch_mask).sum() > np.asarray(res.dispatch_mask).sum()


def test_random_policy_decided_before_slot():
    logits = _logits(6, G=2, S=12, E=3)
    res = top2_gating(logits, capacity=3, second_expert_policy="random", rng=jax.random.key(7))
    d = np.asarray(res.dispatch_mask)
    probs = _softmax(logits)
    second = np.argsort(probs, -1)[..., -2]
    wants2 = np.zeros((2, 12), bool)
    # recover which tokens kept their second choice by re-running with capacity large
    big = top2_gating(logits, capacity=24, second_expert_policy="random", rng=jax.random.key(7))
    wants2 = np.asarray(big.dispatch_mask).sum(axis=(2, 3)) == 2
    np.testing.assert_allclose(res.combine_weights, ref_top2(logits, 3, keep_second=wants2),
                               atol=1e-6)
    assert second.shape == (2, 12) and d.any()


def test_sampling_policy():
    G, S, E = 2, 512, 4
    logits = jnp.broadcast_to(jnp.array([3.0, 1.0, 0.0, -1.0]), (G, S, E))
    res = top2_gating(logits, capacity=2 * S, second_expert_policy="sampling",
                      rng=jax.random.key(8))
    d = np.asarray(res.dispatch_mask).sum(-1)             # [G, S, E]
    assert (d[..., 0] == 1).all()                         # e1 is the argmax
    assert (d.sum(-1) == 2).all()                         # e2 != e1
    p = _softmax(np.array([1.0, 0.0, -1.0]))              # softmax without e1
    freq = d[..., 1:].reshape(-1, 3).mean(0)
    std = np.sqrt(p * (1 - p) / (G * S))
    assert (np.abs(freq - p) < 4 * std).all()
    with pytest.raises(ValueError):
        top2_gating(logits, second_expert_policy="sampling")


def test_padding_never_routed_and_excluded_from_densities():
    G, S, E = 2, 12, 4
    logits = _logits(9, G=G, S=S, E=E)
    rng = np.random.default_rng(0)
    pads = np.zeros((G, S), np.float32)
    keep_idx = []
    for g in range(G):                                    # 4 pads per group, random positions
        pos = rng.choice(S, 4, replace=False)
        pads[g, pos] = 1.0
        keep_idx.append(np.setdiff1d(np.arange(S), pos))
    res = top2_gating(logits, capacity=3, paddings=jnp.asarray(pads))
    cw = np.asarray(res.combine_weights)
    assert (cw[pads == 1] == 0).all()
    compact = jnp.stack([logits[g, keep_idx[g]] for g in range(G)])   # [G, 8, E]
    ref = top2_gating(compact, capacity=3)
    np.testing.assert_allclose(np.stack([cw[g, keep_idx[g]] for g in range(G)]),
                               ref.combine_weights, atol=1e-6)
    assert float(res.aux_loss) == pytest.approx(float(ref.aux_loss), rel=1e-5)
    np.testing.assert_allclose(res.combine_weights, ref_top2(logits, 3, pads), atol=1e-6)
    assert float(res.metrics["router_entropy"]) == pytest.approx(
        float(ref.metrics["router_entropy"]), rel=1e-5)


def test_bf16_logits_route_in_float32():
    logits = _logits(10).astype(jnp.bfloat16)
    res = top2_gating(logits, capacity=4)
    assert res.combine_weights.dtype == jnp.float32
    assert res.aux_loss.dtype == jnp.float32
    ref = top2_gating(logits.astype(jnp.float32), capacity=4)
    np.testing.assert_array_equal(res.combine_weights, ref.combine_weights)


def test_metrics():
    logits = _logits(11, G=2, S=12, E=4)
    res = top2_gating(logits, capacity=2)
    d = np.asarray(res.dispatch_mask)
    np.testing.assert_allclose(res.metrics["tokens_per_expert"], d.sum(axis=(0, 1, 3)))
    probs = _softmax(logits)
    first = np.eye(4)[probs.argmax(-1)]                   # [G, S, E]
    kept_first = (d.sum(-1) * first).sum()
    assert float(res.metrics["first_dropped_frac"]) == pytest.approx(1 - kept_first / 24)
    kept_second = d.sum() - kept_first
    assert float(res.metrics["second_dropped_frac"]) == pytest.approx(1 - kept_second / 24)
    ent = -(probs * np.log(probs)).sum(-1).mean()
    assert float(res.metrics["router_entropy"]) == pytest.approx(ent, rel=1e-5)


def test_result_is_pytree_and_slots_match_combine():
    logits = _logits(12, G=2, S=10, E=4)
    res = top2_gating(logits, capacity=3, with_slots=True)
    assert len(jax.tree_util.tree_leaves(res)) == 4 + 4 + 2   # 4 arrays, 4 metrics, 2 slot arrays
    _check_slots(res, S=10)
    with pytest.raises(dataclasses_error()):
        res.aux_loss = 0


def dataclasses_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def _check_slots(res, S):
    cw = np.asarray(res.combine_weights)                  # [G, S, E, C]
    token, gate = np.asarray(res.slot_token), np.asarray(res.slot_gate)
    rebuilt = np.zeros_like(cw)
    for g, e, c in np.ndindex(token.shape):
        if token[g, e, c] < S:
            rebuilt[g, token[g, e, c], e, c] = gate[g, e, c]
    np.testing.assert_allclose(rebuilt, cw, atol=1e-7)


def test_top1_switch():
    logits = _logits(13, G=2, S=12, E=4)
    res = top1_gating(logits, capacity=2, with_slots=True)
    d = np.asarray(res.dispatch_mask)
    assert d.sum(axis=(2, 3)).max() == 1 and (d.sum(axis=(1, 3)) <= 2).all()
    probs = _softmax(logits)
    cw = np.asarray(res.combine_weights).sum(-1)
    nz = cw > 0
    np.testing.assert_allclose(cw[nz], probs[nz], atol=1e-6)   # raw router prob
    assert (probs.argmax(-1)[nz.any(-1)] == cw.argmax(-1)[nz.any(-1)]).all()
    _check_slots(res, 12)
    assert float(res.metrics["second_dropped_frac"]) == 0.0


def test_topk_priority_and_normalisation():
    logits = _logits(14, G=2, S=8, E=6)
    res = topk_gating(logits, k=3, capacity=16)
    cw = np.asarray(res.combine_weights).sum(-1)          # [G, S, E]
    assert ((cw > 0).sum(-1) == 3).all()
    np.testing.assert_allclose(cw.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(topk_gating(logits, k=2, capacity=3).combine_weights,
                               top2_gating(logits, capacity=3).combine_weights)
    tight = topk_gating(logits, k=3, capacity=2)
    assert (np.asarray(tight.dispatch_mask).sum(axis=(1, 3)) <= 2).all()


def test_expert_choice():
    G, S, E, C = 2, 8, 4, 3
    logits = _logits(15, G=G, S=S, E=E)
    pads = jnp.zeros((G, S)).at[:, -2:].set(1.0)
    res = expert_choice_gating(logits, capacity=C, paddings=pads, with_slots=True)
    probs = _softmax(logits)
    probs[:, -2:] = -1
    cw = np.asarray(res.combine_weights)
    for g, e in np.ndindex(G, E):
        top = np.argsort(-probs[g, :, e], kind="stable")[:C]
        for c, s in enumerate(top):
            assert cw[g, s, e, c] == pytest.approx(probs[g, s, e], rel=1e-5)
    assert (np.asarray(res.dispatch_mask).sum(axis=1) == 1).all()   # every slot full
    assert (cw[:, -2:] == 0).all() and float(res.aux_loss) == 0.0
    _check_slots(res, S)


def test_z_loss_and_jitter():
    logits = _logits(16)
    lse = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
    for kind in ("top2", "top1", "expert_choice"):
        res = gating(logits, kind=kind, capacity=4)
        assert float(res.z_loss) == pytest.approx(float(np.mean(lse ** 2)), rel=1e-5)
    a = gating(logits, kind="top2", capacity=4, jitter_eps=0.5, rng=jax.random.key(1))
    b = gating(logits, kind="top2", capacity=4, jitter_eps=0.5)   # no rng: no noise
    c = gating(logits, kind="top2", capacity=4)
    np.testing.assert_array_equal(b.combine_weights, c.combine_weights)
    assert not np.allclose(a.combine_weights, c.combine_weights)


def test_bad_arguments():
    with pytest.raises(ValueError):
        gating(_logits(0), kind="top3")
    with pytest.raises(ValueError):
        top2_gating(_logits(0), second_expert_policy="sometimes")
    with pytest.raises(ValueError):
        top2_gating(jnp.zeros((4, 4)))
    with pytest.raises(ValueError):
        top2_gating(_logits(0), paddings=jnp.zeros((3, 5)))


def test_contract_name():
    assert gshard.moe.top2_gating is _top2
