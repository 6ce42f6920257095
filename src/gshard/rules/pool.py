"""Pooling: reduce_window (max / sum / min), select_and_gather_add (its JVP) and
select_and_scatter_add (the max-pool gradient).

Dims whose window is a single element (batch, channels) are split freely and computed locally.
A split window dim gets a halo exchange (`halo.window`): each device receives the boundary rows
its windows need, positions outside the input read the reduction's identity. The max-pool
gradient also sends back what it computed for its neighbours' rows (`halo.fold_back`); it needs
the window grid aligned with the shards, else that dim is gathered whole (reported).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax.extend.core import primitives as P

from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.shard import Local
from . import halo

WINDOWED = [P.reduce_window_sum_p, P.reduce_window_max_p, P.reduce_window_min_p,
            P.select_and_gather_add_p]


@dataclass(frozen=True)
class Win:
    """Window geometry of one dim."""
    size: int
    stride: int
    pad: tuple[int, int]
    base: int = 1
    dilation: int = 1

    @property
    def span(self) -> int:
        return (self.size - 1) * self.dilation + 1

    @property
    def pointwise(self) -> bool:
        return self.size == 1 and self.stride == 1 and self.pad == (0, 0) and self.base == 1


def wins(eqn) -> list[Win]:
    p = eqn.params
    rank = len(p["window_dimensions"])
    base = p.get("base_dilation") or (1,) * rank
    dil = p.get("window_dilation") or (1,) * rank
    return [Win(p["window_dimensions"][d], p["window_strides"][d], tuple(p["padding"][d]),
                base[d], dil[d]) for d in range(rank)]


def _haloable(w: Win, n: int) -> bool:
    return w.base == 1 and w.span < n


# ----- propagation ------------------------------------------------------------------------------
def _pass(spec, ws, shape):
    if spec is None:
        return None
    return ShardingSpec(tuple(a if w.pointwise or _haloable(w, n) else ()
                              for a, w, n in zip(spec.dims, ws, shape)))


def prop_window(eqn, ins, outs, mesh):
    """Split dims pass between the windowed operand(s) and the result."""
    ws, shape = wins(eqn), eqn.inputs[-1].shape
    operand = ins[-1] if eqn.prim is not P.select_and_gather_add_p else (ins[1] or ins[0])
    fwd, bwd = _pass(operand, ws, shape), _pass(outs[0], ws, shape)
    return [bwd] * len(ins), [fwd]


def prop_scatter_window(eqn, ins, outs, mesh):
    """select_and_scatter_add(source [pooled], operand [input]) -> input-shaped result."""
    ws, shape = wins(eqn), eqn.inputs[1].shape
    spec = outs[0] or ins[1]
    s = _pass(spec, ws, shape)
    fwd = _pass(ins[1] or ins[0], ws, shape)
    return [s, s], [fwd]


# ----- partitioning: forward windows ------------------------------------------------------------
def _identity(eqn, dtype):
    name = eqn.prim.name
    if name.endswith("max") or (name == "select_and_gather_add" and eqn.params["select_prim"] is P.ge_p):
        return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min
    if name.endswith("min") or name == "select_and_gather_add":
        return jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).max
    return 0


def _plan(eqn, target: ShardingSpec, shape):
    """Per dim: 'local', 'halo' or 'whole', and the operand spec."""
    modes, dims = [], []
    for a, w, n in zip(target.dims, wins(eqn), shape):
        mode = "local" if w.pointwise else ("halo" if a and _haloable(w, n) else "whole")
        modes.append(mode)
        dims.append(() if mode == "whole" else a)
    return modes, ShardingSpec(tuple(dims))


@rule(WINDOWED, prop=prop_window)
def part_window(ctx, eqn, ins, targets):
    shape, out_shape = eqn.inputs[-1].shape, eqn.outputs[0].shape
    modes, spec = _plan(eqn, targets[0], shape)
    xs = [ctx.reshard(x, spec, f"{eqn.prim.name} operand") for x in ins]
    vals, padding = [x.val for x in xs], list(eqn.params["padding"])
    out_local = spec.local_shape(out_shape, ctx.sizes)
    for d, (mode, w) in enumerate(zip(modes, wins(eqn))):
        if mode != "halo":
            continue
        Lo = out_local[d]
        args = (d, spec.dims[d], shape[d], Lo * w.stride, -w.pad[0], (Lo - 1) * w.stride + w.span)
        got = [halo.window(ctx, v, *args, fill=_fill(eqn, v, k)) for k, v in enumerate(vals)]
        if any(g is None for g in got):
            return _whole(ctx, eqn, ins, targets)
        vals, padding[d] = got, (0, 0)
    val = eqn.prim.bind(*vals, **dict(eqn.params, padding=tuple(padding)))
    out = Local(val, spec, out_shape)
    return [ctx.reshard(out, targets[0], f"{eqn.prim.name} result")]


def _fill(eqn, v, k):
    if eqn.prim is P.select_and_gather_add_p and k == 0:  # the tangent
        return 0
    return _identity(eqn, v.dtype)


def _whole(ctx, eqn, ins, targets):
    """Halos wider than a neighbour's shard: the windowed dims whole (reported)."""
    keep = ShardingSpec(tuple(a if w.pointwise else () for a, w in zip(targets[0].dims, wins(eqn))))
    xs = [ctx.reshard(x, keep, f"{eqn.prim.name} needs its window dims whole").val for x in ins]
    out = Local(eqn.prim.bind(*xs, **eqn.params), keep, eqn.outputs[0].shape)
    return [ctx.reshard(out, targets[0], f"{eqn.prim.name} result")]


