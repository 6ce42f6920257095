"""Checkpoints of (params, opt_state) through orbax-checkpoint: sharded, atomic, reshardable.

Layout: WORKDIR/checkpoints/step_00000040/ (an orbax CheckpointManager directory: `state` holds
the arrays, `meta` the step's JSON extras). Every process writes only the shards it holds (no
array is gathered onto one host); orbax writes into a temporary directory and renames it into
place when every process is done, so a crash (SIGKILL included) leaves either the old set or the
new one. Saves are asynchronous: training goes on while the arrays are written (`wait` before
exit). `restore_latest` restores onto whatever shardings its target asks for -- another mesh or
process count -- and falls back to the previous checkpoint when the newest one does not read.

A workdir written by the old single-file format (arrays.npz + meta.json) is refused with a clear
error; `gshard train --convert-checkpoints` converts it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

OLD_ARRAYS, OLD_META = "arrays.npz", "meta.json"
_MANAGERS: dict = {}


class CheckpointError(RuntimeError):
    pass


@dataclass
class Restored:
    step: int
    state: Any
    path: Path
    skipped: list          # [(path, reason)] of newer checkpoints that failed to restore
    extra: dict


def ckpt_dir(workdir) -> Path:
    return Path(workdir).resolve() / "checkpoints"


def step_path(workdir, step: int) -> Path:
    return ckpt_dir(workdir) / f"step_{step:08d}"


def list_steps(workdir) -> list[int]:
    d = ckpt_dir(workdir)
    if not d.exists():
        return []
    return sorted(int(p.name[5:]) for p in d.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit())


def _manager(workdir, keep: int = 2):
    import orbax.checkpoint as ocp
    key = (str(ckpt_dir(workdir)), keep)
    if key not in _MANAGERS:
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep or None, step_prefix="step",
                                            step_format_fixed_length=8,
                                            enable_async_checkpointing=True, create=True)
        _MANAGERS[key] = ocp.CheckpointManager(ckpt_dir(workdir), options=opts)
    return _MANAGERS[key]


def save(workdir, step: int, state, *, keep: int = 2, extra: dict | None = None) -> Path:
    """Start writing checkpoint `step` (asynchronously); keep the newest `keep` (0 = all). Call on
    every process: each writes the shards it holds."""
    import orbax.checkpoint as ocp
    _check_not_old(workdir)
    mgr = _manager(workdir, keep)
    mgr.wait_until_finished()  # one save at a time
    if step in mgr.all_steps():  # an unusable one being retrained over
        mgr.delete(step)
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave({"step": step, **(extra or {})})),
             force=True)
    _test_kill_in_save(step)
    return step_path(workdir, step)


def _test_kill_in_save(step: int):
    """Tests only. GSHARD_TEST_SIGKILL_IN_SAVE="STEP": SIGKILL right after checkpoint STEP's
    asynchronous write has started (the arrays half on disk)."""
    import os
    if os.environ.get("GSHARD_TEST_SIGKILL_IN_SAVE") == str(step):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def wait(workdir=None):
    """Block until pending saves (of `workdir`, or all) are on disk."""
    for (d, _), mgr in list(_MANAGERS.items()):
        if workdir is None or d == str(ckpt_dir(workdir)):
            mgr.wait_until_finished()


def close(workdir=None):
    """Finish pending saves and release the managers (of `workdir`, or all)."""
    for key, mgr in list(_MANAGERS.items()):
        if workdir is None or key[0] == str(ckpt_dir(workdir)):
            mgr.wait_until_finished()
            mgr.close()
            del _MANAGERS[key]


def close_all():
    close()


def abstract(tree, shardings=None):
    """ShapeDtypeStructs of `tree` (with the given shardings) as a restore target."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shardings = shardings or [getattr(x, "sharding", None) for x in leaves]
    return jax.tree_util.tree_unflatten(treedef, [
        jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype,
                             sharding=s) for x, s in zip(leaves, shardings)])


