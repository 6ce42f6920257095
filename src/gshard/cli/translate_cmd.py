"""`gshard translate --workdir D [--beam K]`: source lines on stdin -> English on stdout.

Each line is translated as soon as it arrives (type at a terminal, or pipe a file). Empty lines
are skipped. A line longer than the model's trained source length is translated in parts of
whole words that fit, joined on one output line, and reported on stderr.
"""
from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser("translate", help="translate stdin lines to English with a trained workdir",
                       description=__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--beam", type=int, default=None,
                   help="beam size, at least 1 (default eval.beam_size; 1 = greedy)")
    p.set_defaults(func=run)
    return p


def _error(msg: str) -> int:
    print(f"gshard translate: error: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    from gshard.evaluate.evaluator import load_model
    from gshard.train.checkpoint import CheckpointError, close_all
    from gshard.train.config import ConfigError

    if args.beam is not None and args.beam < 1:
        return _error(f"--beam must be at least 1 (1 = greedy), got {args.beam}")
    try:
        model = load_model(args.workdir)
    except (FileNotFoundError, ConfigError, CheckpointError) as e:
        close_all()
        return _error(str(e))
    beam = model.cfg.eval.beam_size if args.beam is None else args.beam
    for n, line in enumerate(iter(sys.stdin.readline, ""), 1):
        text = line.strip()
        if not text:
            continue
        parts = model.split_long(text)
        if len(parts) > 1:
            print(f"gshard translate: line {n} is longer than the model's "
                  f"{model.max_src_pieces} source pieces: translated in {len(parts)} parts",
                  file=sys.stderr, flush=True)
        print(" ".join(model.translate(parts, beam=beam if beam > 1 else 0)), flush=True)
    return 0