# ----- partitioning: the max-pool gradient ------------------------------------------------------
def _aligned(w: Win, n: int, no: int, t: int) -> bool:
    """The window grid lines up with the shards: L = n/t rows own exactly Lo = no/t windows."""
    return (w.base == 1 and n % t == 0 and no % t == 0 and n // t == (no // t) * w.stride
            and w.pad[0] <= n // t)


@rule(P.select_and_scatter_add_p, prop=prop_scatter_window)
def part_select_scatter(ctx, eqn, ins, targets):
    source, operand = ins
    shape, pooled = eqn.inputs[1].shape, eqn.inputs[0].shape
    ws = wins(eqn)
    dims, modes = [], []
    for a, w, n, no in zip(targets[0].dims, ws, shape, pooled):
        ok = w.pointwise or (a and _aligned(w, n, no, halo.tiles(ctx, a)))
        modes.append("local" if w.pointwise else ("halo" if a and ok else "whole"))
        dims.append(a if ok else ())
    spec = ShardingSpec(tuple(dims))
    src = ctx.reshard(source, spec, "max-pool gradient: pooled cotangent")
    op = ctx.reshard(operand, spec, "max-pool gradient: pooling input")
    val, padding, folds = op.val, list(eqn.params["padding"]), []
    for d, (mode, w) in enumerate(zip(modes, ws)):
        if mode != "halo":
            continue
        L, Lo = val.shape[d], src.val.shape[d]
        width = (Lo - 1) * w.stride + w.span
        got = halo.window(ctx, val, d, spec.dims[d], shape[d], L, -w.pad[0], width,
                          fill=_identity_select(eqn, val.dtype))
        if got is None:
            return _whole(ctx, eqn, ins, targets)
        val, padding[d] = got, (0, 0)
        folds.append((d, L, w.pad[0], width - L - w.pad[0]))
    r = eqn.prim.bind(src.val, val, **dict(eqn.params, padding=tuple(padding)))
    for d, L, left, right in folds:
        if right < 0:  # the windows end before the shard does: zero rows
            r = jnp.concatenate([r, jnp.zeros(r.shape[:d] + (-right,) + r.shape[d + 1:], r.dtype)], d)
        r = halo.fold_back(ctx, r, d, spec.dims[d], L, left, max(right, 0))
    out = Local(r, spec, shape)
    return [ctx.reshard(out, targets[0], "max-pool gradient result")]


def _identity_select(eqn, dtype):
    big = jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).max
    return -big if eqn.params["select_prim"] is P.ge_p else big
