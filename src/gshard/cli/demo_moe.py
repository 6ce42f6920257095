"""A compact GShard MoE layer (DESIGN §7) for the `gshard run` demo."""
import jax
import jax.numpy as jnp

import gshard


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


def moe_layer(inputs, wg, wi, wo, *, num_devices, capacity):
    """GShard Algorithm 2 with its annotations: [G, S, M] -> [G, S, M]."""
    D = num_devices
    inputs = gshard.split(inputs, 0, D)  # [G, S, M] split G
    wg = gshard.replicate(wg)  # [M, E]
    wi, wo = gshard.split(wi, 0, D), gshard.split(wo, 0, D)  # [E, M, H], [E, H, M] split E
    gates = jax.nn.softmax(jnp.einsum("GSM,ME->GSE", inputs, wg), axis=-1)  # [G, S, E]
    combine, dispatch = top2(gates, capacity)  # [G, S, E, C]
    x = gshard.split(jnp.einsum("GSEC,GSM->EGCM", dispatch, inputs), 0, D)  # [E, G, C, M]
    h = jax.nn.relu(jnp.einsum("EGCM,EMH->EGCH", x, wi))  # [E, G, C, H]
    y = gshard.split(jnp.einsum("EGCH,EHM->GECM", h, wo), 0, D)  # [G, E, C, M]
    return jnp.einsum("GSEC,GECM->GSM", combine, y)  # [G, S, M]
