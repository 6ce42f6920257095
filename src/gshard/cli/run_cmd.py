"""`gshard run`: the main job on its embedded defaults, from a fresh machine to a BLEU table.

    gshard run                      # data (quick corpus), train preset `default` on 8 simulated
                                    # CPU devices, evaluate, print per-language BLEU, write plots
    gshard run --preset tiny train.steps=40 --workdir runs/smoke
    gshard run --demo               # the old demo: partition one GShard MoE layer, explain it

Re-running continues where it stopped (data cached, training resumed from its checkpoint).
"""
from __future__ import annotations

import argparse
import sys
import time


def add_parser(sub):
    p = sub.add_parser("run", help="the main job: data, train, evaluate, BLEU table and plots",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default")
    p.add_argument("--workdir", default="runs/default")
    p.add_argument("--data-dir", default=None, help="corpus directory (default: data.dir of the preset)")
    p.add_argument("--mesh", default=None, help="e.g. data=2,expert=4 (default: all devices on one axis)")
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (with --demo)")
    p.add_argument("--demo", action="store_true", help="only partition and explain one MoE layer")
    p.add_argument("--minutes", type=float, default=None,
                   help="scale the recipe to about N minutes of wall time: training stops at "
                        "N*60 - 60 s (data and eval take the rest); steps scaled to match")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(func=run)
    return p


def _minutes(args) -> list[str]:
    """--minutes N: the preset's recipe for about N minutes (training time and step budget
    scaled by the same factor, so a decaying learning rate anneals over the whole longer run)."""
    if args.minutes is None:
        return []
    from gshard.cli.train_cmd import config_from_args
    if args.minutes < 2:
        raise ValueError(f"--minutes must be at least 2 (data and eval take about a minute), "
                         f"got {args.minutes:g}")
    base = config_from_args(args).train
    limit = args.minutes * 60 - 60
    scale = limit / base.time_limit_s if base.time_limit_s else args.minutes / 10
    return [f"train.time_limit_s={limit:g}", f"train.steps={max(1, round(base.steps * scale))}"]


def main_job(args) -> int:
    from gshard.cli.data_cmd import ensure_data
    from gshard.cli.train_cmd import config_from_args
    from gshard.evaluate.evaluator import evaluate, format_examples, format_table
    from gshard.evaluate.plots import eval_plots, training_plots
    from gshard.train.loop import check_run, train

    t0 = time.perf_counter()
    cfg = config_from_args(args, extra=_minutes(args))
    check_run(cfg, args.workdir, args.mesh)     # before anything is downloaded or written
    ensure_data(cfg)
    t_data = time.perf_counter() - t0
    print(f"[2/4] train: preset {args.preset} -> {args.workdir}")
    out = train(cfg, args.workdir, mesh=args.mesh)
    t_train = time.perf_counter() - t0 - t_data
    print("[3/4] eval: test split (greedy + beam) and UDHR")
    ev = evaluate(args.workdir)
    print(format_table(ev))
    print("some translations (test set):\n" + format_examples(ev))
    pics = training_plots(args.workdir) + eval_plots(args.workdir)
    wall = time.perf_counter() - t0
    print(f"[4/4] plots: {', '.join(str(p) for p in pics)}")
    print(f"done in {wall / 60:.1f} min (data {t_data:.0f}s, train {t_train:.0f}s to step "
          f"{out['step']}, eval {ev['seconds']:.0f}s); dev loss {out.get('dev_loss', float('nan')):.3f}; "
          f"results in {args.workdir}/eval.json")
    return 0


def run(args) -> int:
    if args.demo:
        return run_demo(args.devices)
    try:
        return main_job(args)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"gshard run: error: {e}", file=sys.stderr)
        return 2


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


def run_demo(devices: int) -> int:
    """Partition the GShard MoE layer (DESIGN §7), check it against the unpartitioned layer and
    print its explain view."""
    low, err, secs = _moe_demo(devices)
    print(low.explain())
    print(f"\nMoE layer on {devices} devices: max |partitioned - unpartitioned| = {err:.2e}; "
          f"first call (partition + compile + run) {secs:.2f} s")
    kinds = sorted({c.kind for c in low.collectives})
    print(f"collectives in the forward: {len(low.collectives)} ({', '.join(kinds)})")
    return 0 if err < 1e-4 else 1
