"""autoshard search time against depth: a plain-JAX Transformer training step (issue 21).

    python bench/autoshard_search_time.py [--layers 1,2,4] [--mesh 2x4]

Layers are a list of identical dicts, so autoshard ties them (one decision per weight kind);
the search still lowers the whole program per candidate, so its time grows with depth.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AbstractMesh, AxisType  # noqa: E402

import gshard  # noqa: E402

Bt, L, M, NH, F = 16, 32, 64, 4, 256  # batch, length, model dim, heads, FFN dim


def block(p, x):
    q, k, v = (jnp.einsum("blm,mhd->blhd", x, p[w]) for w in ("wq", "wk", "wv"))  # [B,L,H,D]
    a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 4.0, axis=-1)      # [B,H,L,L]
    o = jnp.einsum("bhqk,bkhd->bqhd", a, v)                                       # [B,L,H,D]
    x = x + jnp.einsum("blhd,hdm->blm", o, p["wo"])                               # [B,L,M]
    h = jax.nn.gelu(jnp.einsum("blm,mf->blf", x, p["w1"]))                        # [B,L,F]
    return x + jnp.einsum("blf,fm->blm", h, p["w2"])                              # [B,L,M]


def train_step(params, x, y):
    def loss(p):
        h = x
        for layer in p["layers"]:
            h = block(layer, h)
        return jnp.mean((h - y) ** 2)
    l, g = jax.value_and_grad(loss)(params)
    return jax.tree_util.tree_map(lambda a, b: a - 1e-3 * b, params, g), l


def args_for(layers: int):
    s = jax.ShapeDtypeStruct
    f = jnp.float32
    one = {"wq": s((M, NH, M // NH), f), "wk": s((M, NH, M // NH), f),
           "wv": s((M, NH, M // NH), f), "wo": s((NH, M // NH, M), f),
           "w1": s((M, F), f), "w2": s((F, M), f)}
    return {"layers": [dict(one) for _ in range(layers)]}, s((Bt, L, M), f), s((Bt, L, M), f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", default="1,2,4")
    ap.add_argument("--mesh", default="2x4")
    a = ap.parse_args(argv)
    shape = tuple(int(x) for x in a.mesh.split("x"))
    names = ("x",) if len(shape) == 1 else ("data", "model")
    mesh = AbstractMesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
    for n in (int(x) for x in a.layers.split(",")):
        t0 = time.perf_counter()
        low = gshard.partition(train_step, mesh).lower(*args_for(n))
        t1 = time.perf_counter()
        plan = gshard.autoshard(train_step, mesh, *args_for(n), hardware="tpu-v3")
        print(f"layers {n}: one lowering {t1 - t0:.2f} s ({len(low.graph.eqns)} eqns); "
              f"search {plan.search_seconds:.1f} s, {plan.lowerings} lowerings, "
              f"{len(plan.decisions)} decision points, step {plan.predicted['step_s'] * 1e6:.1f} us")
        print("  " + str(plan.in_specs[0]["layers"][0]) + " | x " + str(plan.in_specs[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
