"""Executes a halo exchange (`spmd/step.py` Halo) on this device's block of an uneven dim: one
CollectivePermute of the boundary rows between neighbouring tiles, then this tile's new block
cut from its own rows and the received ones."""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .step import Halo


def realign(ctx, val, h: Halo, why: str):
    """val (dim h.dim holding blocks of h.old rows) with blocks of h.new rows."""
    d, tiles = h.dim, _tiles(ctx, h)
    tile = ctx.shard_index(h.axes)
    note = (f"{why} (halo: {h.received} boundary rows realign uneven dim {d} "
            f"from {h.old} to {h.new})")
    parts = []
    for j in range(1, h.hops + 1):  # from the tile j away: its whole block, the last its edge
        rows = h.old if j < h.hops else h.rows
        lo, hi = (h.old - rows, h.old) if h.backward else (0, rows)
        pairs = [(i, i + j) if h.backward else (i + j, i) for i in range(tiles - j)]
        parts.append(ctx.collective_permute(lax.slice_in_dim(val, lo, hi, axis=d), h.axes, pairs,
                                            note))
    if h.backward:  # [..., tile i-2, tile i-1, own]
        buf = jnp.concatenate(parts[::-1] + [val], axis=d)
        start = h.received - tile * (h.old - h.new)
    else:           # [own, tile i+1, tile i+2, ...]
        buf = jnp.concatenate([val] + parts, axis=d)
        start = tile * (h.new - h.old)
    if buf.shape[d] < h.span:
        pad = [(0, 0)] * val.ndim
        pad[d] = (0, h.span - buf.shape[d])
        buf = jnp.pad(buf, pad)
    start = jnp.clip(start, 0, h.span - h.new)  # in range: tiles past the data take padding
    return lax.dynamic_slice_in_dim(buf, start, h.new, axis=d)


def _tiles(ctx, h: Halo) -> int:
    out = 1
    for a in h.axes:
        out *= ctx.sizes[a]
    return out
