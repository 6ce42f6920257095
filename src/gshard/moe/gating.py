"""MoE gating: GShard top-2 (paper Algorithm 1, DESIGN §7), plus top-1 (Switch), top-k and
expert-choice routing, router z-loss and jitter noise, behind one interface.

Names follow the paper: G groups, S tokens per group, E experts, C capacity per expert per group.
Router math is float32 whatever the dtype of the logits.

Token-choice routing (top-1 / top-2 / top-k) is the vectorised Algorithm 1:
  * probs = softmax(logits) over E; choice j = argmax with choices < j masked out (or a
    Gumbel-max sample for "sampling"); gates normalised by their sum (+1e-9) before any dropping;
  * slot of a choice = exclusive cumulative count of the tokens routed to that expert before it
    in the group, offset by the kept choices of earlier priority, computed by one stable sort of
    (expert, priority, position) per group (no cumsums over [G, S, E] masks);
    a choice whose slot >= C is dropped;
  * padding tokens are never routed and are excluded from the aux-loss densities.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from .routing import PICK_MAX_E, pick, sort_ranks

KINDS = ("top2", "top1", "topk", "expert_choice")
SECOND_EXPERT_POLICIES = ("all", "random", "sampling")


# ----- the result ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GatingResult:
    """Routing of one MoE layer call. A JAX pytree (every field is data).

    combine_weights [G,S,E,C] float32: gate of token s if it sits in slot c of expert e, else 0.
    dispatch_mask   [G,S,E,C] bool: combine_weights > 0.
    aux_loss        []: E²-normalised load-balancing loss (1.0 at perfect balance; 0 for
                    expert choice, balanced by construction).
    z_loss          []: router z-loss, mean over non-pad tokens of logsumexp(logits)².
    metrics         dict of arrays: tokens_per_expert [E], first_dropped_frac [],
                    second_dropped_frac [], router_entropy [].
    slot_token      [G,E,C] int32 token index held by each slot, S for an empty slot
                    (only with with_slots=True, else None). Sparse form for gather dispatch.
    slot_gate       [G,E,C] float32 gate of the token in each slot, 0 for an empty slot.
    """
    combine_weights: Any
    dispatch_mask: Any
    aux_loss: Any
    z_loss: Any
    metrics: Any
    slot_token: Any = None
    slot_gate: Any = None


jax.tree_util.register_dataclass(
    GatingResult,
    data_fields=[f.name for f in dataclasses.fields(GatingResult)], meta_fields=[])


# ----- capacity ----------------------------------------------------------------------------------
def compute_capacity(group_size: int, num_experts: int, capacity_factor: float = 2.0,
                     capacity: Optional[int] = None) -> int:
    """C: the explicit `capacity`, else the reference rule int(S·cf/E), at least 4, rounded up
    to a multiple of 4."""
    if capacity is not None:
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        return int(capacity)
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
    c = max(int(group_size * capacity_factor / num_experts), 4)
    return int(math.ceil(c / 4) * 4)


# ----- shared pieces -----------------------------------------------------------------------------
def _nonpad(paddings, shape_gs):
    """[G, S] float32: 1 for a real token, 0 for padding."""
    if paddings is None:
        return jnp.ones(shape_gs, jnp.float32)
    if paddings.shape != tuple(shape_gs):
        raise ValueError(f"paddings shape {paddings.shape} != logits [G, S] {tuple(shape_gs)}")
    return 1.0 - paddings.astype(jnp.float32)


def _jitter(logits, jitter_eps, rng):
    """Multiplicative jitter noise (Switch): logits · U(1-eps, 1+eps); off without rng."""
    if not jitter_eps or rng is None:
        return logits
    noise = jax.random.uniform(rng, logits.shape, jnp.float32, 1.0 - jitter_eps, 1.0 + jitter_eps)
    return logits * noise                                     # [G, S, E]


def _token_mean(x, nonpad):
    """Mean of x [G, S] over the non-pad tokens."""
    return jnp.sum(x * nonpad) / jnp.maximum(jnp.sum(nonpad), 1.0)


def router_z_loss(logits, nonpad):
    """ST-MoE router z-loss: mean over non-pad tokens of logsumexp(logits)²."""
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)  # [G, S]
    return _token_mean(lse ** 2, nonpad)


def router_entropy(probs, nonpad):
    """Mean over non-pad tokens of the router distribution's entropy (nats)."""
    ent = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)  # [G, S]
    return _token_mean(ent, nonpad)


