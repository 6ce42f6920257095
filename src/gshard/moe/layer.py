"""The MoE layer: paper Algorithm 2 (one-hot einsum dispatch/combine, with its annotations) and
a gather/scatter dispatch computing the same outputs with O(tokens·M) data movement.

inputs [G, S, M], wg [M, E], wi [E, M, H], wo [E, H, M] -> outputs [G, S, M], aux.

Annotations (off by default, identity outside gshard.partition):
  * `num_partitions=D`: exactly the paper's `split(x, 0, D)` calls (inputs, dispatched expert
    inputs, expert outputs; wi, wo split on E; wg replicated);
  * `mesh_axes`: mesh axis name(s) (one value: groups and experts on the same axes, as in the
    paper's 1-D mesh) or a `MoEAxes(group=..., expert=..., hidden=...)` for a 2-D mesh; applied
    with gshard.mesh_split at the same places.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp

from .. import annotate as _ann
from ..manual import current_partition_mesh, manual
from .dropless import expert_slots, grouped_ffn, local_dropless
from .gating import (GatingResult, _jitter, _nonpad, _routes_to_slots, gating,
                     load_balancing_loss, router_entropy, router_z_loss)
from .routing import route

DISPATCH = ("einsum", "gather", "dropless")


# ----- annotations -----------------------------------------------------------------------------
def _axes(a) -> tuple:
    """Normalise an axes entry (None, name, tuple of names) to a tuple of names."""
    if a is None:
        return ()
    if isinstance(a, str):
        return (a,)
    return tuple(a)


def _entry(axes: tuple):
    """A mesh_split entry for a tuple of names."""
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


@dataclasses.dataclass(frozen=True)
class MoEAxes:
    """Mesh axes for the MoE layer: `group` splits G, `expert` splits E, `hidden` splits the
    expert hidden dim H of wi/wo (e.g. "model" on a 2-D mesh when experts are on "data")."""
    group: Any = None
    expert: Any = None
    hidden: Any = None

    @staticmethod
    def of(mesh_axes) -> Optional["MoEAxes"]:
        if mesh_axes is None or isinstance(mesh_axes, MoEAxes):
            return mesh_axes
        return MoEAxes(group=mesh_axes, expert=mesh_axes)

    @property
    def empty(self) -> bool:
        return not (_axes(self.group) or _axes(self.expert) or _axes(self.hidden))


class _Annotator:
    """The annotations of Algorithm 2, either split(x, 0, D) or mesh_split over MoEAxes."""

    def __init__(self, mesh_axes=None, num_partitions=None):
        self.axes = MoEAxes.of(mesh_axes)
        self.d = num_partitions
        if self.axes is not None and self.axes.empty:
            self.axes = None
        if self.axes is not None and self.d is not None:
            raise ValueError("pass either mesh_axes or num_partitions, not both")
        if self.axes is not None:
            self.g, self.e, self.h = (_axes(self.axes.group), _axes(self.axes.expert),
                                      _axes(self.axes.hidden))

    @property
    def on(self) -> bool:
        return self.axes is not None or self.d is not None

    def _annotate(self, x, split_dim, entries):
        """split(x, split_dim, D) under num_partitions; mesh_split(x, entries()) under
        mesh_axes (entries: a tuple of axis names per dim); x itself without annotations."""
        if self.d is not None:
            return _ann.split(x, split_dim, self.d)
        if self.axes is None:
            return x
        return _ann.mesh_split(x, tuple(_entry(e) for e in entries()))

    def _rest(self, axes, without):
        return tuple(a for a in axes if a not in without)

    def group_split(self, x):
        """[G, ...] split on G (inputs, outputs, expert outputs [G, E, C, M]); a 4-D value's E
        keeps the axes G does not use."""
        def entries():
            extra = [self._rest(self.e, self.g)] if x.ndim == 4 else []
            return [self.g] + extra + [()] * (x.ndim - 1 - len(extra))
        return self._annotate(x, 0, entries)

    def expert_split(self, x):
        """Dispatched expert inputs [E, G, C, M]: split on E (G keeps the axes E does not use)."""
        return self._annotate(x, 0, lambda: [self.e, self._rest(self.g, self.e), (), ()])

    def group_split_major(self, x, keep_expert_axes=True):
        """Expert-major [E, G, C, M] split on G. With keep_expert_axes, E keeps the axes G does
        not use (expert outputs after the AllToAll); without, E is whole (the gathered dispatch
        buffer, so that the E split after it is one AllToAll over the axes G gives up)."""
        return self._annotate(x, 1, lambda: [
            self._rest(self.e, self.g) if keep_expert_axes else (), self.g, (), ()])

    def router(self, wg):
        """wg [M, E]: replicated."""
        return _ann.replicate(wg) if self.on else wg

    def expert_weight(self, w, hidden_dim):
        """wi [E, M, H] / wo [E, H, M]: split on E (and H on `hidden`)."""
        def entries():
            e = [self.e, (), ()]
            e[hidden_dim] = self.h
            return e
        return self._annotate(w, 0, entries)


# ----- expert computation ----------------------------------------------------------------------
def router_logits(inputs, wg):
    """logits [G, S, E] in float32 (router math in float32 under bf16 activations)."""
    return jnp.einsum("GSM,ME->GSE", inputs.astype(jnp.float32),
                      wg.astype(jnp.float32))                            # [G, S, E]


def expert_ffn(x, wi, wo, activation=jax.nn.relu):
    """x [E, G, C, M] -> y [G, E, C, M]: each expert's FFN on its slots (Algorithm 2)."""
    h = activation(jnp.einsum("EGCM,EMH->EGCH", x, wi.astype(x.dtype)))   # [E, G, C, H]
    return jnp.einsum("EGCH,EHM->GECM", h, wo.astype(x.dtype))            # [G, E, C, M]


