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
