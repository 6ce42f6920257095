"""Third-party models (tests/third_party/zoo.py: flax nnx / linen, equinox, haiku ResNet-50, all
unchanged) partitioned by gshard vs XLA's own propagation of the same annotations (issue 12).

    python bench/zoo_vs_xla.py [--rounds 5] [--calls 3] [--only nnx_cnn,...] [--json OUT]

For each model and mesh: value_and_grad of its loss (ResNet-50: one SGD training step),
gshard.partition(fn, mesh, in_specs=...) vs jax.jit(fn) with the same in_shardings and the batch
annotation as with_sharding_constraint, both fed the same placed inputs. Reported: collective
bytes per device (gshard's records, XLA's compiled HLO), collective counts, median step time
over interleaved rounds and the median per-round ratio gshard/XLA.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import force_cpu_devices  # noqa: E402

force_cpu_devices(8)

from common import (auto_mesh, build_gshard, build_xla, fmt_counts, hlo_collectives,  # noqa: E402
                    interleaved, jax, kb, np, save_json, summarize, table)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from third_party import zoo  # noqa: E402

import gshard  # noqa: E402

CASES = [  # (name, constructor, kwargs, mesh)
    ("nnx transformer, batch", "nnx_transformer", {}, (8,)),
    ("nnx transformer, megatron", "nnx_transformer", {"megatron": True}, (2, 4)),
    ("linen scan(remat), batch", "linen_scan", {}, (2, 4)),
    ("nnx cnn + BatchNorm, batch", "nnx_cnn", {}, (8,)),
    ("nnx cnn + BatchNorm, spatial", "nnx_cnn", {"spatial": True, "hw": 32}, (8,)),
    ("nnx cnn + BatchNorm, channels", "nnx_cnn", {"channels": True}, (2, 4)),
    ("eqx mlp, batch", "eqx_mlp", {}, (8,)),
    ("eqx attention, megatron", "eqx_attention", {}, (2, 4)),
    ("eqx cnn + GroupNorm + MaxPool, spatial", "eqx_cnn", {"spatial": True, "hw": 32}, (8,)),
    ("haiku ResNet-50 step, batch", "resnet", {"spatial": False}, (8,)),
    ("haiku ResNet-50 step, batch x height", "resnet", {"spatial": True}, (2, 4)),
]


def problem(maker, kw, shape):
    axes = ("data", "model")[:len(shape)]
    if maker == "resnet":
        step, args, bspec = zoo.make_haiku_resnet50(**kw)

        def fn(params, state, batch):
            batch = tuple(gshard.mesh_split(b, zoo.fit(s, axes, np.ndim(b))) for b, s in zip(batch, bspec))
            return step(params, state, batch)
        return fn, args, None
    case = getattr(zoo, "make_" + maker)(**kw)
    vg = jax.value_and_grad(zoo.annotated(case, axes))
    return vg, (case.params, case.aux, case.batch), (zoo.param_specs(case, axes), None, None)


def scaled_diff(a, b) -> float:
    """max |a-b| / max(1, max |b|) over leaves (gradients of BatchNorm biases are ~0: a relative
    difference would only show float noise)."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y), initial=0)) / max(1.0, float(np.max(np.abs(y), initial=0))))
    return worst


def bench_one(name, maker, kw, shape, rounds, calls):
    mesh = auto_mesh(shape, ("data", "model")[:len(shape)])
    fn, args, in_specs = problem(maker, kw, shape)
    g = build_gshard(fn, mesh, args, in_specs)
    x = build_xla(fn, mesh, args, g.lowered.program.jit_in_shardings)
    diff = scaled_diff(g.run(), x.run())
    (tx, tg), (_, ratio), _ = interleaved([lambda: x.call(*x.args), lambda: g.call(*g.args)],
                                          rounds=rounds, calls=calls)  # ratio: gshard / XLA
    gb, gc = summarize(g.collectives)
    xb, xc = summarize(hlo_collectives(x.hlo))
    return dict(name=name, mesh="x".join(map(str, shape)), diff=diff, gshard_bytes=gb,
                xla_bytes=xb, gshard_counts=fmt_counts(gc), xla_counts=fmt_counts(xc),
                gshard_ms=tg * 1e3, xla_ms=tx * 1e3, ratio=ratio)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated constructor names")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    only = set(filter(None, a.only.split(",")))
    rows = [bench_one(n, m, kw, s, a.rounds, a.calls) for n, m, kw, s in CASES
            if not only or m in only]
    print(table([(r["name"], r["mesh"], f"{r['diff']:.1e}", kb(r["gshard_bytes"]), kb(r["xla_bytes"]),
                  r["gshard_counts"], r["xla_counts"], f"{r['gshard_ms']:.2f}", f"{r['xla_ms']:.2f}",
                  f"{r['ratio']:.2f}") for r in rows],
                ["model", "mesh", "max diff", "gshard KiB", "XLA KiB", "gshard colls",
                 "XLA colls", "gshard ms", "XLA ms", "gshard/XLA"]))
    save_json(a.json, rows)


if __name__ == "__main__":
    main()
