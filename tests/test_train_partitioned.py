"""Issue 4: a partitioned training step of the tiny MoE Transformer equals the unpartitioned one,
with two AllToAlls per MoE layer in the forward pass."""
import dataclasses

import jax
import numpy as np
import pytest

import gshard
from gshard.models import MeshAxes, get_preset
from gshard.train.step import init_train_state, make_optimizer, make_train_step
from gshard.testing import assert_close

MESHES = {(8,): MeshAxes(data="x", expert="x"),
          (2, 4): MeshAxes(data=("data", "model"), expert=("data", "model"))}


def _batch(B, L, V, seed=0):
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(3, V, (B, L)).astype(np.int32)  # noqa: E731
    pad = np.zeros((B, L), np.float32)
    pad[:, -2:] = 1.0  # some padding
    return {"src": ids(), "tgt_in": ids(), "tgt_out": ids(), "src_pad": pad, "tgt_pad": pad}


def _assert_step_equal(cfg, mesh, deterministic):
    """One Adam step of `cfg` partitioned on `mesh` equals the unpartitioned step."""
    opt = make_optimizer("adam", learning_rate=1e-3)
    params, state = init_train_state(cfg, opt, jax.random.PRNGKey(0))
    batch, key = _batch(8, 8, cfg.vocab_size), jax.random.PRNGKey(1)
    step = make_train_step(cfg, opt, deterministic=deterministic)
    out = gshard.partition(step, mesh)(params, state, batch, key)
    ref = jax.jit(step)(params, state, batch, key)
    assert_close(out[2]["loss"], ref[2]["loss"], 1e-5, 1e-5)
    assert_close(out[0], ref[0], 1e-4, 1e-4, "updated params")


@pytest.mark.parametrize("shape", list(MESHES), ids=lambda s: "x".join(map(str, s)))
def test_tiny_train_step_partitioned_equals_unpartitioned(shape):
    mesh = jax.make_mesh(shape, ("x",) if len(shape) == 1 else ("data", "model"))
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, mesh=MESHES[shape], moe=dataclasses.replace(cfg.moe, num_experts=8))
    _assert_step_equal(cfg, mesh, deterministic=True)


@pytest.mark.parametrize("shape", list(MESHES), ids=lambda s: "x".join(map(str, s)))
def test_two_alltoalls_per_moe_layer_forward(shape):
    from gshard.models.transformer import forward

    mesh = jax.make_mesh(shape, ("x",) if len(shape) == 1 else ("data", "model"))
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, mesh=MESHES[shape], moe=dataclasses.replace(cfg.moe, num_experts=8))
    params = jax.jit(lambda k: init_train_state(cfg, make_optimizer("adam"), k)[0])(jax.random.PRNGKey(0))
    b = _batch(8, 8, cfg.vocab_size)
    fwd = lambda p, s, t: forward(p, cfg, s, t, deterministic=True)[0]  # noqa: E731
    low = gshard.partition(fwd, mesh).lower(params, b["src"], b["tgt_in"])
    n_moe = sum(1 for i in range(cfg.num_encoder_layers + cfg.num_decoder_layers)
                if (i % max(cfg.num_encoder_layers, 1) + 1) % cfg.moe.every == 0)
    a2a = [c for c in low.collectives if c.kind == "all_to_all"]
    assert len(a2a) == 2 * n_moe, low.explain()
    assert not [c for c in low.collectives if c.kind == "all_gather" and c.full_replication]


def test_dropout_and_random_second_expert_partitioned_equal():
    """Random numbers are drawn whole and sliced: dropout and the 'random' second-expert policy
    give the same step partitioned as unpartitioned."""
    mesh = jax.make_mesh((8,), ("x",))
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, dropout=0.1, mesh=MESHES[(8,)], moe=dataclasses.replace(
        cfg.moe, num_experts=8, second_expert_policy="random"))
    _assert_step_equal(cfg, mesh, deterministic=False)
