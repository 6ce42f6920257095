"""`gshard calibrate`: measure this host's simulated CPU devices and save a hardware profile.

    gshard calibrate                 # 8 devices, ~1 minute, saved where hardware="cpu" looks
    gshard calibrate --devices 4 --out my-cpu.json --quick

The profile (per-call and per-kernel host time, a matmul rate grid, memory bandwidth, and each
collective's time by group size and bytes, all measured with XLA on a real mesh) is what
`gshard.autoshard(..., hardware="cpu")`, `gshard.cost.estimate(..., hardware="cpu")` and
`gshard autoshard --hardware cpu` use; without one they fall back to a quick numpy estimate.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub):
    p = sub.add_parser("calibrate", help="measure this host and save the CPU cost profile",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=8, help="simulated devices (default 8)")
    p.add_argument("--out", help="profile path (default: where hardware='cpu' looks)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (~10 s)")
    p.set_defaults(func=run)


def _summary(profile: dict, path) -> str:
    c = profile["collectives"]
    n = str(profile["num_devices"])
    lines = [f"saved {path} ({profile['seconds']:.0f} s of measuring)",
             f"  call {profile['launch_s'] * 1e6:.0f} us, kernel {profile['op_overhead_s'] * 1e6:.1f} us, "
             f"matmul {profile['flops_f32'] / 1e9:.1f} GFLOP/s and memory "
             f"{profile['hbm_bw'] / 1e9:.2f} GB/s per device"]
    for kind, by_n in c.items():
        rows = by_n.get(n) or next(iter(by_n.values()))
        lines.append(f"  {kind:<19}" + "  ".join(f"{b / 1024:.0f} KiB {t * 1e6:.0f} us"
                                                 for b, t in rows))
    return "\n".join(lines)


def run(args) -> int:
    from gshard.cost import calibrate
    try:
        kw = dict(calibrate.QUICK) if args.quick else {}
        profile = calibrate.measure(args.devices, **kw)
    except ValueError as e:
        print(f"gshard calibrate: error: {e}", file=sys.stderr)
        return 2
    path = calibrate.save(profile, args.out)
    print(_summary(profile, path))
    cpus = profile["host"]["cpus"]
    if profile.get("load_average", 0.0) > cpus / 2:
        print(f"warning: the host was busy while measuring (load average "
              f"{profile['load_average']:.1f} on {cpus} cores): rates are lower than an idle "
              f"host's; run `gshard calibrate` again when it is quiet", file=sys.stderr)
    return 0
