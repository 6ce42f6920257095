"""Training at scale (issue 14): weight-update sharding, gradient accumulation, donation, bf16,
and a run killed with SIGKILL that continues on other meshes and process counts."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gshard
from gshard.models.presets import get_preset
from gshard.train.step import init_train_state, make_optimizer, make_train_step
from gshard.train.zero import specs_for
from test_multihost import _launch, _port, _wait
from test_train_cli import losses, tiny_corpus, train


def _batch(B=16, L=8, V=64, seed=0):
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(1, V, (B, L)).astype(np.int32)  # noqa: E731
    return {"src": ids(), "tgt_in": ids(), "tgt_out": ids(), "src_pad": np.zeros((B, L), np.float32),
            "tgt_pad": (rng.random((B, L)) < 0.2).astype(np.float32)}


def _cfg(**kw):
    return get_preset("tiny", vocab_size=64, shared_vocab=True, num_experts=8, **kw)


def _local_bytes(low, first, n):
    """Per-device bytes of inputs first..first+n (their propagated specs' local shapes)."""
    vs, specs = low.graph.invars[first:first + n], low.in_specs[first:first + n]
    return [int(np.prod(s.local_shape(v.shape, low.mesh.sizes))) * v.aval.dtype.itemsize
            for v, s in zip(vs, specs)]


def test_weight_update_sharding_equals_the_unsharded_update():
    mesh = jax.make_mesh((2, 4), ("data", "expert"))
    cfg = _cfg(data=("data", "expert"), expert=("data", "expert"))
    opt = make_optimizer("adam", learning_rate=1e-3)
    params, state = init_train_state(cfg, opt, jax.random.PRNGKey(0))
    args = (params, state, _batch(), jax.random.PRNGKey(1))
    plain = gshard.partition(make_train_step(cfg, opt), mesh)
    low0 = plain.lower(*args)
    n_p, n_s = len(jax.tree_util.tree_leaves(params)), len(jax.tree_util.tree_leaves(state))
    specs = specs_for(params, low0.in_specs[:n_p], ("data", "expert"), low0.mesh.sizes)
    zero = gshard.partition(make_train_step(cfg, opt, update_specs=specs), mesh)
    low1 = zero.lower(*args)
    a, b = plain(*args), zero(*args)
    for x, y in zip(jax.tree_util.tree_leaves(a[:2]), jax.tree_util.tree_leaves(b[:2])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    # every optimizer-state leaf of a replicated weight is now held 1/8 per device
    before, after = _local_bytes(low0, n_p, n_s), _local_bytes(low1, n_p, n_s)
    full = [np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state)]
    replicated = [f == b0 and f >= 64 for f, b0 in zip(full, before)]
    assert any(replicated)
    assert all(a1 * 8 == f for a1, f, r in zip(after, full, replicated) if r)
    assert sum(after) <= sum(before) / 3
    kinds = {c.kind for c in low1.collectives}
    assert {"reduce_scatter", "all_gather"} <= kinds, low1.explain(values=False)


def test_microbatches_give_the_update_of_the_whole_batch():
    mesh = jax.make_mesh((8,), ("x",))
    cfg = _cfg(data="x", expert="x")
    opt = optax.sgd(1.0)  # the update is the gradient itself
    params, state = init_train_state(cfg, opt, jax.random.PRNGKey(0))
    args = (params, state, _batch(B=64, L=32), jax.random.PRNGKey(1))
    one = gshard.partition(make_train_step(cfg, opt, deterministic=True), mesh)
    four = gshard.partition(make_train_step(cfg, opt, deterministic=True, microbatches=4), mesh)
    a, b = one(*args), four(*args)
    for x, y in zip(jax.tree_util.tree_leaves(a[0]), jax.tree_util.tree_leaves(b[0])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert float(a[2]["loss"]) == pytest.approx(float(b[2]["loss"]), rel=1e-6)
    t1 = one.lower(*args).program.call.memory_analysis().temp_size_in_bytes
    t4 = four.lower(*args).program.call.memory_analysis().temp_size_in_bytes
    assert t4 < 0.5 * t1, (t1, t4)  # activations of one microbatch at a time


def test_params_and_optimizer_state_are_donated():
    mesh = jax.make_mesh((8,), ("x",))
    cfg = _cfg(data="x", expert="x")
    opt = make_optimizer("adam", learning_rate=1e-3)
    params, state = init_train_state(cfg, opt, jax.random.PRNGKey(0))
    step = gshard.partition(make_train_step(cfg, opt), mesh, donate_argnums=(0, 1))
    batch, key = _batch(), jax.random.PRNGKey(1)
    p1, s1, _ = step(params, state, batch, key)          # placed copies of numpy inputs
    p2, s2, _ = step(p1, s1, batch, key)                   # jax Arrays fed back: donated
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves((p1, s1)))
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves((p2, s2)))
    assert len(step._cache) <= 2                           # fed-back state reuses the lowering


