"""Identical layers priced once: the search lowers the program with 1 and 2 layers and
extrapolates to N (DESIGN §13 "search time flat in depth"; the same split as simulate.py's
"pair" mode).

A layer stack is a list or tuple inside an argument whose N >= 3 elements are identical pytrees
(same structure, shapes and dtypes): `params["layers"] = [layer0, layer1, ...]` looped over by
`for layer in params["layers"]`. Every such stack must have the same N. Step time, collective
bytes and peak memory are extrapolated linearly: price(N) = price(1) + (N - 1) * (price(2) -
price(1)); exact for the additive ones, linear for peak activations (saved per layer). The chosen
plans are re-priced on the full program before one is returned, and the gap is reported.
"""
from __future__ import annotations

import jax

MIN_LAYERS = 3


def _identical(items) -> bool:
    first = jax.tree_util.tree_structure(items[0])
    sig = [(tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(items[0])]
    for it in items[1:]:
        if jax.tree_util.tree_structure(it) != first:
            return False
        if [(tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(it)] != sig:
            return False
    return bool(sig)


def _named(tree) -> bool:
    return isinstance(tree, tuple) and hasattr(tree, "_fields")


def stack_lengths(tree, top: bool = True) -> set:
    """The lengths of the layer stacks inside `tree` (the args tuple itself is not one)."""
    out = set()
    if isinstance(tree, dict):
        for v in tree.values():
            out |= stack_lengths(v, False)
    elif isinstance(tree, (list, tuple)):
        if not top and not _named(tree) and len(tree) >= MIN_LAYERS and _identical(list(tree)):
            out.add(len(tree))
        for v in tree:
            out |= stack_lengths(v, False)
    return out


def truncate(tree, k: int, top: bool = True):
    """`tree` with every layer stack cut to its first `k` layers."""
    if isinstance(tree, dict):
        return type(tree)((key, truncate(v, k, False)) for key, v in tree.items())
    if _named(tree):  # a NamedTuple: its fields are not a stack
        return type(tree)(*(truncate(v, k, False) for v in tree))
    if isinstance(tree, (list, tuple)):
        items = list(tree)
        if not top and len(items) >= MIN_LAYERS and _identical(items):
            items = items[:k]
        return type(tree)(truncate(v, k, False) for v in items)
    return tree


def depth_of(args, in_specs) -> int | None:
    """N when the search can price 1- and 2-layer copies instead (no in_specs given, all stacks
    of one length N); None otherwise."""
    if in_specs is not None:
        return None
    lengths = stack_lengths(tuple(args))
    return lengths.pop() if len(lengths) == 1 else None


def full_specs(full_leaves, view_leaves, view_specs, key_of) -> tuple:
    """Each full leaf's spec from the 2-layer view: the same tie key, its occurrence clamped to
    the view's last (layer i >= 1 of N takes layer 1's spec)."""
    by_key: dict = {}
    for leaf, spec in zip(view_leaves, view_specs):
        by_key.setdefault(key_of(leaf), []).append(spec)
    seen: dict = {}
    out = []
    for leaf in full_leaves:
        k = key_of(leaf)
        j = seen.get(k, 0)
        seen[k] = j + 1
        options = by_key[k]
        out.append(options[min(j, len(options) - 1)])
    return tuple(out)
