import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# The suite compiles far more than it runs: XLA:CPU's LLVM backend at -O0 compiles ~30 % faster
# (same HLO, same fusion and partitioning; no fast-math either way). Set the flag yourself to
# test at another level; benches and `gshard` runs keep XLA's default.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# One XLA compilation cache per test session, shared by the pytest workers and the training
# subprocesses they start (which compile the same steps again): cold at the start of every run.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"gshard-test-xla-cache-{_run}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# hardware="cpu" profiles: the suite never reads the user's `gshard calibrate` results.
os.environ["GSHARD_PROFILE_DIR"] = os.path.join(tempfile.gettempdir(), f"gshard-test-profiles-{_run}")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

assert len(jax.devices()) >= 8, "tests need 8 simulated CPU devices (set XLA_FLAGS before jax starts)"

MESH_SHAPES = [(8,), (2, 4), (4, 2), (2, 2, 2)]
AXES = {1: ("x",), 2: ("data", "model"), 3: ("a", "b", "c")}


def make_mesh(shape):
    return jax.make_mesh(shape, AXES[len(shape)])


@pytest.fixture(params=MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def mesh(request):
    return make_mesh(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted 6-step run of `tiny` on 8 devices (checkpoints every step), shared by
    the resume, conversion and killed-run tests."""
    from test_train_cli import tiny_corpus, train
    corpus = tiny_corpus(tmp_path_factory.getbasetemp())
    w = tmp_path_factory.mktemp("reference") / "w"
    assert train(w, corpus, 6, "train.checkpoint_every=1") == 0
    return w


# The tests that share `reference_run` carry one xdist group (one worker builds it under
# `--dist loadgroup`; a marker only under the default scheduling).
# The slowest modules first (measured with --durations), so the two workers do not end on a
# long test with the other idle; the order within a module is kept.
SLOW_FIRST = ("test_train_scale.py", "test_third_party.py", "test_model.py",
              "test_train_partitioned.py", "test_eval.py", "test_moe_train.py",
              "test_train_cli.py", "test_workdir_cli.py", "test_scaling.py", "test_fuzz.py",
              "test_moe_dropless.py", "test_simulate.py", "test_multihost.py", "test_autoshard.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "reference_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("reference_run"))
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
