"""One validity mask per (local shape, uneven dim) in a per-device program, shared by consumers."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Jaxpr, Literal
from jax.sharding import PartitionSpec as P

import gshard
from gshard.testing import assert_close


def _mask_chains(jaxpr) -> collections.Counter:
    """(local shape, dim) -> how many `iota -> add shard offset -> lt n` chains build that mask
    in this jaxpr's own equations (not its sub-jaxprs)."""
    users = collections.defaultdict(list)
    for e in jaxpr.eqns:
        for v in e.invars:
            if not isinstance(v, Literal):
                users[v].append(e)
    out = collections.Counter()
    for e in jaxpr.eqns:
        if e.primitive.name != "iota":
            continue
        adds = [u for u in users[e.outvars[0]] if u.primitive.name == "add"]
        if any(u.primitive.name == "lt" for a in adds for u in users[a.outvars[0]]):
            out[(tuple(e.params["shape"]), e.params["dimension"])] += 1
    return out


def _six_ops(x, w):  # x [10, 4] rows split unevenly over 8 devices (2 per device, 6 padding)
    a = jnp.sum(x, 0)                        # [4]
    b = jnp.max(x, 0)                        # [4]
    c = jnp.min(x, 0)                        # [4]
    d = jnp.prod(x, 0)                       # [4]
    e = w @ x.T @ x                          # [3, 4]: x.T @ x contracts the uneven rows
    return a + b + c + d + e.sum(0)          # [4]


def _args():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(10, 4)).astype(np.float32),
            rng.normal(size=(3, 4)).astype(np.float32))


def _mesh8():
    return jax.make_mesh((8,), ("x",))


def test_six_op_program_builds_each_mask_once():
    x, w = _args()
    pf = gshard.partition(_six_ops, _mesh8(), in_specs=(P("x", None), None))
    chains = _mask_chains(pf.lower(x, w).per_device_jaxpr.jaxpr)
    assert chains, "the uneven rows must be masked somewhere"
    assert sum(chains.values()) >= 2  # the row mask [2, 4] and the transposed one [4, 2] at least
    assert set(chains.values()) == {1}, chains
    assert_close(pf(x, w), _six_ops(x, w), 1e-5, 1e-5, "forward")


def test_two_uneven_dims_share_their_masks():
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    x = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)  # 5 / 2 and 7 / 4 uneven

    def f(x):
        return jnp.sum(x) + jnp.max(x) + jnp.sum(x, 0).sum() + jnp.min(x, 1).sum()  # []

    pf = gshard.partition(f, mesh, in_specs=(P("a", "b"),))
    chains = _mask_chains(pf.lower(x).per_device_jaxpr.jaxpr)
    assert {((3, 2), 0), ((3, 2), 1)} <= set(chains), chains  # x's local [3, 2]: both dims
    assert set(chains.values()) == {1}, chains
    assert_close(pf(x), f(x), 1e-5, 1e-5, "forward")


def _sub_jaxprs(jaxpr):
    for e in jaxpr.eqns:
        for p in e.params.values():
            for j in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(j, "jaxpr", j)
                if isinstance(inner, Jaxpr):
                    yield inner


def test_a_scan_body_builds_its_own_mask_not_the_outer_one():
    x, w = _args()

    def f(x, w):
        def body(carry, _):
            return carry + _six_ops(x * carry[0], w), None  # the masks again, in the body trace
        out, _ = jax.lax.scan(body, _six_ops(x, w), None, length=2)
        return out  # [4]

    pf = gshard.partition(f, _mesh8(), in_specs=(P("x", None), None))
    top = pf.lower(x, w).per_device_jaxpr.jaxpr
    assert set(_mask_chains(top).values()) == {1}
    bodies = [j for j in _sub_jaxprs(top) if _mask_chains(j)]
    assert bodies, "the scan body masks its own uneven reductions"
    for j in bodies:
        assert set(_mask_chains(j).values()) == {1}, _mask_chains(j)
    assert_close(pf(x, w), f(x, w), 1e-4, 1e-4, "forward")
