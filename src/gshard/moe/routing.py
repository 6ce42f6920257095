"""Routing of today's MoE (DESIGN §7b): DeepSeek-V3's gate, the aux-loss-free bias update, and
sort-based slot ranks (stable sort by (expert, position)) shared by the capacity and dropless
paths.

route(logits [T, E], k=...) -> weights [T, k] float32, indices [T, k] int32:
  scores = softmax(logits) or sigmoid(logits) (float32); choice = scores + bias (the bias only
  chooses); with expert_groups > 1 the E experts fall in equal groups, each group scored by the
  sum of its top-2 choice scores (top-1 for groups of one expert), the best `top_groups` kept and
  the rest masked; indices = top-k of the choice scores; weights = the unbiased scores of the
  chosen experts, normalised over the k when `normalize`, times `scale`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SCORES = ("softmax", "sigmoid")
PICK_MAX_E = 128  # pick() up to this E, take_along_axis above (as gating._gates)


def _scores(logits, score):
    x = logits.astype(jnp.float32)                                        # [T, E]
    if score == "softmax":
        return jax.nn.softmax(x, axis=-1)
    if score == "sigmoid":
        return jax.nn.sigmoid(x)
    raise ValueError(f"route: score must be one of {SCORES}, got {score!r}")


def _check_route(logits, k, bias, expert_groups, top_groups):
    if getattr(logits, "ndim", 0) < 1:
        raise ValueError(f"route: logits must be [T, E], got shape {getattr(logits, 'shape', None)}")
    E = logits.shape[-1]
    if not isinstance(expert_groups, int) or expert_groups < 1 or E % expert_groups:
        raise ValueError(f"route: expert_groups={expert_groups!r} must be a positive int "
                         f"dividing the E={E} experts")
    if not isinstance(top_groups, int) or not 1 <= top_groups <= expert_groups:
        raise ValueError(f"route: top_groups={top_groups!r} must be in [1, expert_groups="
                         f"{expert_groups}]")
    allowed = top_groups * (E // expert_groups)
    if not isinstance(k, int) or not 1 <= k <= allowed:
        raise ValueError(f"route: k={k!r} must be in [1, {allowed}] (E={E}, top_groups="
                         f"{top_groups} of expert_groups={expert_groups})")
    if bias is not None and tuple(bias.shape) != (E,):
        raise ValueError(f"route: bias must have shape (E,)=({E},), got {tuple(bias.shape)}")


def top_k_indices(x, k):
    """Indices [..., k] int32 of the k largest of x [..., E], best first, ties to the lower index
    (as jax.lax.top_k): k passes of argmax with the earlier picks masked. On XLA:CPU this is
    3-5x faster than lax.top_k for the k <= 8 of routing (a sort of every row)."""
    picks, masked = [], x
    for _ in range(k):
        i = jnp.argmax(masked, axis=-1)                                   # [...]
        picks.append(i)
        masked = jnp.where(jax.nn.one_hot(i, x.shape[-1], dtype=bool), -jnp.inf, masked)
    return jnp.stack(picks, axis=-1).astype(jnp.int32)                    # [..., k]


def pick(x, indices):
    """x [..., E] at indices [..., k] -> [..., k]: a one-hot select and sum over E (exact: one
    term is nonzero). Unlike take_along_axis its gradient is no scatter (slow on XLA:CPU)."""
    hot = indices[..., :, None] == jnp.arange(x.shape[-1], dtype=indices.dtype)  # [..., k, E]
    return jnp.sum(jnp.where(hot, x[..., None, :], 0.0), axis=-1)         # [..., k]


def _group_mask(choice, expert_groups, top_groups):
    """choice [..., E] with the experts outside each token's best `top_groups` groups at -inf."""
    E = choice.shape[-1]
    per = E // expert_groups
    grouped = choice.reshape(choice.shape[:-1] + (expert_groups, per))   # [T, NG, E/NG]
    best = jnp.take_along_axis(grouped, top_k_indices(grouped, min(2, per)), -1)  # [T, NG, 2]
    group_score = jnp.sum(best, axis=-1)                                  # [T, NG]
    keep = top_k_indices(group_score, top_groups)                         # [T, top_groups]
    kept = jnp.sum(jax.nn.one_hot(keep, expert_groups, dtype=jnp.int32), axis=-2) > 0  # [T, NG]
    masked = jnp.where(kept[..., None], grouped, -jnp.inf)                # [T, NG, E/NG]
    return masked.reshape(choice.shape)                                   # [T, E]


