"""`gshard translate --workdir D [--beam K]`: source lines on stdin -> English on stdout."""
from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser("translate", help="translate stdin lines to English with a trained workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--beam", type=int, default=None, help="beam size (default eval.beam_size; 1 = greedy)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from gshard.evaluate.evaluator import load_model

    try:
        model = load_model(args.workdir)
    except FileNotFoundError as e:
        print(f"gshard translate: error: {e}", file=sys.stderr)
        return 2
    lines = [line.rstrip("\n") for line in sys.stdin]
    beam = model.cfg.eval.beam_size if args.beam is None else args.beam
    for out in model.translate(lines, beam=beam if beam > 1 else 0) if lines else []:
        print(out)
    return 0
