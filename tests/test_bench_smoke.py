"""Issue 7: the bench adapters run on tiny shapes, and gshard and the XLA baseline (the same
annotations as with_sharding_constraint under jax.jit) compute the same results."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))

import common as B  # noqa: E402
import models_for_tests as M  # noqa: E402


@pytest.mark.parametrize("shape", [(8,), (2, 4)], ids=["8", "2x4"])
def test_gshard_and_xla_baseline_agree(shape):
    rng = np.random.default_rng(0)
    mesh = B.auto_mesh(shape)
    data, model = M.ROLES[shape]
    progs = [
        (M.mlp(data, model), (rng.standard_normal((16, 8), np.float32),
                              rng.standard_normal((8, 32), np.float32),
                              rng.standard_normal((32, 8), np.float32))),
        (M.attention(data, model), (rng.standard_normal((2, 4, 8), np.float32),
                                    *[rng.standard_normal((8, 8, 2), np.float32)] * 3,
                                    rng.standard_normal((8, 2, 8), np.float32))),
    ]
    for fn, args in progs:
        g = B.build_gshard(fn, mesh, args)
        x = B.build_xla(fn, mesh, args, g.lowered.program.jit_in_shardings)
        assert "sharding" in x.hlo.lower() or B.hlo_collectives(x.hlo)  # XLA partitioned it
        assert B.max_rel_diff(g.run(), x.run()) < 1e-6
        # the HLO parser agrees with gshard's own report on gshard's compiled program
        assert B.summarize(B.hlo_collectives(g.hlo))[0] == B.summarize(g.collectives)[0]
        assert B.summarize(B.hlo_collectives(x.hlo))[0] > 0
        meds, ratios, _ = B.interleaved([x.run, g.run], rounds=2, calls=1, warmup=1)
        assert all(m > 0 for m in meds) and ratios[0] == 1.0


def test_xla_adapter_restores_annotations():
    import gshard
    from gshard import annotate

    saved = annotate._bind
    with B.xla_annotations(B.auto_mesh((8,))):
        assert annotate._bind is not saved
    assert annotate._bind is saved
    assert gshard.split is annotate.split


def test_hlo_parser_bytes_convention():
    text = """
ENTRY %main {
  %p0 = f32[4,16]{1,0} parameter(0)
  %all-gather.1 = f32[32,16]{1,0} all-gather(%p0), dimensions={0}
  %ar = (f32[4,16]{1,0}, bf16[8]{0}) all-reduce(%p0, %p1), to_apply=%add
  %p1 = bf16[8]{0} parameter(1)
  ROOT %a2a = f32[4,16]{1,0} all-to-all(f32[4,16]{1,0} %p0), dimensions={0}
}"""
    got = [(c.kind, c.bytes) for c in B.hlo_collectives(text)]
    assert got == [("all_gather", 32 * 16 * 4), ("all_reduce", 4 * 16 * 4 + 8 * 2),
                   ("all_to_all", 4 * 16 * 4)]