def expert_ffn_major(x, wi, wo, activation=jax.nn.relu):
    """x [E, G, C, M] -> y [E, G, C, M]: the same FFN, expert-major in and out. Each expert's
    slots of all groups form one [G·C, M] row block, so the three matmuls of each direction are
    plain batched GEMMs over E with no transposes of the activations around them."""
    E, G, C, M = x.shape
    t = x.reshape(E, G * C, M)                                            # [E, T=G·C, M]
    h = activation(jnp.einsum("ETM,EMH->ETH", t, wi.astype(x.dtype)))     # [E, T, H]
    y = jnp.einsum("ETH,EHM->ETM", h, wo.astype(x.dtype))                 # [E, T, M]
    return y.reshape(E, G, C, M)                                          # [E, G, C, M]


def einsum_dispatch(inputs, dispatch_mask):
    """Algorithm 2's one-hot dispatch: [G, S, M] -> [E, G, C, M]."""
    return jnp.einsum("GSEC,GSM->EGCM", dispatch_mask.astype(inputs.dtype), inputs)


def einsum_combine(expert_out, combine_weights):
    """Algorithm 2's combine: [G, E, C, M] -> [G, S, M]."""
    return jnp.einsum("GSEC,GECM->GSM", combine_weights.astype(expert_out.dtype), expert_out)


def gather_dispatch(inputs, slot_token):
    """Index dispatch: slot (g, e, c) gets token slot_token[g, e, c] (S = empty -> zeros).
    [G, S, M], [G, E, C] -> [E, G, C, M] written expert-major by one gather (G a batching dim),
    so no transpose of the gathered values; moves G·E·C·M values."""
    idx = jnp.transpose(slot_token, (1, 0, 2))[..., None]                  # [E, G, C, 1] int
    dnums = jax.lax.GatherDimensionNumbers(
        offset_dims=(3,), collapsed_slice_dims=(1,), start_index_map=(1,),
        operand_batching_dims=(0,), start_indices_batching_dims=(1,))
    return jax.lax.gather(inputs, idx, dnums, slice_sizes=(1, 1, inputs.shape[-1]),
                          mode="fill", fill_value=0)                       # [E, G, C, M]


