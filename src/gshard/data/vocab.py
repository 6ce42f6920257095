"""SentencePiece models, trained offline: a source vocabulary on temperature-sampled source text
(so tail scripts get pieces) and a separate English target vocabulary (the GShard layout)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fetch import log

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class VocabConfig:
    src_vocab: int = 8000
    tgt_vocab: int = 4000
    model_type: str = "unigram"
    sample: int = 200000           # source lines drawn for the source model (temperature-sampled)
    temperature: float = 5.0
    src_coverage: float = 0.9995
    tgt_coverage: float = 0.9999
    threads: int = 2
    seed: int = 0


def temperature_probs(counts: dict[str, int], temperature: float) -> dict[str, float]:
    """p_l ∝ n_l^(1/T), over languages in sorted order."""
    langs = sorted(counts)
    w = np.array([max(counts[lang], 0) for lang in langs], dtype=np.float64) ** (1.0 / temperature)
    w = w / w.sum()
    return {lang: float(p) for lang, p in zip(langs, w)}


def sample_source_lines(train: dict[str, list[str]], cfg: VocabConfig) -> list[str]:
    """`cfg.sample` source lines, languages drawn with temperature T; each language's lines are
    taken in a seeded random order and reused (cycled) only when the language is exhausted."""
    probs = temperature_probs({k: len(v) for k, v in train.items() if v}, cfg.temperature)
    rng = np.random.default_rng(cfg.seed)
    total = min(cfg.sample, sum(len(v) for v in train.values())) if cfg.sample else \
        sum(len(v) for v in train.values())
    want = rng.multinomial(total, [probs[k] for k in probs])
    out = []
    for lang, m in zip(probs, want):
        lines = train[lang]
        order = rng.permutation(len(lines))
        out.extend(lines[order[i % len(lines)]] for i in range(int(m)))
    return out


def sample_target_lines(english: list[str], cfg: VocabConfig) -> list[str]:
    """Distinct English lines (first occurrence order), subsampled to 2×sample when larger."""
    uniq = list(dict.fromkeys(english))
    limit = 2 * cfg.sample if cfg.sample else len(uniq)
    if len(uniq) > limit:
        idx = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(uniq), limit, replace=False))
        uniq = [uniq[i] for i in idx]
    return uniq


def train_spm(lines: list[str], prefix: Path, vocab_size: int, coverage: float,
              cfg: VocabConfig) -> Path:
    """Train one model from in-memory lines; writes prefix.model / prefix.vocab."""
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    text = prefix.with_suffix(".txt")
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for cov in (coverage, 0.999, 0.995, 0.99, 0.98, 0.95):
        if cov > coverage:
            continue
        try:
            spm.SentencePieceTrainer.train(
                input=str(text), model_prefix=str(prefix), vocab_size=vocab_size,
                model_type=cfg.model_type, character_coverage=cov, byte_fallback=True,
                num_threads=cfg.threads, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                hard_vocab_limit=False, input_sentence_size=0, shuffle_input_sentence=False,
                max_sentence_length=4096, minloglevel=2)
            break
        except RuntimeError as err:    # too many required characters for this vocabulary
            if "required_chars" not in str(err) or cov == 0.95:
                raise
            log(f"spm {prefix.name}: vocab {vocab_size} too small at coverage {cov}; lowering it")
    text.unlink()
    return prefix.with_suffix(".model")


def load_spm(path: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))
