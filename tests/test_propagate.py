"""Sharding propagation: fixed point, priorities, merging, dot roles, reshape, provenance."""
import jax
import jax.numpy as jnp
import numpy as np

import gshard
from gshard.rules.shape import map_reshape, reshape_groups
from gshard.spec import ShardingSpec, merge


def _lower(f, mesh, *args):
    return gshard.partition(f, mesh).lower(*args)


def _spec_of(low, prim_name, index=0):
    eqns = [e for e in low.graph.eqns if e.prim.name == prim_name]
    return low.prop.spec(eqns[index].outputs[0])


def test_merge_compatible_partial_specs():
    a = ShardingSpec((("data",), ()))
    b = ShardingSpec(((), ("model",)))
    assert merge(a, b) == ShardingSpec((("data",), ("model",)))
    assert merge(a, ShardingSpec((("model",), ("data",)))) == a  # conflicting: keep current
    assert merge(a, ShardingSpec((("data", "model"), ()))).dims == (("data", "model"), ())


def test_dot_merges_batch_from_one_operand_and_model_from_other():
    mesh = jax.make_mesh((2, 4), ("data", "model"))

    def f(x, w):
        return jnp.tanh(gshard.mesh_split(x, ("data", None)) @ gshard.mesh_split(w, (None, "model")))

    low = _lower(f, mesh, np.ones((8, 4), np.float32), np.ones((4, 8), np.float32))
    assert _spec_of(low, "dot_general").dims == (("data",), ("model",))
    assert low.out_specs[0].dims == (("data",), ("model",))


def test_backward_pass_gets_specs_and_annotations_are_fixed():
    mesh = jax.make_mesh((8,), ("x",))

    def loss(w, x):
        x = gshard.split(x, 0, 8)
        return jnp.sum(jnp.tanh(x @ gshard.replicate(w)))

    low = _lower(jax.grad(loss), mesh, np.ones((4, 4), np.float32), np.ones((16, 4), np.float32))
    anns = [e for e in low.graph.eqns if e.prim.name == "gshard_annotate"]
    for e in anns:  # every annotation (and its cotangent's) keeps the user's spec
        assert low.prop.specs[e.outputs[0]] in (ShardingSpec(((), ())), ShardingSpec((("x",), ())))
    tanh_grad = [e for e in low.graph.eqns if e.prim.name == "mul"][-1]
    assert low.prop.spec(tanh_grad.outputs[0]).dims[0] == ("x",)  # backward values split too


def test_broadcast_of_constant_takes_consumer_sharding():
    mesh = jax.make_mesh((8,), ("x",))

    def f(x):
        ones = jnp.ones((16, 4), jnp.float32)  # a broadcast of a constant
        return ones + gshard.split(x, 0, 8)

    low = _lower(f, mesh, np.ones((16, 4), np.float32))
    assert _spec_of(low, "broadcast_in_dim").dims == (("x",), ())
    assert low.collectives == []
    assert "backward from" in low.prop.why[[e for e in low.graph.eqns
                                           if e.prim.name == "broadcast_in_dim"][0].outputs[0]]


def test_reshape_groups_and_rule():
    assert reshape_groups((8, 16), (128,)) == [([0, 1], [0])]
    assert reshape_groups((2, 3, 4), (6, 4)) == [([0, 1], [0]), ([2], [1])]
    sizes = {"x": 8}
    keep, _ = map_reshape(ShardingSpec((("x",), ())), (8, 16), (128,), sizes)
    assert keep.dims == (("x",),)
    # a split of the minor dim moves to the major one (an AllToAll before the reshape) ...
    moved, needed = map_reshape(ShardingSpec(((), ("x",))), (8, 16), (128,), sizes)
    assert moved.dims == (("x",),) and needed.dims == (("x",), ())
    # ... unless the tiles do not divide the major dim
    lose, survived = map_reshape(ShardingSpec(((), ("x",))), (6, 16), (96,), sizes)
    assert lose.dims == ((),) and survived.dims == ((), ())
    back, _ = map_reshape(ShardingSpec((("x",),)), (128,), (16, 8), sizes)
    assert back.dims == (("x",), ())


def test_provenance_recorded_for_every_value():
    mesh = jax.make_mesh((2, 4), ("data", "model"))

    def f(x, w):
        return jax.nn.relu(gshard.mesh_split(x, ("data", None)) @ w).sum(-1)

    low = _lower(f, mesh, np.ones((8, 4), np.float32), np.ones((4, 4), np.float32))
    for e in low.graph.eqns:
        for o in e.outputs:
            assert low.prop.why.get(o), (e.prim.name, low.prop.why)
    text = low.explain()
    assert "annotation mesh_split" in text and "test_propagate.py" in text