def scatter_combine(expert_out, slot_token, slot_gate, group_size):
    """Index combine: out[g, slot_token[g,e,c]] += slot_gate[g,e,c] · expert_out[g,e,c].
    [G, E, C, M] -> [G, S, M]; empty slots (index S) are dropped."""
    return scatter_combine_major(jnp.transpose(expert_out, (1, 0, 2, 3)), slot_token,
                                 slot_gate, group_size)                   # [G, S, M]


def scatter_combine_major(expert_out, slot_token, slot_gate, group_size):
    """scatter_combine from expert-major outputs [E, G, C, M] -> [G, S, M]: one scatter-add with
    G as a batching dim; empty slots (index S) are dropped."""
    G, M = expert_out.shape[1], expert_out.shape[3]
    gate = jnp.transpose(slot_gate, (1, 0, 2))[..., None]                  # [E, G, C, 1]
    vals = expert_out * gate.astype(expert_out.dtype)                     # [E, G, C, M]
    idx = jnp.transpose(slot_token, (1, 0, 2))[..., None]                  # [E, G, C, 1] int
    dnums = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(3,), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,),
        operand_batching_dims=(0,), scatter_indices_batching_dims=(1,))
    out = jnp.zeros((G, group_size, M), expert_out.dtype)                 # [G, S, M]
    return jax.lax.scatter_add(out, idx, vals, dnums, mode="drop")        # [G, S, M]


# ----- the layer ---------------------------------------------------------------------------------
def _check_args(dispatch, route_kwargs, inputs, wg, wi, wo, shared_wi, shared_wo) -> None:
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch must be one of {DISPATCH}, got {dispatch!r}")
    if route_kwargs and dispatch != "dropless":
        raise ValueError(f"{sorted(route_kwargs)} are route() arguments, used only with "
                         f"dispatch='dropless' (got dispatch={dispatch!r})")
    _check_shapes(inputs, wg, wi, wo)
    _check_shared(inputs, shared_wi, shared_wo)


def _warn_unsplit(E: int) -> None:
    """Under gshard.partition on several devices, a layer with no mesh_axes/num_partitions keeps
    all E experts on every device: said once per trace, never silently."""
    mesh = current_partition_mesh()
    if mesh is None or mesh.size <= 1:
        return
    warnings.warn(
        f"moe_layer: no mesh_axes / num_partitions under gshard.partition on "
        f"{mesh.describe()}, so its {E} experts are not split (every device holds and runs all "
        f"of them). Pass mesh_axes=<axis name(s)> (or MoEAxes(group=, expert=)) to split them, "
        f"or mesh_axes=() to keep them whole on purpose.", stacklevel=3)


def moe_layer(inputs, wg, wi, wo, *, dispatch="einsum", kind="top2", k=2, capacity=None,
              capacity_factor=2.0, second_expert_policy="all", second_expert_threshold=0.5,
              rng=None, paddings=None, jitter_eps=0.0, activation=jax.nn.relu,
              mesh_axes=None, num_partitions=None, shared_wi=None, shared_wo=None, block=None,
              **route_kwargs):
    """GShard MoE layer. Returns (outputs [G, S, M] in inputs.dtype, aux): aux_loss, z_loss
    (scalars) and the gating metrics (tokens_per_expert [E], ...). dispatch="einsum": Algorithm 2 with its annotations; "gather": the same result by index
    dispatch into [E, G, C, M] buffers and scatter-add combine (O(tokens·M) data movement);
    "dropless": route(x @ wg, k=k, **route_kwargs) (score, bias, expert_groups, top_groups,
    normalize, scale), every token to all k experts, nothing dropped (moe/dropless.py; `block`
    is its row block B). shared_wi [M, F] / shared_wo [F, M]: a dense FFN every token also takes
    (DeepSeekMoE's shared experts), added to the routed output."""
    _check_args(dispatch, route_kwargs, inputs, wg, wi, wo, shared_wi, shared_wo)
    if mesh_axes is None and num_partitions is None:
        _warn_unsplit(wi.shape[0])
    ann = _Annotator(mesh_axes, num_partitions)
    inputs = ann.group_split(inputs)                                      # [G, S, M]
    wg = ann.router(wg)                                                   # [M, E]
    wi, wo = ann.expert_weight(wi, 2), ann.expert_weight(wo, 1)           # [E, M, H], [E, H, M]
    logits = router_logits(inputs, wg)                                    # [G, S, E]
    if dispatch == "dropless":
        out, aux = _dropless_path(inputs, logits, wi, wo, ann, activation, k, rng, paddings,
                                  jitter_eps, block, route_kwargs)
    else:
        routing = gating(logits, kind=kind, k=k, capacity=capacity,
                         capacity_factor=capacity_factor,
                         second_expert_policy=second_expert_policy,
                         second_expert_threshold=second_expert_threshold, rng=rng,
                         paddings=paddings, jitter_eps=jitter_eps,
                         with_slots=dispatch == "gather")
        if dispatch == "einsum":
            out = _einsum_path(inputs, wi, wo, routing, ann, activation)
        else:
            out = _gather_path(inputs, wi, wo, routing.slot_token, routing.slot_gate, ann,
                               activation)
        aux = {"aux_loss": routing.aux_loss, "z_loss": routing.z_loss, **routing.metrics}
    if shared_wi is not None:
        out = out + _shared_ffn(inputs, shared_wi, shared_wo, ann, activation)
    return ann.group_split(out.astype(inputs.dtype)), aux


