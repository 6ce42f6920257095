"""Elementwise, comparison, select and conversion primitives: all operands share one spec.

Partial sums pass through linear ops (add/sub of partials, neg, convert, mul or div of a partial
by a non-partial), so reductions are deferred to the consumer that needs them.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from ..compat import primitive

from ..registry import rule
from ..spmd.shard import Local
from ..spec import ShardingSpec, merge
from ..trace.graph import Value
from . import iota

_NAMES = """add sub mul div rem pow max min neg sign floor ceil round is_finite exp exp2 log log1p
expm1 tanh logistic sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh sqrt rsqrt cbrt
integer_pow square abs not and or xor eq ne lt le gt ge select_n clamp convert_element_type erf erfc
erf_inv lgamma digamma igamma igammac nextafter shift_left shift_right_logical
shift_right_arithmetic population_count clz stop_gradient copy copy_p reduce_precision add_any
real imag conj complex polygamma random_gamma_grad threefry2x32 add_jaxvals bessel_i0e
bessel_i1e igamma_grad_a zeta regularized_incomplete_beta bitcast_convert_type
log2 one_minus_square""".split()

ELEMENTWISE = []
for _n in dict.fromkeys(_NAMES):
    _p = primitive(_n)  # wherever this JAX version keeps it (log2, one_minus_square: jax 0.11)
    if _p is not None:
        ELEMENTWISE.append(_p)
_ELEMENTWISE_SET = frozenset(ELEMENTWISE)

_LINEAR_ALL = {"add", "sub", "add_any"}
_LINEAR_UNARY = {"neg", "copy", "copy_p", "reduce_precision", "real", "imag", "conj"}


def fit(spec, shape, out_shape):
    """The spec an operand of `shape` takes when the result has `out_shape` (size-1 dims of an
    implicitly broadcast operand stay unsplit); None for scalars."""
    if spec is None or len(shape) != len(out_shape):
        return None
    if tuple(shape) == tuple(out_shape):
        return spec
    return ShardingSpec(tuple(a if n == m else () for a, n, m in zip(spec.dims, shape, out_shape)),
                        spec.partial)


def prop_elementwise(eqn, ins, outs, mesh):
    out_shape = eqn.outputs[0].shape
    merged = None
    for s, x in zip(ins, eqn.inputs):
        lifted = fit(s, x.shape, out_shape)  # size-1 broadcast dims contribute nothing
        if lifted is not None:
            merged = merge(merged, lifted)
    merged = merge(merged, outs[0]) if merged is not None else outs[0]
    return [fit(merged, x.shape, out_shape) for x in eqn.inputs], [merged] * len(eqn.outputs)


def _kept_partial(eqn, ins: list[Local], rank: int) -> tuple[str, ...]:
    name = eqn.prim.name
    parts = [x.spec.partial for x in ins]
    if name in _LINEAR_ALL:
        same = all(x.shape == ins[0].shape for x in ins)
        if same and parts[0] and all(p == parts[0] for p in parts):
            return parts[0]
        return ()
    if name in _LINEAR_UNARY:
        return parts[0]
    if name == "convert_element_type" and jnp.issubdtype(eqn.params["new_dtype"], jnp.floating) \
            and jnp.issubdtype(ins[0].dtype, jnp.floating):
        return parts[0]
    if name == "mul" and sum(bool(p) for p in parts) == 1:
        return next(p for p in parts if p)
    if name == "div" and parts[0] and not parts[1]:
        return parts[0]
    return ()


_SCALING = {"mul", "div", "neg", "convert_element_type"}


@dataclass(frozen=True)
class _Probe:
    """What `_kept_partial` reads of an operand, for one not partitioned yet."""
    spec: ShardingSpec
    shape: tuple
    dtype: object


def _probe(ctx, x, mine, partial):
    if x is mine:
        return _Probe(ShardingSpec.replicated(len(x.shape)).with_partial(partial),
                      tuple(x.shape), x.aval.dtype)
    if not isinstance(x, Value):
        return _Probe(ShardingSpec.replicated(len(x.aval.shape)), tuple(x.aval.shape), x.aval.dtype)
    return ctx.placed(x)


def _sum_needed_next(ctx, eqn, partial) -> bool:
    """A scaling of a partial sum whose only reader is an elementwise op that reduces it
    anyway (its other operands are placed already and keep no common partial sum): reduce
    first, so the scaling fuses with that reader after the AllReduce (an SGD update
    `w - lr * g` reads the reduced gradient once, as XLA's program does) instead of costing a
    pass over the unreduced sum."""
    if eqn.prim.name not in _SCALING:
        return False
    mine = eqn.outputs[0]
    readers = ctx.readers(mine)
    if len(readers) != 1 or readers[0] is None or readers[0].prim not in _ELEMENTWISE_SET:
        return False
    probes = [_probe(ctx, x, mine, partial) for x in readers[0].inputs]
    if any(p is None for p in probes):
        return False   # an operand not partitioned yet: keep the sum lazy
    return not _kept_partial(readers[0], probes, len(readers[0].outputs[0].shape))


@rule(ELEMENTWISE, prop=prop_elementwise, fwd_level=0, carries_padded=True)
def part_elementwise(ctx, eqn, ins, targets):
    iota.note(eqn)
    target, out_shape = targets[0], eqn.outputs[0].shape
    partial = _kept_partial(eqn, ins, len(out_shape))
    if set(partial) & set(target.used_axes()) or (partial and _sum_needed_next(ctx, eqn, partial)):
        partial = ()
    vals = []
    for x in ins:  # an operand rides through partial only when its partial is the kept one
        keep = partial if partial and x.spec.partial == partial else ()
        vals.append(ctx.reshard(x, _operand_spec(x, target, out_shape, keep),
                                f"operand of {eqn.prim.name}").val)
    outs = eqn.prim.bind(*vals, **eqn.params)
    outs = outs if eqn.prim.multiple_results else [outs]
    spec = target.with_partial(partial)
    return [Local(o, spec, v.shape) for o, v in zip(outs, eqn.outputs)]


def _operand_spec(x: Local, target: ShardingSpec, out_shape, partial) -> ShardingSpec:
    if x.rank != len(out_shape):  # a scalar operand
        return ShardingSpec.replicated(x.rank).with_partial(partial)
    return fit(target, x.shape, out_shape).with_partial(partial)
