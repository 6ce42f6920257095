"""Pooling (reduce_window max / sum / min) and its gradients, partitioned: local over batch and
channel splits, halo exchanges over split spatial dims, equal to the unpartitioned run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import gshard
from gshard.spmd.interpret import UNEVEN_OUTPUT
from gshard.testing import assert_close

rng = np.random.default_rng(0)
MESHES = {(8,): ("x",), (2, 4): ("data", "model"), (4, 2): ("data", "model"), (2, 2, 2): ("a", "b", "c")}
OPS = {"max": (-jnp.inf, lax.max), "sum": (0.0, lax.add), "min": (jnp.inf, lax.min)}
WINDOWS = [  # (window, strides, padding, window dilation)
    ((3, 3), (2, 2), "SAME", (1, 1)), ((2, 2), (2, 2), "VALID", (1, 1)),
    ((3, 2), (1, 1), ((1, 1), (0, 1)), (1, 1)), ((2, 2), (1, 2), "VALID", (2, 1))]


def _pool(op, window, strides, padding, dil):
    init, fn = OPS[op]
    return lambda x: lax.reduce_window(x, init, fn, (1,) + window + (1,), (1,) + strides + (1,),
                                       padding if isinstance(padding, str) else ((0, 0),) + padding + ((0, 0),),
                                       window_dilation=(1,) + dil + (1,))


def _check(f, x, mesh):
    pf = gshard.partition(f, mesh)
    assert_close(pf(x), jax.jit(f)(x), what="forward")
    g = jax.grad(lambda t: jnp.sum(jnp.sin(f(t))))
    assert_close(gshard.partition(g, mesh)(x), jax.jit(g)(x), what="gradient")
    return pf.lower(x), gshard.partition(g, mesh).lower(x)


@pytest.mark.parametrize("mesh_shape", list(MESHES), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", list(OPS))
def test_pooling_spatial_split(mesh_shape, op):
    mesh = jax.make_mesh(mesh_shape, MESHES[mesh_shape])
    axes = MESHES[mesh_shape]
    spec = (None, axes[0], axes[1] if len(axes) > 1 else None, None)
    for k, (window, strides, padding, dil) in enumerate(WINDOWS):
        shape = (2, 16, 12, 3) if k % 2 == 0 else (2, 13, 10, 3)  # even and uneven
        x = rng.normal(size=shape).astype(np.float32)
        dil = dil if op == "sum" else (1, 1)  # JAX has no max-pool VJP with window dilation
        pool = _pool(op, window, strides, padding, dil)
        f = lambda t, pool=pool: pool(gshard.mesh_split(t, spec))  # noqa: E731
        fwd, _ = _check(f, x, mesh)
        if k == 0:  # a split height needs its neighbours' rows, never the whole image
            kinds = {c.kind for c in fwd.collectives if UNEVEN_OUTPUT not in c.reason}
            assert "collective_permute" in kinds and "all_gather" not in kinds, fwd.explain()


@pytest.mark.parametrize("op", list(OPS))
def test_pooling_batch_and_channel_splits_are_local(op):
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    x = rng.normal(size=(4, 9, 9, 8)).astype(np.float32)
    pool = _pool(op, (3, 3), (2, 2), "SAME", (1, 1))
    f = lambda t: pool(gshard.mesh_split(t, ("data", None, None, "model")))  # noqa: E731
    fwd, bwd = _check(f, x, mesh)
    assert fwd.collectives == [] and bwd.collectives == [], bwd.explain()


def test_max_pool_gradient_sends_back_overlapping_windows():
    """3x3 stride-2 SAME max pool over an evenly split height: the gradient of the windows that
    straddle a shard boundary goes back to the neighbour (select_and_scatter_add, no gather)."""
    mesh = jax.make_mesh((4,), ("x",))
    x = rng.normal(size=(2, 16, 8, 3)).astype(np.float32)
    pool = _pool("max", (3, 3), (2, 2), "SAME", (1, 1))
    _, bwd = _check(lambda t: pool(gshard.mesh_split(t, (None, "x", None, None))), x, mesh)
    kinds = [c.kind for c in bwd.collectives]
    assert "all_gather" not in kinds and kinds.count("collective_permute") >= 2, bwd.explain()


def test_avg_pool_gradient_pads_locally():
    mesh = jax.make_mesh((4,), ("x",))
    x = rng.normal(size=(2, 16, 8, 3)).astype(np.float32)
    pool = _pool("sum", (2, 2), (2, 2), "VALID", (1, 1))
    _, bwd = _check(lambda t: pool(gshard.mesh_split(t, (None, "x", None, None))) / 4.0, x, mesh)
    assert {c.kind for c in bwd.collectives} <= {"collective_permute"}, bwd.explain()
