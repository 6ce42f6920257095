"""`gshard` / `python -m gshard`: run (the main job), rules, data, and the tools around them."""
from __future__ import annotations

import argparse
import importlib
import os

SUBCOMMANDS = {  # name -> module with add_parser(subparsers) and run(args)
    "run": "gshard.cli.run_cmd",
    "rules": "gshard.cli.rules_cmd",
    "data": "gshard.cli.data_cmd",
    "explain": "gshard.cli.explain_cmd",
    "simulate": "gshard.cli.simulate_cmd",
    "train": "gshard.cli.train_cmd",
    "eval": "gshard.cli.eval_cmd",
    "translate": "gshard.cli.translate_cmd",
    "fuzz": "gshard.cli.fuzz_cmd",
    "autoshard": "gshard.cli.autoshard_cmd",
    "calibrate": "gshard.cli.calibrate_cmd",
}


def _ensure_devices(n: int = 8):
    """Simulated CPU devices must be requested before JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    from jax._src import xla_bridge  # XLA_FLAGS is read when the first backend starts

    started = getattr(xla_bridge, "backends_are_initialized", lambda: False)()
    if "xla_force_host_platform_device_count" not in flags and not started:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the argument and where the fix is, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from gshard import __version__
    parser = OneLineParser(prog="gshard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gshard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, mod in SUBCOMMANDS.items():
        try:
            importlib.import_module(mod).add_parser(sub)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return parser


def main(argv=None) -> int:
    _ensure_devices()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
