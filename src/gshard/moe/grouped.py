"""The dropless expert FFN on a list of routes, exact for any load, sized at run time.

routed_ffn(x [T, M], token [N], expert [N], wi [E, M, H], wo [E, H, M]) -> y [N, M]: route n's
expert output FFN_{expert[n]}(x[token[n]]) (zeros for expert == E, a route not taken).

Static shapes cannot know the load, so the work is picked at run time by lax.switch on the
largest expert's count n_max: the first capacity C of `capacities` with n_max <= C runs the
capacity layout (the routes written into [E, C, M] buffers, two batched GEMMs, nothing dropped
since every expert fits); when none fits, the block-grouped layout (each expert's routes padded
to blocks of B rows, N + E·B rows in all, each block's weights gathered) takes any load.
A balanced router lands in the first buckets: about the capacity path's cost, with no tokens
dropped. The gradient is a custom VJP running the same branch (its first matmul recomputed),
so no branch's residuals are kept for the others (lax.switch's own VJP would zero-fill them).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from .routing import sort_ranks

BUCKETS = (1.0625, 1.125, 1.25, 1.5, 2.0)


def default_block(num_pairs: int, num_experts: int) -> int:
    """B: a power of two near N/(2E) in [8, 256]: the padding (at most E·B rows) stays under
    half the N routed rows, and the per-block weight gathers (N/B + E blocks) stay few. Measured
    on CPU (float32, N = 16384, M = 256, H = 512, train step): E=8 best at 256, E=64 at 128,
    E=256 at 32 (the neighbouring powers of two cost 10-60 % more)."""
    target = max(8, min(256, num_pairs // (2 * num_experts)))
    return 1 << (target.bit_length() - 1)


def bucket_capacities(expected: float, num_routes: int, factors=BUCKETS) -> tuple:
    """Static capacities ceil(f · expected) (multiples of 8), each below N (C = N never
    overflows, but the block layout is cheaper there)."""
    caps = sorted({8 * math.ceil(f * expected / 8) for f in factors})
    return tuple(c for c in caps if 0 < c < num_routes)


# ----- layouts ---------------------------------------------------------------------------------
def _capacity_ffn(x, token, expert, rank, wi, wo, C, activation):
    """Capacity layout (every count <= C): [E, C, M] buffers, batched FFN, back to routes."""
    T, M = x.shape
    E, N = wi.shape[0], expert.shape[0]
    ok = expert < E
    flat = jnp.where(ok, expert * C + rank, E * C)                        # [N] slot (E·C = none)
    slot_token = jnp.full((E * C,), T, jnp.int32).at[flat].set(token, mode="drop")  # [E·C]
    xb = jnp.take(x, slot_token, axis=0, mode="fill", fill_value=0)       # [E·C, M]
    xb = xb.reshape(E, C, M)                                              # [E, C, M]
    h = activation(jnp.einsum("ECM,EMH->ECH", xb, wi.astype(x.dtype)))    # [E, C, H]
    yb = jnp.einsum("ECH,EHM->ECM", h, wo.astype(x.dtype)).reshape(E * C, M)  # [E·C, M]
    return jnp.take(yb, flat, axis=0, mode="fill", fill_value=0)          # [N, M]


def block_layout(expert, num_experts, block):
    """expert [N] int (E = not routed) -> (dest [N]: each pair's row, nb·B = none; row_pair [R]
    int32, N = empty row; block_expert [nb]): pairs sorted by expert, each expert's rows
    starting on a block boundary. R = nb·B with nb = ceil(N / B) + E, the static bound of
    Σ_e ceil(n_e / B)."""
    N, E, B = expert.shape[0], num_experts, block
    nb = -(-N // B) + E
    pos = jnp.arange(N, dtype=jnp.int32)                                  # [N]
    sorted_e, order = jax.lax.sort((expert.astype(jnp.int32), pos), num_keys=1, is_stable=True)
    counts = jnp.zeros((E + 1,), jnp.int32).at[expert].add(1)[:E]        # [E]
    padded = -(-counts // B) * B                                          # [E]
    pstart = jnp.cumsum(padded) - padded                                  # [E]
    start = jnp.cumsum(counts) - counts                                   # [E]
    se = jnp.minimum(sorted_e, E - 1)
    dest_sorted = jnp.where(sorted_e < E, pstart[se] + pos - start[se], nb * B)  # [N]
    row_pair = jnp.full((nb * B,), N, jnp.int32).at[dest_sorted].set(order, mode="drop")  # [R]
    dest = jnp.zeros((N,), jnp.int32).at[order].set(dest_sorted)          # [N]
    block_start = jnp.arange(nb, dtype=jnp.int32) * B                     # [nb]
    block_expert = jnp.searchsorted(jnp.cumsum(padded), block_start, side="right")
    return dest, row_pair, jnp.minimum(block_expert, E - 1).astype(jnp.int32)


def _block_ffn(x, token, expert, wi, wo, B, activation):
    """Block layout (any load): N + E·B rows in blocks of B, each block's weights gathered."""
    T, M = x.shape
    E, N = wi.shape[0], expert.shape[0]
    dest, row_pair, block_expert = block_layout(expert, E, B)             # [N], [R], [nb]
    nb = block_expert.shape[0]
    token_ext = jnp.concatenate([token, jnp.full((1,), T, token.dtype)])  # [N + 1]
    rows = jnp.take(x, token_ext[row_pair], axis=0, mode="fill", fill_value=0)  # [R, M]
    rows = rows.reshape(nb, B, M)                                         # [nb, B, M]
    w_in = jnp.take(wi, block_expert, axis=0).astype(x.dtype)             # [nb, M, H]
    w_out = jnp.take(wo, block_expert, axis=0).astype(x.dtype)            # [nb, H, M]
    h = activation(jnp.einsum("nBM,nMH->nBH", rows, w_in))                # [nb, B, H]
    y = jnp.einsum("nBH,nHM->nBM", h, w_out).reshape(nb * B, M)           # [R, M]
    return jnp.take(y, dest, axis=0, mode="fill", fill_value=0)           # [N, M]