def _einsum_path(inputs, wi, wo, routing: GatingResult, ann, activation):
    x = einsum_dispatch(inputs, routing.dispatch_mask)                     # [E, G, C, M]
    x = ann.expert_split(x)                                               # split E: AllToAll
    y = expert_ffn(x, wi, wo, activation)                                 # [G, E, C, M]
    y = ann.group_split(y)                                                # split G: AllToAll
    return einsum_combine(y, routing.combine_weights)                     # [G, S, M]


def _gather_path(inputs, wi, wo, slot_token, slot_gate, ann, activation):
    x = gather_dispatch(inputs, slot_token)                                # [E, G, C, M]
    x = ann.group_split_major(x, keep_expert_axes=False)                  # gathered locally
    x = ann.expert_split(x)                                               # split E: AllToAll
    y = expert_ffn_major(x, wi, wo, activation)                           # [E, G, C, M]
    y = ann.group_split_major(y)                                          # split G: AllToAll
    return scatter_combine_major(y, slot_token, slot_gate, inputs.shape[1])


def _dropless_path(inputs, logits, wi, wo, ann, activation, k, rng, paddings, jitter_eps,
                   block, route_kwargs):
    """Route with route(); one device: grouped_ffn (layout sized at run time); groups and
    experts on the same mesh axes: one manual region with two AllToAlls (moe/dropless.py);
    other splits: the gather path's padded AllToAll at C = S (no group can overflow an expert).
    Returns (out, aux)."""
    G, S, E = logits.shape
    nonpad = _nonpad(paddings, (G, S))                                    # [G, S]
    logits = _jitter(logits, jitter_eps, rng)                             # [G, S, E]
    weights, indices = route(logits, k=k, **route_kwargs)                 # [G, S, k] each
    ep = _expert_parallel(ann, G, wi.shape[0])
    if ep is not None:
        out = _manual_dropless(inputs, weights, indices, nonpad, wi, wo, ep, activation, block)
    elif ann.on and current_partition_mesh() is not None:
        gates = [weights[..., j] * nonpad for j in range(k)]              # [G, S] each
        experts = [indices[..., j] for j in range(k)]
        kept = [nonpad] * k
        slots = expert_slots(experts, kept, E)
        token, gate = _routes_to_slots(gates, experts, kept, slots, E, S)  # [G, E, S] each
        out = _gather_path(inputs, wi, wo, token, gate, ann, activation)
    else:
        T, M = G * S, inputs.shape[-1]
        out = grouped_ffn(inputs.reshape(T, M), weights.reshape(T, k), indices.reshape(T, k),
                          wi, wo, activation=activation, nonpad=nonpad.reshape(T),
                          block=block).reshape(G, S, M)                   # [G, S, M]
    return out, _dropless_aux(logits, indices, nonpad, route_kwargs.get("score", "softmax"))


