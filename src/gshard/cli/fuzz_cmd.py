"""`gshard fuzz --cases N --seed S`: a random-program campaign against the unpartitioned run."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("fuzz", help="random annotated programs, partitioned vs unpartitioned",
                       description=__doc__)
    p.add_argument("--cases", type=int, default=200, help="number of programs")
    p.add_argument("--seed", type=int, default=0, help="campaign seed (case i is replayable)")
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a case is a hang")
    p.add_argument("--out", default="fuzz-failures", help="directory for shrunk failing scripts")
    p.add_argument("--no-shrink", action="store_true", help="write failures unshrunk")
    p.add_argument("--json", help="also write the counts to this JSON file")
    p.add_argument("--only", metavar="FAMILY",
                   help="run only the cases with an op of this family (e.g. conv), to replay")
    p.add_argument("--record", metavar="FILE", help="append one JSON line per finished case")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from gshard.testing.fuzz.campaign import FAILURES, campaign

    rep = campaign(args.cases, args.seed, args.jobs, args.out, args.timeout, not args.no_shrink,
                   args.start, only=args.only, record=args.record)
    print(rep.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "start": args.start, "cases": args.cases,
                       "seconds": rep.seconds, "counts": dict(rep.counts),
                       "by_mode": {k: dict(v) for k, v in rep.by_mode.items()},
                       "refusals": dict(rep.refusals),
                       "failures": [list(f) for f in rep.failures]}, f, indent=1)
    return 1 if any(rep.counts[k] for k in FAILURES) else 0
