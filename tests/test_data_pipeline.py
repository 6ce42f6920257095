"""End-to-end `prepare` on the committed real fixtures (offline), the split's no-leakage
property, determinism, the step cache, the loader, temperature sampling and batch shapes."""
from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gshard.cli import data_cmd
from gshard.data import (BOS_ID, EOS_ID, PAD_ID, BatchIterator, Corpus, PrepareConfig, SplitConfig,
                         VocabConfig, eval_batches, key, prepare, split_of, temperature_probs)
from gshard.data.split import dedup, split_language

DATA = Path(__file__).parent / "data"
LISTS = "raw/apt/lists/deb.debian.org_debian_dists_bookworm_main_i18n_"


def _raw_dir(root: Path) -> Path:
    (root / LISTS).parent.mkdir(parents=True)
    shutil.copy(DATA / "Translation-en", root / (LISTS + "Translation-en"))
    shutil.copy(DATA / "Translation-pt%5fBR", root / (LISTS + "Translation-pt%5fBR"))
    (root / "raw" / "debs").mkdir(parents=True)
    shutil.copy(DATA / "psmisc_23.6-1_amd64.deb", root / "raw" / "debs")
    return root


def _config(root: Path) -> PrepareConfig:
    return PrepareConfig(data_dir=root, offline=True, use_pypi=False,
                         split=SplitConfig(min_pairs=5, train_cap=300, test_cap=40, dev_cap=30),
                         vocab=VocabConfig(src_vocab=700, tgt_vocab=600, sample=4000))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = _raw_dir(tmp_path_factory.mktemp("prep"))
    prepare(_config(root))
    return root


@pytest.fixture(scope="module")
def corpus(prepared) -> Corpus:
    return Corpus.load(prepared)


# ---- prepare, split --------------------------------------------------------------------------------

def test_prepare_counts_and_manifest(corpus):
    man = corpus.manifest
    assert "pt" in corpus.languages and len(corpus.languages) >= 20
    pt = corpus.counts("pt")
    assert pt["sources"]["ddtp"] > 400 and pt["sources"]["mo"] > 0 and pt["train"] == 300
    assert corpus.tier("pt") == "low" and corpus.tier("de") == "low"
    assert set(man["fetch"]["files"]) == {LISTS + "Translation-en", LISTS + "Translation-pt%5fBR",
                                          "raw/debs/psmisc_23.6-1_amd64.deb"}
    assert man["fetch"]["versions"] == {"psmisc": "23.6-1"}
    assert man["totals"]["languages"] == len(corpus.languages)
    for lang in corpus.languages:
        c = corpus.counts(lang)
        assert c["train"] + c["dev"] + c["test"] <= c["clean"]
        assert len(corpus.pairs("train", lang)) == c["train"] == corpus.train_counts[lang]
        assert c["dev"] <= 30 and c["test"] <= 40


def test_no_normalized_english_string_in_two_splits(corpus):
    where: dict[str, set[str]] = {}
    for lang in corpus.languages:
        for split in ("train", "dev", "test"):
            for _, en in corpus.pairs(split, lang):
                where.setdefault(key(en), set()).add(split)
                assert split_of(key(en)) == split
    assert where and all(len(s) == 1 for s in where.values())


def test_dedup_keeps_first_by_priority_and_plain_code_first():
    rows = dedup([("ddtp", "pt", "Open the file now", "A"), ("mo", "pt", "open the FILE now!", "B"),
                  ("mo", "de", "Open the file now", "C")])
    assert [r[2] for r in rows["pt"]] == ["A"] and [r[2] for r in rows["de"]] == ["C"]


def test_caps_discard_and_language_salted_train():
    rows = [(key(f"sentence number {i} here"), f"sentence number {i} here", f"t{i}", "mo") for i in range(3000)]
    cfg = SplitConfig(test_cap=10, dev_cap=5, train_cap=100)
    a, b = split_language("aa", rows, cfg), split_language("bb", rows, cfg)
    assert (len(a.test), len(a.dev), len(a.train)) == (10, 5, 100)
    assert a.train_uncapped == sum(split_of(r[0]) == "train" for r in rows)   # never moved to train
    assert {e for _, e in a.test} == {e for _, e in b.test}                     # same test strings
    assert {e for _, e in a.train} != {e for _, e in b.train}                   # salted train choice


def test_prepare_is_deterministic(prepared, tmp_path):
    other = _raw_dir(tmp_path)
    prepare(_config(other))
    for f in sorted((prepared / "corpus").rglob("*.tsv")):
        assert f.read_bytes() == (other / f.relative_to(prepared)).read_bytes(), f
    a, b = Corpus.load(prepared), Corpus.load(other)
    assert a.manifest["languages"] == b.manifest["languages"]
    assert a.src_spm.encode("Exibe uma mensagem") == b.src_spm.encode("Exibe uma mensagem")


