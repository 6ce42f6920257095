"""No import cycles in src/gshard: every import (top-level or inside a function) is an edge."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# removed when cli/run_cmd no longer imports cli/train_cmd
ALLOWED_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/gshard (a package is its __init__)."""
    out = {}
    for path in sorted((SRC / "gshard").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node, name: str, is_pkg: bool, known) -> list[str]:
    """The gshard modules one Import / ImportFrom statement of module `name` loads."""
    if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = name.split(".") if is_pkg else name.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([node.module] if node.module else []))
        # `from pkg import sub` loads the submodule pkg.sub; `from mod import obj` loads mod
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    return [_known_prefix(w, known) for w in wanted if _known_prefix(w, known)]


def _known_prefix(dotted: str, known) -> str | None:
    parts = dotted.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) if parts else None


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):  # every import statement, at any depth (functions too)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(node, name, is_pkg, mods))
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_top_level_relative_and_function_level_imports():
    g = import_graph()
    assert "gshard.spmd.shard" in g["gshard.spmd.reshard"]             # from .shard import Local
    assert "gshard.collectives" in g["gshard.spmd.local"]              # from .. import collectives
    assert "gshard.models.presets" in g["gshard.simulate"]             # inside model_config()
    assert "gshard.models.config" in g["gshard.train.config"]
    assert "gshard.spmd.local" in g["gshard.registry"]                 # under TYPE_CHECKING: counts


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_src():
    found = cycles(import_graph())
    unexpected = [sorted(c) for c in found if c not in ALLOWED_CYCLES]
    assert not unexpected, f"import cycles in src/gshard: {unexpected}"
