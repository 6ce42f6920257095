"""User-facing errors: what is wrong in the user's terms, where, and how to fix it."""
from __future__ import annotations

import os
import traceback

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class GShardError(ValueError):
    """A problem with the user's program, annotations or mesh (never an internal bug)."""


class AnnotationError(GShardError):
    """A sharding annotation that cannot be applied to its tensor or mesh."""


class UnsupportedPrimitiveError(GShardError):
    """A primitive with no propagation or partition rule."""


def user_frame() -> str:
    """The innermost stack frame outside gshard and JAX, as 'file:line (function)'."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path.startswith(_PKG_DIR) or f"{os.sep}jax{os.sep}" in path or "jaxlib" in path:
            continue
        if path.startswith("<frozen") or f"{os.sep}contextlib.py" in path:
            continue
        return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "<unknown>"


def source_line(source_info) -> str:
    """The user's source line of a jaxpr equation's `source_info`."""
    from jax._src import source_info_util

    try:
        return source_info_util.summarize(source_info)
    except Exception:  # pragma: no cover - defensive: jax internals changed
        return "<unknown>"


def fail(kind: type[GShardError], what: str, *, where: str | None = None, fix: str | None = None):
    """Raise `kind` with a message of the form 'what [at where]. Fix: fix'."""
    msg = what
    if where:
        msg += f"\n  at {where}"
    if fix:
        msg += f"\n  fix: {fix}"
    raise kind(msg)
