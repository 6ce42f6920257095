"""Greedy and beam-search decoding of the encoder-decoder MoE Transformer, in static shapes.

Both run the decoder over a fixed [rows, max_len + 1] target buffer once per output position
(positions after the current one are marked as padding, so the causal decoder and the MoE router
ignore them) inside one jitted lax loop. Slower per token than a KV cache, but shape-static,
simple and exact for these small models. Decoding uses the model unpartitioned (annotations
off) and one MoE group per sequence.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..data.vocab import BOS_ID, EOS_ID, PAD_ID
from ..models.config import MeshAxes
from ..models.transformer import decode as _decode
from ..models.transformer import encode as _encode

NEG = -1e9


def decoding_config(mc):
    """The model config used for decoding: no mesh annotations, one MoE group per sequence."""
    return dataclasses.replace(mc, mesh=MeshAxes(),
                               moe=dataclasses.replace(mc.moe, num_groups=None))


def _step_logp(params, mc, enc, src_pad, buf, t):
    """log-probabilities [rows, V] of the token after position t of buf [rows, T]."""
    T = buf.shape[1]
    tgt_pad = (jnp.arange(T)[None, :] > t).astype(jnp.float32) * jnp.ones((buf.shape[0], 1))
    logits, _ = _decode(params, mc, enc, src_pad, buf, tgt_pad, deterministic=True)
    row = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)     # [rows, V]
    return jax.nn.log_softmax(row.astype(jnp.float32), axis=-1)


@partial(jax.jit, static_argnames=("mc", "max_len", "early_stop"))
def greedy(params, mc, src, src_pad, max_len: int, early_stop: bool = True):
    """src [B, Ls] -> token ids [B, max_len] (EOS then PAD after the end)."""
    B = src.shape[0]
    enc, _ = _encode(params, mc, src, src_pad, deterministic=True)
    buf = jnp.zeros((B, max_len + 1), jnp.int32).at[:, 0].set(BOS_ID)
    done = jnp.zeros((B,), bool)

    def body(t, carry):
        buf, done = carry
        nxt = jnp.argmax(_step_logp(params, mc, enc, src_pad, buf, t), -1).astype(jnp.int32)
        nxt = jnp.where(done, PAD_ID, nxt)
        return buf.at[:, t + 1].set(nxt), done | (nxt == EOS_ID)

    buf, _ = _until_done(body, max_len, (buf, done), lambda c: c[1], early_stop)
    return buf[:, 1:]


def _until_done(body, max_len: int, carry, done_of, early_stop: bool = True):
    """fori_loop(0, max_len, body, carry) that stops once every row is done: a finished row
    only appends PAD (and a finished beam keeps its score and rank), so the rest of the loop
    would not change the result (early_stop=False runs all max_len steps; tested equal)."""
    def cond(tc):
        t, c = tc
        return (t < max_len) & ~(early_stop & jnp.all(done_of(c)))

    _, carry = jax.lax.while_loop(cond, lambda tc: (tc[0] + 1, body(tc[0], tc[1])), (0, carry))
    return carry


def _beam_logp(logp, done):
    """Finished beams may only extend with PAD at no cost."""
    pad_only = jnp.full_like(logp, NEG).at[..., PAD_ID].set(0.0)
    return jnp.where(done[..., None], pad_only, logp)


def _penalty(length, alpha: float):
    """GNMT length penalty ((5 + len) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@partial(jax.jit, static_argnames=("mc", "max_len", "beam", "alpha", "early_stop"))
def beam_search(params, mc, src, src_pad, max_len: int, beam: int = 4, alpha: float = 0.6,
                early_stop: bool = True):
    """src [B, Ls] -> best hypothesis ids [B, max_len] by length-normalised log-probability.

    Candidates are ranked by their length-normalised score at every step, not only at the end:
    a finished hypothesis keeps its slot only while its normalised score beats the extensions
    of the live ones (ranked by raw score, short finished hypotheses crowd out the live beams,
    and beam search loses to greedy). Beam 1 is greedy: one live row, all its extensions of one
    length."""
    B, K = src.shape[0], beam
    enc, _ = _encode(params, mc, src, src_pad, deterministic=True)
    enc, spad = jnp.repeat(enc, K, axis=0), jnp.repeat(src_pad, K, axis=0)   # [B*K, ...]
    buf = jnp.zeros((B, K, max_len + 1), jnp.int32).at[:, :, 0].set(BOS_ID)
    scores = jnp.tile(jnp.array([0.0] + [NEG] * (K - 1), jnp.float32), (B, 1))   # [B, K]
    done, length = jnp.zeros((B, K), bool), jnp.zeros((B, K), jnp.float32)

    def body(t, carry):
        buf, scores, done, length = carry
        logp = _step_logp(params, mc, enc, spad, buf.reshape(B * K, -1), t).reshape(B, K, -1)
        V = logp.shape[-1]
        raw = (scores[..., None] + _beam_logp(logp, done)).reshape(B, K * V)   # [B, K*V]
        new_len = length + (~done)                                            # [B, K]
        rank = raw / jnp.repeat(_penalty(new_len, alpha), V, axis=1)          # [B, K*V]
        _, idx = jax.lax.top_k(rank, K)                                       # [B, K]
        scores = jnp.take_along_axis(raw, idx, axis=1)
        src_beam, tok = idx // V, (idx % V).astype(jnp.int32)
        take = lambda a: jnp.take_along_axis(a, src_beam, axis=1)              # noqa: E731
        buf = jnp.take_along_axis(buf, src_beam[..., None], axis=1).at[:, :, t + 1].set(tok)
        was_done = take(done)
        return buf, scores, was_done | (tok == EOS_ID), take(new_len)

    buf, scores, done, length = _until_done(body, max_len, (buf, scores, done, length),
                                            lambda c: c[2], early_stop)
    best = jnp.argmax(scores / _penalty(length, alpha), axis=1)
    return jnp.take_along_axis(buf, best[:, None, None], axis=1)[:, 0, 1:]


def strip(ids) -> list[list[int]]:
    """Token rows -> lists cut at the first EOS, without PAD/BOS."""
    out = []
    for row in np.asarray(ids).tolist():
        if EOS_ID in row:
            row = row[:row.index(EOS_ID)]
        out.append([t for t in row if t not in (PAD_ID, BOS_ID)])
    return out


def translate_batches(params, mc, batches, *, max_len: int, beam: int = 0, alpha: float = 0.6):
    """Yield decoded id lists for each (batch, valid_rows) in `batches` (greedy when beam <= 1)."""
    dmc = decoding_config(mc)
    for batch, n in batches:
        src, spad = jnp.asarray(batch["src"]), jnp.asarray(batch["src_pad"])
        if beam and beam > 1:
            ids = beam_search(params, dmc, src, spad, max_len, beam, alpha)
        else:
            ids = greedy(params, dmc, src, spad, max_len)
        yield strip(ids)[:n]