def load_balancing_loss(probs, mask1, nonpad):
    """E² · mean_e(density_e · mean_gate_e), averaged over groups (DESIGN §7).

    density_e: fraction of the group's non-pad tokens whose first choice is e (before capacity);
    mean_gate_e: mean router probability of e over the group's non-pad tokens."""
    num_experts = probs.shape[-1]
    ntok = jnp.maximum(jnp.sum(nonpad, axis=1, keepdims=True), 1.0)       # [G, 1]
    density = jnp.sum(mask1, axis=1) / ntok                               # [G, E]
    proxy = jnp.sum(probs * nonpad[..., None], axis=1) / ntok             # [G, E]
    return jnp.mean(jnp.mean(density * proxy, axis=-1)) * num_experts ** 2


# ----- token choice: choosing experts ----------------------------------------------------------
def _choose(probs, k, policy, rng):
    """Indices [G, S] of the k choices: argmax with earlier choices masked; for "sampling"
    choices after the first are Gumbel-max samples of the softmax without earlier choices."""
    num_experts = probs.shape[-1]
    taken = jnp.zeros(probs.shape, bool)                                  # [G, S, E]
    indices = []
    for j in range(k):
        scores = jnp.where(taken, -jnp.inf, probs)                        # [G, S, E]
        if j > 0 and policy == "sampling":
            rng, sub = jax.random.split(rng)
            logp = jnp.where(taken, -jnp.inf, jnp.log(jnp.maximum(probs, 1e-30)))
            scores = logp + jax.random.gumbel(sub, probs.shape, jnp.float32)
        idx = jnp.argmax(scores, axis=-1)                                 # [G, S]
        indices.append(idx)
        taken = taken | jax.nn.one_hot(idx, num_experts, dtype=bool)
    return indices


def _gates(probs, indices, normalize):
    """Gate [G, S] of each choice; normalised by their sum + 1e-9 when `normalize`."""
    # a one-hot select (no scatter in the VJP) up to PICK_MAX_E experts; above, the [G, S, E]
    # selects cost more than take_along_axis's scatter (CPU: faster at E=64, slower at E=256)
    take = pick if probs.shape[-1] <= PICK_MAX_E else \
        functools.partial(jnp.take_along_axis, axis=-1)
    gates = [take(probs, i[..., None])[..., 0] for i in indices]          # [G, S] each
    if normalize:
        denom = sum(gates) + 1e-9                                          # [G, S]
        gates = [g / denom for g in gates]
    return gates


def _wanted(indices, gates, nonpad, policy, threshold, rng):
    """[G, S] float flags of the choices that will ask for a slot: padding removed and, for
    policy "random", a choice after the first kept only when gate / threshold > U(0, 1)."""
    flags = []
    for j, g in enumerate(gates):
        keep = nonpad                                                     # [G, S]
        if j > 0 and policy == "random":
            rng, sub = jax.random.split(rng)
            u = jax.random.uniform(sub, g.shape, jnp.float32)             # [G, S]
            keep = keep * (u < g / max(threshold, 1e-9)).astype(jnp.float32)
        flags.append(keep)
    return flags


# ----- token choice: slots (one stable sort by (expert, priority, position)) ---------------------
def _sort_slots(indices, wanted, num_experts, capacity):
    """Slots of the choices in priority order (all first choices, then all second, ...) by one
    stable sort per group (routing.sort_ranks) instead of cumsums over [G, S, E] masks.

    indices, wanted: lists of [G, S] (int expert, 0/1 float). Returns (kept [G, S] float, slot
    [G, S] int32) per choice: slot = the number of wanted choices of higher priority or earlier
    position in the same expert; kept iff wanted and slot < capacity. For a kept choice this is
    exactly Algorithm 1's slot (a higher-priority choice that was dropped already fills the
    expert, so every later choice there is dropped too); an unwanted choice's slot is 0."""
    S = indices[0].shape[1]
    expert = jnp.concatenate([jnp.where(w > 0, i, num_experts)
                              for i, w in zip(indices, wanted)], axis=1)  # [G, k·S]
    ranks = sort_ranks(expert, num_experts)                               # [G, k·S]
    kept, slots = [], []
    for j, w in enumerate(wanted):
        rank = ranks[:, j * S:(j + 1) * S]                                # [G, S]
        kept.append(w * (rank < capacity).astype(w.dtype))
        slots.append(jnp.where(w > 0, rank, 0))
    return kept, slots


