"""Helpers for checking partitioned programs against their unpartitioned selves."""
from __future__ import annotations

import math
from collections import Counter

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, jaxprs_in_params


def dot_flops(closed) -> int:
    """2·(product of all dot_general dims) summed over a jaxpr, sub-jaxprs included."""
    total = 0
    for e in closed.jaxpr.eqns:
        if e.primitive.name == "dot_general":
            (lc, rc), (lb, rb) = e.params["dimension_numbers"]
            ls, rs = e.invars[0].aval.shape, e.invars[1].aval.shape
            k = math.prod(ls[d] for d in lc)
            total += 2 * k * math.prod(e.outvars[0].aval.shape)
        for sub in jaxprs_in_params(e.params):
            total += dot_flops(ClosedJaxpr(sub, ()))
    return total


def collective_counts(low) -> Counter:
    return Counter(c.kind for c in low.collectives)


def assert_close(a, b, rtol=1e-4, atol=1e-4, what=""):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        y = np.asarray(y, np.float64)
        scale = max(1.0, float(np.abs(y).max())) if y.size else 1.0  # float reassociation
        np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=rtol, atol=atol * scale,
                                   err_msg=what)


def first_divergence(fn, mesh, *args, atol=1e-4):
    """The first equation whose partitioned result differs from the unpartitioned one, as
    (eqn index, primitive name, source line, max abs error, inputs bit-exact), or None: the
    reference runs each equation on the reference's own inputs. A debugging aid."""
    import gshard
    from gshard.runtime import build
    from gshard.trace.graph import Graph, Lit

    leaves = jax.tree_util.tree_leaves(args)
    low = gshard.partition(fn, mesh).lower(*args)
    g = low.graph
    values = [o for e in g.eqns for o in e.outputs]
    avals = [jax.ShapeDtypeStruct(np.shape(x), jax.numpy.asarray(x).dtype) for x in leaves]
    prog = build(Graph(g.invars, values, g.eqns, g.consts), low.prop, low.mesh, avals)
    got = dict(zip(values, prog.call(*prog.place(leaves))))
    got.update(zip(g.invars, leaves))
    env = dict(zip(g.invars, leaves))
    env.update(g.consts)
    exact = lambda x: isinstance(x, Lit) or x not in got or _err(got[x], env[x]) == 0.0  # noqa: E731
    for e in g.eqns:
        ins = [x.val if isinstance(x, Lit) else env[x] for x in e.inputs]
        outs = e.prim.bind(*ins, **e.params)
        outs = outs if e.prim.multiple_results else [outs]
        for o, ref in zip(e.outputs, outs):
            env[o] = ref
            err = _err(got[o], ref)
            if not err <= atol:
                return e.index, e.prim.name, e.where, err, all(exact(x) for x in e.inputs)
    return None


def _err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return float(np.max(np.where(same, 0.0, np.abs(a - b)), initial=0.0))


def mlp_sgd_step(params, x, y):
    """One SGD step of a 2-layer MLP with squared error (the auto-sharding bench and tests):
    params {"w1": [D, H], "w2": [H, D]}, x, y [B, D] -> (updated params, loss)."""
    def loss(p):
        h = jax.nn.relu(x @ p["w1"])                              # [B, H]
        return jax.numpy.mean((h @ p["w2"] - y) ** 2)             # [B, D] -> []
    value, grads = jax.value_and_grad(loss)(params)
    return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, params, grads), value
