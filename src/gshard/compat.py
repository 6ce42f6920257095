"""Version-dependent JAX lookups in one place (jax 0.10 on Python 3.11, jax 0.11 on 3.12)."""
from __future__ import annotations



def primitive(name: str):
    """The primitive object `name_p`, wherever this JAX version keeps it (None if absent)."""
    import importlib

    for mod in ("jax.extend.core.primitives", "jax._src.lax.lax", "jax._src.random.prng", "jax._src.prng",
                "jax._src.pjit", "jax._src.random.core",
                "jax._src.shard_map", "jax.experimental.shard_map"):
        try:
            p = getattr(importlib.import_module(mod), f"{name}_p", None)
        except ImportError:  # pragma: no cover - module moved in this JAX version
            continue
        if p is not None:
            return p
    return None


def scan_counts(params) -> tuple[int, int]:
    """(number of constants, number of carries) of a scan equation: jax 0.10 keeps them as
    num_consts / num_carry, jax 0.11 as the first two groups of the flat tree ft_in."""
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    ft = params["ft_in"]  # a flat tree of (consts, carry, xs) leaves
    groups = ft.update(list(range(len(list(ft.vals))))).unpack()
    return len(list(groups[0].vals)), len(list(groups[1].vals))


def broadcast_prefix(prefix, full, is_leaf=None) -> list:
    """The leaves of `prefix` repeated over the subtrees of `full` they cover (jax.jit's rule for
    in_shardings prefixes)."""
    from jax._src.tree_util import broadcast_prefix as _bp

    return _bp(prefix, full, is_leaf=is_leaf)
