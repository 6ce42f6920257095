"""Dropless MoE (DESIGN §7b): every token reaches all k of its experts, nothing dropped.

One device: the (token, choice) pairs are sorted by expert (stable), each expert's rows padded
to a multiple of a block of B rows, and the experts' matmuls run as ONE batched matmul over the
blocks with a per-block expert id (the block's weights gathered): a grouped matmul whose work is
at most N + E·B rows for N = T·k pairs. (jax.lax.ragged_dot is the same grouped matmul, but on
XLA:CPU it lowers to a masked dense dot doing E× the work.) Results are scattered back to their
tokens, weighted by the routing weights.

Expert-parallel (mesh axes given): the capacity machinery with C = S, the capacity at which no
group can overflow an expert (a token sends at most one route to each expert), so the padded
AllToAll of the gather path carries every route: exact, nothing dropped, at E·S/(k·S) = E/k
times the bytes and expert FLOPs of the routes themselves (XLA:CPU has no ragged_all_to_all).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .routing import sort_ranks


def default_block(num_pairs: int, num_experts: int) -> int:
    """B: a power of two near N/(2E) in [8, 256]: the padding (at most E·B rows) stays under
    half the N routed rows, and the per-block weight gathers (N/B + E blocks) stay few. Measured
    on CPU (float32, N = 16384, M = 256, H = 512, train step): E=8 best at 256, E=64 at 128,
    E=256 at 32 (the neighbouring powers of two cost 10-60 % more)."""
    target = max(8, min(256, num_pairs // (2 * num_experts)))
    return 1 << (target.bit_length() - 1)


def _block_layout(expert, num_experts, block):
    """expert [N] int (E = not routed) -> (row_pair [R] int32, N = empty row; block_expert [nb]):
    pairs sorted by expert, each expert's rows starting on a block boundary. R = nb·B with
    nb = ceil(N / B) + E, the static bound of Σ_e ceil(n_e / B)."""
    N, E, B = expert.shape[0], num_experts, block
    nb = -(-N // B) + E
    pos = jnp.arange(N, dtype=jnp.int32)                                  # [N]
    sorted_e, order = jax.lax.sort((expert.astype(jnp.int32), pos), num_keys=1, is_stable=True)
    counts = jnp.zeros((E + 1,), jnp.int32).at[expert].add(1)[:E]        # [E]
    padded = -(-counts // B) * B                                          # [E]
    pstart = jnp.cumsum(padded) - padded                                  # [E]
    start = jnp.cumsum(counts) - counts                                   # [E]
    se = jnp.minimum(sorted_e, E - 1)
    dest = jnp.where(sorted_e < E, pstart[se] + pos - start[se], nb * B)  # [N] (nb·B = drop)
    row_pair = jnp.full((nb * B,), N, jnp.int32).at[dest].set(order, mode="drop")  # [R]
    block_start = jnp.arange(nb, dtype=jnp.int32) * B                     # [nb]
    block_expert = jnp.searchsorted(jnp.cumsum(padded), block_start, side="right")
    return row_pair, jnp.minimum(block_expert, E - 1).astype(jnp.int32)   # [R], [nb]


def grouped_ffn(x, weights, indices, wi, wo, *, activation=jax.nn.relu, nonpad=None,
                block=None):
    """x [T, M], weights / indices [T, k] -> [T, M] = Σ_j weights[t, j] · FFN_{indices[t, j]}(x[t])
    (FFN_e = activation(· @ wi[e]) @ wo[e]); pairs of pad tokens (nonpad 0) are not computed."""
    T, M = x.shape
    k = indices.shape[1]
    E = wi.shape[0]
    N = T * k
    B = int(block) if block else default_block(N, E)
    expert = indices.reshape(N)                                           # [N] token-major
    if nonpad is not None:
        expert = jnp.where(jnp.repeat(nonpad > 0, k), expert, E)
    row_pair, block_expert = _block_layout(expert, E, B)                  # [R], [nb]
    nb = block_expert.shape[0]
    row_token = jnp.where(row_pair < N, row_pair // k, T)                 # [R] T = empty
    rows = jnp.take(x, row_token, axis=0, mode="fill", fill_value=0)      # [R, M]
    rows = rows.reshape(nb, B, M)                                         # [nb, B, M]
    w_in = jnp.take(wi, block_expert, axis=0).astype(x.dtype)             # [nb, M, H]
    w_out = jnp.take(wo, block_expert, axis=0).astype(x.dtype)            # [nb, H, M]
    h = activation(jnp.einsum("nBM,nMH->nBH", rows, w_in))                # [nb, B, H]
    y = jnp.einsum("nBH,nHM->nBM", h, w_out).reshape(nb * B, M)           # [R, M]
    gate = jnp.take(weights.reshape(N), row_pair, mode="fill", fill_value=0)  # [R]
    y = y * gate[:, None].astype(y.dtype)                                 # [R, M]
    return jnp.zeros((T, M), y.dtype).at[row_token].add(y, mode="drop")   # [T, M]


def expert_slots(experts, kept, num_experts):
    """Slots [G, S] per choice for the C = S tables: the rank among the group's routes to the
    same expert, choices in priority order (all first choices, then second, ...); always < S."""
    S = experts[0].shape[1]
    flat = jnp.concatenate([jnp.where(w > 0, e, num_experts) for e, w in zip(experts, kept)],
                           axis=1)                                        # [G, k·S]
    ranks = sort_ranks(flat, num_experts)                                 # [G, k·S]
    return [jnp.where(w > 0, ranks[:, j * S:(j + 1) * S], 0) for j, w in enumerate(kept)]
