"""The GShard MoE Transformer: encoder-decoder, pre-layer-norm, MoE in every other FFN.

Pure functions over a params dict. Names: B batch, L/T sequence lengths, M model dim, N heads,
D head dim, F dense FFN hidden, V vocab, G MoE groups, S tokens per group, E experts, H expert
hidden. Annotations follow cfg.mesh (MeshAxes); with every axis None nothing is annotated.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import annotate as _ann
from ..moe.layer import MoEAxes, moe_layer
from .config import ModelConfig

NEG_INF = -1e9


# ----- annotations -----------------------------------------------------------------------------
def shard(x, cfg: ModelConfig, *logical):
    """mesh_split x by logical dims ("data", "model", "expert", "expert_hidden" or None)."""
    if cfg.mesh.empty:
        return x
    spec = tuple(None if n is None else getattr(cfg.mesh, n) for n in logical)
    if all(a is None for a in spec):  # nothing to split on this mesh: leave it to propagation
        return x                      # (a replicate() here would also pin its gradient whole)
    return _ann.mesh_split(x, spec)


# ----- init ------------------------------------------------------------------------------------
def _normal(rng, shape, std):
    return jax.random.normal(rng, shape, jnp.float32) * std


def _init_norm(m):
    return {"scale": jnp.ones((m,), jnp.float32), "bias": jnp.zeros((m,), jnp.float32)}


def _init_attn(cfg: ModelConfig, rng):
    M, N, D = cfg.d_model, cfg.num_heads, cfg.d_head
    kq, kk, kv, ko = jax.random.split(rng, 4)
    return {"norm": _init_norm(M),
            "wq": _normal(kq, (M, N, D), M ** -0.5), "wk": _normal(kk, (M, N, D), M ** -0.5),
            "wv": _normal(kv, (M, N, D), M ** -0.5), "wo": _normal(ko, (N, D, M), M ** -0.5)}


def _init_ffn(cfg: ModelConfig, rng, moe: bool):
    M = cfg.d_model
    k1, k2, k3 = jax.random.split(rng, 3)
    if not moe:
        F = cfg.d_ff
        return {"norm": _init_norm(M), "wi": _normal(k1, (M, F), M ** -0.5),
                "wo": _normal(k2, (F, M), F ** -0.5)}
    E, H = cfg.moe.num_experts, cfg.moe.expert_hidden
    p = {"norm": _init_norm(M), "wg": _normal(k3, (M, E), M ** -0.5),
         "wi": _normal(k1, (E, M, H), M ** -0.5), "wo": _normal(k2, (E, H, M), H ** -0.5)}
    if cfg.moe.shared_experts:
        F = cfg.moe.shared_experts * H
        k4, k5 = jax.random.split(jax.random.fold_in(rng, 1))
        p["shared_wi"], p["shared_wo"] = _normal(k4, (M, F), M ** -0.5), _normal(k5, (F, M), F ** -0.5)
    if cfg.moe.balance == "bias":   # not trained: moved by train.step's update_bias each step
        p["router_bias"] = jnp.zeros((E,), jnp.float32)
    return p


def _init_layer(cfg: ModelConfig, rng, i: int, cross: bool):
    ka, kc, kf = jax.random.split(rng, 3)
    layer = {"self_attn": _init_attn(cfg, ka),
             "ffn": _init_ffn(cfg, kf, cfg.moe.is_moe_layer(i))}
    if cross:
        layer["cross_attn"] = _init_attn(cfg, kc)
    return layer


def init_params(cfg: ModelConfig, rng):
    """The params pytree (a dict of float32 arrays)."""
    k_emb, k_tgt, k_pos, k_enc, k_dec = jax.random.split(rng, 5)
    M = cfg.d_model
    embed = {"src": _normal(k_emb, (cfg.padded(cfg.vocab_size), M), M ** -0.5)}
    if not cfg.shared_vocab:
        embed["tgt"] = _normal(k_tgt, (cfg.padded(cfg.target_vocab), M), M ** -0.5)
    params = {"embed": embed,
              "encoder": {f"layer_{i}": _init_layer(cfg, jax.random.fold_in(k_enc, i), i, False)
                          for i in range(cfg.num_encoder_layers)},
              "decoder": {f"layer_{i}": _init_layer(cfg, jax.random.fold_in(k_dec, i), i, True)
                          for i in range(cfg.num_decoder_layers)},
              "encoder_norm": _init_norm(M), "decoder_norm": _init_norm(M)}
    if cfg.positions == "learned":
        params["pos"] = _normal(k_pos, (cfg.max_len, M), 0.02)
    return params


# ----- building blocks -------------------------------------------------------------------------
def layer_norm(p, x, eps=1e-6):
    """LayerNorm over M, computed in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]
    return y.astype(x.dtype)


