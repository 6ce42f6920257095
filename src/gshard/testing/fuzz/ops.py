"""Op families of the random programs: one generator per rule family `gshard rules` lists.

Each family draws its operands from the builder's pool (or new inputs) and adds one statement;
the builder's eval_shape check drops a draw JAX rejects, and the caller tries again.
"""
from __future__ import annotations

import math

from .builder import Builder

UNARY = ["jnp.sin({0})", "jnp.cos({0})", "jnp.tanh({0})", "jax.nn.relu({0})", "jax.nn.sigmoid({0})",
         "jnp.exp(jnp.tanh({0}))", "(0.5 * {0} * {0})", "jnp.abs({0})", "(-{0})",
         "jnp.log1p(jnp.abs({0}))", "jax.nn.gelu({0})"]
BINARY = ["({0} + {1})", "({0} - {1})", "({0} * {1})", "({0} / (jnp.abs({1}) + 1.0))",
          "jnp.maximum({0}, {1})", "jnp.minimum({0}, {1})", "jnp.where({0} > {1}, {0}, {1})"]
LETTERS = "abcdefghijklmnop"


def _axes_tuple(b: Builder, rank: int, nonempty: bool = True) -> tuple[int, ...]:
    axes = tuple(d for d in range(rank) if b.ch.coin(0.5))
    if nonempty and not axes and rank:
        axes = (b.ch.int(0, rank - 1),)
    return axes


# ----- elementwise ------------------------------------------------------------------------------
def elementwise(b: Builder) -> bool:
    kind = b.ch.int(0, 5)
    if kind == 0:
        x = b.pick_float()
        return bool(b.add("elementwise", b.ch.pick(UNARY), [x]))
    if kind == 1:
        x = b.pick(lambda v: v.dtype != "f32")
        if x is not None:
            return bool(b.add("elementwise", "{0}.astype(jnp.float32)", [x]))
        x = b.pick_float()
        return bool(b.add("elementwise", "jnp.floor({0} * 2.0).astype(jnp.int32)", [x]))
    if kind == 2:
        x = b.pick_float()
        y = b.pick(lambda v: v.dtype == "f32" and v.shape == x.shape and v is not x)
        c = b.pick(lambda v: v.dtype == "bool" and v.shape == x.shape)
        if c is not None and y is not None:
            return bool(b.add("elementwise", "jnp.where({0}, {1}, {2})", [c, x, y]))
        return bool(b.add("elementwise", "({0} > 0.1)", [x]))
    x = b.pick_float()
    return bool(b.add("elementwise", b.ch.pick(BINARY), [x, _partner(b, x)]))


def _partner(b: Builder, x):
    """The other operand of a binary op: itself, a same-shape value, a broadcastable new input,
    a scalar input, or a literal."""
    kind = b.ch.int(0, 4)
    if kind == 0:
        return x
    if kind == 1:
        y = b.pick(lambda v: v.dtype == "f32" and v.shape == x.shape and v is not x)
        if y is not None:
            return y
    if kind == 2 and x.rank:
        keep = b.ch.int(0, x.rank)
        shape = [1 if b.ch.coin(0.4) else n for n in x.shape[x.rank - keep:]]
        return b.new_input(shape)
    if kind == 3:
        return b.new_input(b.ch.pick([(), (1,)]))
    return "1.5"


