"""`gshard calibrate`: the measured CPU profile, how the cost model reads it, and the CLI."""
import json
import math

import jax
import jax.numpy as jnp
import pytest

from gshard.cli.main import main
from gshard.cost import calibrate, collective_time_n, estimate, get_hardware
from gshard.cost.collective_time import _interpolate


def _profile(D=8, rate=lambda m, k, n: 1e9 * (m * k * n) ** (1 / 6)):
    dims = (32, 256, 1024)
    rows = [[m, k, n, rate(m, k, n)] for m in dims for k in dims for n in dims]
    table = {kind: {str(g): [[4096.0, 1e-4 * g], [1 << 20, 1e-3 * g]] for g in (2, 4, 8)}
             for kind in calibrate.KINDS}
    return {"name": "cpu(x8, calibrated)", "num_devices": D, "host": calibrate._host(),
            "launch_s": 2e-4, "op_overhead_s": 5e-6, "flops_f32": 1e10, "hbm_bw": 1e9,
            "hbm_bytes": 1e9, "matmul": rows, "collectives": table}


def test_matmul_rate_is_the_grid_at_its_points_and_between_them_inside():
    hw = calibrate.to_hardware(_profile())
    for mkn in [(32, 32, 32), (256, 1024, 32), (1024, 1024, 1024)]:
        assert hw.matmul_rate(mkn) == pytest.approx(1e9 * math.prod(mkn) ** (1 / 6))
    mid = hw.matmul_rate((100, 256, 256))
    assert hw.matmul_rate((32, 256, 256)) < mid < hw.matmul_rate((256, 256, 256))
    # outside the grid: clamped to its edge
    assert hw.matmul_rate((4, 32, 32)) == pytest.approx(hw.matmul_rate((32, 32, 32)))


def test_collective_tables_interpolate_by_bytes_and_group_size():
    hw = calibrate.to_hardware(_profile())
    t = lambda B, n: collective_time_n("all_gather", B, n, hw)  # noqa: E731
    assert t(4096, 4) == pytest.approx(4e-4)
    assert t(1 << 20, 8) == pytest.approx(8e-3)
    assert t(4096, 4) < t(1 << 19, 4) < t(1 << 20, 4) < t(1 << 21, 4)   # extrapolated beyond
    assert t(100, 2) == pytest.approx(2e-4)                             # below: the latency
    assert collective_time_n("all_reduce", 4096, 1, hw) == 0.0
    # a noisy table is read as monotone in bytes
    assert _interpolate([(1.0, 3.0), (2.0, 1.0), (3.0, 4.0)], 2.0) == pytest.approx(3.0)


def test_estimate_adds_call_and_kernel_time_on_a_calibrated_profile():
    hw = calibrate.to_hardware(_profile())
    jaxpr = jax.make_jaxpr(lambda a, b: jnp.tanh(a @ b) @ b)(jnp.ones((32, 256)),
                                                           jnp.ones((256, 256)))
    r = estimate(jaxpr, None, {}, hw)
    bare = estimate(jaxpr, None, {}, hw.replace(launch_s=0.0, op_overhead_s=0.0))
    kernels = 3   # two dots and the tanh between them
    assert r.compute_time_s - bare.compute_time_s == pytest.approx(2e-4 + kernels * 5e-6)
    # the dots are priced at the grid's rate for their (M, K, N)
    dot = next(e for e in bare.per_eqn if e.cost.primitive == "dot_general")
    assert dot.time_s == pytest.approx(dot.cost.flops / hw.matmul_rate((32, 256, 256)))


def test_hardware_cpu_reads_the_saved_profile_only_for_this_host_and_device_count(
        tmp_path, monkeypatch):
    monkeypatch.setenv("GSHARD_PROFILE_DIR", str(tmp_path))
    assert "quick numpy" in get_hardware("cpu", num_devices=8).name
    calibrate.save(_profile())
    assert get_hardware("cpu", num_devices=8).name == "cpu(x8, calibrated)"
    assert "quick numpy" in get_hardware("cpu", num_devices=4).name      # no cpu-4.json
    other = _profile()
    other["host"] = dict(other["host"], cpus=other["host"]["cpus"] + 7)
    calibrate.save(other)
    assert "quick numpy" in get_hardware("cpu", num_devices=8).name      # another host


def test_a_profile_path_is_a_hardware_name_and_a_bad_one_says_how_to_fix_it(tmp_path):
    path = calibrate.save(_profile(), tmp_path / "mine.json")
    assert get_hardware(str(path)).name == "cpu(x8, calibrated)"
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="gshard calibrate --out"):
        get_hardware(str(tmp_path / "broken.json"))


def test_calibrate_cli_measures_this_host_and_the_cost_model_uses_it(tmp_path, capsys):
    out = tmp_path / "cpu2.json"
    assert main(["calibrate", "--devices", "2", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and "all_to_all" in printed
    profile = json.loads(out.read_text())
    assert profile["num_devices"] == 2 and profile["launch_s"] > 0
    assert set(profile["collectives"]) == set(calibrate.KINDS)
    assert all(set(by_n) == {"2"} for by_n in profile["collectives"].values())
    assert all(r > 0 for *_, r in profile["matmul"]) and len(profile["matmul"]) == 8
    hw = get_hardware(str(out))
    # a bigger collective never costs less; a bigger matmul takes longer
    t = [collective_time_n("all_reduce", b, 2, hw) for b in (1e3, 1e5, 1e7)]
    assert t == sorted(t) and t[0] > 0
    big, small = (2 * 512 ** 3) / hw.matmul_rate((512,) * 3), (2 * 32 ** 3) / hw.matmul_rate((32,) * 3)
    assert big > small


def test_calibrate_cli_refuses_more_devices_than_present(capsys):
    n = len(jax.devices()) * 2
    assert main(["calibrate", "--devices", str(n), "--quick", "--out", "/nonexistent/x.json"]) == 2
    err = capsys.readouterr().err
    assert f"{n} devices asked for" in err and "xla_force_host_platform_device_count" in err
