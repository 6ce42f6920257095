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

from .grouped import default_block, inverse, perm_take, routed_ffn  # noqa: F401
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
    rows = jnp.repeat(x, k, axis=0)                                       # [N, M] one per route
    y = routed_ffn(rows, expert, wi, wo, block=block, activation=activation)  # [N, M]
    y = y * weights.reshape(T * k, 1).astype(y.dtype)                     # [N, M]
    return jnp.sum(y.reshape(T, k, M), axis=1)                            # [T, M]


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
    """expert [N] (E = none) -> (flat [N]: send slot d·cap + rank of each route (D·cap = none),
    slot_route [D·cap]: its inverse (N = empty slot))."""
    D = num_devices
    dest = jnp.minimum(expert // local_experts, D)                        # [N] (D = none)
    rank = sort_ranks(dest[None], D, scatter=True)[0]                     # [N] < cap
    flat = jnp.where(dest < D, dest * cap + rank, D * cap)                # [N]
    return flat, inverse(flat, D * cap)


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
    rows = jnp.repeat(x.reshape(T, M), k, axis=0)                         # [N, M] one per route
    send = perm_take(rows, slot_route, flat)                              # [D·cap, M]
    local_e = jnp.take(expert % Ed, slot_route, mode="fill", fill_value=Ed)  # [D·cap] (Ed = none)
    recv = jax.lax.all_to_all(send.reshape(D, cap, M), axis, 0, 0, tiled=True)  # [D, cap, M]
    recv_e = jax.lax.all_to_all(local_e.reshape(D, cap), axis, 0, 0, tiled=True)  # [D, cap]
    y = routed_ffn(recv.reshape(D * cap, M), recv_e.reshape(D * cap), wi, wo, expected=N / Ed,
                   block=block, activation=activation)                    # [D·cap, M]
    back = jax.lax.all_to_all(y.reshape(D, cap, M), axis, 0, 0, tiled=True)  # [D, cap, M]
    y_route = perm_take(back.reshape(D * cap, M), flat, slot_route)       # [N, M]
    y_route = y_route * weights.reshape(N, 1).astype(y_route.dtype)       # [N, M]
    return jnp.sum(y_route.reshape(T, k, M), axis=1).reshape(Gd, S, M)    # [G_d, S, M]