# ----- einsum / dot_general ---------------------------------------------------------------------
def einsum(b: Builder) -> bool:
    x = b.pick_float(1, 3)
    roles = [b.ch.pick("bcf") for _ in range(x.rank)]  # batch, contract, lhs-free
    letters = iter(LETTERS)
    lhs = [next(letters) for _ in roles]
    if b.ch.coin(0.2) and "f" not in roles:
        return bool(b.add("einsum", f"jnp.einsum('{''.join(lhs)},{''.join(lhs)}->"
                          f"{''.join(l for l, r in zip(lhs, roles) if r == 'b')}', {{0}}, {{0}})", [x]))
    shared = [(l, n) for l, r, n in zip(lhs, roles, x.shape) if r in "bc"]
    free = [(next(letters), b.ch.int(1, 8)) for _ in range(b.ch.int(0, 2))]
    rhs = shared + free
    order = list(range(len(rhs)))
    for i in range(len(order) - 1, 0, -1):  # a drawn shuffle
        j = b.ch.int(0, i)
        order[i], order[j] = order[j], order[i]
    rhs = [rhs[i] for i in order]
    if math.prod(n for _, n in rhs) > 2048:
        return False
    y = b.new_input(tuple(n for _, n in rhs))
    out = [l for l, r in zip(lhs, roles) if r == "b"] + [l for l, r in zip(lhs, roles) if r == "f"]
    out += [l for l, _ in free]
    spec = f"{''.join(lhs)},{''.join(l for l, _ in rhs)}->{''.join(out)}"
    return bool(b.add("einsum", f"jnp.einsum('{spec}', {{0}}, {{1}})", [x, y]))


# ----- reductions -------------------------------------------------------------------------------
def reduce(b: Builder) -> bool:
    x = b.pick_float(1)
    axes = _axes_tuple(b, x.rank)
    keep = b.ch.coin(0.3)
    op = b.ch.int(0, 8)
    if op <= 4:
        fn = ["jnp.sum", "jnp.mean", "jnp.max", "jnp.min", "jax.nn.logsumexp"][op]
        return bool(b.add("reduce", f"{fn}({{0}}, axis={axes}, keepdims={keep})", [x]))
    if op <= 6:
        fn = "jnp.argmax" if op == 5 else "jnp.argmin"
        return bool(b.add("reduce", f"{fn}({{0}}, axis={axes[0]}, keepdims={keep})", [x]))
    if op == 7:
        return bool(b.add("reduce", f"jnp.prod(1.0 + 0.1 * jnp.tanh({{0}}), axis={axes})", [x]))
    fn = b.ch.pick(["jnp.any", "jnp.all"])
    return bool(b.add("reduce", f"{fn}({{0}} > 0.0, axis={axes})", [x]))


# ----- shape ops --------------------------------------------------------------------------------
def _factor(b: Builder, n: int) -> tuple[int, ...]:
    out = []
    while n > 1 and len(out) < 3:
        ds = [d for d in range(2, n + 1) if n % d == 0]
        d = b.ch.pick(ds)
        out.append(d)
        n //= d
    if n > 1:
        out.append(n)
    return tuple(out) or (1,)


def _new_shape(b: Builder, shape) -> tuple[int, ...]:
    kind = b.ch.int(0, 3)
    s = list(shape)
    if kind == 0 and len(s) >= 2:  # merge two adjacent dims
        i = b.ch.int(0, len(s) - 2)
        return tuple(s[:i] + [s[i] * s[i + 1]] + s[i + 2:])
    if kind == 1 and s:  # split a dim
        i = b.ch.int(0, len(s) - 1)
        return tuple(s[:i] + list(_factor(b, s[i])) + s[i + 1:])
    if kind == 2:  # insert a unit dim
        i = b.ch.int(0, len(s))
        return tuple(s[:i] + [1] + s[i:])
    return _factor(b, math.prod(s))  # any factorisation of the size


def _perm(b: Builder, rank: int) -> tuple[int, ...]:
    p = list(range(rank))
    for i in range(rank - 1, 0, -1):
        j = b.ch.int(0, i)
        p[i], p[j] = p[j], p[i]
    return tuple(p)


def reshape(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1) or b.pick_float(1)
    new = _new_shape(b, x.shape)
    if b.ch.coin(0.3) and x.rank >= 2:
        return bool(b.add("reshape", f"lax.reshape({{0}}, {new}, dimensions={_perm(b, x.rank)})", [x]))
    return bool(b.add("reshape", f"jnp.reshape({{0}}, {new})", [x]))


def transpose(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 2) or b.pick_float(2)
    return bool(b.add("transpose", f"jnp.transpose({{0}}, {_perm(b, x.rank)})", [x]))


