"""`gshard simulate`: the paper's scaling study on an AbstractMesh (no devices).

    gshard simulate --preset paper-36L --devices 128,512,2048 --hardware tpu-v3 \\
        --json sim.json --png sim.png

For each device count D: E = D experts (one per device), the paper's 1-D mesh, G = D groups and a
fixed per-device batch; one training step is lowered with ShapeDtypeStruct inputs and priced by
the cost model. See docs/simulation.md and gshard.simulate.
"""
from __future__ import annotations

import argparse
import sys


def _devices(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices {text!r}: comma-separated integers, "
                                         f"e.g. 128,512,2048") from None
    if not out or any(d < 2 for d in out):
        raise argparse.ArgumentTypeError(f"--devices {text!r}: every count must be >= 2")
    return out


def hardware_names() -> list[str]:
    from gshard.cost.hardware import PRESETS
    return sorted(PRESETS) + ["cpu"]


def add_parser(sub):
    p = sub.add_parser("simulate", help="predict step time and memory from 128 to 2048 devices",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper-36L", help="model preset (paper-12L, paper-36L, ...)")
    p.add_argument("--devices", type=_devices, default=[128, 512, 2048],
                   help="device counts (= experts), e.g. 128,512,2048")
    p.add_argument("--hardware", default="tpu-v3", help=f"one of {', '.join(hardware_names())} "
                   "(cpu: this machine, measured)")
    p.add_argument("--batch-per-device", type=int, default=2, help="sentence pairs per device")
    p.add_argument("--length", type=int, default=512, help="source and target length")
    p.add_argument("--optimizer", default="adafactor", choices=("adafactor", "adam"))
    p.add_argument("--mode", default="pair", choices=("pair", "full"),
                   help="pair: lower 0 and 2+2 layers and scale (fast); full: lower every layer")
    p.add_argument("--step", default="onehot", choices=("onehot", "library"),
                   help="loss formulation (see gshard.simulate)")
    p.add_argument("--capacity", default="paper", choices=("paper", "reference"),
                   help="paper: C = 2S/E; reference: at least 4, multiple of 4")
    p.add_argument("--overlap", action="store_true", help="overlap collectives with compute")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout rate (the paper: 0.1)")
    p.add_argument("--expert-axis", type=int, default=0,
                   help="0: the paper's 1-D mesh (experts = devices); N: a data x expert mesh "
                        "with N experts, each replicated over data")
    p.add_argument("--no-shard-optimizer", action="store_true",
                   help="keep optimizer state replicated over the data axes (library step)")
    p.add_argument("--policy", default="random", choices=("all", "random", "sampling"),
                   help="second-expert policy (the paper: random)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--png", help="write a plot here")
    p.set_defaults(func=run)


def run(args) -> int:
    from gshard import simulate as sim

    try:
        if args.hardware.lower() not in hardware_names():
            raise ValueError(f"--hardware {args.hardware!r} is not known; use one of "
                             f"{', '.join(hardware_names())}")
        s = sim.SimSettings(preset=args.preset, hardware=args.hardware,
                            per_device_batch=args.batch_per_device, length=args.length,
                            optimizer=args.optimizer, mode=args.mode, step=args.step,
                            capacity=args.capacity, overlap=args.overlap,
                            dropout=args.dropout, second_expert_policy=args.policy,
                            expert_axis=args.expert_axis,
                            shard_optimizer=not args.no_shard_optimizer)
        sim.model_config(s, args.devices[0])
    except ValueError as e:
        print(f"gshard simulate: error: {e}", file=sys.stderr)
        return 2
    print(f"# simulate {s.preset} on {s.hardware}: devices {args.devices}, experts = devices, "
          f"1-D mesh, {2 * s.per_device_batch * s.length} tokens/device, mode {s.mode}, "
          f"dropout {s.dropout}, {s.second_expert_policy} second expert",
          flush=True)
    rows = sim.simulate(args.devices, s, progress=lambda m: print(m, flush=True))
    print(sim.format_table(rows))
    if args.json:
        sim.write_json(rows, args.json, s)
        print(f"wrote {args.json}")
    if args.png:
        sim.plot(rows, args.png, f"{s.preset} on {s.hardware} (experts = devices)")
        print(f"wrote {args.png}")
    return 0