def test_bfloat16_stays_within_its_tolerance_over_100_steps():
    """bf16 activations and matmuls, float32 master weights, optimizer state and router: the
    loss curve of 100 Adam steps stays within 5% of the initial loss of the float32 run (measured
    3.6%, final loss 0.937 vs 0.880: docs/training.md)."""
    curves = {}
    batches = [_batch(seed=i) for i in range(8)]
    stacked = {k: jnp.asarray(np.stack([b[k] for b in batches])) for k in batches[0]}  # [8, B, L]
    for dtype in ("float32", "bfloat16"):
        cfg = _cfg(dtype=dtype)
        opt = make_optimizer("adam", learning_rate=3e-3, warmup_steps=10)
        step = make_train_step(cfg, opt, deterministic=True)

        @jax.jit
        def run(params, state):
            def one(carry, s):
                batch = jax.tree_util.tree_map(lambda x: x[s % 8], stacked)
                p, o, m = step(*carry, batch, jax.random.PRNGKey(0))
                return (p, o), m["loss"]
            return jax.lax.scan(one, (params, state), jnp.arange(100))
        (params, state), curve = run(*init_train_state(cfg, opt, jax.random.PRNGKey(0)))
        curves[dtype] = np.asarray(curve)
        assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves((params, state))
                   if jnp.issubdtype(x.dtype, jnp.floating))
    a, b = curves["float32"], curves["bfloat16"]
    assert np.abs(a - b).max() <= 0.05 * a[0] and abs(a[-1] - b[-1]) <= 0.1 * a[-1]
    assert b[-1] < 0.5 * b[0]  # and it trains
    # the partitioned bf16 step equals the unpartitioned one: the loss of the bf16 curve's first
    # step (same init, batch 0, deterministic; the mesh annotations change no value)
    cfg = _cfg(dtype="bfloat16", data="x", expert="x")
    opt = make_optimizer("adam", learning_rate=3e-3, warmup_steps=10)
    args = init_train_state(cfg, opt, jax.random.PRNGKey(0)) + (batches[0], jax.random.PRNGKey(0))
    fn = make_train_step(cfg, opt, deterministic=True)
    got = gshard.partition(fn, jax.make_mesh((8,), ("x",)))(*args)[2]["loss"]
    assert float(got) == pytest.approx(float(b[0]), rel=2e-2)


def test_killed_run_continues_on_other_meshes_and_process_counts(tmp_path_factory, tmp_path,
                                                                 reference_run):
    """SIGKILL mid-run on 8 devices; resumed on data=2,expert=4, then on 4 devices, then on 2
    processes x 4 devices: the loss curve is the uninterrupted one (1e-4 relative)."""
    corpus = tiny_corpus(tmp_path_factory.getbasetemp())
    ref, w = reference_run, tmp_path / "w"
    every = ["train.checkpoint_every=1"]
    run = lambda steps, env, *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "gshard", "train", "--preset", "tiny", "--steps", str(steps),
         "--workdir", str(w), "--data-dir", str(corpus), "--no-progress", "--no-plots", *every,
         *extra], env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)
    killed = run(6, {"GSHARD_TEST_SIGKILL_AT": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(losses(w)) == 2
    assert train(w, corpus, 4, *every, "--mesh", "data=2,expert=4") == 0
    four = run(5, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert four.returncode == 0, four.stderr[-2000:]
    procs = _launch(w, corpus, _port(), 6, extra_args=every)
    for rc, _, err in _wait(procs, 300):
        assert rc == 0, err[-2000:]
    got, want = losses(w), losses(ref)
    assert list(got) == list(range(1, 7))
    assert [got[s] for s in got] == pytest.approx([want[s] for s in want], rel=1e-4)
