"""Third-party models unchanged (flax nnx / linen, equinox, haiku): gshard sees them through
in_specs and one mesh_split of the batch. Forward and gradients equal the unpartitioned run,
per-device shapes are local, and gshard moves no more bytes than XLA's own propagation of the
same annotations."""
import functools

import jax
import numpy as np
import pytest

import gshard
from gshard.testing import assert_close
from gshard.testing.xla import auto_mesh, xla_collectives
from third_party import zoo

MESHES = {"8": (8,), "2x4": (2, 4)}
CASES = [  # (zoo constructor, kwargs, meshes)
    ("nnx_transformer", {}, ["8"]),
    ("nnx_transformer", {"megatron": True}, ["2x4"]),
    ("linen_scan", {}, ["2x4"]),
    ("nnx_cnn", {}, ["8"]),
    ("nnx_cnn", {"spatial": True, "hw": 32}, ["8", "2x4"]),
    ("nnx_cnn", {"channels": True}, ["2x4"]),
    ("eqx_mlp", {}, ["8"]),
    ("eqx_attention", {}, ["2x4"]),
    ("eqx_cnn", {}, ["2x4"]),
    ("eqx_cnn", {"spatial": True, "hw": 32}, ["8"]),
]
PARAMS = [(m, kw, mesh) for m, kw, meshes in CASES for mesh in meshes]


def _axes(mesh_shape):
    return ("data", "model")[:len(mesh_shape)]


def _local_shapes_ok(low, args):
    leaves = jax.tree_util.tree_leaves(args)
    local = [tuple(v.aval.shape) for v in low.per_device_jaxpr.jaxpr.invars]
    want = [s.local_shape(np.shape(x), low.mesh.sizes) for s, x in zip(low.in_specs, leaves)]
    return local == want and any(l != np.shape(x) for l, x in zip(local, leaves))


@pytest.mark.parametrize("maker, kw, mesh_name", PARAMS,
                         ids=[f"{m}{'-' + '-'.join(kw) if kw else ''}-{n}" for m, kw, n in PARAMS])
def test_model_partitioned(maker, kw, mesh_name):
    shape = MESHES[mesh_name]
    axes, mesh = _axes(shape), auto_mesh(shape, _axes(shape))
    case = getattr(zoo, "make_" + maker)(**kw)
    vg = jax.value_and_grad(zoo.annotated(case, axes))
    args = (case.params, case.aux, case.batch)
    pf = gshard.partition(vg, mesh, in_specs=(zoo.param_specs(case, axes), None, None))
    assert_close(pf(*args), jax.jit(vg)(*args), what=case.name)
    low = pf.lower(*args)
    assert _local_shapes_ok(low, args), [str(s) for s in low.in_specs]
    ours = sum(c.bytes for c in low.collectives)
    xla = sum(c.bytes for c in xla_collectives(vg, mesh, args, [s.to_partition_spec() for s in low.in_specs]))
    assert ours <= xla, f"{case.name}: gshard {ours} B/device > XLA {xla}\n{low.explain(values=False)}"


@functools.lru_cache(maxsize=1)
def _resnet50_unpartitioned():
    """The unpartitioned step (jax.jit, no annotations): one reference for both splits."""
    step, args, _ = zoo.make_haiku_resnet50()
    return jax.jit(step)(*args)


@pytest.mark.xdist_group("resnet50")  # one worker: the two splits share one reference step
@pytest.mark.parametrize("spatial", [False, True], ids=["batch-8", "spatial-2x4"])
def test_haiku_resnet50_train_step(spatial):
    """haiku's ResNet-50 as shipped: one SGD step (BatchNorm state updated) partitioned, batch
    split on 8 devices or batch x height split on 2x4, equal to the unpartitioned step."""
    shape = (2, 4) if spatial else (8,)
    axes, mesh = _axes(shape), auto_mesh(shape, _axes(shape))
    step, args, bspec = zoo.make_haiku_resnet50(spatial=spatial)

    def fn(params, state, batch):
        batch = tuple(gshard.mesh_split(b, zoo.fit(s, axes, np.ndim(b))) for b, s in zip(batch, bspec))
        return step(params, state, batch)
    pf = gshard.partition(fn, mesh)
    assert_close(pf(*args), _resnet50_unpartitioned(), what="resnet-50 step")
    low = pf.lower(*args)
    assert _local_shapes_ok(low, args)
    kinds = {c.kind for c in low.collectives}
    assert ("collective_permute" in kinds) == spatial  # halos only when the height is split
