"""Dropless MoE (DESIGN §7b): every token reaches all k of its experts, nothing dropped.

One device: the T·k (token, choice) routes go through grouped.routed_ffn, which picks at run
time the smallest capacity layout holding the busiest expert (or, past the last, the
block-grouped layout for any load); results are scattered back to their tokens, weighted by the
routing weights.

Expert-parallel (groups and experts split over the same mesh axes, D devices, E/D experts
each): a gshard.manual region. Each device sorts its T_d·k local routes by destination device
into a [D, cap, M] send buffer with cap = T_d·min(k, E/D) (a token sends at most min(k, E/D)
routes to one device's experts, so nothing can overflow), one AllToAll there and one back, the
received routes through routed_ffn on the local experts (balanced load expected: T_d·k/(E/D)
routes per expert). Other layouts of the mesh axes keep the gather path at C = S (no group can
overflow an expert): exact, E/k times the routes' rows (XLA:CPU has no ragged_all_to_all).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .grouped import default_block, routed_ffn  # noqa: F401  (default_block re-exported)
from .routing import sort_ranks


def grouped_ffn(x, weights, indices, wi, wo, *, activation=jax.nn.relu, nonpad=None,
                block=None):
    """x [T, M], weights / indices [T, k] -> [T, M] = Σ_j weights[t, j] · FFN_{indices[t, j]}(x[t])
    (FFN_e = activation(· @ wi[e]) @ wo[e]); pairs of pad tokens (nonpad 0) are not computed."""
    T, M = x.shape
    k = indices.shape[1]
    E = wi.shape[0]
    expert = indices.reshape(T * k)                                       # [N] token-major
    if nonpad is not None:
        expert = jnp.where(jnp.repeat(nonpad > 0, k), expert, E)
    token = jnp.repeat(jnp.arange(T, dtype=jnp.int32), k)                 # [N]
    y = routed_ffn(x, token, expert, wi, wo, block=block, activation=activation)  # [N, M]
    y = y * weights.reshape(T * k, 1).astype(y.dtype)                     # [N, M]
    return jnp.zeros((T, M), y.dtype).at[token].add(y)                    # [T, M]


def expert_slots(experts, kept, num_experts):
    """Slots [G, S] per choice for the C = S tables: the rank among the group's routes to the
    same expert, choices in priority order (all first choices, then second, ...); always < S."""
    S = experts[0].shape[1]
    flat = jnp.concatenate([jnp.where(w > 0, e, num_experts) for e, w in zip(experts, kept)],
                           axis=1)                                        # [G, k·S]
    ranks = sort_ranks(flat, num_experts)                                 # [G, k·S]
    return [jnp.where(w > 0, ranks[:, j * S:(j + 1) * S], 0) for j, w in enumerate(kept)]


# ----- expert-parallel: one manual region --------------------------------------------------------
def _send_tables(expert, num_devices, local_experts, cap):
    """expert [N] (E = none) -> (dest [N] device (D = none), flat [N] send slot d·cap + rank
    (D·cap = none), slot_route [D·cap] route of each slot (N = empty))."""
    N, D = expert.shape[0], num_devices
    dest = jnp.minimum(expert // local_experts, D)                        # [N]
    rank = sort_ranks(dest[None], D)[0]                                   # [N] < cap
    flat = jnp.where(dest < D, dest * cap + rank, D * cap)                # [N]
    slot_route = jnp.full((D * cap,), N, jnp.int32).at[flat].set(
        jnp.arange(N, dtype=jnp.int32), mode="drop")                      # [D·cap]
    return flat, slot_route


def local_dropless(x, weights, indices, nonpad, wi, wo, *, axis, num_devices, activation,
                   block=None):
    """Per device: x [G_d, S, M], weights / indices [G_d, S, k], nonpad [G_d, S], wi [E_d, M, H],
    wo [E_d, H, M] (the local experts) -> [G_d, S, M]; routes cross devices by two AllToAlls."""
    Gd, S, M = x.shape
    k, Ed, D = indices.shape[-1], wi.shape[0], num_devices
    E, T = Ed * D, Gd * S
    N, cap = T * k, T * min(k, Ed)
    expert = jnp.where(jnp.repeat(nonpad.reshape(T) > 0, k), indices.reshape(N), E)  # [N]
    flat, slot_route = _send_tables(expert, D, Ed, cap)                   # [N], [D·cap]
    token = jnp.repeat(jnp.arange(T, dtype=jnp.int32), k)                 # [N]
    xt = x.reshape(T, M)                                                  # [T, M]
    route_token = jnp.concatenate([token, jnp.full((1,), T, jnp.int32)])  # [N + 1]
    send = jnp.take(xt, route_token[slot_route], axis=0, mode="fill", fill_value=0)  # [D·cap, M]
    local_e = jnp.concatenate([expert % Ed, jnp.full((1,), Ed, jnp.int32)])[slot_route]
    local_e = jnp.where(slot_route < N, local_e, Ed)                      # [D·cap] (E_d = none)
    recv = jax.lax.all_to_all(send.reshape(D, cap, M), axis, 0, 0, tiled=True)  # [D, cap, M]
    recv_e = jax.lax.all_to_all(local_e.reshape(D, cap), axis, 0, 0, tiled=True)  # [D, cap]
    recv = recv.reshape(D * cap, M)                                       # [D·cap, M]
    y = routed_ffn(recv, jnp.arange(D * cap, dtype=jnp.int32), recv_e.reshape(D * cap), wi, wo,
                   expected=N / Ed, block=block, activation=activation)   # [D·cap, M]
    back = jax.lax.all_to_all(y.reshape(D, cap, M), axis, 0, 0, tiled=True)  # [D, cap, M]
    y_route = jnp.take(back.reshape(D * cap, M), flat, axis=0, mode="fill", fill_value=0)  # [N, M]
    y_route = y_route * weights.reshape(N, 1).astype(y_route.dtype)       # [N, M]
    return jnp.zeros((T, M), y_route.dtype).at[token].add(y_route).reshape(Gd, S, M)
