"""`gshard rules`: every primitive with its propagation and partition rules."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("rules", help="list every primitive with its propagation and partition rules")
    p.set_defaults(func=run)


def rule_table() -> list[tuple[str, str, str, str]]:
    """(primitive, propagation rule, levels fwd/bwd, partition rule) for every registered one."""
    from gshard import api  # noqa: F401  (registers the rules)
    from gshard.propagate.engine import RULES as PROP
    from gshard.spmd.table import RULES as PART

    rows = []
    for prim in sorted(set(PROP) | set(PART), key=lambda p: p.name):
        prop, part = PROP.get(prim), PART.get(prim)
        levels = "per-eqn" if prop and prop.levels else (f"{prop.fwd_level}/{prop.bwd_level}" if prop else "-")
        rows.append((prim.name, f"{prop.fn.__module__.split('.')[-1]}.{prop.fn.__name__}" if prop else "-",
                     levels, f"{part.__module__.split('.')[-1]}.{part.__name__}" if part else "-"))
    return rows


def run(args) -> int:
    rows = rule_table()
    widths = [max(len(r[i]) for r in rows + [("primitive", "propagation", "levels", "partition")])
              for i in range(4)]
    header = ("primitive", "propagation", "levels", "partition")
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\n{len(rows)} primitives")
    return 0