def test_rerun_uses_verified_cache_and_repairs_damage(tmp_path, capsys):
    root = _raw_dir(tmp_path)
    cfg = _config(root)
    prepare(cfg)
    model = root / "spm" / "src.model"
    stamp = model.stat().st_mtime_ns
    victim = root / "corpus" / "test" / "pt.tsv"
    good = victim.read_bytes()
    victim.write_text("tampered\tdata\n")
    capsys.readouterr()
    prepare(cfg)
    err = capsys.readouterr().err
    assert "extract: cached" in err and "spm: cached" in err and "split: done" in err
    assert victim.read_bytes() == good and model.stat().st_mtime_ns == stamp
    prepare(dataclasses.replace(cfg, languages=("pt", "de")))
    assert Corpus.load(root).languages == ("de", "pt")


def test_fallback_to_pypi_catalogs_without_apt(tmp_path, monkeypatch, capsys):
    import zipfile

    from gshard.data import pipeline
    from gshard.data.catalogs import write_mo

    root = _raw_dir(tmp_path)
    (root / "raw" / "pypi").mkdir()
    pairs = [(f"Remove the selected item number {i}", f"Entferne das gewählte Element Nummer {i}")
             for i in range(40)]
    with zipfile.ZipFile(root / "raw" / "pypi" / "demo-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("demo/locale/de/LC_MESSAGES/django.mo", write_mo(pairs))
    monkeypatch.setattr(pipeline, "apt_available", lambda: False)
    man = prepare(dataclasses.replace(_config(root), use_pypi=False))
    assert "falling back to the PyPI catalogs" in capsys.readouterr().err
    assert man["fetch"]["mode"] == "pypi-only" and list(man["languages"]) == ["de"]
    assert man["languages"]["de"]["sources"] == {"pypi": 40}


def test_cli_prints_table(prepared, capsys):
    argv = ["prepare", "--data-dir", str(prepared), "--offline", "--no-pypi", "--min-pairs", "5",
            "--max-pairs-per-lang", "300", "--test-cap", "40", "--dev-cap", "30",
            "--src-vocab", "700", "--tgt-vocab", "600", "--spm-sample", "4000"]
    assert data_cmd.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["lang", "clean", "train"]
    assert "low (" in out.replace("  ", " ") and "pt " in out


# ---- loader, sampling, batches ---------------------------------------------------------------------

def test_temperature_probabilities():
    counts = {"a": 10000, "b": 100, "c": 1}
    p5 = temperature_probs(counts, 5.0)
    assert p5["a"] / p5["b"] == pytest.approx(100 ** 0.2) and sum(p5.values()) == pytest.approx(1)
    p1 = temperature_probs(counts, 1.0)
    assert p1["a"] == pytest.approx(10000 / 10101)
    assert max(temperature_probs(counts, 1e9).values()) == pytest.approx(1 / 3)


def test_sampling_follows_temperature_distribution(corpus):
    it = BatchIterator(corpus, batch_size=256, src_len=16, tgt_len=16, temperature=5.0, seed=3,
                       length_filter=False)
    seen = Counter()
    for step in range(40):
        li, _ = it.indices_at(step)
        seen.update(li.tolist())
    freq = np.array([seen[i] for i in range(len(it.languages))]) / (40 * 256)
    assert np.abs(freq - it.probs).max() < 0.02
    n = it.sizes.astype(float)  # the pairs that fit the lengths (the length filter)
    assert it.probs == pytest.approx(n ** 0.2 / (n ** 0.2).sum())


def test_length_filter_keeps_whole_pairs_and_reports_what_it_left(corpus):
    it = BatchIterator(corpus, batch_size=64, src_len=48, tgt_len=32, seed=2)
    rep = it.length_report()
    assert 0 < rep["kept"] < rep["total"] and rep["left_out"] == rep["total"] - rep["kept"]
    assert rep["src_pieces_kept"][2] <= 47 and rep["tgt_pieces_kept"][2] <= 31
    assert rep["src_pieces_all"][2] > 47  # the corpus has longer pairs: they were left out
    def lengths(iterator, step):  # (rows' pieces, the examples' whole lengths) of one batch
        b, (li, ex) = iterator.batch_at(step), iterator.indices_at(step)
        got = (b["src"] != PAD_ID).sum(1) - 1                             # less the EOS
        full = [len(iterator.encoded[iterator.languages[a]].example(iterator.index[
            iterator.languages[a]][e])[0]) for a, e in zip(li, ex)]
        return got, np.array(full)
    for step in range(3):
        got, full = lengths(it, step)
        assert np.array_equal(got, full)  # every row whole: nothing truncated
    whole = BatchIterator(corpus, batch_size=64, src_len=48, tgt_len=32, seed=2,
                          length_filter=False)
    assert whole.sizes.sum() == rep["total"] > it.sizes.sum() == rep["kept"]
    got, full = lengths(whole, 0)
    assert (full > got).any()  # without the filter, long sources are cut


def test_exact_resume_across_fresh_iterators(corpus):
    kw = dict(batch_size=8, src_len=24, tgt_len=20, temperature=5.0, seed=7, length_filter=False)
    a = BatchIterator(corpus, **kw)
    run = [b for _, b in zip(range(6), a)]
    b = BatchIterator(corpus, start_step=3, **kw)
    for k, batch in zip(range(3, 6), b):
        assert all(np.array_equal(batch[f], run[k][f]) for f in batch)
        assert all(np.array_equal(batch[f], BatchIterator(corpus, **kw).batch_at(k)[f]) for f in batch)
    assert b.state()["step"] == 5
    other = BatchIterator(corpus, **{**kw, "seed": 8}).batch_at(0)
    assert not np.array_equal(other["src"], run[0]["src"])


def test_batch_shapes_and_padding(corpus):
    it = BatchIterator(corpus, batch_size=32, src_len=12, tgt_len=10, seed=1, length_filter=False)
    b = it.batch_at(0)
    assert {k: (v.shape, v.dtype.name) for k, v in b.items()} == {
        "src": ((32, 12), "int32"), "tgt_in": ((32, 10), "int32"), "tgt_out": ((32, 10), "int32"),
        "src_pad": ((32, 12), "float32"), "tgt_pad": ((32, 10), "float32"), "lang": ((32,), "int32")}
    assert np.array_equal(b["src_pad"], (b["src"] == PAD_ID).astype(np.float32))
    assert (b["tgt_in"][:, 0] == BOS_ID).all()
    for row in range(32):
        n_src = int((1 - b["src_pad"][row]).sum())
        n_tgt = int((1 - b["tgt_pad"][row]).sum())
        assert b["src"][row, n_src - 1] == EOS_ID and b["tgt_out"][row, n_tgt - 1] == EOS_ID
        assert np.array_equal(b["tgt_in"][row, 1:n_tgt], b["tgt_out"][row, :n_tgt - 1])
        assert (b["src_pad"][row, :n_src] == 0).all() and (b["src_pad"][row, n_src:] == 1).all()
    assert set(b["lang"].tolist()) <= set(range(len(corpus.languages)))
    assert b["src_pad"].sum() < b["src_pad"].size                     # not all padding


def test_eval_batches_cover_split_in_order(corpus):
    pairs = corpus.pairs("test", "pt")
    got = list(eval_batches(corpus, pairs, batch_size=16, src_len=20, tgt_len=20))
    refs = [r for _, rs in got for r in rs]
    assert refs == [en for _, en in pairs]
    assert sum(int(b["valid"].sum()) for b, _ in got) == len(pairs)
    assert all(b["src"].shape == (16, 20) for b, _ in got)
    text = corpus.tgt_spm.decode(corpus.tgt_spm.encode(pairs[0][1]))
    assert text == pairs[0][1]


def test_loader_errors(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="gshard data prepare"):
        Corpus.load(tmp_path)
    with pytest.raises(KeyError):
        corpus.pairs("train", "xx")
    with pytest.raises(ValueError):
        corpus.pairs("valid", "pt")
    assert corpus.udhr("pt") == []                                    # no UDHR in the fixtures


def test_private_apt_config_and_quick_mode(tmp_path):
    from gshard.data.fetch import QUICK_DDTP_CODES, write_apt_conf
    from gshard.data.pipeline import quick_config

    text = write_apt_conf(tmp_path / "apt", ("en", "pt_BR")).read_text()
    assert text.startswith("#clear Acquire::Languages;")
    assert f'Dir::State::Lists "{tmp_path}/apt/lists/";' in text
    assert f'Dir::Cache "{tmp_path}/apt/cache/";' in text and '"pt_BR";' in text
    assert (tmp_path / "apt" / "lists" / "partial").is_dir()
    q = quick_config(PrepareConfig(data_dir=tmp_path))
    assert q.quick and not q.use_pypi and q.ddtp_codes == QUICK_DDTP_CODES
    assert q.split.train_cap == 8000 and q.vocab.src_vocab <= 8000 and q.vocab.sample <= 60000
