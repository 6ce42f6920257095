"""Version-dependent JAX lookups in one place (jax 0.10 on Python 3.11, jax 0.11 on 3.12)."""
from __future__ import annotations

from jax.extend.core import primitives as _P


def primitive(name: str):
    """The primitive object `name_p`, wherever this JAX version keeps it (None if absent)."""
    p = getattr(_P, f"{name}_p", None)
    if p is not None:
        return p
    from jax._src.lax import lax as _lax
    return getattr(_lax, f"{name}_p", None)
