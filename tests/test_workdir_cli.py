"""The command line never loses work: the workdir (not the current directory) holds the run's
data dir, config and checkpoints; rejected configs write nothing; corrupt files give one-line
errors with the way out; a kill during a checkpoint write loses nothing; `gshard translate`
answers line by line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gshard.cli.main import main
from gshard.train import checkpoint as ckpt
from test_train_cli import losses, tiny_corpus, train

SRC = str(Path(__file__).parents[1] / "src")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.getbasetemp())


@pytest.fixture
def no_download(monkeypatch):
    """Any data preparation (a ~200 MB download) fails the test."""
    from gshard.cli import data_cmd
    monkeypatch.setattr(data_cmd, "run", lambda args: pytest.fail("data preparation started"))


def copy_run(src: Path, dst: Path) -> Path:
    ckpt.close_all()
    shutil.copytree(src, dst)
    return dst


def one_line_error(err: str, *needles: str):
    lines = [x for x in err.strip().splitlines() if "error" in x.lower()]
    assert len(lines) == 1 and lines[0].startswith("gshard "), err
    assert "Traceback" not in err and "Event loop" not in err and "tensorstore" not in err.lower()
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ----- the workdir is the source of truth --------------------------------------------------------
def test_resume_from_another_directory_uses_the_recorded_data(reference_run, tmp_path,
                                                              monkeypatch, no_download, capsys):
    w = copy_run(reference_run, tmp_path / "w")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--preset", "tiny", "--steps", "6", "--workdir", str(w), "--no-progress",
                 "--no-plots"]) == 0
    assert "already trained to step 6" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []           # no data_cache prepared here


@pytest.mark.parametrize("extra, needle", [
    (["moe.num_experts=4"], "moe.num_experts=4"),
    (["--steps", "0"], "train.steps must be at least 1, got 0"),
    (["--steps", "-5"], "train.steps must be at least 1, got -5"),
    (["--mesh", "data=3"], "data=3"),
])
def test_rejected_config_writes_and_downloads_nothing(extra, needle, reference_run, tmp_path,
                                                      no_download, capsys):
    new, data = tmp_path / "new", tmp_path / "no_corpus_yet"
    args = ["train", "--preset", "tiny", "--no-progress", "--no-plots", "--data-dir", str(data)]
    assert main(args + ["--workdir", str(new)] + extra) == 2
    one_line_error(capsys.readouterr().err, needle)
    assert not new.exists() and not data.exists()
    w = copy_run(reference_run, tmp_path / "w")       # an existing run: left as it was
    before = {p: p.read_bytes() for p in w.rglob("*") if p.is_file()}
    assert main(["train", "--preset", "tiny", "--no-progress", "--no-plots", "--workdir", str(w)]
                + (extra if "--steps" in extra else ["--steps", "7"] + extra)) == 2
    one_line_error(capsys.readouterr().err, needle)
    assert {p: p.read_bytes() for p in w.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["train", "eval", "translate"])
def test_corrupt_config_json_is_one_line_naming_the_file(command, tmp_path, capsys, no_download):
    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text('{"train": {"steps": 4')          # torn
    extra = ["--no-progress", "--no-plots"] if command == "train" else []
    assert main([command, "--workdir", str(w), *extra]) == 2
    one_line_error(capsys.readouterr().err, str(w / "config.json"), "--restart")


# ----- corrupt checkpoints -------------------------------------------------------------------------
def _tear(w: Path):
    for step in ckpt.list_steps(w):
        for f in (ckpt.step_path(w, step) / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:7])


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # asyncio noise
def test_no_good_checkpoint_left_stops_train_and_eval(reference_run, corpus_dir, tmp_path, capsys):
    w = copy_run(reference_run, tmp_path / "w")
    _tear(w)
    steps, metrics = ckpt.list_steps(w), (w / "metrics.jsonl").read_bytes()
    assert len(steps) == 2
    (ckpt.step_path(w, steps[0]) / "state" / "_METADATA").unlink()
    assert train(w, corpus_dir, 8) == 2                   # never retrains silently
    err = capsys.readouterr().err
    line = one_line_error(err, "--restart", *(f"step_{s:08d}" for s in steps))
    assert "nothing was trained" in line and "{" not in line
    assert f"step_{steps[0]:08d}: missing state/_METADATA" in line
    assert f"step_{steps[1]:08d}: its files are truncated or corrupt" in line
    assert ckpt.list_steps(w) == steps and (w / "metrics.jsonl").read_bytes() == metrics
    assert main(["eval", "--workdir", str(w), "--no-plots"]) == 2
    one_line_error(capsys.readouterr().err, "no checkpoint", str(ckpt.ckpt_dir(w)), "--restart")
    assert train(w, corpus_dir, 2, "--restart") == 0      # the one way to start over
    assert ckpt.list_steps(w) == [2] and sorted(losses(w)) == [1, 2]
    assert losses(w) == {s: v for s, v in losses(reference_run).items() if s <= 2}


def test_kill_during_a_checkpoint_write_then_train_continues(reference_run, corpus_dir, tmp_path):
    w = tmp_path / "w"
    cmd = [sys.executable, "-m", "gshard", "train", "--preset", "tiny", "--steps", "6",
           "--workdir", str(w), "--data-dir", str(corpus_dir), "--no-progress", "--no-plots",
           "train.checkpoint_every=1"]
    env = dict(os.environ, GSHARD_TEST_SIGKILL_IN_SAVE="3", PYTHONPATH=SRC)
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert ckpt.list_steps(w) == [1, 2]                   # step 3 never completed
    assert train(w, corpus_dir, 6, "train.checkpoint_every=1") == 0
    assert losses(w) == losses(reference_run)             # the uninterrupted run's curve


# ----- gshard translate ------------------------------------------------------------------------------
def _reader(stream, out: list, got_one: threading.Event):
    for line in stream:
        out.append(line.rstrip("\n"))
        got_one.set()


def test_translate_answers_each_line_as_it_arrives(reference_run, tmp_path):
    w = copy_run(reference_run, tmp_path / "w")
    p = subprocess.Popen([sys.executable, "-m", "gshard", "translate", "--workdir", str(w),
                          "--beam", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC))
    out, got = [], threading.Event()
    threading.Thread(target=_reader, args=(p.stdout, out, got), daemon=True).start()
    try:
        p.stdin.write("o arquivo\n")
        p.stdin.flush()                                   # stdin stays open
        assert got.wait(120), "no answer before stdin closed"
        assert len(out) == 1
        long = " ".join(["processo arquivo usuário"] * 30)   # far beyond 15 source pieces
        p.stdin.write("\n   \n" + long + "\n")
    finally:
        p.stdin.close()
    assert p.wait(120) == 0
    err = p.stderr.read()
    assert len(out) == 2, out                             # empty lines skipped; one line out
    assert "line 4 is longer than the model's 15 source pieces: translated in" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("beam", ["0", "-1"])
def test_translate_refuses_a_beam_below_one(beam, capsys):
    assert main(["translate", "--workdir", "nowhere", "--beam", beam]) == 2
    one_line_error(capsys.readouterr().err, "--beam must be at least 1")


def test_gshard_run_checks_the_config_before_preparing_data(tmp_path, no_download, capsys):
    new, data = tmp_path / "new", tmp_path / "no_corpus_yet"
    assert main(["run", "--preset", "tiny", "--workdir", str(new), "--data-dir", str(data),
                 "moe.num_experts=4"]) == 2
    one_line_error(capsys.readouterr().err, "moe.num_experts=4")
    assert not new.exists() and not data.exists()
