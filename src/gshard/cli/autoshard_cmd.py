"""`gshard autoshard`: let gshard choose the input shardings of a function.

    gshard autoshard MODULE:FUNCTION --mesh data=2,model=4 --args "f32[64,128] f32[128,512]"
    gshard autoshard mymod:step --mesh x=2048 --args "..." --hardware tpu-v3 --memory-limit 16GiB

Prints the in_specs to pass to gshard.partition, the predicted step time, peak memory and
collective bytes per device, every decision against its runner-up, and the best candidates.
A mesh larger than the devices present is an AbstractMesh (planned and lowered, not run).
"""
from __future__ import annotations

import argparse
import json
import re
import sys

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(text: str) -> int:
    """``"16GiB"`` -> 17179869184; ``"512MB"``, ``"1e9"`` and plain byte counts too."""
    m = _SIZE.match(text or "")
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"--memory-limit {text!r} is not a size; write e.g. 16GiB, 512MiB, "
                         f"8GB or a number of bytes")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"--memory-limit {text!r} must be positive")
    return value


def add_parser(sub):
    p = sub.add_parser("autoshard", help="search the sharding of a function (in_specs)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="MODULE:FUNCTION")
    p.add_argument("--mesh", required=True, help="axis sizes, e.g. data=2,model=4")
    p.add_argument("--args", default="", help='input shapes, e.g. "f32[8,16] f32[16,32]"')
    p.add_argument("--hardware", default="cpu",
                   help="cost-model profile: cpu (this host: see gshard calibrate), tpu-v3, "
                        "h100, h200, or a .json profile from gshard calibrate --out")
    p.add_argument("--memory-limit", help="bytes per device, e.g. 16GiB (default: the "
                                          "hardware profile's memory per device)")
    p.add_argument("--json", help="also write the plan (specs, predictions, candidates) here")
    p.set_defaults(func=run)


def run(args) -> int:
    import gshard
    from gshard.cli.explain_cmd import SpecError, build_mesh, load_function, parse_args_spec
    from gshard.errors import GShardError

    try:
        limit = parse_bytes(args.memory_limit) if args.memory_limit else None
        mesh = build_mesh(args.mesh)
        fn = load_function(args.target)
        fargs = parse_args_spec(args.args)
    except (SpecError, ImportError, AttributeError, ValueError) as e:
        print(f"gshard autoshard: error: {e}", file=sys.stderr)
        return 2
    try:
        plan = gshard.autoshard(fn, mesh, *fargs, hardware=args.hardware, memory_limit=limit)
    except GShardError as e:
        print(f"gshard autoshard: error: {e}", file=sys.stderr)
        return 2
    print(f"# {args.target} on mesh {args.mesh}")
    print(f"in_specs = {plan.in_specs}")
    print(plan.explain())
    if args.json:
        _write_json(plan, args.json)
    return 0


def _write_json(plan, path: str):
    doc = {"in_specs": [str(s) for s in plan.in_specs], "predicted": plan.predicted,
           "search_seconds": plan.search_seconds, "mesh": plan.mesh, "hardware": plan.hardware,
           "memory_limit": plan.memory_limit, "measured_peak_bytes": plan.measured_peak_bytes,
           "candidates": plan.candidates}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
