"""gshard vs XLA's own sharding propagation on the same annotated programs (issue 7, item 1).

    python bench/vs_xla.py [--rounds 7] [--target-s 0.15] [--only mlp,attention,...]
                           [--meshes 8,2x4] [--detail] [--dump DIR] [--json OUT]

For each program and mesh: gshard.partition(fn, mesh) vs jax.jit(fn) with every gshard annotation
turned into with_sharding_constraint (bench/common.py: xla_annotations), both compiled once,
both fed the same placed inputs (gshard's propagated input shardings). Reported:
  * max relative difference of all outputs (gshard vs XLA);
  * step time: median of per-call times over interleaved rounds (rounds x N calls each, order
    rotating), and the median of per-round ratios gshard/XLA; spread = (max-min)/median of
    gshard's rounds (noise indicator);
  * collective bytes per device: gshard's report, the same program's compiled HLO, XLA's HLO;
  * partition (trace+propagate+partition / trace+lower) and XLA compile seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

from common import (auto_mesh, build_gshard, build_xla, fmt_counts, hlo_collectives,  # noqa: E402
                    interleaved, jax, jnp, kb, max_rel_diff, np, save_json, summarize,
                    table)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models_for_tests as M  # noqa: E402

import gshard  # noqa: E402

ROLES = {(8,): (None, "x"), (2, 4): ("data", "model")}


# ----- programs: name -> (fn, args) for a mesh shape --------------------------------------------
def prog_mlp(shape, rng, scale=1):
    data, model = ROLES[shape]
    B, Mdim, H = 256 * scale, 256 * scale, 1024 * scale
    args = (rng.standard_normal((B, Mdim), np.float32),
            rng.standard_normal((Mdim, H), np.float32) / np.sqrt(Mdim),
            rng.standard_normal((H, Mdim), np.float32) / np.sqrt(H))
    return M.mlp(data, model), args


def prog_attention(shape, rng, scale=1):
    data, model = ROLES[shape]
    B, S, Mdim, N, H = 8, 64 * scale, 128 * scale, 8, 16 * scale
    w = lambda *s: rng.standard_normal(s, np.float32) / np.sqrt(s[0])  # noqa: E731
    args = (rng.standard_normal((B, S, Mdim), np.float32), w(Mdim, N, H), w(Mdim, N, H),
            w(Mdim, N, H), w(N, H, Mdim))
    return M.attention(data, model), args


def prog_moe_train(shape, rng, scale=1):
    """The GShard MoE block (tests/models_for_tests.moe, split(x, 0, 8) annotations), fwd+bwd:
    loss = mean(out^2), gradients w.r.t. inputs and all weights."""
    G, S, Mdim, E, H = 8, 64 * scale, 64 * scale, 8, 128 * scale
    C = 2 * S // E
    moe = M.moe(8, C)

    def step(inputs, wg, wi, wo):
        loss = lambda *a: jnp.mean(moe(*a) ** 2)  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(inputs, wg, wi, wo)

    args = (rng.standard_normal((G, S, Mdim), np.float32),
            rng.standard_normal((Mdim, E), np.float32),
            rng.standard_normal((E, Mdim, H), np.float32) / np.sqrt(Mdim),
            rng.standard_normal((E, H, Mdim), np.float32) / np.sqrt(H))
    return step, args


def prog_transformer(shape, rng, scale=1):
    """The tiny MoE Transformer training step (Adam), E=8, batch 8 x 16."""
    from gshard.models import MeshAxes, get_preset
    from gshard.train.step import init_train_state, make_optimizer, make_train_step

    axes = {(8,): MeshAxes(data="x", expert="x"),
            (2, 4): MeshAxes(data=("data", "model"), expert=("data", "model"))}[shape]
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, mesh=axes, moe=dataclasses.replace(cfg.moe, num_experts=8))
    opt = make_optimizer("adam", learning_rate=1e-3)
    params, state = jax.jit(lambda k: init_train_state(cfg, opt, k))(jax.random.PRNGKey(0))
    B, L, V = 8, 16 * scale, cfg.vocab_size
    ids = lambda: rng.integers(3, V, (B, L)).astype(np.int32)  # noqa: E731
    pad = np.zeros((B, L), np.float32)
    pad[:, -2:] = 1.0
    batch = {"src": ids(), "tgt_in": ids(), "tgt_out": ids(), "src_pad": pad, "tgt_pad": pad}
    params, state = jax.tree_util.tree_map(np.asarray, (params, state))
    step = make_train_step(cfg, opt, deterministic=True)
    return step, (params, state, batch, np.asarray(jax.random.PRNGKey(1)))


PROGRAMS = {"mlp": prog_mlp, "attention": prog_attention, "moe_train": prog_moe_train,
            "transformer": prog_transformer}


def bench_one(name, shape, rounds, target_s, detail=False, dump=None):
    mesh = auto_mesh(shape)
    fn, args = PROGRAMS[name](shape, np.random.default_rng(0))
    g = build_gshard(fn, mesh, args)
    x = build_xla(fn, mesh, args, g.lowered.program.jit_in_shardings)
    diff = max_rel_diff(g.run(), x.run())
    # calls per round: about target_s of work per program per round
    import time
    t0 = time.perf_counter()
    jax.block_until_ready(x.run())
    t = time.perf_counter() - t0
    calls = max(1, min(50, int(target_s / max(t, 1e-6))))
    (tx, tg), (_, ratio), (sx, sg) = interleaved([x.run, g.run], rounds=rounds, calls=calls)
    ours_b, ours_c = summarize(g.collectives)
    ghlo_b, ghlo_c = summarize(hlo_collectives(g.hlo))
    xla_b, xla_c = summarize(hlo_collectives(x.hlo))
    row = dict(program=name, mesh="x".join(map(str, shape)), max_rel_diff=diff,
               gshard_ms=tg * 1e3, xla_ms=tx * 1e3, ratio=ratio, spread=max(sg, sx),
               calls=calls, rounds=rounds,
               gshard_bytes=ours_b, gshard_hlo_bytes=ghlo_b, xla_bytes=xla_b,
               gshard_colls=fmt_counts(ours_c), gshard_hlo_colls=fmt_counts(ghlo_c),
               xla_colls=fmt_counts(xla_c),
               gshard_partition_s=g.partition_s, gshard_compile_s=g.compile_s,
               xla_trace_s=x.partition_s, xla_compile_s=x.compile_s,
               gshard_cost=g.cost(), xla_cost=x.cost())
    if dump:
        os.makedirs(dump, exist_ok=True)
        stem = os.path.join(dump, f"{name}_{row['mesh']}")
        for suffix, text in (("gshard.hlo", g.hlo), ("xla.hlo", x.hlo),
                             ("gshard.jaxpr", str(g.lowered.per_device_jaxpr))):
            with open(f"{stem}_{suffix}", "w") as f:
                f.write(text)
    if detail:
        print(f"\n=== {name} on {row['mesh']}: gshard records")
        for c in g.collectives:
            print("  ", c)
        print("--- gshard compiled HLO collectives")
        for c in hlo_collectives(g.hlo):
            print(f"   {c.bytes:>9,} B  {c.line[:160]}")
        print("--- XLA compiled HLO collectives")
        for c in hlo_collectives(x.hlo):
            print(f"   {c.bytes:>9,} B  {c.line[:160]}")
    return row


def render(rows) -> str:
    t1 = table([(r["program"], r["mesh"], f"{r['max_rel_diff']:.1e}", f"{r['gshard_ms']:.2f}",
                 f"{r['xla_ms']:.2f}", f"{r['ratio']:.2f}", f"{r['spread'] * 100:.0f}%",
                 f"{r['rounds']}x{r['calls']}") for r in rows],
               ["program", "mesh", "max rel diff", "gshard ms", "XLA ms", "gshard/XLA",
                "spread", "rounds x calls"])
    t2 = table([(r["program"], r["mesh"], kb(r["gshard_bytes"]), r["gshard_colls"],
                 kb(r["gshard_hlo_bytes"]), r["gshard_hlo_colls"], kb(r["xla_bytes"]),
                 r["xla_colls"]) for r in rows],
               ["program", "mesh", "gshard KiB (report)", "ops", "gshard KiB (HLO)", "ops",
                "XLA KiB (HLO)", "ops"])
    t3 = table([(r["program"], r["mesh"], f"{r['gshard_partition_s']:.2f}",
                 f"{r['gshard_compile_s']:.2f}", f"{r['xla_trace_s']:.2f}",
                 f"{r['xla_compile_s']:.2f}") for r in rows],
               ["program", "mesh", "gshard partition s", "gshard compile s", "XLA trace+lower s",
                "XLA compile s"])
    t4 = table([(r["program"], r["mesh"],
                 f"{r['gshard_cost']['flops'] / 1e6:,.1f}", f"{r['xla_cost']['flops'] / 1e6:,.1f}",
                 f"{r['gshard_cost']['bytes_accessed'] / 2**20:,.2f}",
                 f"{r['xla_cost']['bytes_accessed'] / 2**20:,.2f}",
                 f"{r['gshard_cost']['entry_ops']}/{r['gshard_cost']['fusions']}",
                 f"{r['xla_cost']['entry_ops']}/{r['xla_cost']['fusions']}") for r in rows],
               ["program", "mesh", "gshard MFLOP/dev", "XLA MFLOP/dev", "gshard MiB accessed",
                "XLA MiB accessed", "gshard entry ops/fusions", "XLA entry ops/fusions"])
    return "\n\n".join([t1, t2, t3, t4])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-s", type=float, default=0.15,
                    help="seconds of calls per program per round")
    ap.add_argument("--only", default=",".join(PROGRAMS))
    ap.add_argument("--meshes", default="8,2x4")
    ap.add_argument("--detail", action="store_true", help="list every collective")
    ap.add_argument("--dump", help="write each program's compiled HLO (gshard, XLA) and "
                    "gshard's per-device jaxpr into this folder")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    meshes = [tuple(int(v) for v in m.split("x")) for m in a.meshes.split(",")]
    rows = []
    print(f"jax {jax.__version__}, {len(jax.devices())} {jax.devices()[0].platform} devices, "
          f"gshard {gshard.__version__}", flush=True)
    for name in a.only.split(","):
        for shape in meshes:
            rows.append(bench_one(name, shape, a.rounds, a.target_s, a.detail, a.dump))
            r = rows[-1]
            print(f"{name:12s} {r['mesh']:4s} ratio {r['ratio']:.2f}  diff {r['max_rel_diff']:.1e} "
                  f"bytes ours {r['gshard_bytes']:,} xla {r['xla_bytes']:,}", flush=True)
    print()
    print(render(rows))
    save_json(a.json, rows)
    return rows


if __name__ == "__main__":
    main()
