"""Read-only access to a prepared data directory (the trainer's and evaluator's entry point)."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from .manifest import MANIFEST
from .split import tier as _tier
from .vocab import load_spm

SPLITS = ("train", "dev", "test")


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f]


class Corpus:
    """A prepared corpus: `Corpus.load(data_dir)`.

    Pairs are `(source text, English text)`. Train pairs of a language are stored in a
    language-salted hash order, so a prefix of any length is itself a fair subsample.
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def load(cls, data_dir: str | Path) -> "Corpus":
        root = Path(data_dir)
        path = root / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `gshard data prepare --data-dir {root}` first")
        man = json.loads(path.read_text())
        if "languages" not in man:
            raise RuntimeError(f"{root}: prepare did not finish; run it again")
        return cls(root, man)

    @property
    def languages(self) -> tuple[str, ...]:
        """Source languages, sorted by code."""
        return tuple(sorted(self.manifest["languages"]))

    def counts(self, lang: str) -> dict:
        """{clean, train_uncapped, train, dev, test, udhr, tier, sources} of one language."""
        return self.manifest["languages"][lang]

    def tier(self, lang: str) -> str:
        """'high' (≥20k clean pairs), 'mid' (2k–20k) or 'low' (<2k)."""
        return _tier(self.counts(lang)["clean"])

    @property
    def train_counts(self) -> dict[str, int]:
        """Train pairs per language, as stored (after the per-language cap)."""
        return {lang: self.counts(lang)["train"] for lang in self.languages}

    def pairs(self, split: str, lang: str) -> list[tuple[str, str]]:
        """[(src, en)] of one split ('train', 'dev', 'test') for one language."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if lang not in self.manifest["languages"]:
            raise KeyError(f"unknown language {lang!r}; have {', '.join(self.languages)}")
        return _read_tsv(self.root / "corpus" / split / f"{lang}.tsv")

    def udhr(self, lang: str) -> list[tuple[str, str]]:
        """[(src, en)] UDHR segments (out-of-domain test only); [] where no declaration exists."""
        return _read_tsv(self.root / "corpus" / "udhr" / f"{lang}.tsv")

    @cached_property
    def src_spm(self):
        """sentencepiece.SentencePieceProcessor for the source side (pad 0, unk 1, bos 2, eos 3)."""
        return load_spm(self.root / "spm" / "src.model")

    @cached_property
    def tgt_spm(self):
        """sentencepiece.SentencePieceProcessor for English (pad 0, unk 1, bos 2, eos 3)."""
        return load_spm(self.root / "spm" / "tgt.model")

    @property
    def src_vocab_size(self) -> int:
        return self.src_spm.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt_spm.get_piece_size()

    def lang_id(self, lang: str) -> int:
        return self.languages.index(lang)