def load(workdir, step: int, target) -> tuple[Any, dict]:
    """Checkpoint `step` restored into `target` (arrays or ShapeDtypeStructs with shardings);
    CheckpointError if it does not read or does not fit."""
    import orbax.checkpoint as ocp
    path = step_path(workdir, step)
    if (path / OLD_ARRAYS).exists():
        raise CheckpointError(_old_message(workdir))
    want = [np.shape(x) for x in jax.tree_util.tree_leaves(target)]
    _quiet_abandoned_reads()
    try:
        got = _manager(workdir).restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  (tensorstore / zarr / json errors of many kinds)
        close(workdir)      # a failed restore leaves the manager's threads mid-flight
        raise CheckpointError(_reason(e, path)) from None
    if [np.shape(x) for x in jax.tree_util.tree_leaves(got["state"])] != want:
        raise CheckpointError("its arrays do not fit this model/optimizer (config changed?)")
    return got["state"], dict(got["meta"] or {})


def _quiet_abandoned_reads():
    """A failed restore leaves TensorStore reads in flight whose callbacks then hit orbax's closed
    asyncio loop ("Event loop is closed", printed as an ignored exception, sometimes while the
    restore is still failing); the checkpoint is reported unusable by us, so that one message is
    dropped (every other ignored exception still prints)."""
    prev = sys.unraisablehook
    if getattr(prev, "_gshard_quiet", False):
        return

    def hook(u):
        if isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value):
            return
        prev(u)
    hook._gshard_quiet = True
    sys.unraisablehook = hook


REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA")     # what every orbax step holds


def _reason(e: Exception, path: Path) -> str:
    """Why a checkpoint did not read, in one short line (never a TensorStore spec repr)."""
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    text = str(e)
    if isinstance(e, FileNotFoundError) or "NOT_FOUND" in text or "not found" in text.lower():
        return "a file of it is missing"
    if isinstance(e, (ValueError, KeyError)) and "{" not in text and len(text) < 200:
        return f"it does not read: {text.splitlines()[0] if text else type(e).__name__}"
    return "its files are truncated or corrupt"


def restore_latest(workdir, target, *, log=None) -> Restored | None:
    """The newest checkpoint that restores, or None when the workdir has none. Each one skipped
    is reported through `log` (default: stderr); CheckpointError when there are checkpoints but
    none of them restores."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _check_not_old(workdir)
    skipped = []
    for step in reversed(list_steps(workdir)):
        path = step_path(workdir, step)
        try:
            state, extra = load(workdir, step, target)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            log(f"warning: checkpoint {path} is unusable ({e}); trying the previous one")
            continue
        return Restored(step, state, path, skipped, extra)
    if skipped:
        raise CheckpointError(f"no checkpoint in {ckpt_dir(workdir)} restores (" + "; ".join(
            f"{p.name}: {why}" for p, why in skipped) + ")")
    return None


# ----- the old single-file format ---------------------------------------------------------------
def _old_steps(workdir) -> list[int]:
    return [s for s in list_steps(workdir) if (step_path(workdir, s) / OLD_ARRAYS).exists()]


def _old_message(workdir) -> str:
    return (f"{ckpt_dir(workdir)} holds checkpoints in gshard's old single-file format "
            f"(arrays.npz); convert them with: gshard train --workdir {workdir} "
            f"--convert-checkpoints")


def _check_not_old(workdir):
    if _old_steps(workdir):
        raise CheckpointError(_old_message(workdir))


def convert_old(workdir, template) -> list[int]:
    """Rewrite every old-format checkpoint of `workdir` (arrays.npz in the flat leaf order of
    `template`) in the orbax format; returns the converted steps."""
    import shutil
    steps = _old_steps(workdir)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    for step in steps:
        old = step_path(workdir, step)
        with np.load(old / OLD_ARRAYS) as z:
            arrays = [z[f"leaf_{i}"] for i in range(len(leaves))]
        aside = old.with_name(old.name + ".old-format")
        shutil.move(old, aside)
        save(workdir, step, jax.tree_util.tree_unflatten(treedef, arrays), keep=0,
             extra={"converted_from": str(aside)})
        wait(workdir)
    return steps
