"""`gshard run`: the main job on its embedded defaults.

Until training lands, the demo partitions the GShard MoE layer (DESIGN §7) on 8 simulated
devices, checks it against the unpartitioned layer and prints its explain view.
"""
from __future__ import annotations

import time


def add_parser(sub):
    p = sub.add_parser("run", help="the main job on its embedded defaults")
    p.add_argument("--devices", type=int, default=8)
    p.set_defaults(func=run)


def _moe_demo(D: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import gshard
    from gshard.cli.demo_moe import moe_layer

    G, S, M, E, H, C = D, 32, 16, D, 32, 8
    rng = np.random.default_rng(0)
    args = tuple(rng.normal(size=s).astype(np.float32) * 0.3
                 for s in [(G, S, M), (M, E), (E, M, H), (E, H, M)])
    mesh = jax.make_mesh((D,), ("x",))
    fn = lambda *a: moe_layer(*a, num_devices=D, capacity=C)  # noqa: E731
    pf = gshard.partition(fn, mesh)
    t0 = time.perf_counter()
    out = jax.block_until_ready(pf(*args))
    first = time.perf_counter() - t0
    err = float(jnp.abs(out - fn(*args)).max())
    return pf.lower(*args), err, first


def run(args) -> int:
    low, err, secs = _moe_demo(args.devices)
    print(low.explain())
    print(f"\nMoE layer on {args.devices} devices: max |partitioned - unpartitioned| = {err:.2e}; "
          f"first call (partition + compile + run) {secs:.2f} s")
    kinds = sorted({c.kind for c in low.collectives})
    print(f"collectives in the forward: {len(low.collectives)} ({', '.join(kinds)})")
    return 0 if err < 1e-4 else 1
