"""Issue 5 items 3-4: decoding (greedy, beam), sacrebleu scores, eval.json, translate, plots."""
from __future__ import annotations

import io
import json
import shutil
import sys

import jax
import numpy as np
import pytest

from gshard.cli.main import main
from gshard.evaluate.bleu import score
from gshard.evaluate.decode import beam_search, decoding_config, greedy, strip
from gshard.models.presets import get_preset
from gshard.models.transformer import init_params
from test_train_cli import tiny_corpus, train

EVAL = ["eval.min_test_pairs=5", "eval.max_sentences=6", "eval.pool_min_pairs=5",
        "eval.pool_max_sentences=2", "eval.beam_size=2", "eval.max_len=8",
        "eval.udhr_max_sentences=2", "eval.batch_size=16"]


def eval_corpus(base):
    """The fixture corpus has test pairs for `pt` only and no UDHR; copy it and give 6 more
    languages a test set (and 2 a UDHR set) made of their real train pairs. Only eval.json's
    structure is tested on it, so the overlap with train does not matter."""
    src = tiny_corpus(base)
    root = base / "gshard_tiny_eval_corpus"
    if root.exists():
        return root
    shutil.copytree(src, root)
    man = json.loads((root / "manifest.json").read_text())
    langs = [lang for lang in sorted(man["languages"]) if lang != "pt"][:6]
    for i, lang in enumerate(langs):
        text = (root / "corpus" / "train" / f"{lang}.tsv").read_text()
        (root / "corpus" / "test" / f"{lang}.tsv").write_text(text)
        man["languages"][lang]["test"] = len(text.splitlines())
        if i < 2:
            (root / "corpus" / "udhr").mkdir(exist_ok=True)
            (root / "corpus" / "udhr" / f"{lang}.tsv").write_text(text)
            man["languages"][lang]["udhr"] = len(text.splitlines())
    (root / "manifest.json").write_text(json.dumps(man))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus = eval_corpus(tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("eval_run")
    assert train(work, corpus, 6) == 0
    return work


def test_bleu_and_chrf():
    assert score(["the cat sat on the mat"], ["the cat sat on the mat"]) == \
        {"bleu": 100.0, "chrf": 100.0, "n": 1}
    s = score(["the cat sat on the"], ["the cat sat on the mat"])
    assert 0 < s["bleu"] < 100 and 0 < s["chrf"] < 100


# Both decoding tests use [8, 7] sources and 12 target steps: greedy and the 3-beam search
# compile once for the two (the jitted decoders are keyed by shape and static arguments).
def test_beam_of_one_is_greedy_and_beams_are_well_formed():
    mc = decoding_config(get_preset("tiny", num_experts=4))
    params = init_params(mc, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    src = rng.integers(4, mc.vocab_size, (8, 7)).astype(np.int32)
    pad = np.zeros((8, 7), np.float32)
    pad[0, 5:] = 1.0
    g = np.asarray(greedy(params, mc, src, pad, 12))
    assert g.shape == (8, 12)
    assert np.array_equal(g, np.asarray(beam_search(params, mc, src, pad, 12, beam=1)))
    b = np.asarray(beam_search(params, mc, src, pad, 12, beam=3))
    assert b.shape == (8, 12) and all(len(x) <= 12 for x in strip(b))


def test_decoding_stops_early_with_the_same_result():
    """Rows that emitted EOS only append PAD: stopping once every row (beam) is done gives the
    output of the full max_len loop. The EOS row of the tied table is scaled up so that rows
    finish at different steps."""
    from gshard.data.vocab import EOS_ID
    mc = decoding_config(get_preset("tiny", num_experts=4))
    params = init_params(mc, jax.random.PRNGKey(2))
    table = params["embed"]["src"]
    params["embed"]["src"] = table.at[EOS_ID].multiply(8.0)
    src = np.random.default_rng(1).integers(4, mc.vocab_size, (8, 7)).astype(np.int32)
    pad = np.zeros((8, 7), np.float32)
    for dec in (lambda **k: greedy(params, mc, src, pad, 12, **k),
                lambda **k: beam_search(params, mc, src, pad, 12, beam=3, **k)):
        fast, full = np.asarray(dec()), np.asarray(dec(early_stop=False))
        np.testing.assert_array_equal(fast, full)
        lengths = [len(x) for x in strip(fast)]
        assert max(lengths) < 12 and len(set(lengths)) > 1, lengths   # stopped early, unevenly


def test_eval_writes_scores_per_language_tier_and_udhr(trained, capsys):
    assert main(["eval", "--workdir", str(trained), *EVAL]) == 0
    out = capsys.readouterr().out
    assert "BLEU" in out and "tier" in out
    ev = json.loads((trained / "eval.json").read_text())
    assert ev["step"] == 6 and ev["decoder"] == "beam2"
    assert len(ev["languages"]) >= 5
    for lang, r in ev["languages"].items():
        assert r["test_pairs"] >= 5 and 0 < r["n"] <= 6
        for key in ("bleu", "chrf"):
            assert 0 <= r[key] <= 100 and 0 <= r["greedy"][key] <= 100
        assert r["tier"] in ("high", "mid", "low") and r["train_pairs"] > 0
    assert "low" in ev["tiers"] and {"bleu", "chrf", "n", "greedy", "beam"} <= set(ev["tiers"]["low"])
    assert ev["udhr"]["n"] > 0 and 0 <= ev["udhr"]["chrf"] <= 100
    assert "tok:13a" in ev["signatures"]["bleu"]
    for png in ("bleu_vs_size.png",):
        assert (trained / png).read_bytes()[:4] == b"\x89PNG"


def test_eval_rejects_non_eval_overrides(trained, capsys):
    assert main(["eval", "--workdir", str(trained), "train.steps=3"]) == 2


def test_translate_reads_stdin(trained, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Abrir o arquivo\nSalvar\n"))
    assert main(["translate", "--workdir", str(trained), "--beam", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(isinstance(x, str) for x in lines)


def test_training_plots(trained):
    from gshard.evaluate.plots import training_plots
    paths = training_plots(trained)
    assert {p.name for p in paths} == {"loss.png", "expert_load.png"}
