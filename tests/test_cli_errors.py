"""Every CLI error is one line naming the argument and the fix, exit status 2; `explain` imports
from the current directory, takes pytree arguments and checks --show before it runs."""
from __future__ import annotations

import sys

import pytest

from gshard.cli.main import main

MODULE = '''
import jax.numpy as jnp
import numpy as np

def layer(x, w):
    return jnp.tanh(x @ w)

def tree(p, x):
    return x @ p["w"] + p["b"]

def example():
    return ({"w": np.zeros((16, 4), np.float32), "b": np.zeros((4,), np.float32)},
            np.zeros((8, 16), np.float32))
'''


@pytest.fixture
def in_module_dir(tmp_path, monkeypatch):
    """cwd holds gshard_i24_mod.py, and (as under the `gshard` script) cwd is not on sys.path."""
    (tmp_path / "gshard_i24_mod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "gshard_i24_mod", raising=False)
    return tmp_path


def one_line(capsys, *needles) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert out.out == ""                                # found before anything ran
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["--mesh", "data=2,bogus", "--args", "f32[8,16] f32[16,4]"], ["'bogus'", "NAME=SIZE"]),
    (["--mesh", "data=2"], ["--args gives 0", "(x, w)"]),
    (["--mesh", "data=2", "--args", "f32[8,16]"], ["--args gives 1", "(x, w)"]),
    (["--mesh", "data=2", "--args", "f32[8,16] f32[16,4]", "--show", "zz"], ["--show: no value named 'zz'"]),
    (["--mesh", "data=2", "--args", "f32[8,16] f32[16,4]", "--show", "in[5]"], ["--show in[5]"]),
    (["--mesh", "data=2", "--args", "[\"f32[8,16]\", {\"w\": 3}]"], ["--args", "DTYPE"]),
    (["--mesh", "data=2", "--args", "f32[8,16] f32[16,4]", "--png", "x.png"], ["--png", "--show"]),
])
def test_explain_errors_are_one_line(argv, needles, in_module_dir, capsys):
    assert main(["explain", "gshard_i24_mod:layer", *argv]) == 2
    one_line(capsys, *needles)
    assert not (in_module_dir / "x.png").exists()


def test_explain_imports_from_the_current_directory_and_takes_pytrees(in_module_dir, capsys):
    assert main(["explain", "gshard_i24_mod:layer", "--mesh", "data=2", "--args",
                 "f32[8,16] f32[16,4]", "--no-values"]) == 0
    assert "gshard_i24_mod:layer on mesh data=2" in capsys.readouterr().out
    tree = '[{"w": "f32[16,4]", "b": "f32[4]"}, "f32[8,16]"]'
    for extra in (["--args", tree], ["--args-from", "gshard_i24_mod:example"]):
        assert main(["explain", "gshard_i24_mod:tree", "--mesh", "data=2", "--show", "p/w",
                     "--no-values", *extra]) == 0
        out = capsys.readouterr().out
        assert "p/w" in out and "float32[16, 4]" in out


def test_simulate_unknown_hardware_and_help_lists_every_name(capsys):
    from gshard.cost.hardware import PRESETS
    assert main(["simulate", "--hardware", "tpu-v4"]) == 2
    one_line(capsys, "--hardware 'tpu-v4'", "tpu-v3", "h200-cluster")
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in [*PRESETS, "cpu"])


@pytest.mark.parametrize("argv, needle", [
    (["train", "--steps", "3"], "--workdir"),
    (["translate", "--workdir", "w", "--beam", "x"], "--beam"),
    (["simulate", "--devices", "1"], "--devices"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    line = one_line(capsys, needle, "--help")
    assert "usage:" not in line


def test_version(capsys):
    from gshard import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gshard {__version__}"


def test_data_prepare_help_says_what_quick_does(capsys):
    from gshard.data.fetch import QUICK_DDTP_CODES
    from gshard.data.pipeline import QUICK_TRAIN_CAP, quick_config, PrepareConfig
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cfg = quick_config(PrepareConfig(data_dir="x"))
    assert cfg.split.train_cap == QUICK_TRAIN_CAP
    assert f"at most {QUICK_TRAIN_CAP:,} train pairs per language" in text and "2k" not in text
    assert f"{len(QUICK_DDTP_CODES) - 1} DDTP languages" in text and "200 MB" in text


def test_docs_are_written_for_users():
    import re
    from pathlib import Path
    root = Path(__file__).parents[1]
    bad = re.compile(r"\bissues? \d+|\bsessions?\b|\bengineer|\bDESIGN\b|was lent|this task",
                     re.IGNORECASE)
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sorted((root / "docs").glob("*.md"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, "\n".join(hits)
    readme = (root / "README.md").read_text()
    assert "200 MB" in readme and "--restart" in readme
