"""`gshard rules`: every primitive with its propagation and partition rules."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("rules", help="list every primitive with its propagation and partition rules")
    p.set_defaults(func=run)


def rule_table() -> list[tuple[str, str, str, str]]:
    """(primitive, propagation rule, levels fwd/bwd, partition rule) for every registered one."""
    from gshard import api  # noqa: F401  (registers the rules)
    from gshard.registry import RULES

    rows = []
    for prim in sorted(RULES, key=lambda p: p.name):
        r = RULES[prim]
        levels = "per-eqn" if r.levels else f"{r.fwd_level}/{r.bwd_level}"
        rows.append((prim.name, _name(r.prop), levels, _name(r.part)))
    return rows


def _name(fn) -> str:
    return f"{fn.__module__.split('.')[-1]}.{fn.__name__}"


def run(args) -> int:
    rows = rule_table()
    widths = [max(len(r[i]) for r in rows + [("primitive", "propagation", "levels", "partition")])
              for i in range(4)]
    header = ("primitive", "propagation", "levels", "partition")
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\n{len(rows)} primitives")
    return 0
