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
    note = f"{why} (halo: {h.rows} boundary rows realign uneven dim {d} from {h.old} to {h.new})"
    if h.backward:  # the tail of tile i-1 goes before this tile's rows
        send = lax.slice_in_dim(val, h.old - h.rows, h.old, axis=d)
        got = ctx.collective_permute(send, h.axes, [(i, i + 1) for i in range(tiles - 1)], note)
        buf = jnp.concatenate([got, val], axis=d)
        start = h.rows - tile * (h.old - h.new)
    else:           # the head of tile i+1 goes after them
        send = lax.slice_in_dim(val, 0, h.rows, axis=d)
        got = ctx.collective_permute(send, h.axes, [(i + 1, i) for i in range(tiles - 1)], note)
        buf = jnp.concatenate([val, got], axis=d)
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
