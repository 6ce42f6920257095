"""Predicted vs measured step time on 8 simulated CPU devices (a real mesh), and the error.

    python bench/calibrate_cpu.py [--reps 5] [--json OUT]

Cases: the tiny MoE Transformer training step (Adam) on a 1-D mesh of 8 (paper axes), and the
GShard MoE block (forward, and forward+backward) on the same mesh. Prediction:
``gshard.cost.estimate(low.per_device_jaxpr, low.collectives, hardware="cpu")`` -- the CPU model
is calibrated on this host by ``calibrate_cpu(8)`` (numpy matmul and memcpy, split over the 8
simulated devices that share the host). Measurement: the median wall time of the partitioned,
jitted program (after a warm-up call), block_until_ready. Results go in docs/simulation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gshard  # noqa: E402
from gshard.cost import estimate, get_hardware  # noqa: E402


def measure(pf, args, reps: int) -> float:
    jax.block_until_ready(pf(*args))                  # compile + warm up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(pf(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def xla_calibrated(mesh, stock):
    """Rates measured with XLA itself on the 8-device mesh (what actually runs): a sharded f32
    matmul, a sharded elementwise pass (HBM proxy) and the per-operation overhead of a chain of
    tiny ops. Returns (Hardware, overhead seconds per fused operation)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    n = 8
    sh = NamedSharding(mesh, P("x"))
    a = jax.device_put(jnp.ones((n * 512, 512), jnp.float32), sh)
    b = jnp.ones((512, 512), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    t = measure(lambda: mm(a, b), (), 5)
    flops = 2 * n * 512 ** 3 / t / n                     # per device
    big = jax.device_put(jnp.ones((n * (1 << 21),), jnp.float32), sh)
    ew = jax.jit(lambda x: x * 1.5 + 1.0)
    t = measure(lambda: ew(big), (), 5)
    bw = 2 * big.nbytes / t / n                            # read + write, per device
    tiny = jax.device_put(jnp.ones((n * 8, 8), jnp.float32), sh)
    w = jnp.eye(8, dtype=jnp.float32)

    def chain(x):  # 200 dependent tiny dots + adds: XLA cannot fuse dots, so ~200 kernels
        for _ in range(200):
            x = jnp.tanh(x @ w)
        return x
    ch = jax.jit(chain)
    overhead = measure(lambda: ch(tiny), (), 5) / 200
    hw = stock.replace(name="cpu-xla(x8)", flops_f32=flops, flops_bf16=flops, hbm_bw=bw,
                       vector_flops=flops / 4)
    return hw, overhead


def predict(low, mesh, roles=None, replicated=None, hardware="cpu"):
    sizes = {n: int(mesh.shape[n]) for n in mesh.axis_names}
    extra = len(low.per_device_jaxpr.jaxpr.invars) - len(low.graph.invars)
    if roles is not None:
        roles = ["activation"] * extra + roles
        replicated = [True] * extra + replicated
    return estimate(low.per_device_jaxpr, low.collectives, sizes, hardware,
                    input_roles=roles, input_replicated=replicated)


def tiny_train_step(mesh, batch: int, length: int):
    from gshard.models import MeshAxes, get_preset
    from gshard.train.step import init_train_state, make_optimizer, make_train_step

    cfg = get_preset("tiny", num_experts=8, mesh=MeshAxes(data="x", expert="x"))
    opt = make_optimizer("adam", learning_rate=1e-3)
    params, state = init_train_state(cfg, opt, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    ids = lambda: rng.integers(3, cfg.vocab_size, (batch, length)).astype(np.int32)  # noqa: E731
    pad = np.zeros((batch, length), np.float32)
    b = {"src": ids(), "tgt_in": ids(), "tgt_out": ids(), "src_pad": pad, "tgt_pad": pad}
    step = make_train_step(cfg, opt, deterministic=True)
    args = (params, state, b, jax.random.PRNGKey(1))
    n_p, n_o = len(jax.tree_util.tree_leaves(params)), len(jax.tree_util.tree_leaves(state))
    n = len(jax.tree_util.tree_leaves(args))
    roles = ["weight"] * n_p + ["opt_state"] * n_o + ["activation"] * (n - n_p - n_o)
    return step, args, roles


def moe_block(G, S, M, E, H, backward: bool):
    from gshard.moe.layer import moe_layer

    rng = np.random.default_rng(0)
    args = tuple((rng.normal(size=s) * 0.3).astype(np.float32)
                 for s in [(G, S, M), (M, E), (E, M, H), (E, H, M)])

    def fwd(x, wg, wi, wo):
        return moe_layer(x, wg, wi, wo, capacity_factor=2.0, mesh_axes="x")[0]

    if not backward:
        return fwd, args, ["activation", "weight", "weight", "weight"]

    def fwd_bwd(x, wg, wi, wo):
        loss = lambda *a: jnp.sum(fwd(*a) ** 2)  # noqa: E731
        return jax.grad(loss, argnums=(1, 2, 3))(x, wg, wi, wo)
    return fwd_bwd, args, ["activation", "weight", "weight", "weight"]


def run_case(name, fn, args, roles, mesh, reps, xla_hw, overhead):
    pf = gshard.partition(fn, mesh)
    low = pf.lower(*args)
    repl = [s.is_replicated() for s in low.in_specs]
    r = predict(low, mesh, roles, repl)
    r2 = predict(low, mesh, roles, repl, xla_hw)
    ops = len(r2.per_eqn)
    pred2 = r2.step_time_s + ops * overhead
    meas = measure(pf, args, reps)
    err, err2 = (r.step_time_s - meas) / meas, (pred2 - meas) / meas
    row = {"case": name, "measured_s": meas, "predicted_s": r.step_time_s, "error": err,
           "predicted_xla_s": pred2, "error_xla": err2, "ops": ops,
           "compute_s": r.compute_time_s, "collective_s": r.total_collective_time_s,
           "flops": r.flops, "hbm_bytes": r.hbm_bytes, "collectives": len(low.collectives)}
    print(f"{name:<34}{1e3 * meas:>10.2f}{1e3 * r.step_time_s:>11.2f}{100 * err:>+7.0f}%"
          f"{1e3 * pred2:>11.2f}{100 * err2:>+7.0f}%{r.flops / 1e6:>10.1f}{ops:>6}", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    hw = get_hardware("cpu", num_devices=8)
    xla_hw, overhead = xla_calibrated(mesh, hw)
    print(f"stock calibrate_cpu(8) per device: matmul {hw.flops_f32 / 1e9:.2f} GFLOP/s, memory "
          f"{hw.hbm_bw / 1e9:.2f} GB/s (numpy); XLA-measured: matmul {xla_hw.flops_f32 / 1e9:.2f}"
          f" GFLOP/s, memory {xla_hw.hbm_bw / 1e9:.2f} GB/s, {1e6 * overhead:.1f} us per op")
    print(f"{'case':<34}{'meas ms':>10}{'stock ms':>11}{'err':>8}{'xla ms':>11}{'err':>8}"
          f"{'MFLOP/dev':>10}{'ops':>6}")
    rows = []
    step, args, roles = tiny_train_step(mesh, batch=16, length=16)
    rows.append(run_case("tiny train step B=16 L=16", step, args, roles, mesh, a.reps, xla_hw,
                         overhead))
    step, args, roles = tiny_train_step(mesh, batch=64, length=32)
    rows.append(run_case("tiny train step B=64 L=32", step, args, roles, mesh, a.reps, xla_hw,
                         overhead))
    for G, S, M, E, H in ((8, 64, 64, 8, 128), (8, 512, 256, 8, 1024)):
        for bwd in (False, True):
            fn, args, roles = moe_block(G, S, M, E, H, bwd)
            name = f"MoE {'fwd+bwd' if bwd else 'fwd'} G{G} S{S} M{M} E{E} H{H}"
            rows.append(run_case(name, fn, args, roles, mesh, a.reps, xla_hw, overhead))
    for key, lab in (("error", "stock"), ("error_xla", "XLA-calibrated + per-op overhead")):
        errs = [abs(r[key]) for r in rows]
        print(f"{lab}: mean |error| {100 * statistics.mean(errs):.0f}%, "
              f"max {100 * max(errs):.0f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"stock": {"flops": hw.flops_f32, "hbm_bw": hw.hbm_bw},
                       "xla": {"flops": xla_hw.flops_f32, "hbm_bw": xla_hw.hbm_bw,
                               "overhead_s": overhead}, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