# ----- the switch and its VJP ------------------------------------------------------------------
def _branches(token, expert, rank, capacities, block, activation):
    """One fn(x, wi, wo) -> [N, M] per bucket, the block layout last."""
    cap = [functools.partial(lambda C, x, wi, wo: _capacity_ffn(
        x, token, expert, rank, wi, wo, C, activation), C) for C in capacities]
    return cap + [lambda x, wi, wo: _block_ffn(x, token, expert, wi, wo, block, activation)]


def _pick(expert, num_experts, capacities):
    """Branch index: the first capacity holding the largest expert's count (len = blocks)."""
    counts = jnp.zeros((num_experts + 1,), jnp.int32).at[expert].add(1)[:num_experts]  # [E]
    n_max = jnp.max(counts)
    return jnp.sum(n_max > jnp.asarray(capacities, jnp.int32)).astype(jnp.int32) \
        if capacities else jnp.int32(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _switch_ffn(x, wi, wo, token, expert, capacities, block, activation):
    rank = sort_ranks(expert[None], wi.shape[0])[0]                      # [N]
    fns = _branches(token, expert, rank, capacities, block, activation)
    return jax.lax.switch(_pick(expert, wi.shape[0], capacities), fns, x, wi, wo)


def _switch_fwd(x, wi, wo, token, expert, capacities, block, activation):
    rank = sort_ranks(expert[None], wi.shape[0])[0]                      # [N]
    i = _pick(expert, wi.shape[0], capacities)
    y = jax.lax.switch(i, _branches(token, expert, rank, capacities, block, activation), x, wi, wo)
    return y, (x, wi, wo, token, expert, rank, i)


def _switch_bwd(capacities, block, activation, res, dy):
    x, wi, wo, token, expert, rank, i = res
    fns = _branches(token, expert, rank, capacities, block, activation)
    vjps = [lambda x, wi, wo, dy, f=f: jax.vjp(f, x, wi, wo)[1](dy) for f in fns]
    dx, dwi, dwo = jax.lax.switch(i, vjps, x, wi, wo, dy)
    return dx, dwi, dwo, None, None


_switch_ffn.defvjp(_switch_fwd, _switch_bwd)


def routed_ffn(x, token, expert, wi, wo, *, expected=None, block=None, activation=jax.nn.relu,
               factors=BUCKETS):
    """x [T, M], token / expert [N] int (expert E = not taken) -> y [N, M] per route (module
    docstring). expected: the routes one expert gets under a balanced load (default N/E)."""
    N, E = expert.shape[0], wi.shape[0]
    expected = N / E if expected is None else expected
    caps = bucket_capacities(expected, N, factors)
    B = int(block) if block else default_block(N, E)
    return _switch_ffn(x, wi, wo, token.astype(jnp.int32), expert.astype(jnp.int32), caps, B,
                       activation)
