"""Issue 22 item 5: today's MoE from the config: dropless routing with shared experts, top-4 and
the aux-loss-free bias balance trains, checkpoints (the bias with the params) and resumes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gshard.moe import update_bias
from gshard.train.config import load_config
from gshard.train.metrics import read_jsonl
from gshard.train.step import init_train_state, make_train_step

from test_train_cli import losses, tiny_corpus, train

TODAY = ["moe.dispatch=dropless", "moe.balance=bias", "moe.shared_experts=1", "moe.top_k=4",
         "moe.router=sigmoid", "moe.bias_rate=0.01"]


def test_config_keys_and_checks():
    cfg = load_config("tiny", TODAY + ["moe.expert_groups=4", "moe.top_groups=2",
                                       "moe.eval_capacity_factor=1.5"])
    m = cfg.moe
    assert (m.dispatch, m.balance, m.router, m.top_k, m.shared_experts) == (
        "dropless", "bias", "sigmoid", 4, 1)
    assert (m.expert_groups, m.top_groups, m.eval_capacity_factor) == (4, 2, 1.5)
    for bad, frag in [(["moe.balance=bias"], "dropless"), (["moe.router=relu"], "router"),
                      (TODAY + ["moe.expert_groups=0"], "expert_groups"),
                      (["moe.balance=loss"], "balance")]:
        with pytest.raises(ValueError, match=frag):
            load_config("tiny", bad)


def test_step_moves_router_bias_by_update_bias():
    """One step of the train step: every MoE layer's router_bias is update_bias(old, its load,
    rate) (not the optimizer's), shared experts are trained, no aux loss in the loss."""
    cfg = load_config("tiny", TODAY).model_config()
    opt = optax.adam(1e-2)
    params, state = init_train_state(cfg, opt, jax.random.key(0))
    ffn = params["encoder"]["layer_1"]["ffn"]
    assert ffn["router_bias"].shape == (8,) and ffn["shared_wi"].shape == (cfg.d_model, cfg.moe.expert_hidden)
    B, L = 4, 12
    ids = jax.random.randint(jax.random.key(1), (B, L), 1, 200)
    batch = {"src": ids, "tgt_in": ids, "tgt_out": ids}
    new, _, m = jax.jit(make_train_step(cfg, opt))(params, state, batch, jax.random.key(2))
    assert float(m["loss"]) == pytest.approx(float(m["cross_entropy"]))
    assert np.all(np.asarray(m["layer_dropped"]) == 0)
    for n, (stack, i) in enumerate([("encoder", 1), ("decoder", 1)]):
        got = new[stack][f"layer_{i}"]["ffn"]["router_bias"]
        want = update_bias(params[stack][f"layer_{i}"]["ffn"]["router_bias"],
                           m["expert_load"][n], 0.01)
        np.testing.assert_array_equal(got, want)
        assert np.abs(np.asarray(got)).max() == pytest.approx(0.01)
    assert not np.allclose(new["encoder"]["layer_1"]["ffn"]["shared_wi"], ffn["shared_wi"])


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.getbasetemp())


def test_dropless_bias_shared_topk_trains_and_resumes(corpus_dir, tmp_path, capsys):
    ref, a = tmp_path / "ref", tmp_path / "a"
    assert train(ref, corpus_dir, 4, *TODAY) == 0
    assert train(a, corpus_dir, 2, *TODAY, "train.checkpoint_every=1") == 0
    assert train(a, corpus_dir, 4, *TODAY, "train.checkpoint_every=1") == 0
    assert "resuming from" in capsys.readouterr().out
    want, got = losses(ref), losses(a)
    assert list(got) == [1, 2, 3, 4] and got == want          # the bias resumed exactly too
    assert want[4] < want[1]
    rec = next(r for r in read_jsonl(a / "metrics.jsonl") if "loss" in r)
    assert np.array(rec["expert_load"]).shape == (2, 8)
    assert rec["layer_dropped"] == [0.0, 0.0] and rec["aux_loss"] > 0
