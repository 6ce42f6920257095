"""Indexing families: take, take_along_axis, .at[].set/add, dynamic_slice/update, sort, top_k,
one_hot. Ids are new int inputs (in range, or out of range with an explicit mode) or values the
program computed (argmax results, clipped)."""
from __future__ import annotations

from .builder import Builder


def _ids(b: Builder, n: int, shape, *, out_of_range: bool = False):
    """(an expression with one `%s` for the ids operand, the ids value): ints in [0, n), or in
    [-2, n + 2) when out_of_range; sometimes an int value the program computed, clipped."""
    made = b.pick(lambda v: v.dtype == "i32" and v.shape == tuple(shape) and v not in b.inputs)
    if made is not None and b.ch.coin(0.3):
        return f"jnp.clip(%s, 0, {n - 1})", made
    lo, hi = (-2, n + 2) if out_of_range else (0, n)
    return "%s", b.new_input(shape, "i32", lo, hi)


def take(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1 and v.dtype == "f32") or b.pick_float(1)
    d = b.ch.int(0, x.rank - 1)
    shape = tuple(b.ch.int(1, 6) for _ in range(b.ch.int(0, 2)))
    mode = b.ch.pick([None, None, "clip", "fill"])
    tmpl, ids = _ids(b, x.shape[d], shape, out_of_range=mode is not None)
    i = tmpl % "{1}"
    if mode is None and d == 0 and b.ch.coin(0.3):
        return bool(b.add("take", f"{{0}}[{i}]", [x, ids]))
    m = f", mode='{mode}'" if mode else ""
    return bool(b.add("take", f"jnp.take({{0}}, {i}, axis={d}{m})", [x, ids]))


def take_along_axis(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1 and v.dtype == "f32") or b.pick_float(1)
    d = b.ch.int(0, x.rank - 1)
    shape = list(x.shape)
    shape[d] = b.ch.int(1, 6)
    tmpl, ids = _ids(b, x.shape[d], shape)
    return bool(b.add("take_along_axis",
                      f"jnp.take_along_axis({{0}}, {tmpl % '{1}'}, axis={d})", [x, ids]))


def scatter(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1 and v.dtype == "f32") or b.pick_float(1)
    how = b.ch.pick(["add", "set", "add", "max"] + ([] if b.grad else ["mul"]))
    if b.ch.coin(0.2):
        i = b.ch.int(0, x.shape[0] - 1)
        return bool(b.add("scatter", f"{{0}}.at[{i}].{how}(1.5)", [x]))
    d = 0 if x.rank == 1 or b.ch.coin(0.6) else 1
    k = b.ch.int(1, 5)
    tmpl, ids = _ids(b, x.shape[d], (k,))
    upd_shape = x.shape[:d] + (k,) + x.shape[d + 1:]
    u = b.new_input(upd_shape) if b.ch.coin(0.7) else "2.0"
    where = tmpl % "{1}" if d == 0 else ":, " + tmpl % "{1}"
    if u == "2.0":
        return bool(b.add("scatter", f"{{0}}.at[{where}].{how}(2.0)", [x, ids]))
    return bool(b.add("scatter", f"{{0}}.at[{where}].{how}({{2}})", [x, ids, u]))


def dynamic_slice(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1 and v.dtype == "f32") or b.pick_float(1)
    sizes = tuple(b.ch.int(1, n) for n in x.shape)
    args, starts = [x], []
    for n in x.shape:
        if b.ch.coin(0.5):
            s = b.new_input((), "i32", -2, n + 2)  # may need clamping
            starts.append("{%d}" % len(args))
            args.append(s)
        else:
            starts.append(str(b.ch.int(0, n)))
    st = "(" + ", ".join(starts) + ",)"
    if b.ch.coin(0.5):
        return bool(b.add("dynamic_slice", f"lax.dynamic_slice({{0}}, {st}, {sizes})", args))
    u = b.new_input(sizes)
    fmt = f"lax.dynamic_update_slice({{0}}, {{{len(args)}}}, {st})"
    return bool(b.add("dynamic_slice", fmt, args + [u]))


def sort(b: Builder) -> bool:
    x = b.pick_float(1)
    d = b.ch.int(0, x.rank - 1)
    fn = b.ch.pick(["jnp.sort", "jnp.sort", "jnp.argsort"])
    return bool(b.add("sort", f"{fn}({{0}}, axis={d})", [x]))


def top_k(b: Builder) -> bool:
    x = b.pick_float(1)
    k = b.ch.int(1, x.shape[-1])
    return bool(b.add("top_k", f"lax.top_k({{0}}, {k})", [x]))


def one_hot(b: Builder) -> bool:
    k = b.ch.int(2, 8)
    x = b.pick(lambda v: v.dtype == "i32" and 1 <= v.rank <= 2)
    if x is None:
        x = b.new_input(b.shape(b.ch.int(1, 2)), "i32", 0, k)
    return bool(b.add("one_hot", f"jax.nn.one_hot({{0}}, {k})", [x]))
