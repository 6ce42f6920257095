"""`gshard explain`: what gshard does to a function on a mesh, before anything runs.

    gshard explain MODULE:FUNCTION --mesh data=2,model=4 --args "f32[8,16] f32[16,32]"
    gshard explain --preset tiny --mesh data=2,model=4 --show embed --png shard.png

Prints every value's spec with its provenance, every collective (kind, mesh axes, bytes per
device, reason, the user's source line), a WARNING per full-replication reshard, and a sharding
picture (text grid; PNG with --png) of each --show value. A mesh larger than the devices present
is built as a jax.sharding.AbstractMesh (nothing runs; shapes only).
"""
from __future__ import annotations

import argparse
import importlib
import math
import re
import sys

DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
          "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64", "u8": "uint8",
          "u16": "uint16", "u32": "uint32", "u64": "uint64", "bool": "bool", "pred": "bool"}
_ARG = re.compile(r"^([A-Za-z0-9]+)\[([0-9,\s]*)\]$")


from gshard.mesh import MeshSpecError as SpecError  # noqa: E402  (one error for --mesh / --args)


def parse_mesh_spec(text: str):
    """The one mesh spelling (gshard.mesh.parse_mesh_spec)."""
    from gshard.mesh import parse_mesh_spec as parse
    return parse(text)


def build_mesh(text: str):
    """A real jax Mesh (Auto axes) when enough devices exist, else an AbstractMesh."""
    import jax
    from jax.sharding import AbstractMesh, AxisType

    names, shape = parse_mesh_spec(text)
    auto = (AxisType.Auto,) * len(names)
    if math.prod(shape) <= len(jax.devices()):
        return jax.make_mesh(shape, names, axis_types=auto)
    return AbstractMesh(shape, names, axis_types=auto)


def _shape_struct(tok: str):
    """``"f32[8,16]"`` -> ShapeDtypeStruct."""
    import jax
    import jax.numpy as jnp

    m = _ARG.match(tok.strip()) if isinstance(tok, str) else None
    if not m:
        raise SpecError(f"--args: {tok!r} is not DTYPE[d0,d1,...] (e.g. f32[8,16], i32[], "
                        f"bf16[4,4])")
    dt, dims = m.groups()
    if dt not in DTYPES and dt not in DTYPES.values():
        raise SpecError(f"--args: unknown dtype {dt!r} in {tok!r}; use one of {sorted(DTYPES)}")
    shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
    return jax.ShapeDtypeStruct(shape, jnp.dtype(DTYPES.get(dt, dt)))


def parse_args_spec(text: str) -> list:
    """``"f32[8,16] i32[4] f32[]"`` -> ShapeDtypeStructs; a JSON list is one pytree per argument
    (``'[{"w": "f32[16,32]", "b": "f32[32]"}, "f32[8,16]"]'``: dicts and lists of shapes)."""
    import json

    text = (text or "").strip()
    if text.startswith(("[", "{")):
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"--args is not valid JSON ({e.msg} at column {e.colno}); e.g. "
                            f"'[{{\"w\": \"f32[16,32]\"}}, \"f32[8,16]\"]'") from None
        return [_tree(a) for a in (tree if isinstance(tree, list) else [tree])]
    return [_shape_struct(tok) for tok in re.findall(r"[A-Za-z0-9]+\[[^\]]*\]|\S+", text)]


def _tree(node):
    if isinstance(node, dict):
        return {k: _tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_tree(v) for v in node]
    return _shape_struct(node)


def args_from(target: str) -> list:
    """--args-from MODULE:FUNCTION: that function's return value (a tuple of the arguments, each
    a pytree of arrays or ShapeDtypeStructs), as ShapeDtypeStructs."""
    import jax
    import numpy as np

    got = load_function(target, "--args-from")()
    if not isinstance(got, (tuple, list)):
        raise SpecError(f"--args-from {target} must return a tuple of the arguments, got "
                        f"{type(got).__name__}")
    return [jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), a)
            for a in got]


