"""Temperature-sampled, deterministic, resumable batches in static shapes.

`BatchIterator.batch_at(step)` is a pure function of (seed, step): a fresh iterator gives the
identical batch for the same step, so training resumes exactly from a saved step number.
Every batch is a dict of numpy arrays:

    src      int32   [B, Ls]   source pieces + EOS, 0-padded
    tgt_in   int32   [B, Lt]   BOS + English pieces
    tgt_out  int32   [B, Lt]   English pieces + EOS
    src_pad  float32 [B, Ls]   1.0 where padding
    tgt_pad  float32 [B, Lt]   1.0 where padding
    lang     int32   [B]       index into corpus.languages
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .corpus import Corpus
from .vocab import BOS_ID, EOS_ID, PAD_ID, temperature_probs


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of pairs, flattened: example i is flat[off[i]:off[i+1]]."""
    src: np.ndarray
    src_off: np.ndarray
    tgt: np.ndarray
    tgt_off: np.ndarray

    def __len__(self) -> int:
        return len(self.src_off) - 1

    def fitting(self, src_len: int, tgt_len: int) -> np.ndarray:
        """Indices of the examples that fit [src_len] (pieces + EOS) and [tgt_len] (BOS or EOS
        + pieces) whole: the length filter (no example is truncated)."""
        ls, lt = self.lengths()
        return np.flatnonzero((ls <= src_len - 1) & (lt <= tgt_len - 1))

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Pieces per example: (source, target)."""
        return np.diff(self.src_off), np.diff(self.tgt_off)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return (self.src[self.src_off[i]:self.src_off[i + 1]],
                self.tgt[self.tgt_off[i]:self.tgt_off[i + 1]])


def _flatten(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(off[-1]))
    return flat, off


def encode_pairs(corpus: Corpus, pairs: Sequence[tuple[str, str]]) -> Encoded:
    src = corpus.src_spm.encode([p[0] for p in pairs]) if pairs else []
    tgt = corpus.tgt_spm.encode([p[1] for p in pairs]) if pairs else []
    return Encoded(*_flatten(src), *_flatten(tgt))


def _cache_key(corpus: Corpus, split: str, langs: Sequence[str]) -> str:
    steps = corpus.manifest.get("steps", {})
    blob = repr((steps.get("split", {}).get("outputs"), steps.get("spm", {}).get("outputs"), split,
                 list(langs)))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encoded_split(corpus: Corpus, split: str, langs: Sequence[str]) -> dict[str, Encoded]:
    """Encoded pairs per language, cached as DIR/cache/enc-<key>.npz (written atomically)."""
    path = corpus.root / "cache" / f"enc-{split}-{_cache_key(corpus, split, langs)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {lang: Encoded(*(z[f"{lang}/{k}"] for k in ("s", "so", "t", "to"))) for lang in langs}
    out = {lang: encode_pairs(corpus, corpus.pairs(split, lang)) for lang in langs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **{f"{lang}/{k}": a for lang, e in out.items()
                     for k, a in zip(("s", "so", "t", "to"), (e.src, e.src_off, e.tgt, e.tgt_off))})
    os.replace(tmp, path)
    return out


def pack(examples: Sequence[tuple[np.ndarray, np.ndarray]], src_len: int, tgt_len: int) -> dict:
    """Truncate/pad (src, tgt) id sequences to the static batch layout (see module doc)."""
    b = len(examples)
    src = np.full((b, src_len), PAD_ID, np.int32)
    tgt_in = np.full((b, tgt_len), PAD_ID, np.int32)
    tgt_out = np.full((b, tgt_len), PAD_ID, np.int32)
    for i, (s, t) in enumerate(examples):
        s, t = list(s[:src_len - 1]) + [EOS_ID], list(t[:tgt_len - 1])
        src[i, :len(s)] = s
        tgt_in[i, :len(t) + 1] = [BOS_ID] + t
        tgt_out[i, :len(t) + 1] = t + [EOS_ID]
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out,
            "src_pad": (src == PAD_ID).astype(np.float32),
            "tgt_pad": (tgt_out == PAD_ID).astype(np.float32)}


class BatchIterator:
    """Temperature-sampled training batches: language l drawn with p_l ∝ n_l^(1/T), then an
    example uniformly within l. `batch_at(step)` depends only on (seed, step)."""

    def __init__(self, corpus: Corpus, batch_size: int, src_len: int, tgt_len: int,
                 temperature: float = 5.0, seed: int = 0, languages: Sequence[str] | None = None,
                 split: str = "train", start_step: int = 0, length_filter: bool = True):
        if batch_size < 1 or src_len < 2 or tgt_len < 2:
            raise ValueError("need batch_size >= 1 and src_len, tgt_len >= 2")
        counts = corpus.train_counts if split == "train" else \
            {lang: corpus.counts(lang)[split] for lang in corpus.languages}
        self.languages = tuple(lang for lang in (languages or corpus.languages) if counts[lang] > 0)
        if not self.languages:
            raise ValueError(f"no {split} pairs in {corpus.root}")
        self.corpus, self.batch_size, self.src_len, self.tgt_len = corpus, batch_size, src_len, tgt_len
        self.temperature, self.seed, self.step = temperature, seed, start_step
        self.encoded = encoded_split(corpus, split, self.languages)
        self.index = {lang: (e.fitting(src_len, tgt_len) if length_filter else np.arange(len(e)))
                      for lang, e in self.encoded.items()}
        self.languages = tuple(lang for lang in self.languages if len(self.index[lang]))
        if not self.languages:
            raise ValueError(f"no {split} pair fits src_len={src_len}, tgt_len={tgt_len}")
        self.sizes = np.array([len(self.index[lang]) for lang in self.languages], np.int64)
        probs = temperature_probs(dict(zip(self.languages, self.sizes.tolist())), temperature)
        self.probs = np.array([probs[lang] for lang in self.languages])
        self.lang_ids = np.array([corpus.lang_id(lang) for lang in self.languages], np.int32)

    @property
    def probabilities(self) -> dict[str, float]:
        return dict(zip(self.languages, self.probs.tolist()))

    def indices_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(language position in self.languages, example index) for each row of batch `step`."""
        rng = np.random.default_rng([self.seed, step])
        li = rng.choice(len(self.languages), size=self.batch_size, p=self.probs)
        ex = np.minimum((rng.random(self.batch_size) * self.sizes[li]).astype(np.int64), self.sizes[li] - 1)
        return li, ex

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        li, ex = self.indices_at(step)
        batch = pack([self.encoded[lang].example(self.index[lang][b])
                      for lang, b in ((self.languages[a], b) for a, b in zip(li, ex))],
                     self.src_len, self.tgt_len)
        batch["lang"] = self.lang_ids[li]
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield self.batch_at(self.step)
            self.step += 1

    def length_report(self) -> dict:
        """What the length filter kept: per language {total, kept}, and the pooled piece-length
        percentiles (p50/p90/p99) of all pairs and of the kept ones, source and target."""
        langs = {lang: {"total": len(e), "kept": int(len(self.index.get(lang, ())))}
                 for lang, e in self.encoded.items()}
        ls, lt = (np.concatenate(x) for x in zip(*(e.lengths() for e in self.encoded.values())))
        ks, kt = (np.concatenate(x) for x in zip(*(
            tuple(a[self.index[lang]] for a in e.lengths())
            for lang, e in self.encoded.items() if lang in self.index)))
        pct = lambda a: [int(v) for v in np.percentile(a, [50, 90, 99])] if len(a) else []  # noqa: E731
        total, kept = sum(v["total"] for v in langs.values()), sum(v["kept"] for v in langs.values())
        return {"src_len": self.src_len, "tgt_len": self.tgt_len, "total": total, "kept": kept,
                "left_out": total - kept, "src_pieces_all": pct(ls), "tgt_pieces_all": pct(lt),
                "src_pieces_kept": pct(ks), "tgt_pieces_kept": pct(kt), "languages": langs}

    def state(self) -> dict:
        """Everything needed to resume: pass `start_step=state['step']` to a fresh iterator."""
        return {"step": self.step, "seed": self.seed, "temperature": self.temperature}


def eval_batches(corpus: Corpus, pairs: Sequence[tuple[str, str]], batch_size: int, src_len: int,
                 tgt_len: int) -> Iterator[tuple[dict[str, np.ndarray], list[str]]]:
    """Fixed-order batches over `pairs` (e.g. corpus.pairs('test', lang)) with the English
    references; the last batch is filled up with dummy rows, marked by `valid` = 0."""
    enc = encode_pairs(corpus, pairs)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32))
    for start in range(0, len(pairs), batch_size):
        idx = range(start, min(start + batch_size, len(pairs)))
        exs = [enc.example(i) for i in idx] + [empty] * (batch_size - len(idx))
        batch = pack(exs, src_len, tgt_len)
        batch["valid"] = (np.arange(batch_size) < len(idx)).astype(np.float32)
        yield batch, [pairs[i][1] for i in idx]
