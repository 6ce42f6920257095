"""`gshard train`: train (or resume) a multilingual MoE translation model in a workdir.

    gshard train --preset tiny --steps 40 --workdir runs/tiny
    gshard train --preset tiny --steps 60 --workdir runs/tiny          # resumes at step 41
    gshard train --preset tiny --workdir D --mesh data=2,expert=4 moe.num_experts=16 train.seed=1
    gshard train ... --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0   # multi-host
"""
from __future__ import annotations

import argparse
import json
import sys


def add_common(p: argparse.ArgumentParser):
    p.add_argument("--preset", default="tiny", help="preset name (gshard/presets/*.toml) or a .toml path")
    p.add_argument("--data-dir", default=None, help="prepared corpus (overrides data.dir)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.batch_size=32 moe.num_experts=16")


def add_parser(sub):
    p = sub.add_parser("train", help="train or resume a translation model in --workdir",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=None, help="train to this step (train.steps)")
    p.add_argument("--mesh", default=None, help="e.g. data=8 or data=2,expert=4 (default: all devices on one axis)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--convert-checkpoints", action="store_true",
                   help="rewrite the workdir's old-format (arrays.npz) checkpoints for orbax, then exit")
    p.add_argument("--restart", action="store_true",
                   help="delete the workdir's run (config, checkpoints, metrics) and train anew")
    p.add_argument("--heartbeat-timeout", type=float, default=20.0,
                   help="seconds without a peer's heartbeat before exiting (multi-host)")
    add_common(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args, extra=()):
    """The preset with the overrides; data.dir is --data-dir, else what the workdir's run was
    trained on (absolute, so any current directory finds it), else the preset's."""
    from gshard.train.config import load_config
    from gshard.train.loop import recorded_data_dir

    ov = list(extra)
    if getattr(args, "steps", None) is not None:
        ov.append(f"train.steps={args.steps}")
    data_dir = args.data_dir
    named = any(o.startswith("data.dir=") for o in args.overrides)
    workdir = getattr(args, "workdir", None)
    if not data_dir and not named and not getattr(args, "restart", False) and workdir:
        data_dir = recorded_data_dir(workdir)
    if data_dir:
        ov.append(f"data.dir={json.dumps(str(data_dir))}")
    return load_config(args.preset, ov + list(args.overrides))


def _restart(args, proc, start_over) -> None:
    if proc.multi:
        raise ValueError("--restart works in a single process: run `gshard train --workdir "
                         f"{args.workdir} --restart --steps 1` once, then the processes")
    for path in start_over(args.workdir):
        print(f"--restart: deleted {path}", file=sys.stderr)


def run(args) -> int:
    from gshard.train.config import ConfigError
    from gshard.train.distributed import MeshError, process_spec
    from gshard.train.checkpoint import CheckpointError
    from gshard.train.loop import WorkdirMismatch, check_run, start_over, train

    try:
        if args.convert_checkpoints:
            return _convert(args.workdir)
        cfg = config_from_args(args)
        proc = process_spec(args.coordinator, args.num_processes, args.process_id,
                            args.heartbeat_timeout)
        if not proc.multi:     # everything checked before anything is downloaded or written
            check_run(cfg, args.workdir, args.mesh, restart=args.restart)
        if args.restart:
            _restart(args, proc, start_over)
        if not proc.multi:
            from gshard.cli.data_cmd import ensure_data  # a fresh clone: prepare the corpus first
            ensure_data(cfg, log=lambda m: print(m.replace("[1/4] ", ""), file=sys.stderr))
        out = train(cfg, args.workdir, mesh=args.mesh, proc=proc, progress=not args.no_progress)
    except (ConfigError, MeshError, WorkdirMismatch, FileNotFoundError, ValueError,
            CheckpointError) as e:
        from gshard.train.checkpoint import close_all
        close_all()
        print(f"gshard train: error: {e}", file=sys.stderr)
        return 2
    import jax
    if jax.process_index() == 0:
        if out.get("trained"):
            print(f"trained steps {out['resumed_from'] + 1}..{out['step']} in "
                  f"{out['seconds']:.1f}s; final loss {out['loss']:.4f}, dev loss "
                  f"{out['dev_loss']:.4f}")
        if not args.no_plots:
            from gshard.evaluate.plots import training_plots
            for path in training_plots(args.workdir):
                print(f"wrote {path}")
    return 0


def _convert(workdir) -> int:
    """Old single-file checkpoints -> orbax, in the structure of the workdir's model."""
    from gshard.data import Corpus
    from gshard.train import checkpoint as ckpt
    from gshard.train.loop import init_state, load_workdir_config, make_optimizer, model_config

    cfg = load_workdir_config(workdir)
    mc = model_config(cfg, Corpus.load(cfg.data.dir), None)
    steps = ckpt.convert_old(workdir, init_state(mc, make_optimizer(cfg), cfg.train.seed))
    print(f"converted checkpoints {steps} in {ckpt.ckpt_dir(workdir)}")
    return 0