def load_function(target: str, what: str = "MODULE:FUNCTION"):
    """The function `target` names, importing from the current directory first (as python -m
    does)."""
    import os
    if ":" not in target:
        raise SpecError(f"{what} {target!r} is not MODULE:FUNCTION (e.g. mypkg.model:step)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    mod, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as e:
        raise SpecError(f"{what} {target!r}: cannot import {mod!r} ({e}); run from the directory "
                        f"that holds it or add it to PYTHONPATH") from None
    except AttributeError:
        raise SpecError(f"{what} {target!r}: module {mod!r} has no {attr!r}") from None
    return obj


def check_arity(fn, fargs, target: str):
    """The function takes this many positional arguments, or a one-line error naming them."""
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*fargs)
    except TypeError:
        raise SpecError(f"--args gives {len(fargs)} argument(s) but {target} takes "
                        f"({', '.join(sig.parameters)}); give one shape per argument, e.g. "
                        f"--args \"f32[8,16] f32[16,32]\"") from None


def _arg_names(fn, args) -> list[str]:
    """A name per flattened input: the parameter name, with the pytree path under it."""
    import inspect

    import jax

    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    names = []
    for i, a in enumerate(args):
        base = params[i] if i < len(params) else f"arg{i}"
        for path, _ in jax.tree_util.tree_flatten_with_path(a)[0]:
            names.append(base + "".join(_key(k) for k in path))
    return names


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return f"/{getattr(k, attr)}"
    return f"/{k}"


