"""gshard.autoshard: the plan is priced by the real partitioner + cost model, fits memory,
keeps the user's annotations, is deterministic, and bad input gets one clear error."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

import gshard
from gshard.cost import estimate, get_hardware
from gshard.testing import mlp_sgd_step as mlp_step
from gshard.errors import GShardError
from tests.conftest import make_mesh

B, D, H = 32, 64, 256
F32 = jnp.float32


def mlp_args():
    sds = jax.ShapeDtypeStruct
    return ({"w1": sds((D, H), F32), "w2": sds((H, D), F32)}, sds((B, D), F32), sds((B, D), F32))


def concrete(args, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), args)


def hand_price(fn, mesh, args, in_specs, hw="cpu"):
    low = gshard.partition(fn, mesh, in_specs=in_specs).lower(*args)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    return estimate(low.per_device_jaxpr, low.collectives, sizes,
                    get_hardware(hw, num_devices=mesh.size))


def dp_specs(mesh):
    batch = P(tuple(mesh.axis_names))
    return ({"w1": P(), "w2": P()}, batch, batch)


REPLICATED = ({"w1": P(), "w2": P()}, P(), P())


@pytest.fixture(scope="module", params=[(8,), (2, 4)], ids=["8", "2x4"])
def found(request):
    mesh = make_mesh(request.param)
    return mesh, gshard.autoshard(mlp_step, mesh, *mlp_args())


def test_plan_no_worse_than_data_parallel_or_replicated(found):
    mesh, plan = found
    args = mlp_args()
    for name, specs in (("data-parallel", dp_specs(mesh)), ("replicated", REPLICATED)):
        hand = hand_price(mlp_step, mesh, args, specs)
        assert plan.predicted["step_s"] <= hand.step_time_s * 1.02, (name, plan.explain())
    assert plan.predicted["peak_bytes"] > 0 and plan.search_seconds > 0
    assert plan.candidates[0]["step_s"] == pytest.approx(plan.predicted["step_s"], rel=0.05)
    assert all(c["step_s"] > 0 for c in plan.candidates) and len(plan.candidates) >= 8


def test_plan_runs_and_matches_unpartitioned(found):
    mesh, plan = found
    vals = concrete(mlp_args())
    want = jax.tree_util.tree_leaves(jax.jit(mlp_step)(*vals))
    got = jax.tree_util.tree_leaves(plan.partitioned(*vals))
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
    assert plan.checked.startswith("checked")
    assert isinstance(plan.in_specs, tuple) and len(plan.in_specs) == 3
    assert set(plan.in_specs[0]) == {"w1", "w2"}
    specs = jax.tree_util.tree_leaves(plan.in_specs, is_leaf=lambda s: isinstance(s, P))
    assert len(specs) == 4 and all(isinstance(s, P) for s in specs)
    text = plan.explain()
    assert "args[0]['w1']" in text and "runner-up" in text and "candidates" in text


def test_three_axis_mesh():
    mesh = make_mesh((2, 2, 2))
    plan = gshard.autoshard(mlp_step, mesh, *mlp_args())
    for specs in (dp_specs(mesh), REPLICATED):
        hand = hand_price(mlp_step, mesh, mlp_args(), specs)
        assert plan.predicted["step_s"] <= hand.step_time_s * 1.02, plan.explain()
    assert "gradients with respect to 4 float inputs match" in plan.checked


def test_memory_limit_forces_megatron_weights():
    mesh = make_mesh((2, 4))
    args = mlp_args()
    dp = hand_price(mlp_step, mesh, args, dp_specs(mesh))
    limit = int(dp.peak_bytes * 0.6)   # replicated weights do not fit
    plan = gshard.autoshard(mlp_step, mesh, *args, memory_limit=limit)
    assert plan.predicted["peak_bytes"] <= limit
    low = plan.partitioned.lower(*args)
    ma = low.program.call.memory_analysis()
    xla_peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                - ma.alias_size_in_bytes)
    assert xla_peak <= limit and plan.measured_peak_bytes == xla_peak
    w1, w2 = plan.in_specs[0]["w1"], plan.in_specs[0]["w2"]
    axes = lambda e: (e,) if isinstance(e, str) else tuple(e or ())  # noqa: E731
    assert len(w1) == 2 and not axes(w1[0]) and "model" in axes(w1[1]), plan.explain()
    assert "model" in axes(w2[0]) and (len(w2) < 2 or not axes(w2[1])), plan.explain()


def test_user_annotations_and_in_specs_are_kept():
    mesh = make_mesh((2, 4))

    def step(params, x, y):
        x = gshard.mesh_split(x, ("data", None))
        return mlp_step(params, x, y)

    specs = ({"w1": None, "w2": P(None, "model")}, None, None)
    plan = gshard.autoshard(step, mesh, *mlp_args(), in_specs=specs, check=False)
    assert plan.in_specs[0]["w2"] == P(None, "model")
    assert plan.in_specs[1] == P("data", None)
    fixed = dict(plan.fixed)
    assert fixed == {"args[0]['w2']": "in_specs", "args[1]": "annotated in fn"}
    assert "kept as you set it" in plan.explain()


def test_same_plan_every_run(found):
    mesh, plan = found
    again = gshard.autoshard(mlp_step, mesh, *mlp_args(), check=False)
    assert again.in_specs == plan.in_specs
    assert [c["summary"] for c in again.candidates] == [c["summary"] for c in plan.candidates]


def test_tied_layers_share_one_decision():
    mesh = make_mesh((8,))
    n = 3

    def deep(params, x):
        for layer in params["layers"]:
            x = jnp.tanh(x @ layer["w"])                  # [B, D]
        return jnp.sum(x ** 2)

    sds = jax.ShapeDtypeStruct
    params = {"layers": [{"w": sds((D, D), F32)} for _ in range(n)]}
    plan = gshard.autoshard(deep, mesh, params, sds((B, D), F32))
    names = [d.point for d in plan.decisions]
    assert "args[0]['layers'][*]['w'] (3 leaves)" in names, names
    layer_specs = {plan.in_specs[0]["layers"][i]["w"] for i in range(n)}
    assert len(layer_specs) == 1
    # the stack of 3 is priced from 1- and 2-layer copies; the returned plan in full
    assert any("priced from 1- and 2-layer copies" in n for n in plan.notes), plan.notes
    assert {c["priced"] for c in plan.candidates} == {"1- and 2-layer copies, extrapolated"}
    full = hand_price(deep, mesh, (params, sds((B, D), F32)), plan.in_specs)
    assert plan.predicted["step_s"] == pytest.approx(full.step_time_s, rel=1e-6)
    assert plan.predicted["peak_bytes"] == int(full.peak_bytes)


class Net(NamedTuple):
    layers: list
    head: jax.ShapeDtypeStruct


def test_attribute_paths_tie_and_truncate():
    mesh = make_mesh((8,))

    def net(p, x):
        for layer in p.layers:
            x = jnp.tanh(x @ layer)                          # [B, D]
        return jnp.sum((x @ p.head) ** 2)                    # [B, H] -> []

    sds = jax.ShapeDtypeStruct
    params = Net([sds((D, D), F32) for _ in range(3)], sds((D, H), F32))
    plan = gshard.autoshard(net, mesh, params, sds((B, D), F32))
    names = [d.point for d in plan.decisions]
    assert "args[0].layers[*] (3 leaves)" in names and "args[0].head" in names, names
    assert isinstance(plan.in_specs[0], Net) and len(set(plan.in_specs[0].layers)) == 1
    assert any("priced from 1- and 2-layer copies" in n for n in plan.notes), plan.notes
    assert "gradients with respect to 5 float inputs match" in plan.checked


def test_stack_the_function_cannot_shorten_is_priced_in_full():
    mesh = make_mesh((8,))

    def three(params, x):  # indexes layers 0..2 itself: a 1-layer copy cannot run
        w = params["layers"]
        return jnp.sum(jnp.tanh(x @ w[0]["w"] @ w[1]["w"] @ w[2]["w"]))   # [B, D] -> []

    sds = jax.ShapeDtypeStruct
    params = {"layers": [{"w": sds((D, D), F32)} for _ in range(3)]}
    plan = gshard.autoshard(three, mesh, params, sds((B, D), F32), check=False)
    assert plan.notes and plan.notes[0].startswith("layer stacks priced in full (IndexError")


def test_abstract_mesh_plan_is_lowered():
    mesh = AbstractMesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    plan = gshard.autoshard(mlp_step, mesh, *mlp_args(), hardware="tpu-v3")
    assert plan.checked == "" and plan.measured_peak_bytes is None
    assert plan.hardware == "tpu-v3" and plan.memory_limit == 16 * 2 ** 30
    low = plan.partitioned.lower(*mlp_args())
    assert [s.to_partition_spec() for s in low.in_specs] == \
        jax.tree_util.tree_leaves(plan.in_specs, is_leaf=lambda s: isinstance(s, P))
    hand = hand_price(mlp_step, mesh, mlp_args(), dp_specs(mesh), hw="tpu-v3")
    assert plan.predicted["step_s"] <= hand.step_time_s * 1.02


@pytest.mark.parametrize("kwargs, args, match", [
    (dict(mesh=((2, 4), ("a", "b"))), None, "mesh must be a jax.sharding.Mesh"),
    (dict(), ("not an array",), "is a str, not an array"),
    (dict(memory_limit=-5), None, "memory_limit must be a positive number"),
    (dict(memory_limit=1000), None, "no plan found fits memory_limit=1000"),
    (dict(hardware="tpu-v9"), None, "unknown hardware"),
])
def test_bad_input_is_one_clear_error(kwargs, args, match):
    mesh = kwargs.pop("mesh", None) or make_mesh((8,))
    fn = mlp_step if args is None else (lambda s: s)
    with pytest.raises(GShardError, match=match):
        gshard.autoshard(fn, mesh, *(args or mlp_args()), **kwargs)


CLI_SRC = '''
import jax, jax.numpy as jnp

def mlp(x, w1, w2):
    h = jax.nn.relu(x @ w1)
    return jnp.sum((h @ w2) ** 2)
'''


def test_cli_prints_plan_and_rejects_bad_sizes(tmp_path, monkeypatch, capsys):
    import json

    from gshard.cli.autoshard_cmd import parse_bytes
    from gshard.cli.main import main
    (tmp_path / "autoshard_demo_mod.py").write_text(CLI_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    out_json = tmp_path / "plan.json"
    rc = main(["autoshard", "autoshard_demo_mod:mlp", "--mesh", "data=2,model=4", "--args",
               "f32[32,64] f32[64,256] f32[256,64]", "--memory-limit", "1MiB",
               "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("# autoshard_demo_mod:mlp on mesh data=2,model=4")
    assert "in_specs = (" in out and "decisions:" in out and "checked:" in out
    doc = json.loads(out_json.read_text())
    assert doc["memory_limit"] == 1 << 20 and doc["predicted"]["peak_bytes"] <= 1 << 20
    assert parse_bytes("16GiB") == 16 << 30 and parse_bytes("1e9") == 10 ** 9
    rc = main(["autoshard", "autoshard_demo_mod:mlp", "--mesh", "x=8", "--args", "f32[4,4]",
               "--memory-limit", "12QB"])
    assert rc == 2 and "is not a size" in capsys.readouterr().err


def test_check_rejects_a_program_that_differs_from_fn():
    from gshard.auto.plan import check_values
    mesh = make_mesh((2, 4))

    def off(params, x, y):  # the MLP step, 1% off: must not pass the check
        new, loss = mlp_step(params, x, y)
        return new, loss * 1.01

    wrong = gshard.partition(off, mesh, in_specs=dp_specs(mesh))
    with pytest.raises(GShardError, match="differs from the unpartitioned"):
        check_values(mlp_step, wrong, mlp_args())
    right = gshard.partition(mlp_step, mesh, in_specs=dp_specs(mesh))
    assert "gradients with respect to 4 float inputs match" in check_values(mlp_step, right,
                                                                            mlp_args())
