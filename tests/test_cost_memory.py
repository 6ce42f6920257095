import jax
import jax.numpy as jnp

from gshard.cost import memory_report, peak_live_bytes

N = 1024
S = 4 * N  # bytes of one f32[N]
x = jax.ShapeDtypeStruct((N,), jnp.float32)


def test_chain_peak_by_hand():
    j = jax.make_jaxpr(lambda x: (x + 1.0) * 2.0 + (x + 1.0))(x)
    assert [e.primitive.name for e in j.jaxpr.eqns] == ["add", "mul", "add", "add"]
    # a=x+1: 2S; b=a*2: 3S during, a freed -> x,b; a2=x+1: 3S; c=b+a2: 4S during.
    assert peak_live_bytes(j) == 4 * S


def test_values_freed_after_last_use():
    j = jax.make_jaxpr(lambda x: jnp.sin(jnp.sin(jnp.sin(jnp.sin(x)))))(x)
    assert peak_live_bytes(j) == 3 * S  # x + previous + current


def test_remat_region_keeps_only_its_outputs():
    def inner(v):
        big = jnp.broadcast_to(v, (8, N))  # 8S transient
        return jnp.sum(jnp.sin(big), axis=0)

    def f(v):
        y = jax.checkpoint(inner)(v)
        return jnp.sin(jnp.sin(y))

    j = jax.make_jaxpr(f)(x)
    assert j.jaxpr.eqns[0].primitive.name in ("remat2", "checkpoint")
    # inside the region: x + big + sin(big) = 17S (+ y at the end, big freed: < 17S).
    assert peak_live_bytes(j) == 17 * S
    # after it only y survives: the tail sin(sin(y)) needs x + y + 1 = 3S.
    j2 = jax.make_jaxpr(lambda v: jnp.sin(jnp.sin(v)))(x)
    assert peak_live_bytes(j2) == 3 * S


def test_scan_stacked_outputs_counted():
    L = 4
    j = jax.make_jaxpr(lambda c: jax.lax.scan(lambda c, _: (c + 1.0, c * 2.0), c, None,
                                              length=L))(x)
    # x, then during the scan: ys [L,N] + body transient (c+1, c*2) = S + 4S + 2S
    assert peak_live_bytes(j) == (1 + L + 2) * S


def test_roles_split():
    w = jax.ShapeDtypeStruct((N, 2), jnp.float32)
    def f(wr, wd, opt, v):
        return (v @ wr + v @ wd).sum() + opt.sum()
    j = jax.make_jaxpr(f)(w, w, w, x)
    r = memory_report(j, ["weight", "weight", "opt_state", "activation"],
                      [True, False, False, False])
    assert r.weight_bytes_replicated == 2 * S and r.weight_bytes_distributed == 2 * S
    assert r.opt_state_bytes == 2 * S
    assert r.activation_bytes == r.peak_bytes - 6 * S >= S
