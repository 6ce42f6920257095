"""Issue 5 items 2 and 6: `gshard train` config/overrides, mesh spelling, metrics, atomic
checkpoints, exact resume (4 then 6 steps == 6 steps), corrupt-checkpoint fallback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gshard.cli.main import main
from gshard.train import checkpoint as ckpt
from gshard.train.config import ConfigError, load_config, parse_value
from gshard.train.distributed import MeshError, parse_mesh
from gshard.train.metrics import read_jsonl

DATA = Path(__file__).parent / "data"
LISTS = "raw/apt/lists/deb.debian.org_debian_dists_bookworm_main_i18n_"


def tiny_corpus(base: Path) -> Path:
    """A real-format corpus from the committed fixtures (offline prepare), built once per dir."""
    from gshard.data import PrepareConfig, SplitConfig, VocabConfig, prepare

    root = base / "gshard_tiny_corpus"
    if (root / "manifest.json").exists() and "languages" in json.loads((root / "manifest.json").read_text()):
        return root
    (root / LISTS).parent.mkdir(parents=True, exist_ok=True)
    for name in ("Translation-en", "Translation-pt%5fBR"):
        shutil.copy(DATA / name, root / (LISTS + name))
    (root / "raw" / "debs").mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "psmisc_23.6-1_amd64.deb", root / "raw" / "debs")
    prepare(PrepareConfig(data_dir=root, offline=True, use_pypi=False,
                          split=SplitConfig(min_pairs=5, train_cap=300, test_cap=40, dev_cap=30),
                          vocab=VocabConfig(src_vocab=700, tgt_vocab=600, sample=4000)))
    return root


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.getbasetemp())


def train(workdir, corpus, steps, *extra) -> int:
    return main(["train", "--preset", "tiny", "--steps", str(steps), "--workdir", str(workdir),
                 "--data-dir", str(corpus), "--no-progress", "--no-plots", *extra])


def losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(Path(workdir) / "metrics.jsonl") if "loss" in r}


# ----- config -----------------------------------------------------------------------------------
def test_presets_and_overrides():
    cfg = load_config("tiny", ["train.steps=7", "moe.num_experts=16", "train.learning_rate=1e-3",
                               "data.dir=somewhere", "model.dropout=0.1"])
    assert (cfg.train.steps, cfg.moe.num_experts, cfg.train.learning_rate) == (7, 16, 1e-3)
    assert cfg.data.dir == "somewhere" and cfg.model.dropout == 0.1
    assert load_config("default").train.steps > load_config("tiny").train.steps
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("a/b") == "a/b"


@pytest.mark.parametrize("item, fragment", [
    ("train.setps=3", "did you mean 'train.steps'"),
    ("moe.num_expert=4", "did you mean 'moe.num_experts'"),
    ("trian.steps=3", "did you mean 'train.steps'"),
    ("train.steps=many", "train.steps must be int"),
    ("steps=3", "section.key"),
    ("train.steps", "section.key=value"),
])
def test_bad_overrides_are_rejected_with_a_suggestion(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("tiny", [item])


def test_unknown_preset_and_cli_error(capsys, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_config("tinny")
    assert main(["train", "--workdir", str(tmp_path), "train.stepz=3"]) == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err


def test_mesh_spelling():
    assert parse_mesh(None, 8).shape == (8,)
    plan = parse_mesh("data=2,expert=4", 8)
    assert (plan.shape, plan.names) == ((2, 4), ("data", "expert"))
    axes = plan.axes()
    assert axes.data == ("data", "expert") and axes.expert == ("data", "expert")
    assert parse_mesh("data=-1,model=2", 8).shape == (4, 2)
    for bad in ("data=3,expert=4", "dta=8", "data=x"):
        with pytest.raises(MeshError):
            parse_mesh(bad, 8)


# ----- training, resume, checkpoints -----------------------------------------------------------
def test_resume_continues_exactly(corpus_dir, reference_run, tmp_path, capsys):
    a = tmp_path / "a"
    assert train(a, corpus_dir, 4, "train.checkpoint_every=1", "train.keep_checkpoints=1") == 0
    assert ckpt.list_steps(a) == [4]
    assert train(a, corpus_dir, 6, "train.checkpoint_every=1", "train.keep_checkpoints=1") == 0
    assert "resuming from" in capsys.readouterr().out
    la = losses(a)                                      # == the uninterrupted run's curve
    assert list(la) == list(range(1, 7)) and losses(reference_run) == la
    rec = read_jsonl(a / "metrics.jsonl")[-1]
    assert rec["step"] == 6 and "dev_loss" in rec
    first = next(r for r in read_jsonl(a / "metrics.jsonl") if "loss" in r)
    assert {"step", "loss", "aux_loss", "expert_load", "dropped_fraction", "tokens_per_s"} <= set(first)
    assert np.array(first["expert_load"]).shape == (2, 8)      # 2 MoE layers x 8 experts
    assert train(a, corpus_dir, 6, "model.d_model=64") == 2    # a different model: refused


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # asyncio noise
def test_corrupt_checkpoint_falls_back_to_previous(corpus_dir, tmp_path, capsys):
    w = tmp_path / "w"
    assert train(w, corpus_dir, 6, "train.checkpoint_every=2", "train.keep_checkpoints=3") == 0
    assert ckpt.list_steps(w) == [2, 4, 6]
    ref = losses(w)
    for f in (ckpt.step_path(w, 6) / "state").rglob("*"):      # torn array files
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:7])
    (ckpt.step_path(w, 4) / "state" / "_METADATA").unlink()   # a partial checkpoint
    ckpt.close_all()
    assert train(w, corpus_dir, 6, "train.checkpoint_every=2", "train.keep_checkpoints=3") == 0
    err = capsys.readouterr()
    assert "step_00000006 is unusable" in err.err and "step_00000004 is unusable" in err.err
    assert "resuming from" in err.out and "step_00000002" in err.out
    assert losses(w) == ref                                   # steps 3..6 retrained identically


def test_checkpoint_roundtrip_keeps_the_newest_and_fits_the_template(tmp_path):
    state = ({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, (np.int32(3),))
    ckpt.save(tmp_path, 5, state, keep=1)
    ckpt.save(tmp_path, 7, state, keep=1, extra={"loss": 1.5})
    ckpt.wait(tmp_path)
    assert ckpt.list_steps(tmp_path) == [7]
    got = ckpt.restore_latest(tmp_path, ckpt.abstract(state))
    assert got.step == 7 and got.extra["loss"] == 1.5
    assert np.array_equal(np.asarray(got.state[0]["w"]), state[0]["w"])
    with pytest.raises(ckpt.CheckpointError, match="do not fit|Error|error"):
        ckpt.load(tmp_path, 7, ckpt.abstract(({"w": np.zeros((3, 3), np.float32)}, (np.int32(0),))))


def test_old_format_is_refused_and_converted(corpus_dir, reference_run, tmp_path):
    import jax
    import shutil
    w = tmp_path / "old"
    shutil.copytree(reference_run, w, ignore=shutil.ignore_patterns("checkpoints"))
    state = ckpt.restore_latest(reference_run, _template(reference_run)).state
    old = ckpt.step_path(w, 6)                       # what the old format wrote
    old.mkdir(parents=True)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
    np.savez(old / "arrays.npz", **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    (old / "meta.json").write_text(json.dumps({"step": 6, "num_leaves": len(leaves)}))
    with pytest.raises(ckpt.CheckpointError, match="--convert-checkpoints"):
        ckpt.restore_latest(w, _template(w))
    assert main(["train", "--preset", "tiny", "--workdir", str(w), "--data-dir", str(corpus_dir),
                 "--convert-checkpoints"]) == 0
    got = ckpt.restore_latest(w, _template(w))
    assert got.step == 6 and all(np.array_equal(np.asarray(a), b) for a, b in
                                 zip(jax.tree_util.tree_leaves(got.state), leaves))


def _template(w):
    from gshard.data import Corpus
    from gshard.train.loop import init_state, load_workdir_config, make_optimizer, model_config
    cfg = load_workdir_config(w)
    mc = model_config(cfg, Corpus.load(cfg.data.dir), None)
    return ckpt.abstract(init_state(mc, make_optimizer(cfg), cfg.train.seed))
