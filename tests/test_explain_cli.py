"""Issue 6: `gshard explain` (specs, collectives, warnings, sharding pictures) and its parsers."""
import textwrap

import pytest
from jax.sharding import AbstractMesh, Mesh

from gshard.cli.explain_cmd import SpecError, build_mesh, parse_args_spec, parse_mesh_spec
from gshard.cli.main import main
from gshard.picture import device_tiles, text_grid
from gshard.spec import ShardingSpec

SRC = textwrap.dedent("""
    import jax.numpy as jnp
    import gshard

    def f(x, w):
        x = gshard.mesh_split(x, ("data", None))
        w = gshard.mesh_split(w, (None, "model"))
        y = x @ w
        return gshard.replicate(jnp.tanh(y)).sum(0)
""")


@pytest.fixture
def demo_module(tmp_path, monkeypatch):
    (tmp_path / "explain_demo_mod.py").write_text(SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "explain_demo_mod:f"


def test_explain_cli_prints_specs_collectives_and_grid(demo_module, tmp_path, capsys):
    png = tmp_path / "p.png"
    rc = main(["explain", demo_module, "--mesh", "data=2,model=4", "--args",
               "f32[8,16] f32[16,32]", "--show", "x", "--show", "#2", "--png", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "in[0] x float32[8,16]: S(0)[data] R" in out                  # spec + provenance
    assert "annotation mesh_split" in out and "explain_demo_mod.py:6" in out
    assert "all_gather over ['model']: 1,024 B/device" in out           # kind, axes, bytes
    assert "user annotation replicate()" in out                          # reason
    assert "WARNING: full replication" in out
    grid = out[out.index("#2: float32[8, 32]"):]
    assert "spec S(0)[data] S(1)[model]" in grid
    assert "d0" in grid and "d7" in grid and "8 tiles of [4, 8]" in grid
    assert png.exists() and png.stat().st_size > 1000


def test_explain_cli_abstract_mesh_and_errors(demo_module, capsys):
    rc = main(["explain", demo_module, "--mesh", "data=16,model=8", "--args",
               "f32[64,16] f32[16,32]", "--show", "w", "--no-values"])
    out = capsys.readouterr().out
    assert rc == 0 and "abstract (shapes only)" in out
    assert "8 tiles of [16, 4], each on 16 of 128 devices" in out
    assert main(["explain", demo_module, "--mesh", "data=x", "--args", "f32[8,16] f32[16,32]"]) == 2
    assert "not a positive integer" in capsys.readouterr().err
    assert main(["explain", demo_module, "--mesh", "data=2,model=4", "--args", "f32[8,16] f32[16,32]",
                 "--show", "nope"]) == 2
    assert "no value named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("bad, msg", [
    ("data=x", "not a positive integer"),
    ("data=2,data=4", "appears twice"),
    ("data=0", "not a positive integer"),
    ("data", "is not NAME=SIZE"),
    ("", "empty mesh"),
    ("1d=2", "not an identifier"),
    ("data=2,,model=4", "is not NAME=SIZE"),
])
def test_mesh_spelling_rejects_bad_input(bad, msg):
    with pytest.raises(SpecError, match=msg):
        parse_mesh_spec(bad)


def test_mesh_spelling_and_args():
    assert parse_mesh_spec(" data=2, model=4 ") == (("data", "model"), (2, 4))
    assert isinstance(build_mesh("data=2,model=4"), Mesh)
    assert isinstance(build_mesh("data=64,model=32"), AbstractMesh)
    a, b, c = parse_args_spec("f32[8,16] i32[] bf16[2, 3]")
    assert (a.shape, str(a.dtype)) == ((8, 16), "float32")
    assert (b.shape, str(b.dtype)) == ((), "int32")
    assert (c.shape, str(c.dtype)) == ((2, 3), "bfloat16")
    with pytest.raises(SpecError, match="unknown dtype"):
        parse_args_spec("float[8]")
    with pytest.raises(SpecError, match="is not DTYPE"):
        parse_args_spec("8,16")


def test_device_tiles_paper_layout():
    spec = ShardingSpec((("data",), ("model",)))
    tiles = device_tiles(spec, (8, 32), ("data", "model"), (2, 4))
    assert len(tiles) == 8
    for t in tiles:
        (p,) = t.devices
        assert t.index == (p // 4, p % 4)
        assert t.ranges == ((4 * (p // 4), 4 * (p // 4) + 4), (8 * (p % 4), 8 * (p % 4) + 8))
    # replicated over model, uneven dim: 5 rows over 2 -> [0:3), [3:5)
    tiles = device_tiles(ShardingSpec((("data",), ())), (5, 3), ("data", "model"), (2, 4))
    assert [t.devices for t in tiles] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [t.ranges[0] for t in tiles] == [(0, 3), (3, 5)]
    # two axes on one dim, first axis major
    tiles = device_tiles(ShardingSpec((("model", "data"),)), (8,), ("data", "model"), (2, 4))
    assert [t.devices for t in tiles] == [(0,), (4,), (1,), (5,), (2,), (6,), (3,), (7,)]
    g = text_grid("v", ShardingSpec(((), ()), partial=("data",)), (4, 4), "float32",
                  ("data", "model"), (2, 4))
    assert "partial sums over ['data']" in g and "replicated" in g


def test_explain_preset_tiny(capsys):
    rc = main(["explain", "--preset", "tiny", "--mesh", "x=8", "--no-values",
               "--show", "encoder/layer_1/ffn/wi"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "all_to_all" in out
    assert "params/encoder/layer_1/ffn/wi" in out and "S(0)[x]" in out
