"""Gradient accumulation: `train.microbatches=k` scans over k microbatches of the global batch.

The update equals the one of the whole batch: each microbatch's token cross-entropy is weighted
by its share of the batch's tokens (a sum over tokens / all the batch's tokens, not a mean of
means), the MoE aux and z losses (means over groups) are averaged. Microbatch i holds rows
i, i + k, i + 2k, ... so that the reshape keeps the batch dim's split over the data axes (no
communication). Only one microbatch's activations are alive at a time: per-device activation
memory drops by about k.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def split_batch(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B / k, ...]: microbatch i = rows i, i + k, ..."""
    def one(x):
        b = x.shape[0]
        x = x.reshape((b // k, k) + x.shape[1:])                          # [B/k, k, ...]
        return jnp.swapaxes(x, 0, 1)                                      # [k, B/k, ...]
    return {n: one(x) for n, x in batch.items()}


def accumulate(loss_fn, params, cfg, batch, rng, k: int, **kw):
    """(metrics, grads) of the whole batch from k microbatches (loss_fn as train.step.loss_fn)."""
    tgt_pad = batch.get("tgt_pad")
    weight = jnp.ones(batch["tgt_out"].shape, jnp.float32) if tgt_pad is None else 1.0 - tgt_pad
    n_total = jnp.maximum(jnp.sum(weight), 1.0)
    aux_w, z_w = kw.get("aux_loss_weight", 0.01), kw.get("z_loss_weight", 0.0)

    def micro(p, mb, key):
        _, m = loss_fn(p, cfg, mb, key, **kw)
        share = m["num_tokens"] / n_total
        scaled = m["cross_entropy"] * share + (aux_w * m["aux_loss"] + z_w * m["z_loss"]) / k
        return scaled, (m, share)

    def one(mb, key):
        (_, (m, share)), g = jax.value_and_grad(micro, has_aux=True)(params, mb, key)
        parts = {"cross_entropy": m["cross_entropy"] * share, "accuracy": m["accuracy"] * share,
                 "num_tokens": m["num_tokens"], "aux_loss": m["aux_loss"] / k,
                 "z_loss": m["z_loss"] / k, "dropped_fraction": m["dropped_fraction"] / k,
                 "expert_load": m["expert_load"] / k, "layer_dropped": m["layer_dropped"] / k}
        return g, parts

    def body(acc, inp):
        return jax.tree_util.tree_map(jnp.add, acc, one(*inp)), None

    mbs = split_batch(batch, k)
    keys = jax.random.split(rng, k) if rng is not None else [None] * k
    head = lambda t: jax.tree_util.tree_map(lambda x: x[0], t)  # noqa: E731
    tail = lambda t: jax.tree_util.tree_map(lambda x: x[1:], t)  # noqa: E731
    acc = one(head(mbs), keys[0])                 # the first microbatch starts the sums
    xs = (tail(mbs), keys[1:] if rng is not None else None)
    (grads, m), _ = jax.lax.scan(lambda a, x: body(a, (x[0], x[1])), acc, xs, length=k - 1)
    m["loss"] = m["cross_entropy"] + aux_w * m["aux_loss"] + z_w * m["z_loss"]
    return m, grads
