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
from ..spmd.shard import Local
from .misc import part_whole, prop_none

RANDOM_BITS = primitive("random_bits")
THREEFRY = primitive("threefry2x32")
KEYS = [p for p in (primitive(n) for n in ("random_seed", "random_wrap", "random_unwrap",
                                           "random_split", "random_fold_in", "random_clone",
                                           "rng_bit_generator")) if p is not None]
rule(KEYS, prop=prop_none)(part_whole)


def _global_index(ctx, spec, shape):
    """(hi, lo) uint32 words of the 64-bit row-major index of every element of this device's
    shard of an array of `shape`."""
    local = spec.local_shape(shape, ctx.sizes)
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    hi = lo = jnp.zeros(local, jnp.uint32)
    for d, (n, s) in enumerate(zip(local, strides)):
        pos = lax.broadcasted_iota(jnp.uint32, local, d)
        if spec.dims[d]:
            pos = pos + (ctx.shard_index(spec.dims[d]) * n).astype(jnp.uint32)
        hi, lo = _add64(hi, lo, *_mul64(pos, s))
    return hi, lo


def _mul64(a, b: int):
    """(hi, lo) of the 64-bit product of uint32 `a` and the constant `b` (mod 2**64), by
    16-bit limbs so that no uint32 product overflows."""
    b_hi, b_lo = (b >> 32) & 0xFFFFFFFF, b & 0xFFFFFFFF
    a1, a0 = a >> 16, a & 0xFFFF
    c1, c0 = jnp.uint32(b_lo >> 16), jnp.uint32(b_lo & 0xFFFF)
    p00 = a0 * c0
    t = a0 * c1 + (p00 >> 16)
    t2 = a1 * c0 + (t & 0xFFFF)
    lo = ((t2 & 0xFFFF) << 16) | (p00 & 0xFFFF)
    hi = a1 * c1 + (t >> 16) + (t2 >> 16) + a * jnp.uint32(b_hi)
    return hi, lo


def _add64(h1, l1, h2, l2):
    lo = l1 + l2
    return h1 + h2 + (lo < l1).astype(jnp.uint32), lo


def _hash(k, hi, lo):
    return THREEFRY.bind(k[0], k[1], hi, lo)


def _partitionable(k, hi, lo, bit_width):
    b1, b2 = _hash(k, hi, lo)
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
    if not _threefry_key(key):
        return part_whole(ctx, eqn, ins, targets)  # other PRNGs, batched keys: whole (exact)
    partitionable = jax.config.jax_threefry_partitionable
    if not partitionable and size * max(bit_width, 32) // 32 >= 2 ** 32 - 1:
        raise GShardError(
            f"random bits of {size:,} elements at {eqn.where}: with jax_threefry_partitionable "
            f"off, JAX draws them in blocks gshard does not reproduce shard by shard"
            f"\n  fix: jax.config.update('jax_threefry_partitionable', True) (JAX's default)")
    k = jax.random.key_data(ctx.reshard(key, key.spec.drop_partial(), "PRNG key").val)
    hi, lo = _global_index(ctx, t, shape)
    bits = _partitionable(k, hi, lo, bit_width) if partitionable else \
        _original(k, lo, bit_width, size)
    return [Local(bits.astype(np.dtype(eqn.outputs[0].aval.dtype)), t, shape)]
