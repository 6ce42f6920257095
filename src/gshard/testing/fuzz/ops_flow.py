"""Convolution and control-flow families: conv (feature groups, strides, dilation, padding
modes, 1-D and 2-D layouts), scan, while and cond/switch with bodies drawn from the unary ops."""
from __future__ import annotations

from .builder import Builder
from .ops import UNARY

LAYOUTS = {3: [("NCH", "OIH", "NCH"), ("NHC", "HIO", "NHC")],
           4: [("NCHW", "OIHW", "NCHW"), ("NHWC", "HWIO", "NHWC")]}


def conv(b: Builder) -> bool:
    x = b.pick(lambda v: v.dtype == "f32" and v.rank in (3, 4))
    if x is None:
        x = b.new_input((b.ch.int(1, 3), b.ch.int(1, 4)) + tuple(b.ch.int(3, 10) for _ in range(b.ch.int(1, 2))))
    lhs, rhs, out = b.ch.pick(LAYOUTS[x.rank])
    c = x.shape[lhs.index("C")]
    groups = b.ch.pick([g for g in range(1, c + 1) if c % g == 0])
    o = groups * b.ch.int(1, 2)
    nsp = x.rank - 2
    ksz = [b.ch.int(1, 3) for _ in range(nsp)]
    kshape = []
    for ch in rhs:
        kshape.append(o if ch == "O" else c // groups if ch == "I" else ksz[("HW".index(ch))])
    k = b.new_input(kshape)
    strides = tuple(b.ch.pick([1, 1, 2]) for _ in range(nsp))
    dil = tuple(b.ch.pick([1, 1, 2]) for _ in range(nsp))
    padding = b.ch.pick(["'SAME'", "'VALID'", "explicit"])
    if padding == "explicit":
        padding = str(tuple((b.ch.int(0, 2), b.ch.int(0, 2)) for _ in range(nsp)))
    extra = ", lhs_dilation=(2,) * %d" % nsp if b.ch.coin(0.1) else ""
    fmt = (f"lax.conv_general_dilated({{0}}, 0.3 * {{1}}, {strides}, {padding}, rhs_dilation={dil}"
           f"{extra}, dimension_numbers={(lhs, rhs, out)}, feature_group_count={groups})")
    return bool(b.add("conv", fmt, [x, k]))


def pool(b: Builder) -> bool:
    x = b.pick(lambda v: v.dtype == "f32" and v.rank in (3, 4))
    if x is None:
        x = b.new_input((b.ch.int(1, 3),) + tuple(b.ch.int(3, 10) for _ in range(b.ch.int(1, 2))) + (2,))
    nsp = x.rank - 2
    win = (1,) + tuple(b.ch.int(1, 3) for _ in range(nsp)) + (1,)
    st = (1,) + tuple(b.ch.int(1, 2) for _ in range(nsp)) + (1,)
    pad = b.ch.pick(["'SAME'", "'VALID'"])
    op, init = b.ch.pick([("lax.max", "-jnp.inf"), ("lax.add", "0.0"), ("lax.min", "jnp.inf")])
    return bool(b.add("pool", f"lax.reduce_window({{0}}, {init}, {op}, {win}, {st}, {pad})", [x]))


def _body(b: Builder, var: str) -> str:
    return b.ch.pick(UNARY).replace("{0}", var)


def scan(b: Builder) -> bool:
    x = b.pick_float(1, 3)
    c = f"(c * 0.5 + {_body(b, 'r')})"
    y = b.ch.pick(["(c + r)", f"({_body(b, 'c')} * r)", "(c * r)"])
    if b.ch.coin(0.2) and x.rank >= 2:
        axes = list(b.axes)
        spec = (b.ch.pick(axes),) + (None,) * (x.rank - 2)
        c = f"gshard.mesh_split({c}, {spec})"
    init = b.pick(lambda v: v.dtype == "f32" and v.shape == x.shape[1:])
    args = [x] + ([init] if init is not None else [])
    init_s = "{1}" if init is not None else "jnp.zeros_like({0}[0])"
    rev = b.ch.coin(0.3)
    return bool(b.add("scan", f"lax.scan(lambda c, r: ({c}, {y}), {init_s}, {{0}}, reverse={rev})",
                      args))


def while_(b: Builder) -> bool:
    x = b.pick_float()
    src = "lax.stop_gradient({0})" if b.grad else "{0}"
    k = b.ch.int(1, 4)
    cond = b.ch.pick([f"s[0] < {k}", f"(s[0] < {k + 2}) & (jnp.sum(jnp.abs(s[1])) < 1e3)"])
    body = f"(s[0] + 1, {_body(b, 's[1]')} * 1.1 + 0.1)"
    return bool(b.add("while", f"lax.while_loop(lambda s: {cond}, lambda s: {body}, (0, {src}))[1]",
                      [x]))


def cond(b: Builder) -> bool:
    x = b.pick_float()
    p = b.pick(lambda v: v.dtype == "f32") or x
    f1, f2 = _body(b, "t"), f"({_body(b, 't')} * t)"
    if b.ch.coin(0.3):
        f3 = _body(b, "t")
        idx = "jnp.clip(jnp.sum({1} > 0), 0, 2)"
        fmt = f"lax.switch({idx}, [lambda t: {f1}, lambda t: {f2}, lambda t: {f3}], {{0}})"
        return bool(b.add("cond", fmt, [x, p]))
    fmt = f"lax.cond(jnp.sum({{1}}) > 0, lambda t: {f1}, lambda t: {f2}, {{0}})"
    return bool(b.add("cond", fmt, [x, p]))
