"""Does the cost model rank sharding plans the way they run? And is autoshard's plan the best?

    python bench/cost_rank.py [--models mlp,transformer,cnn] [--meshes 8,2x4,2x2x2]
                              [--rounds 5] [--top 6] [--json OUT]

For each model (an unannotated training step: a dense MLP, a plain-JAX 2-layer Transformer, a
small CNN) and mesh on 8 simulated CPU devices: gshard.autoshard(hardware="cpu") (the profile
`gshard calibrate` wrote, else the quick numpy estimate: the header says which), then the plan
it found, its next best candidates and the hand layouts (data-parallel, Megatron / channel
split, FSDP-style, replicated, ...) are compiled and timed interleaved (bench/common.py), with
jax.jit on batch-split inputs and replicated parameters (XLA's default). Reported per model and
mesh: predicted vs measured step time of every plan (measured: the fastest of the interleaved
rounds, since other jobs on the host only add time), Kendall tau between them, collective bytes,
predicted peak vs XLA's memory analysis, and the found plan against the best hand layout and
XLA's default.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

from common import auto_mesh, build_gshard, build_xla, jax, jnp, save_json  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import gshard  # noqa: E402
from gshard.cost import estimate, get_hardware  # noqa: E402
from gshard.testing import mlp_sgd_step  # noqa: E402

import autoshard_search_time as tfm  # noqa: E402  (the plain-JAX Transformer step)


def _axes(mesh):
    names = tuple(mesh.axis_names)
    data, model = (names[0], names[-1]) if len(names) > 1 else (None, names[0])
    return names, data, model, (names if len(names) > 1 else names[0])


# ----- models: (step, args(rng), hand layouts(mesh)) --------------------------------------------
def mlp_args(rng, B=256, D=256, H=1024):
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.1  # noqa: E731
    return {"w1": f(D, H), "w2": f(H, D)}, f(B, D), f(B, D)


def mlp_hand(mesh):
    names, data, model, every = _axes(mesh)
    rep = {"w1": P(), "w2": P()}
    return {"data-parallel": (rep, P(every), P(every)),
            "megatron": ({"w1": P(None, model), "w2": P(model, None)}, P(data), P(data)),
            "fsdp": ({"w1": P(every), "w2": P(every)}, P(every), P(every)),
            "replicated": (rep, P(), P())}


def tfm_args(rng, layers=2):
    f = lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32) * 0.1  # noqa: E731
    return jax.tree_util.tree_map(f, tfm.args_for(layers))


def tfm_hand(mesh, layers=2):
    names, data, model, every = _axes(mesh)
    rep = {k: P() for k in ("wq", "wk", "wv", "wo", "w1", "w2")}
    meg = {"wq": P(None, model), "wk": P(None, model), "wv": P(None, model),
           "wo": P(model), "w1": P(None, model), "w2": P(model)}
    fsdp = {k: P(every) for k in ("wq", "wk", "wv", "wo", "w1", "w2")}
    stack = lambda one: {"layers": [dict(one) for _ in range(layers)]}  # noqa: E731
    return {"data-parallel": (stack(rep), P(every), P(every)),
            "megatron": (stack(meg), P(data), P(data)),
            "fsdp": (stack(fsdp), P(every), P(every)),
            "replicated": (stack(rep), P(), P())}


def cnn_step(params, x, y):
    """Two 3x3 convolutions (NHWC), global mean pool, a dense head; squared error, SGD."""
    def loss(p):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                                     dimension_numbers=dn))    # [B, H, W, C1]
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["c2"], (1, 1), "SAME",
                                                     dimension_numbers=dn))    # [B, H, W, C2]
        return jnp.mean((h.mean(axis=(1, 2)) @ p["w"] - y) ** 2)              # [B, K]
    value, grads = jax.value_and_grad(loss)(params)
    return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, params, grads), value


def cnn_args(rng, B=32, S=16, C=16, C1=64, C2=64, K=16):
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.1  # noqa: E731
    return ({"c1": f(3, 3, C, C1), "c2": f(3, 3, C1, C2), "w": f(C2, K)}, f(B, S, S, C), f(B, K))


def cnn_hand(mesh):
    names, data, model, every = _axes(mesh)
    rep = {"c1": P(), "c2": P(), "w": P()}
    chan = {"c1": P(None, None, None, model), "c2": P(None, None, model), "w": P()}
    return {"data-parallel": (rep, P(every), P(every)),
            "channel split": (chan, P(data), P(data)),
            "spatial split": (rep, P(data, model), P(data)),
            "replicated": (rep, P(), P())}


MODELS = {"mlp": (mlp_sgd_step, mlp_args, mlp_hand),
          "transformer": (tfm.train_step, tfm_args, tfm_hand),
          "cnn": (cnn_step, cnn_args, cnn_hand)}


# ----- measuring -------------------------------------------------------------------------------
def _predicted(built, hw):
    low = built.lowered
    return estimate(low.per_device_jaxpr, low.collectives, low.mesh.sizes, hw)


def _xla_peak(call) -> int:
    ma = call.memory_analysis()
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes)


GAP = 0.05   # candidates timed: predicted at least this far apart (closer ones are near-ties
             # that neither the model nor a timing on a shared host can order)


def _plans(step, mesh, args, hand, top):
    t0 = time.perf_counter()
    plan = gshard.autoshard(step, mesh, *args)
    search_s = time.perf_counter() - t0
    plans, kept = {"autoshard": plan.in_specs}, [plan.candidates[0]["step_s"]]
    for row, specs in zip(plan.candidates[1:], plan.candidate_in_specs[1:]):
        t = row["step_s"]
        if len(plans) < top and all(abs(t / k - 1) >= GAP for k in kept):
            plans[f"candidate {len(plans) + 1}"] = specs
            kept.append(t)
    plans.update(hand)
    return plan, search_s, plans


def _xla_default(step, mesh, args, dp):
    flat = [NamedSharding(mesh, s) for s in jax.tree_util.tree_leaves(
        dp, is_leaf=lambda s: isinstance(s, P))]
    return build_xla(step, mesh, args, flat)


def _best_rounds(fns, rounds: int, calls: int = 3):
    """Interleaved rounds (bench/common.interleaved); per plan the fastest round's time per
    call (other jobs on the host only ever add time) and the spread (median - min) / min."""
    per = [[] for _ in fns]
    for f in fns:
        jax.block_until_ready(f())
    for r in range(rounds):
        order = list(range(len(fns)))
        for i in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(fns[i]())
            per[i].append((time.perf_counter() - t0) / calls)
    best = [min(p) for p in per]
    return best, [(sorted(p)[len(p) // 2] - b) / b for p, b in zip(per, best)]


def run_case(model, shape, top, rounds, rng):
    from scipy.stats import kendalltau
    step, make_args, hand_of = MODELS[model]
    mesh = auto_mesh(shape, ("x",) if len(shape) == 1 else ("data", "model", "c")[:len(shape)])
    args = make_args(rng)
    hw = get_hardware("cpu", num_devices=mesh.size)
    plan, search_s, plans = _plans(step, mesh, args, hand_of(mesh), top)
    builts = {k: build_gshard(step, mesh, args, in_specs=v) for k, v in plans.items()}
    builts["xla default"] = _xla_default(step, mesh, args, plans["data-parallel"])
    keys = list(builts)
    meds, spreads = _best_rounds([builts[k].run for k in keys], rounds)
    rows = []
    for k, m, sp in zip(keys, meds, spreads):
        b = builts[k]
        row = {"model": model, "mesh": "x".join(map(str, shape)), "plan": k, "measured_s": m,
               "spread": sp, "xla_peak_bytes": _xla_peak(b.call)}
        if b.name == "gshard":
            r = _predicted(b, hw)
            row.update(predicted_s=r.step_time_s, predicted_peak_bytes=r.peak_bytes,
                       collective_bytes=sum(c.bytes for c in b.lowered.collectives))
        rows.append(row)
    g = [r for r in rows if "predicted_s" in r]
    tau = kendalltau([r["predicted_s"] for r in g], [r["measured_s"] for r in g]).statistic
    by = {r["plan"]: r for r in rows}
    resolved = {k: tuple(map(str, b.lowered.in_specs)) for k, b in builts.items() if b.name == "gshard"}
    same = [k for k in hand_of(mesh) if resolved[k] == resolved["autoshard"]]
    best_hand = min((by[k] for k in hand_of(mesh)), key=lambda r: r["measured_s"])
    found_s = best_hand["measured_s"] if best_hand["plan"] in same else by["autoshard"]["measured_s"]
    summ = {"model": model, "mesh": shape, "hardware": hw.name, "search_s": search_s,
            "lowerings": plan.lowerings, "kendall_tau": tau, "plans": len(g),
            "found": str(plan.in_specs), "best_hand": best_hand["plan"], "same_program_as": same,
            "vs_best_hand": found_s / best_hand["measured_s"],
            "vs_xla_default": found_s / by["xla default"]["measured_s"],
            "bytes_vs_best_hand": (by["autoshard"]["collective_bytes"],
                                   best_hand["collective_bytes"])}
    return rows, summ


def _print(rows, summ):
    print(f"\n## {summ['model']} on mesh {summ['mesh']} ({summ['hardware']}): search "
          f"{summ['search_s']:.1f} s ({summ['lowerings']} lowerings), Kendall tau "
          f"{summ['kendall_tau']:.2f} over {summ['plans']} plans; found/best hand "
          f"({summ['best_hand']}) {summ['vs_best_hand']:.2f}x, found/XLA default "
          f"{summ['vs_xla_default']:.2f}x, collective bytes found/best hand "
          f"{summ['bytes_vs_best_hand'][0]}/{summ['bytes_vs_best_hand'][1]}"
          + (f"; found = {', '.join(summ['same_program_as'])} (same program)"
             if summ["same_program_as"] else ""))
    print(f"{'plan':<16}{'pred ms':>9}{'best ms':>9}{'spread':>8}{'coll KiB':>10}"
          f"{'pred peak KiB':>15}{'XLA peak KiB':>14}")
    for r in rows:
        pred = f"{r['predicted_s'] * 1e3:9.2f}" if "predicted_s" in r else f"{'-':>9}"
        coll = f"{r['collective_bytes'] / 1024:10.0f}" if "collective_bytes" in r else f"{'-':>10}"
        pk = (f"{r['predicted_peak_bytes'] / 1024:15.0f}" if "predicted_peak_bytes" in r
              else f"{'-':>15}")
        print(f"{r['plan']:<16}{pred}{r['measured_s'] * 1e3:9.2f}{r['spread']:8.2f}{coll}{pk}"
              f"{r['xla_peak_bytes'] / 1024:14.0f}")
    print(f"found: {summ['found']}", flush=True)


def main(argv=None) -> int:
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="mlp,transformer,cnn")
    ap.add_argument("--meshes", default="8,2x4,2x2x2")
    ap.add_argument("--top", type=int, default=6,
                    help="autoshard plans timed (found + next, predicted >= 5%% apart)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    out = []
    for model in a.models.split(","):
        for m in a.meshes.split(","):
            shape = tuple(int(s) for s in m.split("x"))
            rows, summ = run_case(model, shape, a.top, a.rounds, np.random.default_rng(0))
            _print(rows, summ)
            out.append({"summary": summ, "rows": rows})
    save_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