def route(logits, *, k, score="softmax", bias=None, expert_groups=1, top_groups=1,
          normalize=True, scale=1.0):
    """DeepSeek-V3's gate (module docstring). logits [..., E] -> (weights [..., k] float32,
    indices [..., k] int32). The bias gets no gradient (it is a balance statistic, not a
    parameter); the weights are differentiable in the logits."""
    _check_route(logits, k, bias, expert_groups, top_groups)
    scores = _scores(logits, score)                                       # [T, E]
    choice = scores
    if bias is not None:
        choice = choice + jax.lax.stop_gradient(bias.astype(jnp.float32))  # [T, E]
    if expert_groups > 1:
        choice = _group_mask(choice, expert_groups, top_groups)
    indices = top_k_indices(jax.lax.stop_gradient(choice), k)            # [T, k]
    weights = (pick(scores, indices) if scores.shape[-1] <= PICK_MAX_E else
               jnp.take_along_axis(scores, indices, axis=-1))             # [T, k]
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights * jnp.float32(scale), indices.astype(jnp.int32)


def update_bias(bias, tokens_per_expert, rate):
    """The aux-loss-free balance update (DeepSeek-V3): b_e += rate · sign(mean load − load_e).
    An overloaded expert's bias goes down, an underloaded one's up; float32."""
    load = jnp.asarray(tokens_per_expert, jnp.float32)                    # [E]
    if tuple(load.shape) != tuple(jnp.shape(bias)):
        raise ValueError(f"update_bias: tokens_per_expert shape {tuple(load.shape)} != bias "
                         f"shape {tuple(jnp.shape(bias))}")
    step = jnp.sign(jnp.mean(load) - load)                                # [E]
    return jnp.asarray(bias, jnp.float32) + jnp.float32(rate) * step


# ----- sort-based slots ------------------------------------------------------------------------
def sort_ranks(expert, num_experts, *, scatter=None):
    """expert [G, R] int (entries in priority order; num_experts = not routed) -> rank [G, R]
    int32: entry r's position among the group's entries routed to the same expert. Rank < C is
    exactly Algorithm 1's slot when the entries are all first choices, then all second, ...

    One stable sort of (expert, position), a running max for each expert's first sorted position,
    and the ranks put back in position order: no [G, R, E] masks, G a batch dim throughout (it
    stays local when G is split). Back to position order by a scatter through the sort's
    permutation (unique indices; cheaper than a second sort on XLA:CPU) when `scatter` (default:
    outside gshard.partition), else by a sort (which the partitioner keeps local on a split G)."""
    from ..manual import current_partition_mesh
    G, R = expert.shape
    pos = jax.lax.broadcasted_iota(jnp.int32, (G, R), 1)                  # [G, R]
    sorted_e, order = jax.lax.sort((expert.astype(jnp.int32), pos), dimension=1, num_keys=1,
                                   is_stable=True)                        # [G, R] each
    first = jnp.concatenate([jnp.ones((G, 1), bool),
                             sorted_e[:, 1:] != sorted_e[:, :-1]], axis=1)  # [G, R]
    start = jax.lax.cummax(jnp.where(first, pos, 0), axis=1)              # [G, R]
    if scatter is None:
        scatter = current_partition_mesh() is None
    if scatter:
        back = lambda o, r: jnp.zeros((R,), jnp.int32).at[o].set(r, unique_indices=True)  # noqa: E731
        return jax.vmap(back)(order, pos - start)                         # [G, R]
    _, rank = jax.lax.sort((order, pos - start), dimension=1, num_keys=1)  # [G, R]
    return rank
