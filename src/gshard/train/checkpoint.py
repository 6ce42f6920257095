"""Atomic, verified checkpoints of (params, opt_state) as numpy leaves.

Layout: WORKDIR/checkpoints/step_00000040/{arrays.npz, meta.json}. A checkpoint is written into
a temporary sibling directory, fsynced, then renamed into place (atomic on POSIX), so a crash
leaves either the old set or the new one. meta.json records the step, the leaf shapes and the
sha256 of arrays.npz; `restore_latest` verifies it and, when the newest checkpoint is corrupt or
partial, reports that and falls back to the previous good one.

Leaves are stored flat (leaf_0, leaf_1, ...) and restored into the structure of a freshly
initialised (params, opt_state), so no pickled treedefs are needed. Float32 is stored bit-exact,
which is what makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

ARRAYS, META = "arrays.npz", "meta.json"


class CheckpointError(RuntimeError):
    pass


@dataclass
class Restored:
    step: int
    state: Any
    path: Path
    skipped: list          # [(path, reason)] of newer checkpoints that failed verification


def ckpt_dir(workdir) -> Path:
    return Path(workdir) / "checkpoints"


def step_path(workdir, step: int) -> Path:
    return ckpt_dir(workdir) / f"step_{step:08d}"


def list_steps(workdir) -> list[int]:
    d = ckpt_dir(workdir)
    if not d.exists():
        return []
    out = []
    for p in d.iterdir():
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
            out.append(int(p.name[5:]))
    return sorted(out)


def _sha256(path: Path) -> str:
    from ..data.manifest import sha256_file
    return sha256_file(path)


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def host_leaves(tree) -> list[np.ndarray]:
    """Every leaf as a host numpy array (gathered across processes when needed)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        leaves = [x if getattr(x, "is_fully_addressable", True) else
                  multihost_utils.process_allgather(x, tiled=True) for x in leaves]
    return [np.asarray(x) for x in leaves]


def save(workdir, step: int, state, *, keep: int = 2, extra: dict | None = None) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` (0 = all). Call on every
    process (leaves are gathered collectively); only process 0 writes."""
    leaves = host_leaves(state)
    final = step_path(workdir, step)
    if jax.process_index() != 0:
        return final
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / ARRAYS, **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    meta = {"step": step, "sha256": _sha256(tmp / ARRAYS), "num_leaves": len(leaves),
            "shapes": [list(x.shape) for x in leaves], "dtypes": [str(x.dtype) for x in leaves],
            **(extra or {})}
    (tmp / META).write_text(json.dumps(meta))
    for p in (tmp / ARRAYS, tmp / META, tmp):
        _fsync(p)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(final.parent)
    _prune(workdir, keep)
    return final


def _prune(workdir, keep: int):
    steps = list_steps(workdir)
    for s in (steps[:-keep] if keep > 0 else []):
        shutil.rmtree(step_path(workdir, s), ignore_errors=True)


def load(path: Path, template) -> Any:
    """The checkpoint at `path` in the structure of `template`; CheckpointError if it is
    missing, partial, corrupt or does not fit the template."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable {META}: {e}") from None
    if not (path / ARRAYS).exists():
        raise CheckpointError(f"{ARRAYS} is missing")
    if _sha256(path / ARRAYS) != meta.get("sha256"):
        raise CheckpointError(f"{ARRAYS} does not match its sha256 (corrupt or partial)")
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        with np.load(path / ARRAYS) as z:
            arrays = [z[f"leaf_{i}"] for i in range(meta["num_leaves"])]
    except Exception as e:  # noqa: BLE001  (zip/npy errors of many kinds)
        raise CheckpointError(f"cannot read {ARRAYS}: {e}") from None
    if len(arrays) != len(leaves) or any(a.shape != np.shape(t) for a, t in zip(arrays, leaves)):
        raise CheckpointError("its arrays do not fit this model/optimizer (config changed?)")
    return jax.tree_util.tree_unflatten(treedef, arrays)


def restore_latest(workdir, template, *, log=None) -> Restored | None:
    """The newest checkpoint that verifies, or None when there is none. Every one skipped is
    reported through `log` (default: stderr)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    skipped = []
    for step in reversed(list_steps(workdir)):
        path = step_path(workdir, step)
        try:
            state = load(path, template)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            log(f"warning: checkpoint {path} is unusable ({e}); trying the previous one")
            continue
        return Restored(step, state, path, skipped)
    if skipped:
        log("warning: no usable checkpoint left; starting from scratch")
    return None
