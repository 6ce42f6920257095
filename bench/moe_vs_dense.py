"""MoE layer (top-2) vs a dense FFN with equal active FLOPs (issue 7, item 3).

    python bench/moe_vs_dense.py [--experts 8,32,64,128,256] [--devices 1,8]
                                 [--dispatch einsum,gather,dropless] [--mode train|fwd]
                                 [--G 8 --S 1024 --M 256 --H 512] [--rounds 7] [--json OUT]

MoE: gshard.moe.moe_layer(inputs [G,S,M], wg [M,E], wi [E,M,H], wo [E,H,M]), top-2, capacity
C = 2S/E (so the expert buffers hold exactly 2 slots per token: the expert FFN does the FLOPs of a
dense FFN of hidden 2H). Dense: relu(x @ w1 [M,2H]) @ w2 [2H,M] on the same tokens.
Default shape: 8192 tokens, M=256, H=512, so each expert's matmuls have 2·G·S/E rows (256 at
E=64, 64 at E=256); `--S 256 --M 128 --H 256` is the small shape (64 rows per expert at E=64).
dispatch=dropless: every token to both of its top-2 experts, nothing dropped (moe/grouped.py:
the expert FFN's layout picked at run time from the experts' counts, a capacity layout that
holds them all or the block-grouped layout; 8 devices: one manual region, each device's routes
sent by an AllToAll of T_d·min(k, E/D) rows per destination, moe/dropless.py).
mode=train (default): loss = mean(out^2), value and gradients w.r.t. the inputs and all weights;
mode=fwd: forward only.
1 device: jax.jit, no annotations. 8 devices (mesh (8,), axis "x"): gshard.partition; the MoE
layer with mesh_axes="x" (groups and experts split, two AllToAlls each way), the dense FFN data
parallel (tokens split on G, weights replicated, gradient AllReduce).
Time: interleaved rounds (dense, moe-einsum, moe-gather in rotating order), medians; ratio = the
median of per-round MoE/dense ratios.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

from common import auto_mesh, interleaved, jax, jnp, np, save_json, table  # noqa: E402

import gshard  # noqa: E402
from gshard.moe.layer import moe_layer  # noqa: E402


def moe_fn(E, C, dispatch, mesh_axes, mode):
    def fwd(x, wg, wi, wo):
        return moe_layer(x, wg, wi, wo, dispatch=dispatch, capacity=C, mesh_axes=mesh_axes)[0]
    return _mode(fwd, mode)


def dense_fn(mesh_axes, mode):
    def fwd(x, w1, w2):
        if mesh_axes is not None:
            x = gshard.mesh_split(x, (mesh_axes, None, None))
            w1, w2 = gshard.replicate(w1), gshard.replicate(w2)
        out = jax.nn.relu(x @ w1) @ w2
        return gshard.mesh_split(out, (mesh_axes, None, None)) if mesh_axes is not None else out
    return _mode(fwd, mode)


def _mode(fwd, mode):
    if mode == "fwd":
        return fwd

    def step(*args):
        loss = lambda *a: jnp.mean(fwd(*a).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)
    return step


def compiled(fn, args, devices):
    """A zero-argument callable running fn on placed args (jit on 1 device, gshard on 8)."""
    if devices == 1:
        dev = jax.devices()[0]
        placed = [jax.device_put(a, dev) for a in args]
        c = jax.jit(fn).lower(*placed).compile()
        return lambda: c(*placed)
    mesh = auto_mesh((devices,), ("x",))
    low = gshard.partition(fn, mesh).lower(*args)
    placed = low.program.place(args)
    c = low.program.call
    return lambda: c(*placed)


def flops(G, S, M, H, mode):
    f = 2 * G * S * M * (2 * H) * 2          # two matmuls of the equal-FLOPs dense FFN
    return f * (3 if mode == "train" else 1)


def bench(E, devices, dispatches, a, dtype):
    rng = np.random.default_rng(E)
    G, S, M, H = a.G, a.S, a.M, a.H
    C = max(1, 2 * S // E)
    x = rng.standard_normal((G, S, M)).astype(dtype)
    wg = rng.standard_normal((M, E)).astype(np.float32)
    wi = (rng.standard_normal((E, M, H)) / np.sqrt(M)).astype(np.float32)
    wo = (rng.standard_normal((E, H, M)) / np.sqrt(H)).astype(np.float32)
    w1 = (rng.standard_normal((M, 2 * H)) / np.sqrt(M)).astype(np.float32)
    w2 = (rng.standard_normal((2 * H, M)) / np.sqrt(2 * H)).astype(np.float32)
    axes = "x" if devices > 1 else None
    fns = [compiled(dense_fn(axes, a.mode), (x, w1, w2), devices)]
    for d in dispatches:
        fns.append(compiled(moe_fn(E, C, d, axes, a.mode), (x, wg, wi, wo), devices))
    import time
    t0 = time.perf_counter()
    jax.block_until_ready(fns[-1]())
    t = time.perf_counter() - t0
    calls = max(1, min(20, int(a.target_s / max(t, 1e-6))))
    meds, ratios, spreads = interleaved(fns, rounds=a.rounds, calls=calls)
    row = dict(E=E, C=C, devices=devices, dense_ms=meds[0] * 1e3,
               dense_gflops=flops(G, S, M, H, a.mode) / meds[0] / 1e9,
               spread=max(spreads), calls=calls)
    for d, m, r in zip(dispatches, meds[1:], ratios[1:]):
        row[f"{d}_ms"] = m * 1e3
        row[f"{d}_ratio"] = r
    return row


def breakdown(E, a):
    """Single device, gather dispatch: where the MoE layer's time goes (same mode as the run).
    router = router logits + top-2 gating (slots, aux loss); ffn = the expert FFN on [E,G,C,M]
    buffers alone; full = the whole layer. dispatch+combine+glue ~ full - router - ffn."""
    from gshard.moe.gating import gating
    from gshard.moe.layer import expert_ffn_major, router_logits
    rng = np.random.default_rng(E)
    G, S, M, H = a.G, a.S, a.M, a.H
    C = max(1, 2 * S // E)
    x = rng.standard_normal((G, S, M)).astype(np.float32)
    wg = rng.standard_normal((M, E)).astype(np.float32)
    wi = (rng.standard_normal((E, M, H)) / np.sqrt(M)).astype(np.float32)
    wo = (rng.standard_normal((E, H, M)) / np.sqrt(H)).astype(np.float32)
    w1 = (rng.standard_normal((M, 2 * H)) / np.sqrt(M)).astype(np.float32)
    w2 = (rng.standard_normal((2 * H, M)) / np.sqrt(2 * H)).astype(np.float32)
    buf = rng.standard_normal((E, G, C, M)).astype(np.float32)

    def router(x, wg):
        r = gating(router_logits(x, wg), capacity=C, with_slots=True)
        return r.slot_gate.sum(axis=(1, 2))[:, None, None] + r.aux_loss + 0 * x

    cases = [("dense", dense_fn(None, a.mode), (x, w1, w2)),
             ("router", _mode(router, a.mode), (x, wg)),
             ("expert ffn", _mode(lambda b, wi, wo: expert_ffn_major(b, wi, wo), a.mode),
              (buf, wi, wo)),
             ("full (gather)", moe_fn(E, C, "gather", None, a.mode), (x, wg, wi, wo))]
    fns = [compiled(f, args, 1) for _, f, args in cases]
    meds, ratios, spreads = interleaved(fns, rounds=a.rounds, calls=1)
    rows = [(n, E, f"{m * 1e3:.2f}", f"{r:.2f}") for (n, _, _), m, r in zip(cases, meds, ratios)]
    rest = meds[3] - meds[1] - meds[2]
    rows.append(("dispatch+combine+glue", E, f"{rest * 1e3:.2f}", f"{rest / meds[0]:.2f}"))
    return rows, max(spreads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", default="8,32,64,128,256")
    ap.add_argument("--devices", default="1,8")
    ap.add_argument("--dispatch", default="einsum,gather,dropless")
    ap.add_argument("--mode", default="train", choices=("train", "fwd"))
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--S", type=int, default=1024)
    ap.add_argument("--M", type=int, default=256)
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-s", type=float, default=0.2)
    ap.add_argument("--json")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the single-device time breakdown of the gather MoE layer")
    a = ap.parse_args(argv)
    if a.breakdown:
        out = []
        for E in (int(v) for v in a.experts.split(",")):
            rows, spread = breakdown(E, a)
            out += rows
            print(f"E={E} spread {spread * 100:.0f}%", flush=True)
        print(table(out, ["part", "E", "ms", "x dense"]))
        return out
    dispatches = a.dispatch.split(",")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; G={a.G} S={a.S} M={a.M} H={a.H} "
          f"(dense hidden {2 * a.H}), mode={a.mode}, {a.dtype}", flush=True)
    rows = []
    for dev in (int(v) for v in a.devices.split(",")):
        for E in (int(v) for v in a.experts.split(",")):
            rows.append(bench(E, dev, dispatches, a, np.dtype(a.dtype)))
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()},
                  flush=True)
    hdr = ["devices", "E", "C", "dense ms", "dense GFLOP/s"]
    for d in dispatches:
        hdr += [f"{d} ms", f"{d}/dense"]
    hdr += ["spread", "calls/round"]
    body = []
    for r in rows:
        line = [r["devices"], r["E"], r["C"], f"{r['dense_ms']:.2f}", f"{r['dense_gflops']:.1f}"]
        for d in dispatches:
            line += [f"{r[d + '_ms']:.2f}", f"{r[d + '_ratio']:.2f}"]
        line += [f"{r['spread'] * 100:.0f}%", r["calls"]]
        body.append(line)
    print()
    print(table(body, hdr))
    save_json(a.json, rows)
    return rows


if __name__ == "__main__":
    main()
