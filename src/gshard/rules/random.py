"""Random numbers per shard: `random_bits` of a threefry key computes only this device's elements.

Threefry's output element is a pure function of (key, its index in the whole array), in both of
JAX's modes:
- `jax_threefry_partitionable` on (the default): element i is threefry2x32(key, (hi(i), lo(i)))
  folded to the bit width (jax/_src/random/threefry2x32.py, `_threefry_random_bits_partitionable`);
- off: the array is a stream of N 32-bit words, word j of threefry_2x32(key, iota(N)), which pairs
  count j with j + ceil(N/2) (`_threefry_random_bits_original`); 8/16/64-bit elements pack words.
So each device builds the global indices of its own shard from iotas offset by its shard index and
draws exactly the numbers the unpartitioned program draws there: per-device work stays constant as
devices grow. Keys themselves (seed, wrap, split, fold_in: a few words) are computed whole.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..compat import primitive
from ..errors import GShardError
from ..registry import rule
from ..spmd.local import Local
from .misc import part_whole, prop_none

RANDOM_BITS = primitive("random_bits")
THREEFRY = primitive("threefry2x32")
KEYS = [p for p in (primitive(n) for n in ("random_seed", "random_wrap", "random_unwrap",
                                           "random_split", "random_fold_in", "random_clone",
                                           "rng_bit_generator")) if p is not None]
rule(KEYS, prop=prop_none)(part_whole)


def _global_index(ctx, spec, shape):
    """uint32 linear index (row-major over `shape`) of every element of this device's shard."""
    local = spec.local_shape(shape, ctx.sizes)
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    idx = jnp.zeros(local, jnp.uint32)
    for d, (n, s) in enumerate(zip(local, strides)):
        pos = lax.broadcasted_iota(jnp.uint32, local, d)
        if spec.dims[d]:
            pos = pos + (ctx.shard_index(spec.dims[d]) * n).astype(jnp.uint32)
        idx = idx + pos * jnp.uint32(s)
    return idx


def _hash(k, hi, lo):
    return THREEFRY.bind(k[0], k[1], hi, lo)


def _partitionable(k, idx, bit_width):
    b1, b2 = _hash(k, jnp.zeros_like(idx), idx)
    if bit_width == 64:
        return (b1.astype(jnp.uint64) << jnp.uint64(32)) | b2.astype(jnp.uint64)
    bits = b1 ^ b2
    return bits if bit_width == 32 else bits.astype(jnp.dtype(f"uint{bit_width}"))


def _word(k, j, n_words: int):
    """Word j of threefry_2x32(k, iota(n_words)): counts split in halves (zero-padded to even)."""
    h = (n_words + 1) // 2
    first = j < h
    partner = jnp.where(j + h < n_words, j + h, jnp.uint32(0))
    lo_pair = jnp.where(first, j, j - jnp.uint32(h))
    hi_pair = jnp.where(first, partner, j)
    w0, w1 = _hash(k, lo_pair, hi_pair)
    return jnp.where(first, w0, w1)


def _original(k, idx, bit_width, size):
    if bit_width == 64:
        hi, lo = _hash(k, idx, idx + jnp.uint32(size))  # words i and size + i of 2*size
        return (hi.astype(jnp.uint64) << jnp.uint64(32)) | lo.astype(jnp.uint64)
    per = 32 // bit_width
    n_words = -(-size * bit_width // 32)
    word = _word(k, idx // jnp.uint32(per), n_words)
    if per == 1:
        return word
    shift = (idx % jnp.uint32(per)) * jnp.uint32(bit_width)
    return ((word >> shift) & jnp.uint32(2 ** bit_width - 1)).astype(jnp.dtype(f"uint{bit_width}"))


def _threefry_key(x: Local) -> bool:
    return x.rank == 0 and "fry" in str(x.dtype)


@rule(RANDOM_BITS, prop=prop_none)
def part_random_bits(ctx, eqn, ins, targets):
    (key,), t = ins, targets[0]
    shape, bit_width = tuple(eqn.params["shape"]), eqn.params["bit_width"]
    size = math.prod(shape)
    if not _threefry_key(key) or (size * max(bit_width, 32) // 32) >= 2 ** 32 - 1:
        return part_whole(ctx, eqn, ins, targets)  # other PRNGs, batched keys, > 2**32 words
    if bit_width == 64 and not jax.config.jax_enable_x64:
        raise GShardError(f"64-bit random bits at {eqn.where} need jax_enable_x64")
    k = jax.random.key_data(ctx.reshard(key, key.spec.drop_partial(), "PRNG key").val)
    idx = _global_index(ctx, t, shape)
    if jax.config.jax_threefry_partitionable:
        bits = _partitionable(k, idx, bit_width)
    else:
        bits = _original(k, idx, bit_width, size)
    return [Local(bits.astype(np.dtype(eqn.outputs[0].aval.dtype)), t, shape)]
