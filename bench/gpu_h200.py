"""One short GPU benchmark (issue 7, item 4): single H200, bf16, a few minutes.

    python bench/gpu_h200.py [--json OUT] [--only train,moe] [--smoke]

1. MoE Transformer training step (Adam), presets tiny -> small, bf16 activations: step time,
   tokens/s, and utilisation = matmul FLOPs of the step (every dot_general in the step's jaxpr,
   forward + backward, MoE dispatch/combine einsums included) / step time / peak bf16
   (H200 SXM dense: 989 TFLOP/s), for einsum and gather dispatch.
2. MoE layer (top-2, C = 2S/E: equal active FLOPs) vs a dense FFN of hidden 2H, forward+backward,
   at E=64 and E=256, gather dispatch (einsum for reference): time, TFLOP/s of the dense FFN,
   MoE/dense ratio (median of interleaved per-round ratios). Issue 7 targets: <= 1.10x at E=64,
   <= 1.25x at E=256; plain JAX reference 1.32x (einsum) / 1.22x (naive gather) at E=64, dense at
   720 TFLOP/s.

--smoke: tiny shapes, 1-2 rounds, runs on CPU in well under a minute (checks the script only).
Self-contained: needs jax and the gshard package (falls back to ../src on sys.path), nothing else
from this repository.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:
    import gshard  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import gshard  # noqa: F401

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gshard.models.presets import get_preset  # noqa: E402
from gshard.moe.layer import moe_layer  # noqa: E402
from gshard.testing import dot_flops  # noqa: E402
from gshard.train.step import init_train_state, make_optimizer, make_train_step  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved as _interleaved, save_json  # noqa: E402

PEAK_BF16 = 989e12  # H200 SXM, dense bf16 tensor-core peak


def interleaved(fns, rounds, calls, warmup=2):
    """bench/common.interleaved without a block per call; the spread is fn_0's."""
    meds, ratios, spreads = _interleaved(fns, rounds, calls, warmup, block_each=False)
    return meds, ratios, spreads[0]


def log(*a):
    print(*a, flush=True)


# ----- 1. training step ------------------------------------------------------------------------
def train_step_bench(preset, dispatch, B, L, rounds, calls):
    cfg = get_preset(preset, dtype="bfloat16", dispatch=dispatch, dropout=0.0)
    opt = make_optimizer("adam", learning_rate=1e-4)
    params, state = jax.jit(lambda k: init_train_state(cfg, opt, k))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    V = cfg.vocab_size
    batch = {k: jnp.asarray(rng.integers(3, V, (B, L)).astype(np.int32))
             for k in ("src", "tgt_in", "tgt_out")}
    batch["src_pad"] = batch["tgt_pad"] = jnp.zeros((B, L), jnp.float32)
    key = jax.random.PRNGKey(1)
    step = make_train_step(cfg, opt, deterministic=True)
    flops = dot_flops(jax.make_jaxpr(step)(params, state, batch, key))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=()).lower(params, state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    fn = lambda: compiled(params, state, batch, key)  # noqa: E731
    (t,), _, spread = interleaved([fn], rounds, calls)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    return dict(bench="train_step", preset=preset, dispatch=dispatch, B=B, L=L,
                params=n_params, experts=cfg.moe.num_experts, step_ms=t * 1e3,
                tokens_per_s=2 * B * L / t, tflops=flops / t / 1e12,
                utilisation=flops / t / PEAK_BF16, compile_s=compile_s, spread=spread)


# ----- 2. MoE layer vs dense FFN ---------------------------------------------------------------
def _train(fwd):
    def step(*args):
        loss = lambda *a: jnp.mean(jnp.square(fwd(*a).astype(jnp.float32)))  # noqa: E731
        return jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)
    return jax.jit(step)


