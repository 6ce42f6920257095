"""The random-program fuzzer in CI: a fixed-seed hypothesis budget per mesh, forward and
value_and_grad, called directly or from an outer jax.jit / jax.value_and_grad, every program compared with jax.jit (and eager where the two disagree).

Long campaigns: `gshard fuzz --cases 10000 --seed S --jobs 2` (docs/testing.md).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from gshard.testing.fuzz.check import mismatch, run_case
from gshard.testing.fuzz.gen import device_assignment, hypothesis_program, random_program
from gshard.testing.fuzz.builder import Builder, RandomChooser
from gshard.testing.fuzz.program import MESHES, script
from gshard.testing.fuzz.shrink import shrink

PASS = ("ok", "refused", "xla_reference", "unstable", "invalid", "tie")


@pytest.mark.parametrize("mesh", list(MESHES))
@settings(max_examples=8, deadline=None, derandomize=True, print_blob=True,
          phases=(Phase.explicit, Phase.reuse, Phase.generate),  # failures print their script
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_programs(mesh, data):
    grad = data.draw(st.booleans(), label="value_and_grad")
    prog = hypothesis_program(data, mesh, grad)
    outer = data.draw(st.sampled_from(("none", "grad" if grad else "jit")), label="called")
    prog = prog.replace(outer=outer)  # directly, under jax.jit, or jax.grad from outside
    note(script(prog, "under test", ""))
    out = run_case(prog)
    assert out.klass in PASS, f"{out.klass}: {out.detail}\n{prog.body_source()}"
    if out.klass == "refused":  # a refusal names the user's line and a way out
        assert "\n  at " in out.detail and "fix:" in out.detail, out.detail


def test_generator_covers_every_family():
    seen = set()
    for i in range(60):
        seen |= set(random_program(7, i).families())
    from gshard.testing.fuzz.gen import FAMILIES
    assert set(FAMILIES) | {"annotate"} <= seen, set(FAMILIES) - seen


def test_case_is_replayable_from_seed_and_index():
    a, b = random_program(3, 11), random_program(3, 11)
    assert a.body_source() == b.body_source() and a.args_source() == b.args_source()
    assert random_program(3, 12).body_source() != a.body_source()
    assert a.outer == b.outer


def test_a_third_of_a_campaign_calls_the_partitioned_function_from_outside():
    progs = [random_program(5, i) for i in range(90)]
    outer = [p for p in progs if p.outer != "none"]
    assert 15 <= len(outer) <= 45
    assert all(p.outer == ("grad" if p.grad else "jit") for p in outer)
    src = next(p for p in outer if p.outer == "grad").gshard_source()
    assert "jax.value_and_grad(loss_of(partitioned)" in src and "gshard.partition(f, mesh)" in src


@pytest.mark.parametrize("shape", [(4, 6), (3,), (2, 2, 5)])
@pytest.mark.parametrize("mesh", ["8", "2x4", "2x2x2"])
def test_device_assignments_are_tilings(shape, mesh):
    b = Builder(RandomChooser(0), mesh, False, 0)
    for _ in range(10):
        grid = device_assignment(b, shape)
        assert grid.ndim == len(shape)
        assert sorted(grid.ravel().tolist()) == list(range(grid.size)) and grid.size == 8


def test_shrinker_keeps_the_failure_and_drops_the_rest():
    prog = next(p for p in (random_program(5, i) for i in range(200))
                if "cumulative" in p.families() and len(p.ops) >= 6)
    small = shrink(prog, lambda p: "cumulative" in p.families(), budget=300)
    assert "cumulative" in small.families()
    assert len(small.ops) < len(prog.ops) and len(small.outputs) == 1
    assert not any(op.annotation for op in small.ops)  # annotations are not needed to "fail"
    small.build()  # still a valid program


def test_mismatch_sees_wrong_values_nans_and_ints():
    x = np.ones((3,), np.float32)
    assert mismatch([x], [x]) == ""
    assert "max error" in mismatch([x * 1.1], [x])
    assert "NaN" in mismatch([np.array([np.nan], np.float32)], [np.array([1.0], np.float32)])
    assert "differ" in mismatch([np.array([1, 2])], [np.array([1, 3])])
    assert mismatch([x + 1e-5], [x]) == ""  # float reassociation is not an error


def test_a_wrong_partitioner_is_caught(monkeypatch):
    """Break a rule on purpose (a reduce_sum that forgets its partial sum): the fuzzer must see it."""
    import gshard.api  # noqa: F401
    from jax.extend.core import primitives as P
    from gshard.registry import RULES
    from gshard.spmd.shard import Local
    rule = RULES[P.reduce_sum_p]

    def forgetful(ctx, eqn, ins, targets):
        (out,) = rule.part(ctx, eqn, ins, targets)
        return [Local(out.val, out.spec.drop_partial(), out.shape)]
    monkeypatch.setitem(RULES, P.reduce_sum_p, rule.__class__(**{**rule.__dict__, "part": forgetful}))
    b = Builder(RandomChooser(0), "8", False, 0)
    x = b.new_input((16, 3))
    b.add("annotate", "gshard.mesh_split({0}, ('x', None))", [x], True)
    b.add("reduce", "jnp.sum({0}, axis=(0,))", [b.pool[-1]])
    assert run_case(b.program([b.pool[-1].name])).klass == "wrong"


def test_campaign_command_counts_every_case(tmp_path):
    import json

    from gshard.cli.main import main
    out = tmp_path / "fuzz.json"
    assert main(["fuzz", "--cases", "2", "--seed", "5", "--jobs", "1", "--out",
                 str(tmp_path / "failures"), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert sum(rep["counts"].values()) == 2 and set(rep["counts"]) <= set(PASS)