def _expert_parallel(ann, G, E):
    """(axes, D) when groups and experts are split over the same mesh axes (D devices dividing
    G and E) inside gshard.partition: the manual-region dropless layer; else None."""
    mesh = current_partition_mesh()
    if mesh is None or ann.axes is None or ann.g != ann.e or ann.h or not ann.g:
        return None
    D = 1
    for a in ann.g:
        D *= mesh.sizes.get(a, 0)
    return (ann.g, D) if D > 1 and G % D == 0 and E % D == 0 else None


def _manual_dropless(inputs, weights, indices, nonpad, wi, wo, ep, activation, block):
    """Expert-parallel dropless (moe/dropless.py): one gshard.manual region, two AllToAlls."""
    axes, D = ep
    name = axes[0] if len(axes) == 1 else axes
    split = lambda nd: (name,) + (None,) * (nd - 1)  # noqa: E731

    def body(x, w, i, p, wi, wo):
        return local_dropless(x, w, i, p, wi, wo, axis=name, num_devices=D,
                              activation=activation, block=block)
    region = manual(body, in_specs=(split(3), split(3), split(3), split(2), split(3), split(3)),
                    out_specs=split(3))
    return region(inputs, weights, indices, nonpad, wi, wo)              # [G, S, M]


def _dropless_aux(logits, indices, nonpad, score):
    """aux of the dropless layer: GShard's aux loss on the first choices with the (normalised)
    scores as the mean-gate proxy, z-loss, tokens_per_expert over all k routes, no drops."""
    E = logits.shape[-1]
    if score == "sigmoid":
        s = jax.nn.sigmoid(logits)
        probs = s / jnp.sum(s, axis=-1, keepdims=True)                    # [G, S, E]
    else:
        probs = jax.nn.softmax(logits, axis=-1)                           # [G, S, E]
    routed = jax.nn.one_hot(indices, E, dtype=jnp.float32) * nonpad[..., None, None]  # [G,S,k,E]
    return {"aux_loss": load_balancing_loss(probs, routed[:, :, 0], nonpad),
            "z_loss": router_z_loss(logits, nonpad),
            "tokens_per_expert": jnp.sum(routed, axis=(0, 1, 2)),         # [E]
            "first_dropped_frac": jnp.float32(0.0), "second_dropped_frac": jnp.float32(0.0),
            "router_entropy": router_entropy(probs, nonpad)}


def _shared_ffn(inputs, shared_wi, shared_wo, ann, activation):
    """DeepSeekMoE's shared experts: a dense FFN [G, S, M] -> [G, S, M] every token takes."""
    if ann.on:
        shared_wi, shared_wo = _ann.replicate(shared_wi), _ann.replicate(shared_wo)
    h = activation(jnp.einsum("GSM,MF->GSF", inputs, shared_wi.astype(inputs.dtype)))
    return jnp.einsum("GSF,FM->GSM", h, shared_wo.astype(inputs.dtype))   # [G, S, M]


def _check_shared(inputs, shared_wi, shared_wo):
    if (shared_wi is None) != (shared_wo is None):
        raise ValueError("pass both shared_wi [M, F] and shared_wo [F, M], or neither")
    if shared_wi is None:
        return
    M = inputs.shape[-1]
    if shared_wi.ndim != 2 or shared_wi.shape[0] != M or shared_wo.shape != shared_wi.shape[::-1]:
        raise ValueError(f"shared experts: shared_wi {shared_wi.shape} must be [M={M}, F] and "
                         f"shared_wo {shared_wo.shape} [F, M]")


def _check_shapes(inputs, wg, wi, wo):
    if inputs.ndim != 3:
        raise ValueError(f"inputs must be [G, S, M], got shape {inputs.shape}")
    M, E = wg.shape
    H = wi.shape[-1]
    if inputs.shape[-1] != M or wi.shape != (E, M, H) or wo.shape != (E, H, M):
        raise ValueError(f"shape mismatch: inputs {inputs.shape} [G,S,M], wg {wg.shape} [M,E], "
                         f"wi {wi.shape} [E,M,H], wo {wo.shape} [E,H,M]")
