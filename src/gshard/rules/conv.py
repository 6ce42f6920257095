"""conv_general_dilated with split spatial dims: halo exchange (GShard §3.3.3, appendix A.4).

A spatial dim split over axes A is convolved locally after each device receives the boundary
rows its windows need from its neighbours (CollectivePermute), with positions outside the image
(padding, uneven tails) zeroed. Device i needs input positions [i*step + a0, +window):
- output split (the usual case): step = Lo*stride, a0 = -pad_lo, window = (Lo-1)*stride + span;
- window split (the kernel gradient, where the output is the small kernel): step = Lg*rhs_dil,
  the result a partial sum over A.
Batch and output-feature splits are local; an input-feature split on both sides is a partial sum.
A grouped conv (depthwise: feature_group_count == features) splits its whole groups: input
features, kernel output features and result features together, no communication.
An lhs-dilated (transposed) conv with its output split: each device fetches the input rows its
dilated window reads (a halo), dilates them locally and convolves without lhs dilation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.plan import reshard_cost
from ..spmd.shard import Local
from . import halo


@dataclass(frozen=True)
class Dims:
    lhs: tuple
    rhs: tuple
    out: tuple

    @staticmethod
    def of(eqn) -> "Dims":
        dn = eqn.params["dimension_numbers"]
        return Dims(tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec))

    @property
    def nspatial(self) -> int:
        return len(self.lhs) - 2


def _grouped(eqn) -> bool:
    return eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1


def group_split(eqn, axes, sizes) -> bool:
    """A feature_group_count conv can split its groups over `axes`: every shard of the input
    features, the kernel's output features and the result's features holds the same whole groups
    (depthwise convs, even or uneven)."""
    p = eqn.params
    G = p["feature_group_count"]
    if G == 1 or p["batch_group_count"] != 1 or not axes:
        return False
    d = Dims.of(eqn)
    cin, cout = eqn.inputs[0].shape[d.lhs[1]], eqn.inputs[1].shape[d.rhs[0]]
    t = math.prod(sizes[a] for a in axes)
    li, lo = -(-cin // t), -(-cout // t)
    return li % (cin // G) == 0 and lo == li // (cin // G) * (cout // G)


def _dims(spec, rank):
    return spec.dims if spec is not None else ((),) * rank


# ----- propagation ------------------------------------------------------------------------------
def prop_conv(eqn, ins, outs, mesh):
    d = Dims.of(eqn)
    lshape, rshape = eqn.inputs[0].shape, eqn.inputs[1].shape
    ld, rd = _dims(ins[0], len(lshape)), _dims(ins[1], len(rshape))
    od = _dims(outs[0], len(lshape))
    out = [()] * len(lshape)
    lhs = [()] * len(lshape)
    rhs = [()] * len(rshape)
    if eqn.params["batch_group_count"] == 1:
        out[d.out[0]], lhs[d.lhs[0]] = ld[d.lhs[0]], od[d.out[0]]
    if not _grouped(eqn):
        out[d.out[1]], rhs[d.rhs[0]] = rd[d.rhs[0]], od[d.out[1]]
    else:  # groups split: input features, kernel output features and result features together
        f = next((a for a in (od[d.out[1]], ld[d.lhs[1]], rd[d.rhs[0]])
                  if group_split(eqn, a, mesh.sizes)), ())
        out[d.out[1]] = lhs[d.lhs[1]] = rhs[d.rhs[0]] = f
    oshape = eqn.outputs[0].shape
    for k in range(d.nspatial):
        n, no = lshape[d.lhs[2 + k]], oshape[d.out[2 + k]]
        same_extent = 2 * no * eqn.params["window_strides"][k] >= n  # not a kernel gradient
        dil = eqn.params["lhs_dilation"][k]
        same_extent = same_extent if dil == 1 else eqn.params["window_strides"][k] == 1
        if rshape[d.rhs[2 + k]] < n and same_extent:
            out[d.out[2 + k]], lhs[d.lhs[2 + k]] = ld[d.lhs[2 + k]], od[d.out[2 + k]]
    return [ShardingSpec(tuple(lhs)), ShardingSpec(tuple(rhs))], [ShardingSpec(tuple(out))]


# ----- planning ---------------------------------------------------------------------------------
def _spatial_modes(eqn, d: Dims, lhs: Local, rhs: Local, target: ShardingSpec):
    """Per spatial dim: ('out', axes), ('window', axes) or ('whole', ())."""
    modes = []
    for k in range(d.nspatial):
        la, ra = lhs.spec.dims[d.lhs[2 + k]], rhs.spec.dims[d.rhs[2 + k]]
        oa = target.dims[d.out[2 + k]]
        if eqn.params["lhs_dilation"][k] != 1:
            modes.append(("dilated", oa) if oa else ("whole", ()))
        elif oa:
            modes.append(("out", oa))
        elif la and la == ra:
            modes.append(("window", la))
        else:
            modes.append(("whole", ()))
    return modes


def _plan(eqn, d: Dims, lhs: Local, rhs: Local, target: ShardingSpec, sizes):
    modes = _spatial_modes(eqn, d, lhs, rhs, target)
    ldims, rdims, odims = [()] * lhs.rank, [()] * rhs.rank, [()] * lhs.rank
    if eqn.params["batch_group_count"] == 1:
        ldims[d.lhs[0]] = odims[d.out[0]] = target.dims[d.out[0]]
    if not _grouped(eqn):
        rdims[d.rhs[0]] = odims[d.out[1]] = target.dims[d.out[1]]
    elif group_split(eqn, target.dims[d.out[1]], sizes):
        ldims[d.lhs[1]] = rdims[d.rhs[0]] = odims[d.out[1]] = target.dims[d.out[1]]
    partial = []
    ca = lhs.spec.dims[d.lhs[1]]
    if not _grouped(eqn) and ca and ca == rhs.spec.dims[d.rhs[1]]:
        ldims[d.lhs[1]] = rdims[d.rhs[1]] = ca
        partial += list(ca)
    for k, (mode, axes) in enumerate(modes):
        ldims[d.lhs[2 + k]] = axes
        if mode in ("out", "dilated"):
            odims[d.out[2 + k]] = axes
        elif mode == "window":
            rdims[d.rhs[2 + k]] = axes
            partial += list(axes)
    specs = ShardingSpec(tuple(ldims)), ShardingSpec(tuple(rdims)), ShardingSpec(tuple(odims), tuple(partial))
    for spec in specs:
        used = list(spec.used_axes()) + list(spec.partial)
        if len(used) != len(set(used)):
            return modes, None
    return modes, specs


# ----- partitioning -----------------------------------------------------------------------------
def _from_operands(eqn, d: Dims, lhs: Local, rhs: Local, prefer_lhs: bool, sizes) -> ShardingSpec:
    """A result layout read off the operands: batch from the input, output features from the
    kernel, spatial dims from the input; on a clash the preferred operand keeps its axes."""
    dims = [()] * lhs.rank
    b = lhs.spec.dims[d.lhs[0]] if eqn.params["batch_group_count"] == 1 else ()
    f = rhs.spec.dims[d.rhs[0]] if not _grouped(eqn) else next(
        (a for a in (rhs.spec.dims[d.rhs[0]], lhs.spec.dims[d.lhs[1]]) if group_split(eqn, a, sizes)), ())
    if set(b) & set(f):
        b, f = (b, ()) if prefer_lhs else ((), f)
    dims[d.out[0]], dims[d.out[1]] = b, f
    used = set(b) | set(f)
    for k in range(d.nspatial):
        a = lhs.spec.dims[d.lhs[2 + k]]
        if a and not set(a) & used:
            dims[d.out[2 + k]], used = a, used | set(a)
    return ShardingSpec(tuple(dims))


def _choose(ctx, eqn, d: Dims, lhs: Local, rhs: Local, target: ShardingSpec):
    """The cheapest of the layouts the target and the operands suggest (bytes moved, reused
    reshards free): (layout, spatial modes, (lhs, rhs, result) specs)."""
    best = None
    out_item = jnp.dtype(eqn.outputs[0].aval.dtype).itemsize
    for want in (target, _from_operands(eqn, d, lhs, rhs, True, ctx.sizes),
                 _from_operands(eqn, d, lhs, rhs, False, ctx.sizes)):
        modes, specs = _plan(eqn, d, lhs, rhs, want, ctx.sizes)
        if specs is None:
            continue
        cost = ctx.cost(lhs, specs[0]) + ctx.cost(rhs, specs[1]) + reshard_cost(
            specs[2], target, eqn.outputs[0].shape, out_item, ctx.sizes)
        if best is None or cost < best[0]:
            best = (cost, want, modes, specs)
    if best is None:
        rep = ShardingSpec.replicated(lhs.rank)
        return rep, [("whole", ())] * d.nspatial, (rep, ShardingSpec.replicated(rhs.rank), rep)
    return best[1:]


@rule(P.conv_general_dilated_p, prop=prop_conv)
def part_conv(ctx, eqn, ins, targets):
    d, p = Dims.of(eqn), eqn.params
    lhs, rhs = ins
    want, modes, (lspec, rspec, ospec) = _choose(ctx, eqn, d, lhs, rhs, targets[0])
    lhs = ctx.masked(ctx.reshard(lhs, lspec, "conv input"), [d.lhs[1]], 0)
    rhs = ctx.masked(ctx.reshard(rhs, rspec, "conv kernel"), [d.rhs[1]] + list(d.rhs[2:]), 0)
    x, padding, ldil = lhs.val, list(p["padding"]), list(p["lhs_dilation"])
    for k, (mode, axes) in enumerate(modes):
        if mode == "whole":
            continue
        win = _window_args(eqn, d, k, mode, axes, lhs, rhs, want, ctx)
        if mode == "dilated":
            y = _dilated_window(ctx, x, d.lhs[2 + k], axes, *win, ldil[k])
        else:
            y = halo.window(ctx, x, d.lhs[2 + k], axes, *win)
        if y is None:
            return _fallback(ctx, eqn, ins, targets)
        x, padding[k], ldil[k] = y, (0, 0), 1
    groups = p["feature_group_count"]
    if groups > 1:  # a group split: the local features hold whole groups
        groups = x.shape[d.lhs[1]] // (lhs.shape[d.lhs[1]] // groups)
    val = eqn.prim.bind(x, rhs.val, **dict(p, padding=tuple(padding), lhs_dilation=tuple(ldil),
                                           feature_group_count=groups))
    out = Local(val, ospec.with_partial(ctx.new_partial(ospec.partial)), eqn.outputs[0].shape)
    return [out] if ospec.partial else [ctx.reshard(out, targets[0], "conv result")]


def _window_args(eqn, d, k, mode, axes, lhs, rhs, target, ctx):
    p = eqn.params
    n = lhs.shape[d.lhs[2 + k]]
    s, rd, (pl, _) = p["window_strides"][k], p["rhs_dilation"][k], p["padding"][k]
    if mode in ("out", "dilated"):
        Lo = target.local_shape(eqn.outputs[0].shape, ctx.sizes)[d.out[2 + k]]
        w = rhs.shape[d.rhs[2 + k]]
        return n, Lo * s, -pl, (Lo - 1) * s + (w - 1) * rd + 1
    Lg = rhs.val.shape[d.rhs[2 + k]]
    out = eqn.outputs[0].shape[d.out[2 + k]]
    return n, Lg * rd, -pl, (out - 1) * s + (Lg - 1) * rd + 1


def _dilated_window(ctx, x, dim: int, axes, n: int, step: int, a0: int, width: int, ld: int):
    """Window [i*step + a0, +width) of the input dilated by `ld` (input row q at q*ld): the input
    rows it reads (a halo), dilated here; None if the halo is too wide."""
    first = lambda i: (i * step + a0 + ld - 1) // ld  # noqa: E731  (ints and traced ints)
    last = lambda i: (i * step + a0 + width - 1) // ld  # noqa: E731
    t = halo.tiles(ctx, axes)
    wq = max(1, max(last(i) - first(i) + 1 for i in range(t)))
    w = halo.window_at(ctx, x, dim, axes, n, first, wq, end=lambda i: last(i) + 1)
    if w is None:
        return None
    cfg = [(0, 0, 0)] * x.ndim
    cfg[dim] = (ld - 1, width, ld - 1)  # window row j at ld-1 + j*ld; zeros between and after
    dil = lax.pad(w, jnp.zeros((), w.dtype), cfg)
    i = ctx.shard_index(axes)
    shift = first(i) * ld - (i * step + a0)  # in [0, ld)
    return lax.dynamic_slice_in_dim(dil, ld - 1 - shift, width, axis=dim)


def _fallback(ctx, eqn, ins, targets):
    """Halos wider than a neighbour's shard: convolve with whole spatial dims (reported)."""
    d = Dims.of(eqn)
    lspec = ins[0].spec.drop_partial()
    for k in range(d.nspatial):
        lspec = lspec.with_dim(d.lhs[2 + k], ())
    lhs = ctx.reshard(ins[0], ShardingSpec.replicated(ins[0].rank), "conv input whole (wide halo)")
    rhs = ctx.reshard(ins[1], ShardingSpec.replicated(ins[1].rank), "conv kernel whole")
    val = eqn.prim.bind(lhs.val, rhs.val, **eqn.params)
    out = Local(val, ShardingSpec.replicated(lhs.rank), eqn.outputs[0].shape)
    return [ctx.reshard(out, targets[0], "conv result")]
