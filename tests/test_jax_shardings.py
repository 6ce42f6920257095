"""The shardings JAX code already carries: with_sharding_constraint, jit-style in_specs /
out_specs / donate_argnums, committed NamedSharding inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import gshard
from gshard.errors import AnnotationError
from gshard.testing import assert_close
from gshard.testing.xla import auto_mesh, hlo_collectives

rng = np.random.default_rng(0)
X = rng.normal(size=(16, 32)).astype(np.float32)
W1 = rng.normal(size=(32, 64)).astype(np.float32) * 0.2
W2 = rng.normal(size=(64, 32)).astype(np.float32) * 0.2
MESH = auto_mesh((2, 4), ("data", "model"))


def megatron(x, w1, w2):  # plain JAX, annotated the way JAX annotates
    c = lambda v, *s: jax.lax.with_sharding_constraint(v, NamedSharding(MESH, P(*s)))  # noqa: E731
    h = c(jax.nn.relu(c(x, "data", None) @ w1), "data", "model")
    return c(h @ w2, "data", None)


def test_with_sharding_constraint_is_an_annotation():
    low = gshard.partition(megatron, MESH).lower(X, W1, W2)
    assert str(low.out_specs[0]) == "S(0)[data] R"
    assert [c.kind for c in low.collectives] == ["all_reduce"], low.explain()  # Megatron: one
    assert "with_sharding_constraint" in low.explain()
    assert_close(gshard.partition(megatron, MESH)(X, W1, W2), megatron(X, W1, W2))


def test_bare_partition_spec_under_set_mesh():
    def f(x):
        return jax.lax.with_sharding_constraint(jnp.sin(x), P(None, "model"))
    with jax.set_mesh(MESH):
        pf = gshard.partition(f, MESH)
        out = pf(X)
        low = pf.lower(X)
    assert str(low.out_specs[0]) == "R S(1)[model]"
    assert_close(out, np.sin(X))


def test_constraint_on_another_mesh_names_the_line():
    other = auto_mesh((8,), ("x",))
    f = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(other, P("x")))  # noqa: E731
    with pytest.raises(AnnotationError, match=r"mesh \{'x': 8\}.*\n  at .*test_jax_shardings.py"):
        gshard.partition(f, MESH).lower(X)


def test_unconstrained_dims_are_left_to_propagation():
    def f(x, w):
        x = jax.lax.with_sharding_constraint(x, NamedSharding(MESH, P(P.UNCONSTRAINED, None)))
        return gshard.mesh_split(x, ("data", None)) @ w
    low = gshard.partition(f, MESH).lower(X, W1)
    assert "S(0)[data]" in str(low.prop.spec(low.graph.eqns[0].outputs[0]))


def test_in_specs_and_out_specs_like_jit():
    f = lambda x, w1, w2: jax.nn.relu(x @ w1) @ w2  # noqa: E731
    pf = gshard.partition(f, MESH, in_specs=(P("data"), P(None, "model"), P("model", None)),
                          out_specs=P("data", "model"))
    out = pf(X, W1, W2)
    assert out.sharding.spec == P("data", "model")
    low = pf.lower(X, W1, W2)
    assert [str(s) for s in low.in_specs] == ["S(0)[data] R", "R S(1)[model]", "S(0)[model] R"]
    assert_close(out, f(X, W1, W2))
    # a prefix: one spec for every argument
    low = gshard.partition(lambda a, b: a + b, MESH, in_specs=P("data")).lower(X, X)
    assert [str(s) for s in low.in_specs] == ["S(0)[data] R"] * 2


def test_in_specs_that_do_not_fit_the_arguments():
    with pytest.raises(AnnotationError, match="in_specs"):
        gshard.partition(lambda a, b: a + b, MESH, in_specs=(P(), P(), P())).lower(X, X)


def test_wsc_and_in_specs_move_no_more_bytes_than_jax_jit():
    ins = (P("data"), P(None, "model"), P("model", None))
    low = gshard.partition(megatron, MESH, in_specs=ins).lower(X, W1, W2)
    ours = sum(c.bytes for c in low.collectives)
    shard = tuple(NamedSharding(MESH, s) for s in ins)
    text = jax.jit(megatron, in_shardings=shard).lower(X, W1, W2).compile().as_text()
    theirs = sum(c.bytes for c in hlo_collectives(text))
    assert 0 < ours <= theirs, (ours, theirs)


def test_presharded_inputs_keep_their_sharding_without_annotations():
    x = jax.device_put(X, NamedSharding(MESH, P("data", None)))
    w = jax.device_put(W1, NamedSharding(MESH, P(None, "model")))
    pf = gshard.partition(lambda x, w: jnp.tanh(x @ w), MESH)
    low = pf.lower(x, w)
    assert [tuple(v.aval.shape) for v in low.per_device_jaxpr.jaxpr.invars] == [(8, 32), (32, 16)]
    out = pf(x, w)
    assert out.sharding.spec == P("data", "model") and low.collectives == []
    assert "committed input sharding" in low.explain()
    assert_close(out, np.tanh(X @ W1))
    # an in_spec overrides the committed placement
    low = gshard.partition(lambda x, w: x @ w, MESH, in_specs=(P(), None)).lower(x, w)
    assert str(low.in_specs[0]) == "R R"


def test_committed_input_on_another_mesh_is_an_error():
    other = jax.device_put(X, NamedSharding(auto_mesh((8,), ("x",)), P("x")))
    with pytest.raises(AnnotationError, match="committed"):
        gshard.partition(lambda a: a * 2, MESH).lower(other)


def test_donated_arguments():
    pf = gshard.partition(lambda p, g: p - 0.1 * g, MESH, in_specs=P("data"), donate_argnums=0)
    p = jax.device_put(X, NamedSharding(MESH, P("data", None)))
    out = pf(p, X)
    assert p.is_deleted()  # the buffer was handed to the program
    assert_close(out, X - 0.1 * X)
