import pytest

from gshard.cost import H100_CLUSTER, TPU_V3, calibrate_cpu, collective_time, collective_time_n
from gshard.cost.collective_time import members_per_node, torus_shape

MB = 2 ** 20


def _t(kind, b, n, hw=TPU_V3):
    return collective_time_n(kind, b, n, hw)


def test_torus_shapes():
    assert torus_shape(64) == (8, 8) and torus_shape(1024) == (32, 32)
    assert torus_shape(8) == (2, 4)


def test_tpu_alltoall_grows_like_sqrt_d():
    r = _t("all_to_all", 8 * MB, 2048) / _t("all_to_all", 8 * MB, 128)
    assert 3 <= r <= 5  # paper: ~3.75x for 128 -> 2048
    r16 = _t("all_to_all", 8 * MB, 2048) / _t("all_to_all", 8 * MB, 16)
    assert 6 <= r16 <= 12  # paper: ~9x for 128x more partitions


def test_tpu_allreduce_flat_allgather_linear_permute_constant():
    b = 128 * MB
    assert _t("all_reduce", b, 2048) / _t("all_reduce", b, 128) < 1.3
    assert _t("reduce_scatter", b, 2048) / _t("reduce_scatter", b, 128) < 1.3
    per_in = MB  # fixed input: result = n x input
    r = _t("all_gather", 2048 * per_in, 2048) / _t("all_gather", 128 * per_in, 128)
    assert 12 <= r <= 20
    assert _t("collective_permute", b, 2048) == pytest.approx(_t("collective_permute", b, 128))


def test_trivial_groups_cost_nothing():
    assert _t("all_reduce", MB, 1) == 0.0
    assert collective_time("all_reduce", MB, ("x",), {"x": 1, "y": 4}, TPU_V3) == 0.0


def test_gpu_hierarchy():
    b = 64 * MB
    in_node = _t("all_reduce", b, 8, H100_CLUSTER)
    across = _t("all_reduce", b, 16, H100_CLUSTER)
    assert across > 1.3 * in_node
    assert _t("all_to_all", b, 64, H100_CLUSTER) > 5 * _t("all_to_all", b, 8, H100_CLUSTER)
    sizes = {"data": 4, "model": 8}
    assert members_per_node(("model",), sizes, 8) == 8
    assert members_per_node(("data",), sizes, 8) == 1
    major = collective_time("all_reduce", b, ("data",), sizes, H100_CLUSTER)
    minor = collective_time("all_reduce", b, ("model",), sizes, H100_CLUSTER)
    assert major > minor  # 4 devices on 4 nodes (IB) vs 8 in one node (NVLink)


def test_calibrate_cpu_is_quick_and_sane():
    import time
    t0 = time.perf_counter()
    hw = calibrate_cpu(num_devices=8)
    assert time.perf_counter() - t0 < 2.0
    assert hw.flops_f32 > 1e7 and hw.hbm_bw > 1e6 and hw.topology.num_devices == 8
    assert _t("all_reduce", MB, 8, hw) > 0