def assign_slots(masks, capacity):
    """Slots for choices in priority order (all first choices, then all second choices, ...).

    masks: list of [G, S, E] 0/1 float (one expert per choice). Returns (kept masks [G, S, E],
    slots [G, S] int32): a kept choice's slot is Algorithm 1's (its exclusive count over S plus
    the kept choices of earlier priority in that expert); kept iff slot < capacity; a dropped
    choice's slot is >= capacity. Computed by one stable sort (see _sort_slots)."""
    E = masks[0].shape[-1]
    indices = [jnp.argmax(m, axis=-1) for m in masks]                     # [G, S] each
    wanted = [jnp.sum(m, axis=-1) for m in masks]                         # [G, S] each
    kept, slots = _sort_slots(indices, wanted, E, capacity)
    return [m * k[..., None] for m, k in zip(masks, kept)], slots


def _combine(gates, indices, kept, slots, num_experts, capacity):
    """combine_weights [G, S, E, C] = Σ_choices gate · onehot(expert) ⊗ onehot(slot)."""
    combine = 0.0
    for g, idx, k, slot in zip(gates, indices, kept, slots):
        kept_gate = jax.nn.one_hot(idx, num_experts, dtype=jnp.float32) * (g * k)[..., None]
        slot_1h = jax.nn.one_hot(slot, capacity, dtype=jnp.float32)       # [G, S, C]
        combine = combine + kept_gate[..., None] * slot_1h[:, :, None, :]  # [G, S, E, C]
    return combine


def _routes_to_slots(gates, indices, kept, slots, num_experts, capacity):
    """Sparse slot form from the routes: slot_token [G, E, C] (S = empty), slot_gate [G, E, C].
    A scatter of G·S·k integers per table, vmapped over G so that G is a batching dim of the
    scatter (it stays local when G is split); dropped routes land out of bounds and are dropped."""
    G, S = indices[0].shape
    s_idx = jnp.arange(S, dtype=jnp.int32)                                 # [S]

    def one_group(token, gate, g, e_idx, k, slot):                        # [E,C] [E,C] [S]x4
        on = (k > 0) & (g > 0)                                            # [S]
        c_idx = jnp.where(on, slot, capacity)                             # [S] C = dropped
        # slots are unique, so scatter-add of (s - S) onto S writes s (scatter-add partitions)
        token = token.at[e_idx, c_idx].add(s_idx - S, mode="drop")        # [E, C]
        return token, gate.at[e_idx, c_idx].add(g, mode="drop")           # [E, C]

    token = jnp.full((G, num_experts, capacity), S, jnp.int32)            # [G, E, C]
    gate = jnp.zeros((G, num_experts, capacity), jnp.float32)             # [G, E, C]
    for g, idx, k, slot in zip(gates, indices, kept, slots):
        token, gate = jax.vmap(one_group)(token, gate, g, idx, k, slot)
    return token, gate


def _token_choice_metrics(probs, indices, wanted, kept, nonpad):
    """tokens_per_expert [E] (kept routes), dropped fractions, router entropy."""
    E = probs.shape[-1]
    first_want, first_kept = jnp.sum(wanted[0]), jnp.sum(kept[0])
    rest_want = sum(jnp.sum(m) for m in wanted[1:]) if len(wanted) > 1 else jnp.float32(0)
    rest_kept = sum(jnp.sum(m) for m in kept[1:]) if len(kept) > 1 else jnp.float32(0)
    load = sum(jnp.sum(jax.nn.one_hot(i, E, dtype=jnp.float32) * k[..., None], axis=(0, 1))
               for i, k in zip(indices, kept))                            # [E]
    return {
        "tokens_per_expert": load,
        "first_dropped_frac": (first_want - first_kept) / jnp.maximum(first_want, 1.0),
        "second_dropped_frac": (rest_want - rest_kept) / jnp.maximum(rest_want, 1.0),
        "router_entropy": router_entropy(probs, nonpad),
    }


def _split_rng(rng, needs_rng, policy):
    """(jitter, choose, keep) keys; None without rng (then the policy must not need one)."""
    if rng is None:
        if needs_rng:
            raise ValueError(f"second_expert_policy={policy!r} needs an rng (jax.random.key)")
        return None, None, None
    return tuple(jax.random.split(rng, 3))


