"""The dropless expert FFN on a list of routes, exact for any load, sized at run time.

routed_ffn(x [N, M], expert [N], wi [E, M, H], wo [E, H, M]) -> y [N, M]: route n's expert
output FFN_{expert[n]}(x[n]) (zeros for expert == E, a route not taken); x holds one row per
route, so every layout is a permutation of routes and each gather's transpose is again a gather
(through the inverse permutation), never a scatter-add (slow on XLA:CPU).

Static shapes cannot know the load, so the layout is picked at run time by lax.switch on the
experts' counts: the first bucket (C1, C2, K) that holds them runs a capacity layout (every
expert's routes written into [E, C1, M] buffers, the K busiest experts' further routes into
[K, C2, M] buffers with their weights gathered, batched GEMMs, nothing dropped since every route
fits); when none fits, the block-grouped layout (each expert's routes padded to blocks of B rows,
N + E·B rows in all, each block's weights gathered) takes any load. A balanced router lands in
the first buckets: about the capacity path's cost, with no route dropped. The gradient is a
custom VJP running the same branch from its saved pre-activations (one [R, H] buffer for all
branches, R the largest capacity layout's rows; the block layout recomputes when larger; lax.switch's own VJP would keep, zero-filled, every branch's residuals).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from .routing import sort_ranks

# (C1, C2, K) as multiples of the balanced load m and of E: every expert holds C1·m routes;
# the K = kf·E busiest hold C2·m more (their weights gathered). Cheapest first.
BUCKETS = ((1.125, 0.0, 0.0), (1.125, 0.5, 0.25), (1.25, 0.75, 0.25), (1.5, 0.0, 0.0))


def default_block(num_pairs: int, num_experts: int) -> int:
    """B: a power of two near N/(2E) in [8, 256]: the padding (at most E·B rows) stays under
    half the N routed rows, and the per-block weight gathers (N/B + E blocks) stay few. Measured
    on CPU (float32, N = 16384, M = 256, H = 512, train step): E=8 best at 256, E=64 at 128,
    E=256 at 32 (the neighbouring powers of two cost 10-60 % more)."""
    target = max(8, min(256, num_pairs // (2 * num_experts)))
    return 1 << (target.bit_length() - 1)


def bucket_capacities(expected: float, num_routes: int, num_experts: int,
                      factors=BUCKETS) -> tuple:
    """Static (C1, C2, K) per bucket: C1, C2 multiples of 8 of f · expected, K experts with the
    second tier (0 = none); C1 below N (C1 = N never overflows, but the block layout is cheaper
    there)."""
    up8 = lambda v: 8 * max(1, math.ceil(v / 8))  # noqa: E731
    out = []
    for f1, f2, kf in factors:
        K = min(num_experts, max(1, round(kf * num_experts))) if f2 > 0 else 0
        c = (up8(f1 * expected), up8(f2 * expected) if K else 0, K)
        if c[0] < num_routes and c not in out:
            out.append(c)
    return tuple(out)


# ----- permutation gathers --------------------------------------------------------------------
@jax.custom_vjp
def perm_take(src, idx, inv):
    """src [A, M] rows at idx [B] (A = empty row, zeros), idx injective and inv [A] its inverse
    (B = row not taken). The VJP is the gather through inv (no scatter-add)."""
    return jnp.take(src, idx, axis=0, mode="fill", fill_value=0)          # [B, M]


def _perm_take_fwd(src, idx, inv):
    return perm_take(src, idx, inv), (idx, inv)


def _perm_take_bwd(res, dout):
    idx, inv = res
    return jnp.take(dout, inv, axis=0, mode="fill", fill_value=0), None, None  # [A, M]


perm_take.defvjp(_perm_take_fwd, _perm_take_bwd)


def inverse(idx, size):
    """The inverse [size] of an injective idx [B] into [0, size) (entries >= size ignored):
    inv[idx[b]] = b, B where nothing maps."""
    B = idx.shape[0]
    return jnp.full((size,), B, jnp.int32).at[idx].set(jnp.arange(B, dtype=jnp.int32),
                                                        mode="drop")


# ----- layouts: stage1(x, wi) -> pre [R, H], stage2(pre, wo) -> y [N, M] -------------------------
def _tier_tables(expert, rank, counts, E, cap):
    """Slots of the capacity layout (C1, C2, K): route n of expert e at rank r sits in row
    e·C1 + r (r < C1) or E·C1 + j·C2 + r − C1 (the j-th busiest expert's second tier).
    -> (flat [N] row (R = none), slot_route [R] (N = empty), tier_e [K] expert ids)."""
    C1, C2, K = cap
    R = E * C1 + K * C2
    ok = expert < E
    tier_e = jax.lax.top_k(counts, K)[1].astype(jnp.int32) if K else jnp.zeros((0,), jnp.int32)
    tier_of = jnp.full((E + 1,), K, jnp.int32).at[tier_e].set(jnp.arange(K, dtype=jnp.int32))
    flat = jnp.where(ok & (rank < C1), expert * C1 + rank, R)             # [N]
    if K:
        second = E * C1 + tier_of[expert] * C2 + rank - C1                # [N]
        flat = jnp.where(ok & (rank >= C1) & (tier_of[expert] < K), second, flat)
    return flat, inverse(flat, R), tier_e


def _tier_stages(expert, rank, counts, E, cap, activation):
    C1, C2, K = cap
    flat, slot_route, tier_e = _tier_tables(expert, rank, counts, E, cap)

    def stage1(x, wi):
        M = x.shape[1]
        xl = perm_take(x, slot_route, flat)                               # [R, M]
        w = wi.astype(x.dtype)
        pre = [jnp.einsum("ECM,EMH->ECH", xl[:E * C1].reshape(E, C1, M), w)  # [E, C1, H]
               .reshape(E * C1, -1)]
        if K:
            wt = jnp.take(w, tier_e, axis=0)                              # [K, M, H]
            pre.append(jnp.einsum("KCM,KMH->KCH", xl[E * C1:].reshape(K, C2, M), wt)
                       .reshape(K * C2, -1))                              # [K·C2, H]
        return jnp.concatenate(pre, axis=0) if K else pre[0]              # [R, H]

    def stage2(pre, wo):
        h = activation(pre)                                               # [R, H]
        w = wo.astype(pre.dtype)
        H = h.shape[1]
        y = [jnp.einsum("ECH,EHM->ECM", h[:E * C1].reshape(E, C1, H), w)  # [E, C1, M]
             .reshape(E * C1, -1)]
        if K:
            wt = jnp.take(w, tier_e, axis=0)                              # [K, H, M]
            y.append(jnp.einsum("KCH,KHM->KCM", h[E * C1:].reshape(K, C2, H), wt)
                     .reshape(K * C2, -1))                                # [K·C2, M]
        yl = jnp.concatenate(y, axis=0) if K else y[0]                    # [R, M]
        return perm_take(yl, flat, slot_route)                            # [N, M]
    return stage1, stage2


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


def _block_stages(expert, E, B, activation):
    """Block layout (any load): N + E·B rows in blocks of B, each block's weights gathered."""
    dest, row_pair, block_expert = block_layout(expert, E, B)             # [N], [R], [nb]
    nb = block_expert.shape[0]

    def stage1(x, wi):
        rows = perm_take(x, row_pair, dest).reshape(nb, B, x.shape[1])    # [nb, B, M]
        w_in = jnp.take(wi, block_expert, axis=0).astype(x.dtype)         # [nb, M, H]
        return jnp.einsum("nBM,nMH->nBH", rows, w_in).reshape(nb * B, -1)  # [R, H]

    def stage2(pre, wo):
        h = activation(pre).reshape(nb, B, -1)                            # [nb, B, H]
        w_out = jnp.take(wo, block_expert, axis=0).astype(pre.dtype)      # [nb, H, M]
        y = jnp.einsum("nBH,nHM->nBM", h, w_out).reshape(nb * B, -1)      # [R, M]
        return perm_take(y, dest, row_pair)                               # [N, M]
    return stage1, stage2


def _block_rows(N, E, B):
    return (-(-N // B) + E) * B


# ----- the switch and its VJP ------------------------------------------------------------------
def _stages(expert, E, caps, block, activation):
    """A maker of (stage1, stage2) per bucket, the block layout last (called inside the branch,
    so only the chosen layout's tables are built), and the branch index to run."""
    rank = sort_ranks(expert[None], E, scatter=True)[0]                   # [N]
    counts = jnp.zeros((E + 1,), jnp.int32).at[expert].add(1)[:E]        # [E]
    n_max = jnp.max(counts)
    fits = [(n_max <= C1 + C2) & (jnp.sum(counts > C1) <= K) for C1, C2, K in caps]
    index = jnp.argmax(jnp.stack(fits + [jnp.bool_(True)])).astype(jnp.int32)
    makers = [functools.partial(_tier_stages, expert, rank, counts, E, c, activation)
              for c in caps]
    return makers + [functools.partial(_block_stages, expert, E, block, activation)], index


def _saved_rows(caps, N, E, B):
    """Rows of the saved pre-activations: the largest capacity layout's (the block layout's when
    there is no bucket); a larger layout recomputes its first matmul in the VJP instead."""
    return max(E * C1 + K * C2 for C1, C2, K in caps) if caps else _block_rows(N, E, B)


def _run(x, wi, wo, expert, caps, block, activation):
    """(y [N, M], pre [R_s, H]: the branch's pre-activations, zero-padded (zeros if larger))."""
    R = _saved_rows(caps, expert.shape[0], wi.shape[0], block)
    stages, index = _stages(expert, wi.shape[0], caps, block, activation)

    def branch(make):
        def f(x, wi, wo):
            s1, s2 = make()
            pre = s1(x, wi)                                               # [R_i, H]
            keep = jnp.pad(pre, ((0, R - pre.shape[0]), (0, 0))) if pre.shape[0] <= R else \
                jnp.zeros_like(pre[:R])                                   # [R_s, H]
            return s2(pre, wo), keep
        return f
    return jax.lax.switch(index, [branch(m) for m in stages], x, wi, wo), index


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _switch_ffn(x, wi, wo, expert, caps, block, activation):
    return _run(x, wi, wo, expert, caps, block, activation)[0][0]


def _switch_fwd(x, wi, wo, expert, caps, block, activation):
    (y, pre), index = _run(x, wi, wo, expert, caps, block, activation)
    return y, (x, wi, wo, expert, pre)


def _switch_bwd(caps, block, activation, res, dy):
    """The chosen branch's VJP from its saved pre-activations (no matmul recomputed)."""
    x, wi, wo, expert, pre = res
    stages, index = _stages(expert, wi.shape[0], caps, block, activation)

    def branch(make):
        def f(x, wi, wo, pre, dy):
            s1, s2 = make()
            R_i = jax.eval_shape(s1, x, wi).shape[0]
            p = pre[:R_i] if R_i <= pre.shape[0] else s1(x, wi)           # [R_i, H]
            dpre, dwo = jax.vjp(s2, p, wo)[1](dy)
            dx, dwi = jax.vjp(s1, x, wi)[1](dpre)
            return dx, dwi, dwo
        return f
    dx, dwi, dwo = jax.lax.switch(index, [branch(m) for m in stages], x, wi, wo, pre, dy)
    return dx, dwi, dwo, None


_switch_ffn.defvjp(_switch_fwd, _switch_bwd)


def routed_ffn(x, expert, wi, wo, *, expected=None, block=None, activation=jax.nn.relu,
               factors=BUCKETS):
    """x [N, M] (one row per route), expert [N] int (E = not taken) -> y [N, M] per route
    (module docstring). expected: the routes one expert gets under a balanced load (N/E)."""
    N, E = expert.shape[0], wi.shape[0]
    expected = N / E if expected is None else expected
    caps = bucket_capacities(expected, N, E, factors)
    B = int(block) if block else default_block(N, E)
    return _switch_ffn(x, wi, wo, expert.astype(jnp.int32), caps, B, activation)
