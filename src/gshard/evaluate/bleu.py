"""Corpus BLEU (sacrebleu, tokenizer 13a) and chrF on detokenized English."""
from __future__ import annotations

import sacrebleu


def score(hyps: list[str], refs: list[str]) -> dict:
    """{'bleu', 'chrf', 'n'} for one set of hypotheses against single references."""
    if not hyps:
        return {"bleu": 0.0, "chrf": 0.0, "n": 0}
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a")
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    return {"bleu": round(float(bleu.score), 2), "chrf": round(float(chrf.score), 2), "n": len(hyps)}


def signatures() -> dict:
    out = {}
    for name, metric in (("bleu", sacrebleu.BLEU(tokenize="13a")), ("chrf", sacrebleu.CHRF())):
        metric.corpus_score(["a"], [["a"]])          # the signature needs one evaluation
        out[name] = str(metric.get_signature())
    return out
