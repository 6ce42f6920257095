"""User-facing errors: what is wrong in the user's terms, where, and how to fix it."""
from __future__ import annotations

import os
import traceback

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
# The library's own models are user code: their lines are what explain and errors report.
USER_CODE = ("models", "moe", "train", "evaluate")


def is_machinery(path: str) -> bool:
    """A file of gshard's own machinery (not its models): never reported as the user's line."""
    path = os.path.abspath(path)
    if not path.startswith(_PKG_DIR + os.sep):
        return False
    return path[len(_PKG_DIR) + 1:].split(os.sep)[0].split(".")[0] not in USER_CODE


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
        if is_machinery(path) or f"{os.sep}jax{os.sep}" in path or "jaxlib" in path:
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
