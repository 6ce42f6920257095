"""Small annotated programs used across the SPMD tests (DESIGN §6-7), written for one device."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gshard

ROLES = {  # mesh shape -> (data axis, model axes) for 2-D style annotations
    (8,): (None, "x"),
    (2, 4): ("data", "model"),
    (4, 2): ("data", "model"),
    (2, 2, 2): ("a", ("b", "c")),
}


def roles(mesh):
    return ROLES[tuple(mesh.devices.shape)]


def mlp(data, model):
    def f(x, w1, w2):  # x [B, M], w1 [M, H], w2 [H, M]
        x = gshard.mesh_split(x, (data, None))
        w1 = gshard.mesh_split(w1, (None, model))
        w2 = gshard.mesh_split(w2, (model, None))
        h = jax.nn.relu(x @ w1)  # [B, H]
        return h @ w2  # [B, M]
    return f


def attention(data, model):
    def f(x, wq, wk, wv, wo):  # x [B, S, M]; wq/wk/wv [M, N, H]; wo [N, H, M]
        x = gshard.mesh_split(x, (data, None, None))
        wq, wk, wv = (gshard.mesh_split(w, (None, model, None)) for w in (wq, wk, wv))
        wo = gshard.mesh_split(wo, (model, None, None))
        q = jnp.einsum("bsm,mnh->bsnh", x, wq)  # [B, S, N, H]
        k = jnp.einsum("bsm,mnh->bsnh", x, wk)
        v = jnp.einsum("bsm,mnh->bsnh", x, wv)
        logits = jnp.einsum("bsnh,btnh->bnst", q, k) / np.sqrt(q.shape[-1])  # [B, N, S, T]
        p = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bnst,btnh->bsnh", p, v)  # [B, S, N, H]
        return jnp.einsum("bsnh,nhm->bsm", o, wo)  # [B, S, M]
    return f


def top2(gates, capacity):
    """A compact top-2 gating (DESIGN §7) for the core tests: [G, S, E] -> combine, dispatch."""
    E = gates.shape[-1]
    e1 = jnp.argmax(gates, axis=-1)  # [G, S]
    m1 = jax.nn.one_hot(e1, E, dtype=gates.dtype)  # [G, S, E]
    g2s = gates * (1.0 - m1)
    e2 = jnp.argmax(g2s, axis=-1)
    m2 = jax.nn.one_hot(e2, E, dtype=gates.dtype)
    g1, g2 = (gates * m1).sum(-1), (gates * m2).sum(-1)  # [G, S]
    denom = g1 + g2 + 1e-9
    g1, g2 = g1 / denom, g2 / denom
    pos1 = jnp.cumsum(m1, axis=1) - m1  # [G, S, E] exclusive count
    m1 = m1 * (pos1 < capacity)
    pos2 = jnp.cumsum(m2, axis=1) - m2 + m1.sum(axis=1, keepdims=True)
    m2 = m2 * (pos2 < capacity)
    slot1 = jax.nn.one_hot((pos1 * m1).sum(-1).astype(jnp.int32), capacity, dtype=gates.dtype)  # [G, S, C]
    slot2 = jax.nn.one_hot((pos2 * m2).sum(-1).astype(jnp.int32), capacity, dtype=gates.dtype)
    combine = (g1[..., None, None] * m1[..., None] * slot1[:, :, None, :]
               + g2[..., None, None] * m2[..., None] * slot2[:, :, None, :])  # [G, S, E, C]
    return combine, (combine > 0).astype(gates.dtype)


def moe(num_devices, capacity):
    D = num_devices

    def f(inputs, wg, wi, wo):  # inputs [G, S, M]; wg [M, E]; wi [E, M, H]; wo [E, H, M]
        inputs = gshard.split(inputs, 0, D)
        wg = gshard.replicate(wg)
        wi, wo = gshard.split(wi, 0, D), gshard.split(wo, 0, D)
        gates = jax.nn.softmax(jnp.einsum("GSM,ME->GSE", inputs, wg), axis=-1)
        combine, dispatch = top2(gates, capacity)  # [G, S, E, C]
        x = jnp.einsum("GSEC,GSM->EGCM", dispatch, inputs)
        x = gshard.split(x, 0, D)
        h = jax.nn.relu(jnp.einsum("EGCM,EMH->EGCH", x, wi))
        y = jnp.einsum("EGCH,EHM->GECM", h, wo)
        y = gshard.split(y, 0, D)
        return jnp.einsum("GSEC,GECM->GSM", combine, y)  # [G, S, M]
    return f


def vocab_xent(data, model):
    def f(h, emb, labels):  # h [B, M], emb [V, M] split on V, labels [B]
        h = gshard.mesh_split(h, (data, None))
        emb = gshard.mesh_split(emb, (model, None))
        logits = h @ emb.T  # [B, V]
        logp = jax.nn.log_softmax(logits, axis=-1)
        onehot = jax.nn.one_hot(labels, emb.shape[0], dtype=logp.dtype)
        return -(logp * onehot).sum(-1).mean()
    return f