def broadcast(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank <= 3) or b.pick_float(0, 3)
    k = b.ch.int(1, 6)
    kind = b.ch.int(0, 2)
    if kind == 0:
        return bool(b.add("broadcast", f"jnp.broadcast_to({{0}}, {(k,) + x.shape})", [x]))
    if kind == 1:
        return bool(b.add("broadcast", f"jnp.broadcast_to({{0}}[..., None], {x.shape + (k,)})", [x]))
    return bool(b.add("broadcast", f"jnp.expand_dims({{0}}, {b.ch.int(0, x.rank)})", [x]))


def concatenate(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1) or b.pick_float(1)
    d = b.ch.int(0, x.rank - 1)
    if b.ch.coin(0.4):
        return bool(b.add("concatenate", f"jnp.concatenate([{{0}}, {{0}}], axis={d})", [x]))
    shape = list(x.shape)
    shape[d] = b.ch.int(1, 6)
    y = b.new_input(shape, x.dtype, 0, 5) if x.dtype != "bool" else x
    return bool(b.add("concatenate", f"jnp.concatenate([{{0}}, {{1}}], axis={d})", [x, y]))


def slice_(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1) or b.pick_float(1)
    idx = []
    for n in x.shape:
        if b.ch.coin(0.5):
            idx.append(":")
            continue
        lo, hi = b.ch.int(0, n - 1), b.ch.int(1, n)
        st = b.ch.pick([1, 1, 2, 3, -1])
        if st < 0:
            idx.append("::-1")
        else:
            idx.append(f"{min(lo, hi - 1)}:{hi}:{st}")
    if b.ch.coin(0.2):
        idx[0] = str(b.ch.int(0, x.shape[0] - 1))  # an int index drops the dim
    return bool(b.add("slice", f"{{0}}[{', '.join(idx)}]", [x]))


def pad(b: Builder) -> bool:
    x = b.pick_float(1)
    if b.ch.coin(0.5):
        cfg = tuple((b.ch.int(-2, 3), b.ch.int(-2, 3), b.ch.int(0, 2)) for _ in x.shape)
        return bool(b.add("pad", f"lax.pad({{0}}, 0.0, {cfg})", [x]))
    widths = tuple((b.ch.int(0, 3), b.ch.int(0, 3)) for _ in x.shape)
    mode = b.ch.pick(["constant", "edge", "reflect", "wrap"])
    return bool(b.add("pad", f"jnp.pad({{0}}, {widths}, mode='{mode}')", [x]))


def cumulative(b: Builder) -> bool:
    x = b.pick_float(1)
    d, rev = b.ch.int(0, x.rank - 1), b.ch.coin(0.4)
    fn = b.ch.pick(["lax.cumsum({0}", "lax.cummax({0}", "lax.cummin({0}", "lax.cumlogsumexp({0}",
                    "lax.cumprod(1.0 + 0.1 * jnp.tanh({0})"])
    return bool(b.add("cumulative", f"{fn}, axis={d}, reverse={rev})", [x]))


def softmax(b: Builder) -> bool:
    x = b.pick_float(1)
    fn = b.ch.pick(["jax.nn.softmax", "jax.nn.log_softmax"])
    return bool(b.add("softmax", f"{fn}({{0}}, axis={b.ch.int(0, x.rank - 1)})", [x]))


def random(b: Builder) -> bool:
    """Random numbers shaped like a value (drawn per shard when that value is split)."""
    x = b.pick_float(1)
    seed = b.ch.int(0, 99)
    key = b.ch.pick([f"jax.random.key({seed})", f"jax.random.fold_in(jax.random.key({seed}), 7)",
                     f"jax.random.split(jax.random.key({seed}))[1]", f"jax.random.PRNGKey({seed})"])
    draw = b.ch.pick([f"jax.random.uniform({key}, {{0}}.shape)",
                      f"jax.random.normal({key}, {{0}}.shape)",
                      f"jax.random.bernoulli({key}, 0.7, {{0}}.shape).astype(jnp.float32)"])
    return bool(b.add("random", f"({{0}} * {draw})", [x]))
