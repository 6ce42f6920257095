"""A partitioned function under JAX's transforms: traced inside `jax.jit`, differentiated by
`jax.grad` / `jax.value_and_grad` / `jax.vjp`, batched by `jax.vmap`.

Called with tracers, the partitioned program (its jax.jit of the shard_map) is traced into the
caller's computation. Reverse-mode derivatives never differentiate the per-device program: the
backward pass is its own gshard.partition of `jax.vjp(fn)`, at the forward's propagated specs
(inputs and output cotangents in, input gradients out), so gradients are partitioned by the same
rules as every other program. Forward-mode (`jax.jvp`, `jax.jacfwd`) is refused with the fix.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .errors import GShardError
from .runtime import mesh_context


def is_traced(leaves) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in leaves)


def traced_call(pf, args):
    """`pf(*args)` where some argument is a tracer: the program traced into the caller's."""
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    low = pf.lower(*args)
    if low.program.fn is None:
        raise GShardError(f"the mesh {pf.mesh.describe()} is abstract (no devices): a partitioned "
                          f"function on it cannot run under jax.jit/grad/vmap\n  fix: use "
                          f".lower(...) to inspect it, or pass a concrete jax.sharding.Mesh")
    if getattr(low, "_differentiable", None) is None:
        low._differentiable = _differentiable(pf, low, in_tree)
    return jax.tree_util.tree_unflatten(low.out_tree, low._differentiable(*leaves))


def run(low, leaves) -> tuple:
    """The forward program on `leaves` (tracers: traced in; arrays: placed and executed)."""
    prog = low.program
    if not is_traced(leaves):
        return tuple(prog.call(*prog.place(leaves)))
    padded = [_pad(x, n, p) for x, n, p in zip(leaves, prog.in_shapes, prog.padded_shapes)]
    with mesh_context(prog.mesh):
        return tuple(prog.fn(*padded))


def _pad(x, shape, padded):
    if tuple(shape) == tuple(padded):
        return x
    return jnp.pad(x, [(0, p - n) for n, p in zip(shape, padded)])


def _differentiable(pf, low, in_tree):
    """run() as a jax.custom_vjp whose backward is the partitioned vjp of the user's function."""
    avals = [jax.ShapeDtypeStruct(v.shape, v.aval.dtype) for v in low.graph.invars]
    backward = {}

    @jax.custom_vjp
    def f(*xs):
        return run(low, xs)

    def fwd(*xs):
        return run(low, xs), xs

    def bwd(xs, cts):
        if "pf" not in backward:
            backward["pf"] = _backward(pf, low, in_tree, avals)
        bpf, fidx, oidx = backward["pf"]
        grads = bpf(list(xs), [cts[j] for j in oidx]) if fidx else []
        out = [np.zeros(a.shape, jax.dtypes.float0) for a in avals]
        for i, g in zip(fidx, grads):
            out[i] = g
        return tuple(out)

    f.defvjp(fwd, bwd)
    return _no_forward_mode(f)


def _no_forward_mode(f):
    """custom_vjp refuses jvp with a message about custom_vjp; say what to do instead."""
    def call(*xs):
        try:
            return f(*xs)
        except TypeError as e:
            if "forward-mode" not in str(e) and "jvp" not in str(e):
                raise
            raise GShardError(
                "a gshard-partitioned function supports reverse-mode differentiation (jax.grad, "
                "jax.value_and_grad, jax.vjp, jax.jacrev) from outside, not forward mode "
                "(jax.jvp, jax.jacfwd)\n  fix: partition the derivative itself, e.g. "
                "gshard.partition(lambda x, t: jax.jvp(fn, (x,), (t,)), mesh)") from None
    return call


def _inexact(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def _backward(pf, low, in_tree, avals):
    """gshard.partition of the user's vjp: (all inputs, float output cotangents) -> gradients of
    the float inputs, pinned to the forward's propagated specs."""
    fidx = [i for i, a in enumerate(avals) if _inexact(a.dtype)]
    oidx = [j for j, o in enumerate(low.graph.outvars) if _inexact(o.aval.dtype)]

    def vjp_fn(prims, cts):
        def f_float(*fl):
            full = list(prims)
            for i, v in zip(fidx, fl):
                full[i] = v
            outs = jax.tree_util.tree_leaves(pf.fn(*jax.tree_util.tree_unflatten(in_tree, full)))
            return [outs[j] for j in oidx]
        _, vjp = jax.vjp(f_float, *[prims[i] for i in fidx])
        return list(vjp(list(cts)))

    vjp_fn.__name__ = f"vjp of {getattr(pf.fn, '__name__', 'fn')}"
    ins, outs = _specs(low, fidx, oidx)
    return type(pf)(vjp_fn, pf.mesh, in_specs=ins, out_specs=outs), fidx, oidx  # a Partitioned


def _specs(low, fidx, oidx):
    """The forward's propagated specs as the backward's in_specs / out_specs (None on a mesh
    refined for shard(): those specs name refined axes, so the backward propagates its own)."""
    if low.mesh.names != low.mesh.original_names():
        return None, None
    ins = [s.to_partition_spec() for s in low.in_specs]
    outs = [s.to_partition_spec() for s in low.out_specs]
    return (ins, [outs[j] for j in oidx]), [ins[i] for i in fidx]
