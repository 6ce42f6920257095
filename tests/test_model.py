"""The MoE Transformer: configs, presets, forward semantics, and training with Adam/Adafactor."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gshard.models import PRESETS, MeshAxes, forward, get_preset, init_params, param_count
from gshard.train import adafactor, adam, cross_entropy, make_train_step, rsqrt_schedule

B, LS, LT = 4, 8, 6


def _batch(seed=0, vocab=256, tgt_vocab=None):
    r = np.random.default_rng(seed)
    tv = tgt_vocab or vocab
    src_pad = np.zeros((B, LS), np.float32)
    src_pad[1, -3:] = 1.0
    tgt_pad = np.zeros((B, LT), np.float32)
    tgt_pad[2, -2:] = 1.0
    return {"src": jnp.asarray(r.integers(1, vocab, (B, LS)), jnp.int32),
            "tgt_in": jnp.asarray(r.integers(1, tv, (B, LT)), jnp.int32),
            "tgt_out": jnp.asarray(r.integers(1, tv, (B, LT)), jnp.int32),
            "src_pad": jnp.asarray(src_pad), "tgt_pad": jnp.asarray(tgt_pad)}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fwd(params, batch, cfg):
    return forward(params, cfg, batch["src"], batch["tgt_in"], src_pad=batch["src_pad"],
                   tgt_pad=batch["tgt_pad"])


@functools.lru_cache(maxsize=None)
def _init(cfg, seed=0):
    """Params for cfg, initialised once per (cfg, seed) in this module (init compiles)."""
    return init_params(cfg, jax.random.key(seed))


# A no-drop capacity so that token-independence properties hold exactly.
NODROP = get_preset("tiny", capacity=64)


def test_presets_and_overrides():
    assert set(PRESETS) >= {"tiny", "default", "small", "paper-12L", "paper-36L"}
    tiny = get_preset("tiny")  # the same TOML preset `gshard train --preset tiny` uses
    assert (tiny.d_model, tiny.moe.expert_hidden, tiny.num_heads, tiny.moe.num_experts) == \
        (32, 64, 2, 8)
    p = get_preset("paper-36L", num_experts=512, data="x", expert="x", dropout=0.2)
    assert (p.moe.num_experts, p.mesh.data, p.mesh.expert, p.dropout) == (512, "x", "x", 0.2)
    assert (p.d_model, p.moe.expert_hidden, p.num_heads) == (1024, 8192, 16)
    with pytest.raises(ValueError):
        get_preset("tiny", not_a_field=1)
    with pytest.raises(ValueError):
        get_preset("huge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.d_model = 8


def test_paper_parameter_count():
    """2048 experts, 36L: about 600B params (paper); shapes only, nothing allocated."""
    shapes = jax.eval_shape(lambda: init_params(get_preset("paper-36L"), jax.random.key(0)))
    assert 0.58e12 < param_count(shapes) < 0.64e12


@pytest.mark.parametrize("bad", [
    dict(d_model=10, num_heads=4), dict(dropout=1.0), dict(positions="rotary"),
    dict(tgt_vocab_size=100), dict(num_experts=0), dict(gating="top3"),
    dict(second_expert_policy="x"), dict(dispatch="x"), dict(top_k=9), dict(data=3),
    dict(dtype="float16"), dict(num_groups=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        get_preset("tiny", **bad)


def test_forward_shapes_and_aux():
    cfg = get_preset("tiny")
    params = _init(cfg)
    logits, aux = _fwd(params, _batch(), cfg)
    assert logits.shape == (B, LT, 256) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert aux["expert_load"].shape == (2, cfg.moe.num_experts)  # one MoE layer in each stack
    np.testing.assert_allclose(np.asarray(aux["expert_load"]).sum(-1), 1.0, rtol=1e-5)
    assert float(aux["aux_loss"]) > 0 and 0 <= float(aux["dropped_fraction"]) <= 1
    assert "wg" in params["encoder"]["layer_1"]["ffn"]
    assert "wg" not in params["encoder"]["layer_0"]["ffn"]


def test_decoder_is_causal_and_pads_are_ignored():
    params = _init(get_preset("tiny"))
    batch = _batch(1)
    logits, _ = _fwd(params, batch, NODROP)
    future = dict(batch, tgt_in=batch["tgt_in"].at[:, 4:].set(7))
    logits2, _ = _fwd(params, future, NODROP)
    np.testing.assert_allclose(logits2[:, :4], logits[:, :4], atol=1e-5)
    assert not np.allclose(logits2[:, 4:], logits[:, 4:])
    padded = dict(batch, src=batch["src"].at[1, -3:].set(9))   # change padded source tokens
    logits3, _ = _fwd(params, padded, NODROP)
    np.testing.assert_allclose(logits3, logits, atol=1e-5)


def test_separate_vocabs_learned_positions_groups_and_gather():
    cfg = get_preset("tiny", tgt_vocab_size=100, shared_vocab=False, positions="learned",
                     num_groups=8, dispatch="gather", capacity=64)
    params = _init(cfg)
    assert params["embed"]["tgt"].shape == (100, cfg.d_model) and "pos" in params
    batch = _batch(2, tgt_vocab=100)
    logits, _ = _fwd(params, batch, cfg)
    assert logits.shape == (B, LT, 100)
    einsum_logits, _ = _fwd(params, batch, cfg.replace(dispatch="einsum"))
    np.testing.assert_allclose(logits, einsum_logits, atol=1e-5)
    with pytest.raises(ValueError):                       # 5 groups do not divide 4x8 tokens
        _fwd(params, batch, cfg.replace(num_groups=5))


def test_mesh_annotations_do_not_change_values():
    cfg = get_preset("tiny")
    params = _init(cfg)
    batch = _batch(3)
    plain, _ = _fwd(params, batch, cfg)
    for mesh in (MeshAxes(data="x", expert="x"),
                 MeshAxes(data="data", model="model", expert=("data", "model"))):
        c = cfg.replace(mesh=mesh)
        out, _ = _fwd(params, batch, c)
        np.testing.assert_array_equal(out, plain)
        jaxpr = jax.make_jaxpr(lambda p, b: _fwd.__wrapped__(p, b, c))(params, batch)
        text = str(jaxpr)
        assert "gshard_annotate" in text
    assert "gshard_annotate" not in str(jax.make_jaxpr(
        lambda p, b: _fwd.__wrapped__(p, b, cfg))(params, batch))


def test_cross_entropy_and_schedule():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    tgt = jnp.array([[0, 2]])
    ce, n, acc = cross_entropy(logits, tgt, jnp.array([[0.0, 1.0]]))
    assert float(ce) == pytest.approx(-np.log(0.7), rel=1e-5) and float(n) == 1
    ls, _, _ = cross_entropy(logits, tgt, None, label_smoothing=0.1)
    want = np.mean([0.9 * -np.log(p) - 0.1 * np.mean(np.log(row))
                    for p, row in [(0.7, [0.7, 0.2, 0.1]), (0.8, [0.1, 0.1, 0.8])]])
    assert float(ls) == pytest.approx(want, rel=1e-5) and float(acc) == 1.0
    sched = rsqrt_schedule(1.0, 100)
    assert float(sched(0)) == pytest.approx(0.1) and float(sched(399)) == pytest.approx(0.05)


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "rsqrt"])
def test_adam_learning_rate_schedules(kind):
    from gshard.train.step import lr_schedule
    f = lr_schedule(2e-3, 100, kind=kind, decay_steps=1000, final_fraction=0.1)
    t0 = 1 if kind == "rsqrt" else 0            # rsqrt_schedule counts steps from 1
    assert float(f(0)) == pytest.approx(2e-5 * t0, abs=1e-10)
    assert float(f(50 - t0)) == pytest.approx(1e-3) and float(f(100 - t0)) == pytest.approx(2e-3)
    end = {"constant": 2e-3, "linear": 2e-4, "cosine": 2e-4, "rsqrt": 2e-3 * np.sqrt(0.1)}[kind]
    assert float(f(1000 - t0)) == pytest.approx(end, rel=1e-4)
    if kind in ("linear", "cosine"):   # held at the final value after decay_steps
        assert float(f(5000)) == pytest.approx(2e-4, rel=1e-4)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_schedule(1e-3, kind="cos")


def _train(cfg, opt, steps, **kw):
    params = _init(cfg)
    state = opt.init(params)
    step = jax.jit(make_train_step(cfg, opt, **kw))
    batch, losses = _batch(4), []
    for i in range(steps):
        params, state, m = step(params, state, batch, jax.random.key(i))
        losses.append(float(m["loss"]))
    return losses, m


def test_loss_decreases_with_adam():
    losses, m = _train(get_preset("tiny"), adam(3e-3), 20)
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert float(m["aux_loss"]) > 0 and np.isfinite(float(m["grad_norm"]))


def test_adafactor_step():
    # 1 + 1 layers, both MoE (every=1), to keep compile time small
    cfg = get_preset("tiny", every=1, num_encoder_layers=1, num_decoder_layers=1)
    losses, m = _train(cfg, adafactor(base_lr=1.0, warmup_steps=100), 3, label_smoothing=0.1)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_dropout_and_random_policy_forward():
    cfg = get_preset("tiny", dropout=0.1, second_expert_policy="random", every=1,
                     num_encoder_layers=1, num_decoder_layers=1)
    params, batch = _init(cfg), _batch(5)

    @jax.jit
    def run(rng):
        return forward(params, cfg, batch["src"], batch["tgt_in"], src_pad=batch["src_pad"],
                       tgt_pad=batch["tgt_pad"], deterministic=False, rng=rng)

    (a, aux), (b, _) = run(jax.random.key(0)), run(jax.random.key(1))   # one compile
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)
    assert aux["second_dropped"].shape == (2,)
    with pytest.raises(ValueError):
        forward(params, cfg, batch["src"], batch["tgt_in"], deterministic=False)


@pytest.mark.parametrize("shape,names,axes", [  # (8,) with data=expert="x": test_train_partitioned
    ((2, 4), ("data", "model"), MeshAxes(data="data", model="model", expert="data"))])
def test_partitioned_train_step_equals_unpartitioned(shape, names, axes):
    import gshard
    cfg = get_preset("tiny", mesh=axes, num_experts=8)
    opt = adam(1e-3)
    params = _init(cfg)
    state = opt.init(params)
    batch = {k: jnp.concatenate([v, v[::-1]]) for k, v in _batch(6).items()}   # B = 8
    step = make_train_step(cfg, opt)
    pf = gshard.partition(step, jax.make_mesh(shape, names))
    rng = jax.random.PRNGKey(1)                           # raw key data (see report)
    got, want = pf(params, state, batch, rng), jax.jit(step)(params, state, batch, rng)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=5e-5, rtol=1e-4)
    kinds = [c.kind for c in pf.lower(params, state, batch, rng).collectives]
    assert kinds.count("all_to_all") == 8   # 2 MoE layers x (2 forward + 2 backward)


def test_padded_vocabulary_changes_nothing_but_the_table():
    """vocab_multiple pads the table rows (even splits at scale); the padded ids never win and the
    loss, smoothing included, is that of the unpadded model."""
    from gshard.train.step import loss_fn
    cfg = get_preset("tiny", vocab_size=250)
    pcfg = cfg.replace(vocab_multiple=64)
    params = _init(cfg)
    padded = jax.tree_util.tree_map(lambda x: x, params)
    table = params["embed"]["src"]                                        # [250, M]
    padded["embed"]["src"] = jnp.concatenate([table, jnp.ones((6, table.shape[1]))])  # [256, M]
    assert _init(pcfg)["embed"]["src"].shape == (256, cfg.d_model)
    batch = _batch(vocab=250)

    def losses_and_logits(p, c):  # the loss without and with smoothing, and the logits
        losses = [loss_fn(p, c, batch, None, deterministic=True, label_smoothing=ls)[0]
                  for ls in (0.0, 0.1)]
        return losses, _fwd.__wrapped__(p, batch, c)[0]
    (a, _), (b, logits) = (jax.jit(losses_and_logits, static_argnums=1)(p, c)  # one compile each
                           for p, c in ((params, cfg), (padded, pcfg)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    assert int(jnp.max(jnp.argmax(logits, -1))) < 250