def token_choice_gating(logits, *, k=2, normalize=True, capacity=None, capacity_factor=2.0,
                        second_expert_policy="all", second_expert_threshold=0.5, rng=None,
                        paddings=None, jitter_eps=0.0, with_slots=False) -> GatingResult:
    """Top-k token-choice routing (k=2 is GShard's Algorithm 1). See module docstring."""
    _check_logits(logits)
    if second_expert_policy not in SECOND_EXPERT_POLICIES:
        raise ValueError(f"second_expert_policy must be one of {SECOND_EXPERT_POLICIES}, "
                         f"got {second_expert_policy!r}")
    G, S, E = logits.shape
    if not 1 <= k <= E:
        raise ValueError(f"k={k} must be in [1, E={E}]")
    C = compute_capacity(S, E, capacity_factor, capacity)
    needs = second_expert_policy != "all" and k > 1
    jitter_rng, choose_rng, keep_rng = _split_rng(rng, needs, second_expert_policy)
    nonpad = _nonpad(paddings, (G, S))                                    # [G, S]
    logits = _jitter(logits.astype(jnp.float32), jitter_eps, jitter_rng)  # [G, S, E]
    probs = jax.nn.softmax(logits, axis=-1)                               # [G, S, E]
    indices = _choose(probs, k, second_expert_policy, choose_rng)
    gates = _gates(probs, indices, normalize)
    wanted = _wanted(indices, gates, nonpad, second_expert_policy, second_expert_threshold,
                     keep_rng)                                            # [G, S] each
    kept, slots = _sort_slots(indices, wanted, E, C)
    combine = _combine(gates, indices, kept, slots, E, C)                 # [G, S, E, C]
    token, gate = (_routes_to_slots(gates, indices, kept, slots, E, C) if with_slots
                   else (None, None))
    mask1 = jax.nn.one_hot(indices[0], E, dtype=jnp.float32) * wanted[0][..., None]  # [G, S, E]
    return GatingResult(
        combine_weights=combine, dispatch_mask=combine > 0,
        aux_loss=load_balancing_loss(probs, mask1, nonpad),
        z_loss=router_z_loss(logits, nonpad),
        metrics=_token_choice_metrics(probs, indices, wanted, kept, nonpad),
        slot_token=token, slot_gate=gate)


def _check_logits(logits):
    if getattr(logits, "ndim", None) != 3:
        raise ValueError(f"logits must be [G, S, E], got shape {getattr(logits, 'shape', None)}")


# ----- the public gating functions -------------------------------------------------------------
def top2_gating(logits, *, capacity=None, capacity_factor=2.0, second_expert_policy="all",
                second_expert_threshold=0.5, rng=None, paddings=None, jitter_eps=0.0,
                with_slots=False) -> GatingResult:
    """GShard top-2 gating (paper Algorithm 1, DESIGN §7). logits [G, S, E] -> GatingResult.

    second_expert_policy: "all" (keep the second choice, capacity permitting), "random" (keep it
    only when g2 / second_expert_threshold > U(0,1), i.e. 2·g2 > u at threshold 0.5, decided
    before it takes a slot), "sampling" (second expert Gumbel-max sampled from the softmax
    without the first). rng is needed for "random"/"sampling" and for jitter noise."""
    return token_choice_gating(
        logits, k=2, normalize=True, capacity=capacity, capacity_factor=capacity_factor,
        second_expert_policy=second_expert_policy,
        second_expert_threshold=second_expert_threshold, rng=rng, paddings=paddings,
        jitter_eps=jitter_eps, with_slots=with_slots)


def top1_gating(logits, *, capacity=None, capacity_factor=2.0, rng=None, paddings=None,
                jitter_eps=0.0, with_slots=False) -> GatingResult:
    """Switch Transformer top-1 gating: the gate is the raw router probability of the argmax
    expert (not normalised, or it would be 1 and the router would get no gradient)."""
    return token_choice_gating(
        logits, k=1, normalize=False, capacity=capacity, capacity_factor=capacity_factor,
        rng=rng, paddings=paddings, jitter_eps=jitter_eps, with_slots=with_slots)


