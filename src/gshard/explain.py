"""The explain view: every value's spec with its provenance, every collective with its reason."""
from __future__ import annotations

from collections import Counter

from .trace.graph import Value


def _value_lines(low, arg_names=None) -> list[str]:
    prop, lines = low.prop, []
    for i, v in enumerate(low.graph.invars):
        name = f" {arg_names[i]}" if arg_names and i < len(arg_names) else ""
        lines.append(f"  in[{i}]{name} {v.aval.str_short()}: {prop.spec(v)}"
                     f"  <- {prop.why.get(v, '')}")
    for e in low.graph.eqns:
        for o in e.outputs:
            lines.append(f"  #{e.index} {e.prim.name} -> {o.aval.str_short()}: {prop.spec(o)}"
                         f"  <- {prop.why.get(o, '')}")
    return lines


def explain(low, *, values: bool = True, arg_names=None) -> str:
    """The explain view. ``values=False`` omits the per-value listing (inputs and outputs
    stay); ``arg_names``: a name per flattened input, shown next to ``in[i]``."""
    mesh = low.mesh
    out = [f"Mesh {mesh.describe()} ({mesh.size} devices)"]
    if mesh.origin and any(len(sub) > 1 for _, sub in mesh.origin):
        out.append("  refined axes: " + ", ".join(f"{o} -> {list(s)}" for o, s in mesh.origin
                                                    if len(s) > 1))
    out.append("Values (spec <- provenance):")
    lines = _value_lines(low, arg_names)
    if not values:
        n_in = len(low.graph.invars)
        lines = lines[:n_in] + [f"  ... {len(lines) - n_in} equation outputs omitted"]
    out += lines
    for i, (v, s) in enumerate(zip(low.graph.outvars, low.out_specs)):
        shape = v.aval.str_short() if isinstance(v, Value) else "literal"
        out.append(f"  out[{i}] {shape}: {s}")
    counts = Counter(c.kind for c in low.collectives)
    total = sum(c.bytes for c in low.collectives)
    out.append(f"Collectives: {len(low.collectives)} ({dict(counts)}), {total:,} bytes/device")
    for c in low.collectives:
        out.append(f"  {c}")
    warns = [c for c in low.collectives if c.full_replication]
    for c in warns:
        out.append(f"WARNING: full replication of {c.dtype}{list(c.shape)} at {c.source}: {c.reason}")
    t = low.timings
    out.append(f"Partitioning took {low.partition_seconds * 1e3:.1f} ms "
               f"(trace {t.get('trace_s', 0) * 1e3:.1f}, propagate {t.get('propagate_s', 0) * 1e3:.1f},"
               f" partition {t.get('partition_s', 0) * 1e3:.1f})")
    return "\n".join(out)
