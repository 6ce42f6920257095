"""Per-call host overhead of a partitioned function against jax.jit (issue 23, item 5).

    python bench/dispatch_overhead.py [--rounds 9] [--calls 200] [--json OUT]

A small MLP (the point is the dispatch, not the math) on 8 simulated CPU devices, annotated with
gshard.mesh_split; gshard.partition(fn, mesh) against jax.jit of the same function with the
annotations as with_sharding_constraint, both called as a user calls them: with the placed
arrays the previous call returned (pytree args, a dict of weights), timed in interleaved rounds
in one process. Also the cost of the same call with numpy inputs (placement on every call), and
of calling the partitioned function inside an outer jax.jit. Printed: per-call microseconds and
the median per-round ratio against jax.jit.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

from common import (auto_mesh, interleaved, jax, jnp, np, save_json, table,  # noqa: E402
                    xla_annotations)

import gshard  # noqa: E402


def mlp(p, x):
    x = gshard.mesh_split(x, ("x", None))                                 # [B, M]
    h = jax.nn.relu(x @ p["w1"])                                          # [B, H]
    return gshard.mesh_split(h @ p["w2"], ("x", None))                    # [B, M]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    mesh = jax.make_mesh((8,), ("x",))
    rng = np.random.default_rng(0)
    p = {"w1": rng.normal(size=(16, 32)).astype(np.float32),
         "w2": rng.normal(size=(32, 16)).astype(np.float32)}
    x = rng.normal(size=(64, 16)).astype(np.float32)

    pf = gshard.partition(mlp, mesh)
    low = pf.lower(p, x)
    placed_p, placed_x = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure((p, x)), low.program.place(jax.tree_util.tree_leaves((p, x))))
    amesh = auto_mesh((8,), ("x",))
    xp, xx = jax.tree_util.tree_map(  # the same layouts on the Auto mesh XLA's constraints name
        lambda v: jax.device_put(v, jax.sharding.NamedSharding(amesh, v.sharding.spec)),
        (placed_p, placed_x))
    with xla_annotations(amesh):
        jf = jax.jit(mlp)
        jax.block_until_ready(jf(xp, xx))
    outer = jax.jit(lambda p, x: pf(p, x))
    np.testing.assert_allclose(np.asarray(pf(placed_p, placed_x)),
                               np.asarray(jf(xp, xx)), rtol=1e-5, atol=1e-5)

    cases = [("jax.jit (placed arrays)", lambda: jf(xp, xx)),
             ("gshard (placed arrays)", lambda: pf(placed_p, placed_x)),
             ("gshard (numpy inputs)", lambda: pf(p, x)),
             ("jax.jit(gshard fn)", lambda: outer(placed_p, placed_x))]
    meds, ratios, spreads = interleaved([f for _, f in cases], rounds=a.rounds, calls=a.calls)
    rows = [[name, f"{m * 1e6:.0f}", f"{r:.2f}", f"{s:.0%}"]
            for (name, _), m, r, s in zip(cases, meds, ratios, spreads)]
    print(table(rows, ["call", "us/call", "ratio vs jax.jit", "spread"]))
    if a.json:
        save_json(a.json, [dict(zip(["call", "us", "ratio", "spread"], r)) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
