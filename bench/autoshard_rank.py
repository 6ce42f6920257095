"""Does the cost model rank autoshard's candidate plans the way they run? (issue 21)

    python bench/autoshard_rank.py [--meshes 8,2x4] [--top 10] [--rounds 5] [--json OUT]

A dense MLP training step (x @ w1 -> relu -> @ w2, squared error, SGD update) on 8 simulated CPU
devices. For each mesh: gshard.autoshard (search time, chosen plan), then the top candidates it
priced plus the hand layouts (data-parallel, Megatron, replicated) are compiled and timed
interleaved (bench/common.py), next to jax.jit with batch-split inputs and replicated weights
(XLA's default). Reported: predicted vs measured step time per plan, Kendall tau between them,
collective bytes, predicted peak vs XLA's memory analysis of the compiled program.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

from common import auto_mesh, build_gshard, build_xla, interleaved, jax, jnp, save_json  # noqa: E402,E501
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import gshard  # noqa: E402
from gshard.cost import estimate, get_hardware  # noqa: E402
from gshard.testing import mlp_sgd_step as mlp_step  # noqa: E402

B, D, H = 256, 256, 1024


def args_of(rng):
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.1  # noqa: E731
    return {"w1": f(D, H), "w2": f(H, D)}, f(B, D), f(B, D)


def hand_layouts(mesh):
    names = tuple(mesh.axis_names)
    data, model = (names[0], names[-1]) if len(names) > 1 else (None, names[0])
    everything = names if len(names) > 1 else names[0]
    return {"data-parallel": ({"w1": P(), "w2": P()}, P(everything), P(everything)),
            "megatron": ({"w1": P(None, model), "w2": P(model, None)}, P(data), P(data)),
            "replicated": ({"w1": P(), "w2": P()}, P(), P())}


def predicted(built, mesh):
    low = built.lowered
    hw = get_hardware("cpu", num_devices=mesh.size)
    return estimate(low.per_device_jaxpr, low.collectives, low.mesh.sizes, hw)


def xla_peak(call) -> int:
    ma = call.memory_analysis()
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes)


def run_mesh(shape, top: int, rounds: int, rng):
    from scipy.stats import kendalltau
    names = ("x",) if len(shape) == 1 else ("data", "model")
    mesh = auto_mesh(shape, names)
    args = args_of(rng)
    t0 = time.perf_counter()
    plan = gshard.autoshard(mlp_step, mesh, *args)
    search_s = time.perf_counter() - t0
    plans = {"autoshard": plan.in_specs}
    for i, specs in enumerate(plan.candidate_in_specs[1:top]):
        plans[f"candidate {i + 2}"] = specs
    plans.update(hand_layouts(mesh))
    builts = {k: build_gshard(mlp_step, mesh, args, in_specs=v) for k, v in plans.items()}
    dp = plans["data-parallel"]
    flat_dp = [NamedSharding(mesh, s) for s in jax.tree_util.tree_leaves(
        dp, is_leaf=lambda s: isinstance(s, P))]
    builts["xla default (jit, batch split)"] = build_xla(mlp_step, mesh, args, flat_dp)
    keys = list(builts)
    meds, _, spreads = interleaved([builts[k].run for k in keys], rounds=rounds, calls=5)
    rows = []
    for k, m, sp in zip(keys, meds, spreads):
        b = builts[k]
        row = {"mesh": "x".join(map(str, shape)), "plan": k, "measured_s": m, "spread": sp,
               "xla_peak_bytes": xla_peak(b.call)}
        if b.name == "gshard":
            r = predicted(b, mesh)
            row.update(predicted_s=r.step_time_s, predicted_peak_bytes=r.peak_bytes,
                       collective_bytes=sum(c.bytes for c in b.lowered.collectives),
                       in_specs=str(plans[k]))
        rows.append(row)
    g = [r for r in rows if "predicted_s" in r]
    tau = kendalltau([r["predicted_s"] for r in g], [r["measured_s"] for r in g]).statistic
    return rows, {"mesh": shape, "search_s": search_s, "kendall_tau": tau, "plans": len(g),
                  "lowerings": plan.lowerings, "explain": plan.explain()}


def main(argv=None) -> int:
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meshes", default="8,2x4")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    out = []
    for m in a.meshes.split(","):
        shape = tuple(int(s) for s in m.split("x"))
        rows, summ = run_mesh(shape, a.top, a.rounds, np.random.default_rng(0))
        print(f"\n## mesh {m}: search {summ['search_s']:.2f} s ({summ['lowerings']} lowerings), "
              f"Kendall tau {summ['kendall_tau']:.2f} over {summ['plans']} plans")
        print(f"{'plan':<32}{'pred ms':>9}{'meas ms':>9}{'spread':>8}{'coll KiB':>10}"
              f"{'pred peak KiB':>15}{'XLA peak KiB':>14}  in_specs")
        for r in rows:
            pred = f"{r['predicted_s'] * 1e3:9.2f}" if "predicted_s" in r else f"{'-':>9}"
            coll = f"{r['collective_bytes'] / 1024:10.0f}" if "collective_bytes" in r else f"{'-':>10}"
            pk = f"{r['predicted_peak_bytes'] / 1024:15.0f}" if "predicted_peak_bytes" in r \
                else f"{'-':>15}"
            print(f"{r['plan']:<32}{pred}{r['measured_s'] * 1e3:9.2f}{r['spread']:8.2f}{coll}"
                  f"{pk}{r['xla_peak_bytes'] / 1024:14.0f}  {r.get('in_specs', '')}")
        out.append({"summary": {k: v for k, v in summ.items() if k != "explain"}, "rows": rows})
    if a.json:
        save_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
