import jax
import jax.numpy as jnp
import pytest

from gshard.cost import eqn_costs, total_flops

f32 = jnp.float32


def _spec(*shape, dtype=f32):
    return jax.ShapeDtypeStruct(shape, dtype)


def test_matmul_flops_2mnk():
    M, K, N = 8, 16, 4
    j = jax.make_jaxpr(lambda a, b: a @ b)(_spec(M, K), _spec(K, N))
    assert total_flops(j) == 2 * M * N * K


def test_batched_einsum_flops():
    B, M, K, N = 3, 5, 7, 2
    j = jax.make_jaxpr(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))(
        _spec(B, M, K), _spec(B, K, N))
    assert total_flops(j) == 2 * B * M * N * K


def test_scan_multiplies_by_length():
    L, n = 5, 4

    def f(x, ws):
        return jax.lax.scan(lambda c, w: (c @ w, None), x, ws)[0]

    costs = eqn_costs(jax.make_jaxpr(f)(_spec(n, n), _spec(L, n, n)))
    dots = [c for c in costs if c.primitive == "dot_general"]
    assert len(dots) == 1 and dots[0].count == L and dots[0].path.endswith("scan/0")
    assert dots[0].flops == L * 2 * n ** 3


def test_calls_remat_custom_jvp_recursed():
    n = 4

    @jax.jit
    def f(a, b):
        return jax.nn.relu(jax.checkpoint(lambda x: x @ b)(a))

    costs = eqn_costs(jax.make_jaxpr(f)(_spec(n, n), _spec(n, n)))
    assert sum(c.flops for c in costs if c.primitive == "dot_general") == 2 * n ** 3
    assert any(c.primitive == "max" and "custom_jvp_call" in c.path for c in costs)


def test_cond_takes_max_branch_and_while_is_flagged():
    n = 4
    j = jax.make_jaxpr(lambda p, a: jax.lax.cond(p, lambda x: x @ x, lambda x: x, a))(
        _spec(dtype=bool), _spec(n, n))
    assert total_flops(j) == 2 * n ** 3
    w = jax.make_jaxpr(lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 3, lambda c: c @ c, x))(
        _spec(n, n))
    costs = eqn_costs(w, while_trips=3)
    assert all(c.approx for c in costs if "body" in c.path)
    assert sum(c.flops for c in costs if c.primitive == "dot_general") == 3 * 2 * n ** 3


def test_conv_flops():
    x, k = _spec(1, 3, 8, 8), _spec(4, 3, 3, 3)
    j = jax.make_jaxpr(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "VALID"))(x, k)
    assert total_flops(j) == 2 * (1 * 4 * 6 * 6) * (3 * 3 * 3)


def test_elementwise_transcendental_and_fusion_bytes():
    n = 256
    j = jax.make_jaxpr(lambda x: jnp.exp(x * 2.0) + 1.0)(_spec(n))
    costs = eqn_costs(j, fuse=False)
    assert sum(c.flops for c in costs) == 2 * n
    assert sum(c.transcendentals for c in costs) == n
    assert sum(c.bytes for c in costs) == 3 * 2 * 4 * n        # 3 ops, each read + write
    assert sum(c.bytes for c in eqn_costs(j)) == 2 * 4 * n     # fused: x in, result out


def test_bf16_matmul_uses_bf16_peak():
    from gshard.cost import TPU_V3, roofline_time
    j = jax.make_jaxpr(lambda a, b: a @ b)(_spec(512, 512, dtype=jnp.bfloat16),
                                          _spec(512, 512, dtype=jnp.bfloat16))
    (c,) = eqn_costs(j)
    assert c.matmul_dtype == "bfloat16"
    assert roofline_time(c, TPU_V3) == pytest.approx(max(c.flops / 61.5e12, c.bytes / 450e9))