def topk_gating(logits, *, k, capacity=None, capacity_factor=2.0, second_expert_policy="all",
                second_expert_threshold=0.5, rng=None, paddings=None, jitter_eps=0.0,
                with_slots=False) -> GatingResult:
    """Top-k gating: GShard's rules with k choices (gates normalised over the k; choice j placed
    after all kept choices < j; the policy applies to every choice after the first)."""
    return token_choice_gating(
        logits, k=k, normalize=True, capacity=capacity, capacity_factor=capacity_factor,
        second_expert_policy=second_expert_policy,
        second_expert_threshold=second_expert_threshold, rng=rng, paddings=paddings,
        jitter_eps=jitter_eps, with_slots=with_slots)


def expert_choice_gating(logits, *, capacity=None, capacity_factor=2.0, rng=None, paddings=None,
                         jitter_eps=0.0, with_slots=False) -> GatingResult:
    """Expert-choice routing (Zhou et al., 2022): each expert takes the C non-pad tokens of the
    group with the highest router probability; slot c holds its c-th best token; the combine
    weight is the (un-normalised) router probability. aux_loss is 0 (balanced by construction)."""
    _check_logits(logits)
    G, S, E = logits.shape
    C = compute_capacity(S, E, capacity_factor, capacity)
    nonpad = _nonpad(paddings, (G, S))                                    # [G, S]
    logits = _jitter(logits.astype(jnp.float32), jitter_eps, rng)         # [G, S, E]
    probs = jax.nn.softmax(logits, axis=-1)                               # [G, S, E]
    token, gate = _expert_picks(probs, nonpad, C)                         # [G, E, C] each
    token_1h = jax.nn.one_hot(token, S, dtype=jnp.float32)                # [G, E, C, S]
    combine = jnp.einsum("GECS,GEC->GSEC", token_1h, gate)                # [G, S, E, C]
    routed = jnp.sum(combine > 0, axis=(2, 3)) > 0                        # [G, S]
    real = jnp.sum(nonpad)
    metrics = {
        "tokens_per_expert": jnp.sum(gate > 0, axis=(0, 2)).astype(jnp.float32),  # [E]
        "first_dropped_frac": (real - jnp.sum(routed * nonpad)) / jnp.maximum(real, 1.0),
        "second_dropped_frac": jnp.float32(0.0),
        "router_entropy": router_entropy(probs, nonpad),
    }
    return GatingResult(
        combine_weights=combine, dispatch_mask=combine > 0, aux_loss=jnp.float32(0.0),
        z_loss=router_z_loss(logits, nonpad), metrics=metrics,
        slot_token=token if with_slots else None, slot_gate=gate if with_slots else None)


def _expert_picks(probs, nonpad, capacity):
    """Each expert's top-C non-pad tokens: token [G, E, C] int32 (S = empty), gate [G, E, C]."""
    G, S, E = probs.shape
    k = min(capacity, S)
    scores = jnp.where(nonpad[..., None] > 0, probs, -1.0)                # [G, S, E]
    scores = jnp.swapaxes(scores, 1, 2)                                   # [G, E, S]
    top, token = jax.lax.top_k(scores, k)                                 # [G, E, k]
    valid = top >= 0                                                      # [G, E, k]
    token = jnp.where(valid, token, S).astype(jnp.int32)
    gate = jnp.where(valid, top, 0.0)
    pad = ((0, 0), (0, 0), (0, capacity - k))
    return jnp.pad(token, pad, constant_values=S), jnp.pad(gate, pad)


def gating(logits, *, kind="top2", k=2, capacity=None, capacity_factor=2.0,
           second_expert_policy="all", second_expert_threshold=0.5, rng=None, paddings=None,
           jitter_eps=0.0, with_slots=False) -> GatingResult:
    """One entry point: kind = "top2" | "top1" | "topk" (uses k) | "expert_choice"."""
    common = dict(capacity=capacity, capacity_factor=capacity_factor, rng=rng,
                  paddings=paddings, jitter_eps=jitter_eps, with_slots=with_slots)
    policy = dict(second_expert_policy=second_expert_policy,
                  second_expert_threshold=second_expert_threshold)
    if kind == "top2":
        return top2_gating(logits, **policy, **common)
    if kind == "top1":
        return top1_gating(logits, **common)
    if kind == "topk":
        return topk_gating(logits, k=k, **policy, **common)
    if kind == "expert_choice":
        return expert_choice_gating(logits, **common)
    raise ValueError(f"gating kind must be one of {KINDS}, got {kind!r}")
