"""Shared bench helpers: the XLA baseline adapter, HLO collective bytes, interleaved timing.

* `xla_annotations(mesh)`: a context in which every gshard annotation (replicate, split,
  mesh_split, shard -- wherever it is called: test models, gshard.moe, the Transformer) becomes
  `jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(...)))` with the PartitionSpec gshard
  itself resolves for it. Trace the program under `jax.jit` inside the context, on a mesh with Auto
  axis types (`auto_mesh`): XLA's own sharding propagation then partitions the same annotated
  program (the DESIGN §9 baseline). Backward passes: the transpose of with_sharding_constraint is
  the same constraint on the cotangent, as gshard's annotation transpose.
* `hlo_collectives(text)`: collectives of a compiled (SPMD-partitioned) HLO module, with gshard's
  bytes convention (per device: operand bytes; result bytes for all-gather).
* `interleaved(fns, rounds, calls)`: round-robin timing, medians per function and the median of
  the per-round ratios against the first function.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field


def force_cpu_devices(n: int = 8) -> None:
    """Ask XLA for n simulated host devices (call before jax initialises its backends)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import gshard  # noqa: E402
from gshard.testing.xla import (AXES, HloCollective, annotation_pspec, auto_mesh, fmt_counts,  # noqa: E402,F401
                                hlo_collectives, summarize, xla_annotations)

@dataclass
class Built:
    """One compiled program (gshard's or XLA's): call(*placed) and what it cost to build."""
    name: str
    call: callable
    args: tuple                  # flat, placed arguments
    out_tree: object
    partition_s: float           # trace + propagate + partition (gshard) / trace + lower (XLA)
    compile_s: float
    hlo: str
    collectives: list = field(default_factory=list)   # gshard's own records (gshard only)

    def cost(self) -> dict:
        """XLA's cost analysis of the compiled per-device program (flops, bytes accessed) and
        the number of instructions in its entry computation (a proxy for kernel launches)."""
        try:
            ca = self.call.cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        except Exception:  # noqa: BLE001 - optional
            ca = {}
        entry = self.hlo[self.hlo.find("ENTRY"):]
        entry = entry[:entry.find("\n}")]
        ops = sum(1 for ln in entry.splitlines()[1:] if " = " in ln)
        fusions = sum(1 for ln in entry.splitlines() if " fusion(" in ln)
        return dict(flops=float(ca.get("flops", 0.0)),
                    bytes_accessed=float(ca.get("bytes accessed", 0.0)),
                    entry_ops=ops, fusions=fusions)

    def run(self):
        return jax.tree_util.tree_unflatten(self.out_tree, self.call(*self.args))


def build_gshard(fn, mesh, args, in_specs=None) -> Built:
    """gshard.partition(fn, mesh), lowered and compiled for args (placed as gshard wants)."""
    t0 = time.perf_counter()
    low = gshard.partition(fn, mesh, in_specs=in_specs).lower(*args)
    t1 = time.perf_counter()
    leaves = jax.tree_util.tree_leaves(args)
    placed = tuple(low.program.place(leaves))
    t2 = time.perf_counter()
    compiled = low.program.call
    t3 = time.perf_counter()
    b = Built("gshard", compiled, placed, low.out_tree, t1 - t0, t3 - t2, compiled.as_text(),
              list(low.collectives))
    b.lowered = low
    return b


def build_xla(fn, mesh, args, in_shardings=None) -> Built:
    """jax.jit(fn) with gshard annotations as with_sharding_constraint, XLA propagation.

    in_shardings: the arguments' shardings (default: gshard's propagated input shardings are
    passed by the caller so both programs start from the same layout; None = replicated)."""
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    if in_shardings is None:
        in_shardings = [NamedSharding(mesh, P())] * len(leaves)
    in_shardings = [NamedSharding(mesh, s.spec) for s in in_shardings]  # same specs, Auto mesh
    holder = {}

    def flat_fn(*flat):
        out = fn(*jax.tree_util.tree_unflatten(in_tree, flat))
        o, holder["tree"] = jax.tree_util.tree_flatten(out)
        return o

    placed = tuple(jax.device_put(a, s) for a, s in zip(leaves, in_shardings))
    jitted = jax.jit(flat_fn, in_shardings=tuple(in_shardings))
    t0 = time.perf_counter()
    with xla_annotations(mesh):
        lowered = jitted.lower(*placed)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    text = lowered.as_text()
    if "gshard_annotate" in text:
        raise AssertionError("a gshard annotation survived into the XLA baseline")
    return Built("xla", compiled, placed, holder["tree"], t1 - t0, t2 - t1, compiled.as_text())


# ----- comparison and timing -------------------------------------------------------------------
def max_rel_diff(a, b) -> float:
    """max |a-b| / (max |b| + tiny) over all leaves (0.0 = bit-identical)."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size == 0:
            continue
        scale = float(np.max(np.abs(y))) + 1e-30
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def interleaved(fns, rounds: int = 7, calls: int = 5, warmup: int = 2, block_each: bool = True):
    """Time each fn (no args, returns something to block on) round-robin: per round, `calls`
    back-to-back calls of each, the order rotating each round. Returns (medians of per-call
    times, median per-round ratio fn_i/fn_0, relative spreads (max-min)/median of each fn's rounds).
    block_each=False blocks once per round (a GPU keeps its queue full; on the simulated CPU
    devices many in-flight collective programs can deadlock XLA's thread pool)."""
    for f in fns:
        for _ in range(warmup):
            jax.block_until_ready(f())
    per = [[] for _ in fns]
    for r in range(rounds):
        order = list(range(len(fns)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                out = fns[i]()
                if block_each:
                    jax.block_until_ready(out)
            jax.block_until_ready(out)
            per[i].append((time.perf_counter() - t0) / calls)
    meds = [statistics.median(p) for p in per]
    ratios = [statistics.median(a / b for a, b in zip(p, per[0])) for p in per]
    spreads = [(max(p) - min(p)) / statistics.median(p) for p in per]
    return meds, ratios, spreads


def table(rows, headers) -> str:
    cols = [[str(h)] + [str(r[i]) for r in rows] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in col) for col in cols]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa
    out = [line([str(h) for h in headers]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([str(v) for v in r]) for r in rows]
    return "\n".join(out)


def kb(n: int) -> str:
    return f"{n / 1024:,.1f}"


def to_np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


__all__ = ["force_cpu_devices", "auto_mesh", "xla_annotations", "build_gshard", "build_xla",
           "hlo_collectives", "summarize", "fmt_counts", "max_rel_diff", "interleaved", "table",
           "kb", "to_np", "jax", "jnp", "np", "P", "NamedSharding", "gshard"]


def save_json(path, rows) -> None:
    """Write a bench's result rows as JSON (the --json option); nothing without a path."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
