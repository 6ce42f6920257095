"""Run one program partitioned and unpartitioned and classify the outcome.

Classes: "ok"; "wrong" (gshard differs from both `jax.jit` and eager execution); "tie" (the first
differing equation is a sort / argmax / comparison whose inputs agree within float tolerance:
a tie broken the other way, not a partitioning error); "xla_reference"
(gshard agrees with eager but not with `jax.jit`: XLA's own bug in the reference; or NaN/inf
placed differently and gshard agrees with the same program whose convolutions pad explicitly:
XLA:CPU's convolution skips its image padding for some shapes and multiplies it in for others,
so 0 * NaN at the padding is not defined by the reference); "unstable"
(jit and eager disagree with each other beyond tolerance: a numerically fragile program, no
verdict); "refused" (a GShardError: checked to name the user's line); "crash" (any other error in
gshard, internal invariants included); "invalid" (JAX itself rejects the program).
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from collections import Counter

import jax
import numpy as np

from gshard.errors import GShardError

from .program import Program

RTOL = ATOL = 2e-3
COLLECTIVE_PRIMS = {"psum", "pmax", "pmin", "all_gather", "reduce_scatter", "all_to_all", "ppermute",
                    "psum_scatter", "psum_invariant", "pmax_p", "all_gather_invariant"}


@dataclass(frozen=True)
class Outcome:
    klass: str
    detail: str = ""


def run_case(prog: Program) -> Outcome:
    try:
        ref_target, args, _ = prog.build(reference=True)
        ref = jax.jit(ref_target)(*args)
        jax.block_until_ready(ref)
        target, _, mesh = prog.build()
    except Exception as e:  # noqa: BLE001
        return Outcome("invalid", f"{type(e).__name__}: {e}"[:2000])
    try:
        run, pf, _ = prog.build_gshard()
        got = run(*args)
        low = pf.lower(*args)
    except GShardError as e:
        return _refused(e)
    except Exception as e:  # noqa: BLE001
        return Outcome("crash", "".join(traceback.format_exception(e))[-4000:])
    err = mismatch(got, ref)
    if err:
        return _verdict(ref_target, args, got, ref, err, mesh)
    bad = collective_records_mismatch(low)
    return Outcome("crash", bad) if bad else Outcome("ok")


def _refused(e: GShardError) -> Outcome:
    msg = str(e)
    if "\n  at " not in msg or "<unknown>" in msg or msg.rstrip().endswith("at"):
        return Outcome("crash", f"refusal without the user's line: {msg}")
    return Outcome("refused", msg)


def _verdict(target, args, got, ref, err: str, mesh) -> Outcome:
    with jax.disable_jit():
        try:
            eager = target(*[jax.numpy.asarray(a) for a in args])  # numpy has no .at[]
        except Exception as e:  # noqa: BLE001
            return Outcome("wrong", f"{err} (eager failed: {e})")
    if mismatch(eager, ref) and mismatch(got, eager):
        return Outcome("unstable", f"jit and eager disagree: {mismatch(eager, ref)}; gshard: {err}")
    if not mismatch(got, eager):
        return Outcome("xla_reference", f"gshard == eager, jax.jit differs: {err}")
    if "NaN" in err and not mismatch(got, jax.jit(explicit_padding(target))(*args)):
        return Outcome("xla_reference", f"gshard == the convolutions padded explicitly, jax.jit "
                                        f"skips the padding (0 * NaN): {err}")
    tie = _tie_break(target, args, mesh)
    if tie:
        return Outcome("tie", f"{err}; {tie}")
    return Outcome("wrong", err)


def explicit_padding(fn):
    """`fn` with every top-level convolution's padding and input dilation done by lax.pad, the
    convolution then VALID: the definition of a padded convolution, IEEE 0 * NaN included."""
    def run(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _eval(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), out)
    return run


def _eval(jaxpr, consts, args):
    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
    read = lambda v: v.val if hasattr(v, "val") else env[v]  # noqa: E731 - a Literal or a Var
    for e in jaxpr.eqns:
        ins = [read(v) for v in e.invars]
        if e.primitive.name in ("pjit", "jit"):
            outs = _eval(e.params["jaxpr"].jaxpr, e.params["jaxpr"].consts, ins)
        elif e.primitive.name == "conv_general_dilated":
            outs = [_conv_padded(e, *ins)]
        else:
            outs = e.primitive.bind(*ins, **e.params)
            outs = outs if e.primitive.multiple_results else [outs]
        env.update(zip(e.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _conv_padded(e, lhs, rhs):
    from jax import lax
    p, spatial = e.params, e.params["dimension_numbers"].lhs_spec[2:]
    config = [(0, 0, 0)] * lhs.ndim
    for k, dim in enumerate(spatial):
        config[dim] = (*p["padding"][k], p["lhs_dilation"][k] - 1)
    lhs = lax.pad(lhs, np.zeros((), lhs.dtype), config)
    n = len(spatial)
    return e.primitive.bind(lhs, rhs, **dict(p, padding=((0, 0),) * n, lhs_dilation=(1,) * n))


DISCRETE = {"sort", "argmax", "argmin", "top_k", "eq", "ne", "lt", "le", "gt", "ge", "floor",
            "ceil", "round", "sign", "convert_element_type"}


def _tie_break(target, args, mesh) -> str:
    """'' unless the first equation whose result differs is a discrete one (sort, argmax,
    comparison, float -> int) fed with values equal within float tolerance: a tie broken the
    other way by float reassociation, not a wrong partition."""
    from gshard.testing import first_divergence
    try:
        first = first_divergence(target, mesh, *args, atol=1e-4)
    except Exception:  # noqa: BLE001 - no verdict: keep "wrong"
        return ""
    if first is None or first[1] not in DISCRETE or first[4]:
        return ""  # bit-exact inputs and still a different result: a real error
    return f"first divergence at #{first[0]} {first[1]} ({first[2]}) with its inputs equal within float tolerance, not bit for bit"


def mismatch(got, ref) -> str:
    """'' when every leaf matches (NaNs at the same places), else what differs."""
    a_leaves, b_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)
    if len(a_leaves) != len(b_leaves):
        return f"{len(a_leaves)} outputs, expected {len(b_leaves)}"
    for k, (a, b) in enumerate(zip(a_leaves, b_leaves)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {k}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if not np.issubdtype(b.dtype, np.floating):
            if not np.array_equal(a, b):
                return f"output {k}: {int(np.sum(a != b))} of {b.size} elements differ"
            continue
        x, y = a.astype(np.float64), b.astype(np.float64)
        nan = np.isnan(x) | np.isnan(y)
        if np.any(np.isnan(x) != np.isnan(y)):
            return f"output {k}: NaN at different places"
        fin = np.where(nan, 0, y)
        scale = max(1.0, float(np.max(np.abs(fin[np.isfinite(fin)]), initial=0.0)))
        diff = np.where(nan | (x == y), 0.0, np.abs(x - y))
        bad = diff > ATOL * scale + RTOL * np.abs(fin)
        if np.any(bad):
            return f"output {k}: max error {float(np.max(diff)):.4g} (scale {scale:.3g})"
    return ""


def collective_records_mismatch(low) -> str:
    """'' when `low.collectives` names exactly the collectives of the per-device program."""
    seen = Counter()
    _count(low.per_device_jaxpr.jaxpr, seen)
    if sum(seen.values()) != len(low.collectives):
        return (f"per-device program has {sum(seen.values())} collectives ({dict(seen)}) but "
                f"{len(low.collectives)} are recorded")
    return ""


def _count(jaxpr, seen: Counter):
    from jax.extend.core import jaxprs_in_params
    for e in jaxpr.eqns:
        if e.primitive.name in COLLECTIVE_PRIMS:
            seen[e.primitive.name] += 1
        for sub in jaxprs_in_params(e.params):
            _count(sub, seen)