def preset_problem(name: str, mesh, *, optimizer: str = "adam", batch_per_shard: int = 2,
                   length: int = 8):
    """(train step, ShapeDtypeStruct args, arg names) for a preset on ``mesh``.

    Axes: a 1-D mesh is the paper's (data = expert = that axis); otherwise axes named data /
    model / expert are used as such, else the first axis is data (and expert), the second model.
    Experts are rounded up to a multiple of the expert axis size."""
    import jax
    import jax.numpy as jnp

    from ..models import MeshAxes, get_preset
    from ..train.step import init_train_state, make_optimizer, make_train_step

    names = tuple(mesh.axis_names)
    sizes = dict(zip(names, (int(mesh.shape[n]) for n in names)))
    if len(names) == 1:
        axes = MeshAxes(data=names[0], expert=names[0])
    else:
        data = "data" if "data" in names else names[0]
        model = "model" if "model" in names else next(n for n in names if n != data)
        expert = "expert" if "expert" in names else data
        axes = MeshAxes(data=data, model=model, expert=expert)
    cfg = get_preset(name)
    e_size = sizes[axes.expert]
    experts = -(-cfg.moe.num_experts // e_size) * e_size
    cfg = get_preset(name, num_experts=experts, dropout=0.0, second_expert_policy="all",
                     data=axes.data, model=axes.model, expert=axes.expert)
    opt = make_optimizer(optimizer)
    params, state = jax.eval_shape(lambda k: init_train_state(cfg, opt, k), jax.random.PRNGKey(0))
    B = batch_per_shard * sizes[axes.data]
    ids = jax.ShapeDtypeStruct((B, length), jnp.int32)
    pad = jax.ShapeDtypeStruct((B, length), jnp.float32)
    batch = {"src": ids, "tgt_in": ids, "tgt_out": ids, "src_pad": pad, "tgt_pad": pad}
    lib = make_train_step(cfg, opt, deterministic=True)

    def train_step(params, opt_state, batch):
        return lib(params, opt_state, batch, None)
    args = (params, state, batch)
    return train_step, args, _arg_names(train_step, args)


def add_parser(sub):
    p = sub.add_parser("explain", help="specs, collectives and sharding pictures of a function",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="MODULE:FUNCTION (omit with --preset)")
    p.add_argument("--mesh", required=True, help="axis sizes, e.g. data=2,model=4")
    p.add_argument("--args", default="", help='input shapes, e.g. "f32[8,16] f32[16,32]", or a '
                   'JSON list with one pytree per argument: \'[{"w": "f32[16,32]"}, "f32[8,16]"]\'')
    p.add_argument("--args-from", metavar="MODULE:FUNCTION",
                   help="a function returning the tuple of example arguments (pytrees of arrays)")
    p.add_argument("--preset", help="explain the MoE Transformer train step of this preset "
                                    "(tiny, small, paper-12L, paper-36L)")
    p.add_argument("--show", action="append", default=[],
                   help="draw this value's sharding: an argument name (or unique part of a "
                        "pytree path), in[i], out[i], #k (equation k's output) or i; repeatable")
    p.add_argument("--png", help="write the --show pictures to this PNG file")
    p.add_argument("--no-values", action="store_true", help="omit the per-value listing")
    p.set_defaults(func=run)


def _problem(args, mesh):
    """(function, its example args, argument names) from MODULE:FUNCTION or --preset."""
    if args.preset:
        if args.target:
            raise SpecError("give MODULE:FUNCTION or --preset, not both")
        return preset_problem(args.preset, mesh)
    if not args.target:
        raise SpecError("give MODULE:FUNCTION (or --preset NAME)")
    fn = load_function(args.target)
    if args.args_from and args.args:
        raise SpecError("give --args or --args-from, not both")
    fargs = args_from(args.args_from) if args.args_from else parse_args_spec(args.args)
    check_arity(fn, fargs, args.target)
    return fn, fargs, _arg_names(fn, fargs)


def check_show(keys, names):
    """--show keys checked before anything is lowered: in[i] / i within the inputs, an argument
    name (or a part of one), or out[i] / #k (checked once the program exists)."""
    for key in keys:
        m = re.fullmatch(r"in\[(\d+)\]|(\d+)", key)
        if m:
            i = int(m.group(1) or m.group(2))
            if i >= len(names):
                raise SpecError(f"--show {key}: there are {len(names)} inputs (in[0]..in"
                                f"[{len(names) - 1}])")
        elif not re.fullmatch(r"out\[\d+\]|#\d+", key) and not any(key in n for n in names):
            raise SpecError(f"--show: no value named {key!r}; use in[i], out[i], #k or an "
                            f"argument name" + (f" such as {names[0]!r}" if names else ""))



def run(args) -> int:
    import gshard
    from gshard.explain import explain

    try:
        if args.png and not args.show:
            raise SpecError("--png needs at least one --show VALUE")
        mesh = build_mesh(args.mesh)
        fn, fargs, names = _problem(args, mesh)
        check_show(args.show, names)
    except (SpecError, ImportError, AttributeError, ValueError) as e:
        print(f"gshard explain: error: {e}", file=sys.stderr)
        return 2
    low = gshard.partition(fn, mesh).lower(*fargs)
    items = _items(args.show, low, names)
    if items is None:
        return 2
    kind = "abstract (shapes only)" if low.mesh.is_abstract else "real devices"
    print(f"# {args.preset or args.target} on mesh {args.mesh} [{kind}]")
    print(explain(low, values=not args.no_values, arg_names=names))
    return _pictures(args, low, items)


def _items(keys, low, names):
    """The --show pictures' data, or None after a one-line error (before any output)."""
    from gshard import picture
    try:
        return [picture.picture_of(low, key, names) for key in keys]
    except KeyError as e:
        print(f"gshard explain: error: --show: {e.args[0]}", file=sys.stderr)
        return None


def _pictures(args, low, items) -> int:
    """The --show text grids and the --png file."""
    from gshard import picture
    ids = picture.device_ids_of(low)
    for it in items:
        print()
        print(picture.text_grid(*it, low.mesh.names, low.mesh.shape, ids))
    if args.png:
        picture.save_png(args.png, items, low.mesh.names, low.mesh.shape, ids)
        print(f"\nwrote {args.png}")
    return 0
