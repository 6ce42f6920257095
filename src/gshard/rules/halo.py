"""Halo exchange along a split dim (GShard §3.3.3, appendix A.4), shared by convolution, pooling,
pad and slice.

`window` gives each device the input positions [i*step + a0, +width) it needs along `dim`: its own
shard plus boundary rows from its neighbours (CollectivePermute), positions outside [0, n) set to
`fill`. `fold_back` is its transpose: contributions a device computed for its neighbours' rows are
sent back and added (the max-pool gradient).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax


MAX_HOPS = 4  # a halo reaches at most this many neighbours' shards; wider: the dim is gathered


def tiles(ctx, axes) -> int:
    return math.prod(ctx.sizes[a] for a in axes)


def reach(L: int, t: int, start, width: int, n: int, end=None) -> tuple[int, int, int, int]:
    """Rows a device's window [start(i), +width) reaches beyond its own shard of L rows (t
    devices): (left, right) in all, and (fetch_left, fetch_right) of them inside [0, n) and
    before end(i) (the rows actually read), which come from the neighbours; the rest are fill."""
    end = end or (lambda i: start(i) + width)
    left = max(0, max(i * L - start(i) for i in range(t)))
    right = max(0, max(start(i) + width - (i + 1) * L for i in range(t)))
    fl = max(0, max(i * L - max(start(i), 0) for i in range(t)))
    fr = max(0, max(min(end(i), n) - (i + 1) * L for i in range(t)))
    return left, right, min(fl, left), min(fr, right)


def window(ctx, x, dim: int, axes, n: int, step: int, a0: int, width: int, fill=0.0):
    """This device's window [i*step + a0, +width) along `dim`; None if a halo is too wide."""
    return window_at(ctx, x, dim, axes, n, lambda i: i * step + a0, width, fill)


def window_at(ctx, x, dim: int, axes, n: int, start, width: int, fill=0.0, end=None):
    """This device's window [start(i), +width) along `dim`, `start` an integer function of the
    device index (evaluated on ints for the halo sizes, on the traced index at run time); rows
    at or after end(i) are not read (they may be anything)."""
    L, t = x.shape[dim], tiles(ctx, axes)
    left, right, fl, fr = reach(L, t, start, width, n, end)
    if max(fl, fr) > MAX_HOPS * L:
        return None
    parts = [_rows(x, dim, left - fl)] if left > fl else []
    parts += _from_left(ctx, x, dim, axes, t, L, fl) + [x] + _from_right(ctx, x, dim, axes, t, L, fr)
    if right > fr:
        parts.append(_rows(x, dim, right - fr))
    ext = jnp.concatenate(parts, axis=dim) if len(parts) > 1 else x
    i = ctx.shard_index(axes)
    pos = lax.broadcasted_iota(jnp.int32, ext.shape, dim) + i * L - left
    ext = jnp.where((pos >= 0) & (pos < n), ext, jnp.asarray(fill, ext.dtype))
    return lax.dynamic_slice_in_dim(ext, start(i) - i * L + left, width, axis=dim)


def _from_left(ctx, x, dim, axes, t, L, rows) -> list:
    """The `rows` rows before this device's shard: from the neighbours 1, 2, ... to the left."""
    parts, hops = [], -(-rows // L)
    for j in range(hops, 0, -1):
        k = rows - (hops - 1) * L if j == hops else L
        edge = lax.slice_in_dim(x, L - k, L, axis=dim)
        parts.append(ctx.collective_permute(edge, axes, [(s, s + j) for s in range(t - j)],
                                            f"halo of {k} rows from the neighbour {j} to the left"))
    return parts


def _from_right(ctx, x, dim, axes, t, L, rows) -> list:
    parts, hops = [], -(-rows // L)
    for j in range(1, hops + 1):
        k = rows - (hops - 1) * L if j == hops else L
        edge = lax.slice_in_dim(x, 0, k, axis=dim)
        parts.append(ctx.collective_permute(edge, axes, [(s + j, s) for s in range(t - j)],
                                            f"halo of {k} rows from the neighbour {j} to the right"))
    return parts


def _rows(x, dim: int, k: int):
    shape = list(x.shape)
    shape[dim] = k
    return jnp.zeros(shape, x.dtype)


def fold_back(ctx, r, dim: int, axes, L: int, left: int, right: int):
    """`r` holds this device's contributions to positions [i*L - left, (i+1)*L + right): send the
    overhangs to the neighbours that own them and add what they send; returns the own L rows."""
    t = tiles(ctx, axes)
    own = lax.slice_in_dim(r, left, left + L, axis=dim)
    if left:
        mine = ctx.collective_permute(lax.slice_in_dim(r, 0, left, axis=dim), axes,
                                      [(j + 1, j) for j in range(t - 1)],
                                      f"{left} rows of gradient back to the left neighbour")
        own = own + _place(mine, dim, L - left, L)
    if right:
        mine = ctx.collective_permute(lax.slice_in_dim(r, left + L, left + L + right, axis=dim),
                                      axes, [(j, j + 1) for j in range(t - 1)],
                                      f"{right} rows of gradient back to the right neighbour")
        own = own + _place(mine, dim, 0, L)
    return own


def _place(rows, dim: int, start: int, L: int):
    """`rows` zero-padded to L rows along `dim`, starting at `start`."""
    pad = [(0, 0, 0)] * rows.ndim
    pad[dim] = (start, L - start - rows.shape[dim], 0)
    return lax.pad(rows, jnp.zeros((), rows.dtype), pad)
