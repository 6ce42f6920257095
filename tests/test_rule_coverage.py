"""Every primitive in the rule tables has a case here, run partitioned == unpartitioned.

A primitive added to a rule table without a case makes `test_every_rule_has_a_case` fail.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import gshard
from gshard.cli.rules_cmd import rule_table

S = lambda x: gshard.mesh_split(x, ("x", None))  # noqa: E731  split rows over the 4-device axis
rng = np.random.default_rng(0)
X = rng.uniform(0.1, 0.9, size=(8, 6)).astype(np.float32)  # in every unary op's domain
Y = rng.uniform(0.1, 0.9, size=(8, 6)).astype(np.float32)
I = rng.integers(1, 7, size=(8, 6)).astype(np.int32)  # noqa: E741
B = X > 0.5

UNARY = {  # name -> function of a split float input
    "abs": lax.abs, "acos": lax.acos, "acosh": lambda x: lax.acosh(x + 1.0), "asin": lax.asin,
    "asinh": lax.asinh, "atan": lax.atan, "atanh": lax.atanh, "bessel_i0e": lax.bessel_i0e,
    "bessel_i1e": lax.bessel_i1e, "cbrt": lax.cbrt, "ceil": lax.ceil, "cos": lax.cos,
    "cosh": lax.cosh, "digamma": lax.digamma, "erf": lax.erf, "erf_inv": lax.erf_inv, "erfc": lax.erfc,
    "exp": lax.exp, "exp2": lax.exp2, "expm1": lax.expm1, "floor": lax.floor, "lgamma": lax.lgamma,
    "log": lax.log, "log1p": lax.log1p, "logistic": lax.logistic, "neg": lax.neg, "round": lax.round,
    "rsqrt": lax.rsqrt, "sign": lax.sign, "sin": lax.sin, "sinh": lax.sinh, "sqrt": lax.sqrt,
    "square": lax.square, "tan": lax.tan, "tanh": lax.tanh, "integer_pow": lambda x: x ** 3,
    "is_finite": lax.is_finite, "stop_gradient": lax.stop_gradient,
    "reduce_precision": lambda x: lax.reduce_precision(x, 5, 10),
    "copy": lambda x: jnp.array(x, copy=True), "log2": jnp.log2,
    "one_minus_square": lambda x: jax.grad(lambda t: jnp.tanh(t).sum())(x),  # jax 0.11's tanh'
 "copy_p": lambda x: lax._copy_p.bind(x) if hasattr(lax, "_copy_p") else jnp.array(x, copy=True),
    "convert_element_type": lambda x: x.astype(jnp.int32),
    "bitcast_convert_type": lambda x: lax.bitcast_convert_type(x, jnp.int32),
    "real": lambda x: lax.real(lax.complex(x, x)), "imag": lambda x: lax.imag(lax.complex(x, x)),
    "complex": lambda x: jnp.abs(lax.complex(x, x)), "conj": lambda x: lax.real(lax.conj(lax.complex(x, x))),
}
BINARY = {  # name -> function of two split float inputs
    "add": lax.add, "sub": lax.sub, "mul": lax.mul, "div": lax.div, "rem": lax.rem, "pow": lax.pow,
    "max": lax.max, "min": lax.min, "atan2": lax.atan2, "nextafter": lax.nextafter,
    "eq": lax.eq, "ne": lax.ne, "lt": lax.lt, "le": lax.le, "gt": lax.gt, "ge": lax.ge,
    "igamma": lax.igamma, "igammac": lax.igammac, "igamma_grad_a": lax.igamma_grad_a,
    "polygamma": lambda a, b: lax.polygamma(jnp.ones_like(a), b), "zeta": lambda a, b: lax.zeta(a + 1.5, b),
    "random_gamma_grad": lax.random_gamma_grad,
    "regularized_incomplete_beta": lambda a, b: lax.betainc(a, b, a * b),
    "select_n": lambda a, b: lax.select(a > b, a, b), "clamp": lambda a, b: lax.clamp(0.3, a, 0.6),
    "add_any": lambda a, b: jax.grad(lambda t: jnp.sum(jnp.sin(t) * t))(a) + b,
}
INTEGER = {  # name -> function of split int32 inputs
    "and": lambda a: a & 3, "or": lambda a: a | 8, "xor": lambda a: a ^ 5, "not": lambda a: ~a,
    "shift_left": lambda a: a << 2, "shift_right_arithmetic": lambda a: a >> 1,
    "shift_right_logical": lambda a: lax.shift_right_logical(a, 1),
    "population_count": lax.population_count, "clz": lax.clz,
}
OTHER = {  # name -> (function, args)
    "gshard_annotate": (lambda x: S(x) * 2, (X,)),
    "dot_general": (lambda x, y: S(x) @ y.T, (X, Y)),
    "reduce_sum": (lambda x: S(x).sum(0), (X,)), "reduce_max": (lambda x: S(x).max(0), (X,)),
    "reduce_min": (lambda x: S(x).min(0), (X,)), "reduce_prod": (lambda x: S(x).prod(0), (X,)),
    "reduce_and": (lambda x: jnp.all(S(x) > 0.2, 0), (X,)), "reduce_or": (lambda x: jnp.any(S(x) > 0.8, 0), (X,)),
    "argmax": (lambda x: jnp.argmax(S(x), 0), (X,)), "argmin": (lambda x: jnp.argmin(S(x), 0), (X,)),
    "cumsum": (lambda x: jnp.cumsum(S(x), 0), (X,)), "cumprod": (lambda x: jnp.cumprod(S(x), 0), (X,)),
    "cummax": (lambda x: lax.cummax(S(x), 0), (X,)), "cummin": (lambda x: lax.cummin(S(x), 0), (X,)),
    "cumlogsumexp": (lambda x: lax.cumlogsumexp(S(x), 0), (X,)),
    "reshape": (lambda x: S(x).reshape(4, 12), (X,)), "squeeze": (lambda x: S(x)[:, None].squeeze(1), (X,)),
    "transpose": (lambda x: S(x).T, (X,)), "broadcast_in_dim": (lambda x: S(x) + jnp.ones((8, 6)), (X,)),
    "concatenate": (lambda x: jnp.concatenate([S(x), x], 1), (X,)), "slice": (lambda x: S(x)[1:7, 2:], (X,)),
    "pad": (lambda x: jnp.pad(S(x), ((1, 2), (0, 1))), (X,)), "rev": (lambda x: jnp.flip(S(x), 0), (X,)),
    "iota": (lambda x: S(x) + jnp.arange(8.0)[:, None], (X,)),
    "gather": (lambda x, i: jnp.take_along_axis(S(x), i % 6, 1), (X, I)),
    "scatter-add": (lambda x, i: S(x).at[:, 0].add(1.0), (X, I)),
    "scatter": (lambda x, i: S(x).at[2].set(0.0), (X, I)),
    "scatter-mul": (lambda x, i: S(x).at[2].multiply(3.0), (X, I)),
    "scatter-min": (lambda x, i: S(x).at[:, 1].min(0.5), (X, I)),
    "scatter-max": (lambda x, i: S(x).at[:, 1].max(0.5), (X, I)),
    "dynamic_slice": (lambda x, i: lax.dynamic_slice(S(x), (i[0, 0], 0), (3, 6)), (X, I)),
    "dynamic_update_slice": (lambda x, i: lax.dynamic_update_slice(S(x), x[:2], (i[0, 0], 0)), (X, I)),
    "sort": (lambda x: jnp.sort(S(x), 1), (X,)), "top_k": (lambda x: lax.top_k(S(x), 2)[0], (X,)),
    "split": (lambda x: jnp.split(S(x), [2], axis=1)[1], (X,)),
    "stack": (lambda x: jnp.stack([S(x), x]), (X,)), "unstack": (lambda x: lax.unstack(S(x) + 0, 1)[0] if hasattr(lax, "unstack") else S(x), (X,)),
    "conv_general_dilated": (lambda x: lax.conv_general_dilated(
        gshard.mesh_split(x[None, None], (None, None, None, "x")), jnp.ones((2, 1, 3, 3)) * 0.2, (1, 1), "SAME"), (Y.T.copy(),)),
    "scan": (lambda x: lax.scan(lambda c, r: (c + r, c * r), jnp.zeros(6), S(x))[1], (X,)),
    "while": (lambda x: lax.while_loop(lambda v: v.sum() < 100, lambda v: v * 2, S(x)), (X,)),
    "cond": (lambda x: lax.cond(S(x).sum() > 1, jnp.sin, jnp.cos, S(x)), (X,)),
    "reduce_window_max": (lambda x: lax.reduce_window(S(x), -jnp.inf, lax.max, (3, 1), (1, 1), "SAME"), (X,)),
    "reduce_window_min": (lambda x: lax.reduce_window(S(x), jnp.inf, lax.min, (2, 2), (2, 1), "VALID"), (X,)),
    "reduce_window_sum": (lambda x: lax.reduce_window(S(x), 0.0, lax.add, (3, 2), (1, 1), "SAME"), (X,)),
    "select_and_scatter_add": (lambda x: jax.grad(lambda t: jnp.sum(jnp.sin(lax.reduce_window(
        S(t), -jnp.inf, lax.max, (2, 1), (2, 1), "VALID"))))(x), (X,)),
    "select_and_gather_add": (lambda x: jax.jvp(lambda t: lax.reduce_window(
        S(t), -jnp.inf, lax.max, (3, 1), (1, 1), "SAME"), (x,), (jnp.cos(x),))[1], (X,)),
    "reshard": (lambda x: jax.grad(lambda t: jnp.sum(jnp.sin(jax.lax.with_sharding_constraint(  # the seed
        S(t), jax.sharding.NamedSharding(_auto_mesh(), jax.sharding.PartitionSpec("x"))))))(x), (X,)),
    "random_clone": (lambda x: S(x) + jax.random.uniform(jax.random.clone(jax.random.key(1)), (8, 6)), (X,)),
    "sharding_constraint": (lambda x: jax.lax.with_sharding_constraint(
        x * 2, jax.sharding.NamedSharding(_auto_mesh(), jax.sharding.PartitionSpec("x"))), (X,)),
    "empty2": (lambda x: jax.grad(lambda t: lax.cond(  # branches with different residuals
        t.sum() > 1, lambda u: jnp.sin(u) * u, lambda u: jnp.exp(jnp.cos(u)), S(t)).sum())(x), (X,)),
    "random_seed": (lambda x: S(x) + jax.random.uniform(jax.random.PRNGKey(1), (8, 6)), (X,)),
    "random_bits": (lambda x: S(x) + jax.random.uniform(jax.random.PRNGKey(1), (8, 6)), (X,)),
    "random_wrap": (lambda x: S(x) + jax.random.normal(jax.random.PRNGKey(2), (8, 6)), (X,)),
    "random_unwrap": (lambda x: S(x) + jax.random.split(jax.random.PRNGKey(2))[1, 0], (X,)),
    "random_split": (lambda x: S(x) + jax.random.normal(jax.random.split(jax.random.PRNGKey(2))[1], (8, 6)), (X,)),
    "random_fold_in": (lambda x: S(x) + jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(2), 3), (8, 6)), (X,)),
    "threefry2x32": (lambda x: S(x) + jax.random.normal(jax.random.PRNGKey(4), (8, 6)), (X,)),
    "rng_bit_generator": (lambda x: S(x) + lax.rng_bit_generator(jnp.zeros(4, jnp.uint32), (8, 6))[1].astype(jnp.float32) * 1e-10, (X,)),
    "shard_map": (lambda x: gshard.manual(lambda a: jax.lax.psum(a, "x"), in_specs=(("x", None),),
                                          out_specs=(None, None),
                                          mesh=jax.make_mesh((4,), ("x",)))(S(x)), (X,)),
}


def _auto_mesh():
    return jax.make_mesh((4,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))


def _cases():
    out = {n: (lambda x, f=f: f(S(x)), (X,)) for n, f in UNARY.items()}
    out.update({n: (lambda x, y, f=f: f(S(x), y), (X, Y)) for n, f in BINARY.items()})
    out.update({n: (lambda a, f=f: f(S(a)), (I,)) for n, f in INTEGER.items()})
    out.update(OTHER)
    return out


CASES = _cases()


def test_every_rule_has_a_case():  # (log2, one_minus_square: primitives only in jax 0.11)
    missing = sorted({row[0] for row in rule_table()} - set(CASES))
    assert not missing, f"primitives with rules but no test case: {missing}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_case(name):
    mesh = jax.make_mesh((4,), ("x",))
    fn, args = CASES[name]
    got = gshard.partition(fn, mesh)(*args)
    ref = jax.jit(fn)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=2e-5, atol=2e-5, err_msg=name)
