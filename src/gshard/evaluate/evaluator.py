"""`gshard eval` / `gshard translate` behind the CLI: load the newest good checkpoint of a
workdir, decode test sets (greedy and beam), score them and write WORKDIR/eval.json.

eval.json:
    {"step", "decoder": "beam4", "signatures": {...},
     "languages": {lang: {"tier", "train_pairs", "test_pairs", "n", "bleu", "chrf",
                          "greedy": {"bleu", "chrf"}, "beam": {"bleu", "chrf"}}},
     "tiers": {tier: {"languages": [...], "n", "bleu", "chrf", "greedy": {...}, "beam": {...}}},
     "udhr": {"n", "languages", "bleu", "chrf", "per_language": {lang: {"n", "bleu", "chrf"}}},
     "seconds"}
Top-level bleu/chrf are the beam decoder's (greedy when eval.beam_size <= 1). Languages with at
least eval.min_test_pairs test pairs are scored one by one (first eval.max_sentences pairs); the
tier pools also take up to eval.pool_max_sentences pairs of every smaller language that has at
least eval.pool_min_pairs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.batching import eval_batches
from ..train.config import RunConfig, apply_overrides
from .bleu import score, signatures
from .decode import translate_batches

TIERS = ("high", "mid", "low")


@dataclass
class Model:
    cfg: RunConfig
    corpus: object
    mc: object
    params: dict
    step: int

    @property
    def max_len(self) -> int:
        return self.cfg.eval.max_len or self.cfg.train.tgt_len

    def in_range(self, pairs: list) -> list:
        """The pairs that fit the trained lengths whole (eval.in_train_range), in order."""
        if not self.cfg.eval.in_train_range or not pairs:
            return pairs
        from ..data.batching import encode_pairs
        t = self.cfg.train
        return [pairs[i] for i in encode_pairs(self.corpus, pairs).fitting(t.src_len, t.tgt_len)]

    @property
    def max_src_pieces(self) -> int:
        return self.cfg.train.src_len - 1          # + EOS = the trained source length

    def split_long(self, text: str) -> list[str]:
        """`text` in consecutive parts of whole words that each fit the trained source length
        (a single over-long word is cut between its pieces); [text] when it fits."""
        spm, limit = self.corpus.src_spm, self.max_src_pieces
        if len(spm.encode(text)) <= limit:
            return [text]
        parts, cur = [], []
        for word in text.split():
            if cur and len(spm.encode(" ".join(cur + [word]))) > limit:
                parts.append(" ".join(cur))
                cur = []
            ids = spm.encode(word)
            while len(ids) > limit:                 # one word longer than the model's length
                parts.append(spm.decode(ids[:limit]))
                ids = ids[limit:]
            cur.append(spm.decode(ids) if len(ids) != len(spm.encode(word)) else word)
        return parts + ([" ".join(cur)] if cur else [])

    def translate(self, sources: list[str], beam: int = 0) -> list[str]:
        """Source sentences -> English strings."""
        e = self.cfg.eval
        pairs = [(s, "") for s in sources]
        batches = ((b, len(refs)) for b, refs in
                   eval_batches(self.corpus, pairs, e.batch_size, self.cfg.train.src_len, 2))
        out = []
        for ids in translate_batches(self.params, self.mc, batches, max_len=self.max_len,
                                     beam=beam, alpha=e.length_penalty):
            out += [self.corpus.tgt_spm.decode(x) for x in ids]
        return out


def load_model(workdir, overrides=()) -> Model:
    """The workdir's config (eval.* overridable), corpus and newest good checkpoint's params."""
    from gshard.data import Corpus
    from ..train import checkpoint as ckpt
    from ..train.loop import init_state, load_workdir_config, make_optimizer, model_config

    cfg = apply_overrides(load_workdir_config(workdir), overrides)
    corpus = Corpus.load(cfg.data.dir)
    mc = model_config(cfg, corpus, None)
    template = init_state(mc, make_optimizer(cfg), cfg.train.seed)
    try:
        got = ckpt.restore_latest(workdir, template)
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(f"{e}; restore them, or train anew with: gshard train "
                                   f"--workdir {workdir} --restart") from None
    if got is None:
        raise FileNotFoundError(f"no usable checkpoint in {Path(workdir) / 'checkpoints'}")
    return Model(cfg, corpus, mc, got.state[0], got.step)


def _plan(model: Model) -> tuple[dict, dict]:
    """({lang: pairs} scored one by one, {lang: pairs} only pooled into tiers)."""
    e, c = model.cfg.eval, model.corpus
    scored, pooled = {}, {}
    for lang in c.languages:
        n = c.counts(lang)["test"]
        if n >= e.min_test_pairs:
            scored[lang] = model.in_range(c.pairs("test", lang))[:e.max_sentences]
        elif n >= e.pool_min_pairs:
            pooled[lang] = model.in_range(c.pairs("test", lang))[:e.pool_max_sentences]
    return {k: v for k, v in scored.items() if v}, {k: v for k, v in pooled.items() if v}


def _decode_all(model: Model, sets: dict, beam: int) -> dict:
    """{lang: pairs} -> {lang: hypotheses}, decoding everything in full fixed-size batches."""
    flat = [(lang, p) for lang, ps in sets.items() for p in ps]
    hyps = model.translate([p[0] for _, p in flat], beam=beam)
    out: dict = {lang: [] for lang in sets}
    for (lang, _), h in zip(flat, hyps):
        out[lang].append(h)
    return out


def _both(model, sets, beam) -> dict:
    """{"greedy": {lang: hyps}, "beam": {lang: hyps}} (beam omitted when beam <= 1)."""
    res = {"greedy": _decode_all(model, sets, 0)}
    if beam > 1:
        res["beam"] = _decode_all(model, sets, beam)
    return res


def _scores(hyps: dict, refs: dict, langs) -> dict:
    return {d: score([h for lang in langs for h in hyps[d][lang]],
                     [r for lang in langs for r in refs[lang]]) for d in hyps}


def _entry(by: dict, head: str) -> dict:
    return {"n": by[head]["n"], "bleu": by[head]["bleu"], "chrf": by[head]["chrf"],
            **{d: {"bleu": s["bleu"], "chrf": s["chrf"]} for d, s in by.items()}}


def evaluate(workdir, overrides=(), log=print) -> dict:
    """Decode, score and write WORKDIR/eval.json (see module doc); returns the dict."""
    t0 = time.perf_counter()
    model = load_model(workdir, overrides)
    e, c = model.cfg.eval, model.corpus
    head = "beam" if e.beam_size > 1 else "greedy"
    scored, pooled = _plan(model)
    sets = {**scored, **pooled}
    log(f"eval step {model.step}: {len(scored)} languages scored, {len(pooled)} more pooled, "
        f"{sum(map(len, sets.values()))} sentences, greedy + beam {e.beam_size}")
    hyps = _both(model, sets, e.beam_size)
    refs = {lang: [p[1] for p in ps] for lang, ps in sets.items()}
    langs = {lang: {"tier": c.tier(lang), "train_pairs": c.train_counts[lang],
                    "clean_pairs": c.counts(lang)["clean"], "test_pairs": c.counts(lang)["test"],
                    **_entry(_scores(hyps, refs, [lang]), head)} for lang in scored}
    tiers = {}
    for t in TIERS:
        members = [lang for lang in sets if c.tier(lang) == t]
        if members:
            tiers[t] = {"languages": members, **_entry(_scores(hyps, refs, members), head)}
    hm = [lang for lang in sets if c.tier(lang) in ("high", "mid")]
    if hm:  # the headline: one corpus score over every high- and mid-resource test sentence
        tiers["high+mid"] = {"languages": hm, **_entry(_scores(hyps, refs, hm), head)}
    t = model.cfg.train
    out = {"step": model.step, "decoder": f"beam{e.beam_size}" if head == "beam" else "greedy",
           "test_range": {"in_train_range": e.in_train_range, "src_len": t.src_len,
                          "tgt_len": t.tgt_len, "max_len": model.max_len},
           "signatures": signatures(), "languages": langs, "tiers": tiers,
           "udhr": _udhr(model, list(scored), head), "examples": _examples(scored, hyps[head]),
           "seconds": round(time.perf_counter() - t0, 1)}
    _write_json(Path(workdir) / "eval.json", out)
    return out


def _udhr(model: Model, langs, head: str) -> dict:
    """Out-of-domain UDHR scores, pooled and per language, with the headline decoder."""
    e = model.cfg.eval
    sets = {lang: model.corpus.udhr(lang)[:e.udhr_max_sentences] for lang in langs}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        return {"n": 0, "languages": [], "bleu": 0.0, "chrf": 0.0, "per_language": {}}
    hyps = _decode_all(model, sets, e.beam_size if head == "beam" else 0)
    refs = {lang: [p[1] for p in ps] for lang, ps in sets.items()}
    pooled = score([h for lang in sets for h in hyps[lang]], [r for lang in sets for r in refs[lang]])
    return {**pooled, "languages": list(sets),
            "per_language": {lang: score(hyps[lang], refs[lang]) for lang in sets}}


def _examples(scored: dict, hyps: dict, k: int = 2) -> dict:
    return {lang: [{"src": p[0], "ref": p[1], "hyp": h} for p, h in zip(ps[:k], hyps[lang])]
            for lang, ps in list(scored.items())[:6]}


def _write_json(path: Path, obj):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def format_table(ev: dict) -> str:
    """Per-language BLEU/chrF table (sorted by training pairs) plus tier and UDHR lines."""
    head = f"{'lang':<8} {'tier':<5} {'train':>7} {'n':>4}  {'BLEU':>5} {'chrF':>5}  {'greedy':>6}"
    lines = [f"eval at step {ev['step']} ({ev['decoder']}; BLEU sacrebleu 13a)", head,
             "-" * len(head)]
    for lang, r in sorted(ev["languages"].items(), key=lambda kv: (-kv[1]["train_pairs"], kv[0])):
        lines.append(f"{lang:<8} {r['tier']:<5} {r['train_pairs']:>7} {r['n']:>4}  "
                     f"{r['bleu']:>5.1f} {r['chrf']:>5.1f}  {r['greedy']['bleu']:>6.1f}")
    lines.append("-" * len(head))
    for t, r in ev["tiers"].items():
        lines.append(f"tier {t:<4} ({len(r['languages'])} langs, {r['n']} sents): BLEU "
                     f"{r['bleu']:.1f} chrF {r['chrf']:.1f} (greedy BLEU {r['greedy']['bleu']:.1f})")
    u = ev["udhr"]
    lines.append(f"UDHR ({len(u['languages'])} langs, {u['n']} sents): BLEU {u['bleu']:.1f} "
                 f"chrF {u['chrf']:.1f}")
    return "\n".join(lines)


def format_examples(ev: dict, k: int = 6) -> str:
    """A few real translations of the test set (source, reference, the model's output)."""
    lines = []
    for lang, exs in ev.get("examples", {}).items():
        for x in exs:
            lines += [f"[{lang}] src: {x['src']}", f"     ref: {x['ref']}", f"     hyp: {x['hyp']}"]
            if len(lines) >= 3 * k:
                return "\n".join(lines)
    return "\n".join(lines)


def mean_bleu(ev: dict) -> float:
    vals = [r["bleu"] for r in ev["languages"].values()]
    return float(np.mean(vals)) if vals else 0.0
