"""`gshard eval --workdir D [eval.key=value ...]`: decode the test split (greedy and beam),
write D/eval.json (per-language, per-tier and UDHR BLEU/chrF) and D/bleu_vs_size.png."""
from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser("eval", help="score a trained workdir on the test split and UDHR")
    p.add_argument("--workdir", required=True)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="eval.key=value",
                   help="e.g. eval.max_sentences=50 eval.beam_size=4")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from gshard.evaluate.evaluator import evaluate, format_table
    from gshard.train.checkpoint import CheckpointError, close_all
    from gshard.train.config import ConfigError

    bad = [o for o in args.overrides if not o.startswith("eval.")]
    if bad:
        print(f"gshard eval: only eval.* keys can be overridden, not {bad}", file=sys.stderr)
        return 2
    try:
        ev = evaluate(args.workdir, args.overrides)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        close_all()
        print(f"gshard eval: error: {e}", file=sys.stderr)
        return 2
    print(format_table(ev))
    print(f"wrote {args.workdir}/eval.json ({ev['seconds']}s)")
    if not args.no_plots:
        from gshard.evaluate.plots import eval_plots
        for path in eval_plots(args.workdir):
            print(f"wrote {path}")
    return 0
