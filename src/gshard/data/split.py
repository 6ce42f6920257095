"""Dedup and the deterministic, leakage-free split (DATA.md §6.2.9–10 and §6.3).

The bucket of a pair depends only on its normalised English string, so one English string
lies in exactly one split for all languages at once. Test/dev pairs beyond the per-language
caps are discarded, never moved to train.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

_NONWORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class SplitConfig:
    test_buckets: int = 50          # b < 50 → test (5%)
    dev_buckets: int = 50           # 50 ≤ b < 100 → dev (5%)
    test_cap: int = 1000
    dev_cap: int = 500
    train_cap: int = 20000          # 0 = no cap; chosen by a language-salted hash
    min_pairs: int = 100            # languages with fewer clean pairs are dropped


def key(en: str) -> str:
    """Lowercase; every run of [\\W_] becomes one space; stripped."""
    return _NONWORD.sub(" ", en.lower()).strip()


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest()[:8], 16)


def bucket(k: str) -> int:
    return _h(k) % 1000


def split_of(k: str, cfg: SplitConfig = SplitConfig()) -> str:
    b = bucket(k)
    if b < cfg.test_buckets:
        return "test"
    return "dev" if b < cfg.test_buckets + cfg.dev_buckets else "train"


Row = tuple[str, str, str, str]  # (key, en, tr, source)


def dedup(pairs: Iterable[tuple[str, str, str, str]]) -> dict[str, list[Row]]:
    """{lang: [(key, en, tr, source)]} from (source, lang, en, tr) in priority order;
    the first occurrence of each (lang, key) is kept."""
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[Row]] = defaultdict(list)
    for source, lang, en, tr in pairs:
        k = key(en)
        if k and (lang, k) not in seen:
            seen.add((lang, k))
            out[lang].append((k, en, tr, source))
    return dict(out)


@dataclass(frozen=True)
class LangSplit:
    clean: int                                # clean deduplicated pairs
    train_uncapped: int
    train: list[tuple[str, str]]              # (tr, en), language-salted hash order
    dev: list[tuple[str, str]]
    test: list[tuple[str, str]]
    sources: dict[str, int]                   # clean pairs per source


def split_language(lang: str, rows: list[Row], cfg: SplitConfig) -> LangSplit:
    parts: dict[str, list[tuple[int, str, str, str]]] = {"train": [], "dev": [], "test": []}
    sources: dict[str, int] = defaultdict(int)
    for k, en, tr, src in rows:
        sources[src] += 1
        name = split_of(k, cfg)
        order = bucket(k) if name != "train" else _h(f"{lang}|{k}")
        parts[name].append((order, k, en, tr))
    for v in parts.values():
        v.sort()
    cap = cfg.train_cap or len(parts["train"])
    take = {"test": cfg.test_cap, "dev": cfg.dev_cap, "train": cap}
    sel = {n: [(tr, en) for _, _, en, tr in v[:take[n]]] for n, v in parts.items()}
    return LangSplit(len(rows), len(parts["train"]), sel["train"], sel["dev"], sel["test"],
                     dict(sorted(sources.items())))


def split_all(by_lang: dict[str, list[Row]], cfg: SplitConfig,
              languages: tuple[str, ...] = ()) -> dict[str, LangSplit]:
    """Split every language with at least `min_pairs` clean pairs (optionally only `languages`)."""
    keep = sorted(lang for lang, rows in by_lang.items()
                  if len(rows) >= cfg.min_pairs and (not languages or lang in languages))
    return {lang: split_language(lang, by_lang[lang], cfg) for lang in keep}


def tier(n_pairs: int) -> str:
    """Resource tier by clean pair count: high ≥20k, mid 2k–20k, low below (floor 100)."""
    if n_pairs >= 20000:
        return "high"
    return "mid" if n_pairs >= 2000 else "low"