def moe_vs_dense_bench(E, G, S, M, H, dispatches, rounds, calls, dtype):
    rng = np.random.default_rng(E)
    C = max(1, 2 * S // E)
    put = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    x = put(rng.standard_normal((G, S, M)))
    wg = jnp.asarray(rng.standard_normal((M, E)), jnp.float32)
    wi = put(rng.standard_normal((E, M, H)) / np.sqrt(M))
    wo = put(rng.standard_normal((E, H, M)) / np.sqrt(H))
    w1 = put(rng.standard_normal((M, 2 * H)) / np.sqrt(M))
    w2 = put(rng.standard_normal((2 * H, M)) / np.sqrt(2 * H))
    dense = _train(lambda x, w1, w2: jax.nn.relu(x @ w1) @ w2)
    fns = [lambda: dense(x, w1, w2)]
    for d in dispatches:
        f = _train(lambda x, wg, wi, wo, d=d: moe_layer(x, wg, wi, wo, dispatch=d, capacity=C)[0])
        fns.append(lambda f=f: f(x, wg, wi, wo))
    meds, ratios, spread = interleaved(fns, rounds, calls)
    flops = 3 * 2 * G * S * M * (2 * H) * 2
    row = dict(bench="moe_vs_dense", E=E, C=C, G=G, S=S, M=M, H=H, dense_ms=meds[0] * 1e3,
               dense_tflops=flops / meds[0] / 1e12, spread=spread)
    for d, m, r in zip(dispatches, meds[1:], ratios[1:]):
        row[f"{d}_ms"], row[f"{d}_ratio"] = m * 1e3, r
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU check of the script)")
    ap.add_argument("--only", default="train,moe")
    ap.add_argument("--json", help="write the rows here (default $OUT/gpu_h200.json if $OUT)")
    a = ap.parse_args(argv)
    dev = jax.devices()[0]
    log(f"jax {jax.__version__}, device {dev.platform}: {getattr(dev, 'device_kind', '?')}")
    if a.smoke:
        train_cases = [("tiny", 4, 16)]
        moe_cases = dict(G=2, S=64, M=32, H=64, experts=(8, 32))
        rounds, calls = 2, 1
    else:
        train_cases = [("tiny", 64, 128), ("small", 32, 256)]
        moe_cases = dict(G=16, S=2048, M=2048, H=4096, experts=(64, 256))
        rounds, calls = 7, 5
    rows = []
    if "train" in a.only:
        for preset, B, L in train_cases:
            for d in ("einsum", "gather"):
                r = train_step_bench(preset, d, B, L, rounds, calls)
                rows.append(r)
                log(f"train {preset:6s} {d:6s} B={B} L={L} E={r['experts']}: "
                    f"{r['step_ms']:.2f} ms/step, {r['tokens_per_s']:,.0f} tok/s, "
                    f"{r['tflops']:.1f} TFLOP/s, utilisation {100 * r['utilisation']:.1f}% "
                    f"(compile {r['compile_s']:.1f}s, spread {100 * r['spread']:.0f}%)")
    if "moe" in a.only:
        c = moe_cases
        for E in c["experts"]:
            r = moe_vs_dense_bench(E, c["G"], c["S"], c["M"], c["H"], ("gather", "einsum"),
                                   rounds, calls, jnp.bfloat16)
            rows.append(r)
            log(f"moe vs dense E={E} C={r['C']} (G={c['G']} S={c['S']} M={c['M']} H={c['H']}): "
                f"dense {r['dense_ms']:.2f} ms ({r['dense_tflops']:.0f} TFLOP/s), "
                f"gather {r['gather_ms']:.2f} ms ({r['gather_ratio']:.2f}x), "
                f"einsum {r['einsum_ms']:.2f} ms ({r['einsum_ratio']:.2f}x), "
                f"spread {100 * r['spread']:.0f}%")
    path = a.json or (os.path.join(os.environ["OUT"], "gpu_h200.json") if os.environ.get("OUT")
                      else None)
    save_json(path, rows)
    return rows


if __name__ == "__main__":
    main()