def dropout(x, rate, rng, deterministic):
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def sinusoidal_positions(length, dim):
    """[L, M] float32 sinusoids (Vaswani et al.)."""
    pos = np.arange(length)[:, None]
    inv = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)[None]   # [1, M/2]
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv)[:, : dim // 2]
    return jnp.asarray(table)


def _keys(rng, n):
    return [None] * n if rng is None else list(jax.random.split(rng, n))


def attention(p, cfg: ModelConfig, x, kv, bias, rng, deterministic):
    """Multi-head attention: x [B, L, M], kv [B, T, M], bias [B, 1, L|1, T] -> [B, L, M]."""
    dt = x.dtype
    wq, wk, wv = (shard(p[n], cfg, None, "model", None).astype(dt) for n in ("wq", "wk", "wv"))
    wo = shard(p["wo"], cfg, "model", None, None).astype(dt)
    q = shard(jnp.einsum("BLM,MND->BLND", x, wq), cfg, "data", None, "model", None)
    k = shard(jnp.einsum("BTM,MND->BTND", kv, wk), cfg, "data", None, "model", None)
    v = shard(jnp.einsum("BTM,MND->BTND", kv, wv), cfg, "data", None, "model", None)
    scores = jnp.einsum("BLND,BTND->BNLT", q, k).astype(jnp.float32)      # [B, N, L, T]
    probs = jax.nn.softmax(scores / math.sqrt(cfg.d_head) + bias, axis=-1).astype(dt)
    probs = dropout(probs, cfg.dropout, rng, deterministic)
    ctx = jnp.einsum("BNLT,BTND->BLND", probs, v)                         # [B, L, N, D]
    return shard(jnp.einsum("BLND,NDM->BLM", ctx, wo), cfg, "data", None, None)


def dense_ffn(p, cfg: ModelConfig, x, rng, deterministic):
    """x [B, L, M] -> [B, L, M] through relu(x wi) wo, F split on `model`."""
    wi = shard(p["wi"], cfg, None, "model").astype(x.dtype)               # [M, F]
    wo = shard(p["wo"], cfg, "model", None).astype(x.dtype)               # [F, M]
    h = shard(jax.nn.relu(jnp.einsum("BLM,MF->BLF", x, wi)), cfg, "data", None, "model")
    h = dropout(h, cfg.dropout, rng, deterministic)
    return jnp.einsum("BLF,FM->BLM", h, wo)                               # [B, L, M]


def num_groups(cfg: ModelConfig, batch: int, length: int) -> int:
    """G for B·L tokens: cfg.moe.num_groups (must divide B·L), or B (one group per sequence)."""
    g = cfg.moe.num_groups or batch
    if (batch * length) % g:
        raise ValueError(f"moe.num_groups={g} does not divide the {batch}x{length}="
                         f"{batch * length} tokens of this batch")
    return g


def _moe_kwargs(p, mc, deterministic):
    """moe_layer keywords beyond the capacity path's: shared experts, route() arguments (for
    dispatch=dropless), the eval capacity factor."""
    kw = {"shared_wi": p.get("shared_wi"), "shared_wo": p.get("shared_wo"),
          "capacity_factor": mc.capacity_factor}
    if deterministic and mc.eval_capacity_factor is not None:
        kw["capacity_factor"] = mc.eval_capacity_factor
    if mc.dispatch == "dropless":
        kw.update(score=mc.router, bias=p.get("router_bias"), expert_groups=mc.expert_groups,
                  top_groups=mc.top_groups)
    return kw


def moe_ffn(p, cfg: ModelConfig, x, pad, rng, deterministic=False):
    """x [B, L, M] -> ([B, L, M], aux) through the MoE layer on G groups of S tokens."""
    B, L, M = x.shape
    G = num_groups(cfg, B, L)
    mc = cfg.moe
    axes = None if cfg.mesh.empty else MoEAxes(group=cfg.mesh.moe_group, expert=cfg.mesh.expert,
                                               hidden=cfg.mesh.expert_hidden)
    policy = mc.second_expert_policy if rng is not None else "all"
    groups = x.reshape(G, (B * L) // G, M)                                # [G, S, M]
    out, aux = moe_layer(
        groups, p["wg"], p["wi"], p["wo"], dispatch=mc.dispatch, kind=mc.gating, k=mc.top_k,
        capacity=mc.capacity, second_expert_policy=policy,
        second_expert_threshold=mc.second_expert_threshold, rng=rng,
        paddings=pad.reshape(G, -1), jitter_eps=mc.jitter_eps, mesh_axes=axes,
        **_moe_kwargs(p, mc, deterministic))
    return out.reshape(B, L, M), aux                                      # [B, L, M]


# ----- layers and stacks -----------------------------------------------------------------------
def _residual(x, y, cfg, rng, deterministic):
    return x + dropout(y, cfg.dropout, rng, deterministic)


def _ffn_block(p, cfg, x, pad, rng, deterministic):
    """Pre-LN FFN sublayer (dense or MoE): returns (x, aux or None)."""
    k_ffn, k_gate, k_res = _keys(rng, 3)
    h = layer_norm(p["norm"], x)
    if "wg" in p:
        y, aux = moe_ffn(p, cfg, h, pad, k_gate, deterministic)
    else:
        y, aux = dense_ffn(p, cfg, h, k_ffn, deterministic), None
    return shard(_residual(x, y, cfg, k_res, deterministic), cfg, "data", None, None), aux


def _attn_block(p, cfg, x, kv, bias, rng, deterministic):
    k_attn, k_res = _keys(rng, 2)
    h = layer_norm(p["norm"], x)
    kv = h if kv is None else kv
    y = attention(p, cfg, h, kv, bias, k_attn, deterministic)
    return _residual(x, y, cfg, k_res, deterministic)


def _embed(params, cfg, ids, table, rng, deterministic):
    """ids [B, L] -> [B, L, M]: scaled embedding + positions, dropout."""
    dt = jnp.dtype(cfg.dtype)
    x = jnp.take(table, ids, axis=0) * math.sqrt(cfg.d_model)              # [B, L, M]
    L = ids.shape[1]
    if cfg.positions == "learned":
        if L > cfg.max_len:
            raise ValueError(f"sequence length {L} > max_len {cfg.max_len}")
        x = x + params["pos"][:L]
    else:
        x = x + sinusoidal_positions(L, cfg.d_model)
    x = shard(x.astype(dt), cfg, "data", None, None)
    return dropout(x, cfg.dropout, rng, deterministic)


def _pad_bias(pad):
    """pad [B, T] (1 = pad) -> additive key bias [B, 1, 1, T]."""
    return jnp.where(pad[:, None, None, :] > 0, NEG_INF, 0.0).astype(jnp.float32)


def _causal_bias(length):
    causal = np.tril(np.ones((length, length), bool))
    return jnp.asarray(np.where(causal, 0.0, NEG_INF), jnp.float32)[None, None]   # [1,1,L,L]


def encode(params, cfg: ModelConfig, src_ids, src_pad, *, deterministic=True, rng=None):
    """src_ids [B, Ls] -> (encoder output [B, Ls, M], list of MoE aux dicts)."""
    keys = _keys(rng, cfg.num_encoder_layers + 1)
    x = _embed(params, cfg, src_ids, params["embed"]["src"], keys[-1], deterministic)
    bias, auxes = _pad_bias(src_pad), []
    for i in range(cfg.num_encoder_layers):
        p = params["encoder"][f"layer_{i}"]
        k_attn, k_ffn = _keys(keys[i], 2)
        x = _attn_block(p["self_attn"], cfg, x, None, bias, k_attn, deterministic)
        x, aux = _ffn_block(p["ffn"], cfg, x, src_pad, k_ffn, deterministic)
        auxes += [aux] if aux is not None else []
    return layer_norm(params["encoder_norm"], x), auxes


def decode(params, cfg: ModelConfig, enc, src_pad, tgt_in_ids, tgt_pad, *, deterministic=True,
           rng=None):
    """Decoder stack -> (logits [B, Lt, Vt] float32, list of MoE aux dicts)."""
    keys = _keys(rng, cfg.num_decoder_layers + 1)
    table = params["embed"]["src" if cfg.shared_vocab else "tgt"]         # [Vt, M]
    x = _embed(params, cfg, tgt_in_ids, table, keys[-1], deterministic)
    self_bias = _causal_bias(tgt_in_ids.shape[1]) + _pad_bias(tgt_pad)   # [B, 1, Lt, Lt]
    cross_bias, auxes = _pad_bias(src_pad), []
    for i in range(cfg.num_decoder_layers):
        p = params["decoder"][f"layer_{i}"]
        k_self, k_cross, k_ffn = _keys(keys[i], 3)
        x = _attn_block(p["self_attn"], cfg, x, None, self_bias, k_self, deterministic)
        x = _attn_block(p["cross_attn"], cfg, x, enc, cross_bias, k_cross, deterministic)
        x, aux = _ffn_block(p["ffn"], cfg, x, tgt_pad, k_ffn, deterministic)
        auxes += [aux] if aux is not None else []
    x = layer_norm(params["decoder_norm"], x)
    logits = jnp.einsum("BLM,VM->BLV", x, table.astype(x.dtype))          # [B, Lt, Vt]
    logits = shard(logits.astype(jnp.float32), cfg, "data", None, None)
    if table.shape[0] != cfg.target_vocab:  # padded table rows: never predicted
        valid = jnp.arange(table.shape[0]) < cfg.target_vocab              # [Vt]
        logits = jnp.where(valid, logits, NEG_INF)
    return logits, auxes


def _summarise(auxes, num_experts):
    """Sum of aux/z losses; per-MoE-layer load [n, E] and dropped fractions [n]."""
    if not auxes:
        zero = jnp.float32(0.0)
        return {"aux_loss": zero, "z_loss": zero, "expert_load": jnp.zeros((0, num_experts)),
                "first_dropped": jnp.zeros((0,)), "second_dropped": jnp.zeros((0,)),
                "router_entropy": jnp.zeros((0,)), "dropped_fraction": zero}
    stack = lambda key: jnp.stack([a[key] for a in auxes])               # noqa: E731
    load = stack("tokens_per_expert")                                     # [n, E]
    first = stack("first_dropped_frac")
    return {"aux_loss": sum(a["aux_loss"] for a in auxes),
            "z_loss": sum(a["z_loss"] for a in auxes),
            "expert_load": load / jnp.maximum(jnp.sum(load, -1, keepdims=True), 1.0),
            "first_dropped": first, "second_dropped": stack("second_dropped_frac"),
            "router_entropy": stack("router_entropy"), "dropped_fraction": jnp.mean(first)}


def forward(params, cfg: ModelConfig, src_ids, tgt_in_ids, *, src_pad=None, tgt_pad=None,
            deterministic=True, rng=None):
    """src_ids [B, Ls], tgt_in_ids [B, Lt] int -> (logits [B, Lt, Vt] float32, aux).

    aux: aux_loss (sum over MoE layers), z_loss, expert_load [n_moe, E] (fraction of routed
    tokens per expert), first_dropped / second_dropped / router_entropy [n_moe],
    dropped_fraction (mean first-choice drop). rng drives dropout (unless deterministic) and
    the random / sampling second-expert policies; without rng those policies act as "all"."""
    if not deterministic and cfg.dropout > 0 and rng is None:
        raise ValueError("forward(deterministic=False) with dropout needs an rng")
    src_pad = jnp.zeros(src_ids.shape, jnp.float32) if src_pad is None else src_pad
    tgt_pad = jnp.zeros(tgt_in_ids.shape, jnp.float32) if tgt_pad is None else tgt_pad
    src_ids = shard(src_ids, cfg, "data", None)
    tgt_in_ids = shard(tgt_in_ids, cfg, "data", None)
    k_enc, k_dec = _keys(rng, 2)
    enc, enc_aux = encode(params, cfg, src_ids, src_pad, deterministic=deterministic, rng=k_enc)
    logits, dec_aux = decode(params, cfg, enc, src_pad, tgt_in_ids, tgt_pad,
                             deterministic=deterministic, rng=k_dec)
    return logits, _summarise(enc_aux + dec_aux, cfg.moe.num_experts)


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
