"""Sharding pictures: which device holds which tile of a tensor, as a text grid and a PNG.

A spec ``ShardingSpec(dims=((...), ...), partial=(...))`` splits dim ``d`` over the mesh axes in
``dims[d]`` (first axis major). Device ``p`` (row-major flat position over the mesh axes, as
``jax.sharding.Mesh`` numbers them) has mesh coordinates ``coords(p)``; its tile index on dim
``d`` is the linear index of its coordinates on ``dims[d]``. Devices that differ only on axes
the spec does not use hold the same tile (replicas); ``partial`` axes hold partial sums.

The grid shows the sharded dims (rows: all sharded dims but the last, major first; columns: the
last sharded dim); a replicated tensor is one cell holding every device.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    index: tuple[int, ...]              # tile index per tensor dim
    ranges: tuple[tuple[int, int], ...]  # [start, stop) per tensor dim (clipped: uneven dims)
    devices: tuple[int, ...]            # flat device positions holding it


def _coords(p: int, shape) -> tuple[int, ...]:
    out = []
    for s in reversed(shape):
        out.append(p % s)
        p //= s
    return tuple(reversed(out))


def device_tiles(spec, shape, mesh_names, mesh_shape) -> list[Tile]:
    """Every distinct tile of a tensor of ``shape`` under ``spec`` and the devices holding it,
    in tile-index order."""
    sizes = dict(zip(mesh_names, mesh_shape))
    pos = {n: i for i, n in enumerate(mesh_names)}
    dims = list(spec.dims) + [()] * (len(shape) - len(spec.dims))
    counts = [math.prod(sizes[a] for a in axes) for axes in dims]
    tiles: dict[tuple, list] = {}
    for p in range(math.prod(mesh_shape)):
        c = _coords(p, mesh_shape)
        idx = []
        for axes in dims:
            k = 0
            for a in axes:
                k = k * sizes[a] + c[pos[a]]
            idx.append(k)
        tiles.setdefault(tuple(idx), []).append(p)
    out = []
    for idx in sorted(tiles):
        rng = []
        for n, k, cnt in zip(shape, idx, counts):
            step = -(-n // cnt) if cnt else n
            rng.append((min(k * step, n), min((k + 1) * step, n)))
        out.append(Tile(idx, tuple(rng), tuple(tiles[idx])))
    return out


def _grid_dims(spec, rank):
    sharded = [d for d in range(rank) if d < len(spec.dims) and spec.dims[d]]
    if not sharded:
        return [], []
    if sharded == [0] and rank >= 2:
        return [0], []
    return sharded[:-1], sharded[-1:]


def _label(dims, tile) -> str:
    return " ".join(f"[{tile.ranges[d][0]}:{tile.ranges[d][1]})" for d in dims)


def _device_name(p: int, device_ids) -> str:
    return f"d{device_ids[p] if device_ids is not None else p}"


def text_grid(name, spec, shape, dtype, mesh_names, mesh_shape, device_ids=None,
              max_cols: int = 16) -> str:
    """A terminal picture of ``spec`` on the mesh: one cell per tile, listing its devices."""
    tiles = device_tiles(spec, shape, mesh_names, mesh_shape)
    rows_d, cols_d = _grid_dims(spec, len(shape))
    mesh = " ".join(f"{n}={s}" for n, s in zip(mesh_names, mesh_shape))
    head = [f"{name}: {dtype}{list(shape)}  spec {spec}  on mesh {mesh}"]
    partial = tuple(getattr(spec, "partial", ()) or ())
    if partial:
        head.append(f"  partial sums over {list(partial)}: each cell's devices hold summands")
    row_keys = sorted({tuple(t.index[d] for d in rows_d) for t in tiles})
    col_keys = sorted({tuple(t.index[d] for d in cols_d) for t in tiles})
    cell = {(tuple(t.index[d] for d in rows_d), tuple(t.index[d] for d in cols_d)): t
            for t in tiles}
    texts = {k: ",".join(_device_name(p, device_ids) for p in t.devices) for k, t in cell.items()}
    width = max(len(s) for s in texts.values())
    row_lab = {r: (("dims " if len(rows_d) > 1 else "dim ") + ",".join(map(str, rows_d)) + " "
                   + _label(rows_d, cell[(r, col_keys[0])])) if rows_d else "" for r in row_keys}
    rw = max(len(s) for s in row_lab.values())
    shown = col_keys[:max_cols]
    col_lab = {c: _label(cols_d, cell[(row_keys[0], c)]) if cols_d else "all columns"
               for c in shown}
    width = max([width] + [len(s) for s in col_lab.values()])
    if cols_d:
        head.append(f"{'':<{rw}}  columns: dim {cols_d[0]}")
    head.append(f"{'':<{rw}} " + " ".join(f"{col_lab[c]:^{width}}" for c in shown)
                + (" ..." if len(col_keys) > max_cols else ""))
    sep = f"{'':<{rw}} " + "+".join("-" * width for _ in shown)
    lines = head + [sep]
    for r in row_keys:
        lines.append(f"{row_lab[r]:<{rw}} " + "|".join(f"{texts[(r, c)]:^{width}}" for c in shown)
                     + (" ..." if len(col_keys) > max_cols else ""))
    lines.append(sep)
    n_dev = math.prod(mesh_shape)
    per = len(tiles[0].devices)
    lines.append(f"  {len(tiles)} tiles of {list(_tile_shape(tiles[0]))}, each on {per} of "
                 f"{n_dev} devices" + (" (replicated)" if len(tiles) == 1 else ""))
    return "\n".join(lines)


def _tile_shape(t: Tile):
    return tuple(b - a for a, b in t.ranges)


def draw(ax, name, spec, shape, dtype, mesh_names, mesh_shape, device_ids=None):
    """Draw the grid on a matplotlib Axes: one cell per tile (the text grid's layout), coloured
    per tile and labelled with its index ranges and devices."""
    import matplotlib
    from matplotlib.patches import Rectangle

    tiles = device_tiles(spec, shape, mesh_names, mesh_shape)
    rows_d, cols_d = _grid_dims(spec, len(shape))
    row_keys = sorted({tuple(t.index[d] for d in rows_d) for t in tiles})
    col_keys = sorted({tuple(t.index[d] for d in cols_d) for t in tiles})
    cmap = matplotlib.colormaps["tab20"]
    w_pt, h_pt = _cell_points(ax, len(col_keys), len(row_keys))
    per_line = 4 if w_pt > 90 else 2 if w_pt > 45 else 1
    for i, t in enumerate(tiles):
        r = row_keys.index(tuple(t.index[d] for d in rows_d))
        c = col_keys.index(tuple(t.index[d] for d in cols_d))
        ax.add_patch(Rectangle((c, r), 1, 1, facecolor=cmap(i % 20), edgecolor="black"))
        text = _tile_label(t, [_device_name(p, device_ids) for p in t.devices], per_line)
        if h_pt < 24:                                   # a flat tile: one line
            text = "  ".join(text.splitlines())
        ax.text(c + 0.5, r + 0.5, text, ha="center", va="center",
                fontsize=_fit_font(text, w_pt, h_pt))
    ax.set_xlim(0, len(col_keys))
    ax.set_ylim(len(row_keys), 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"tiles of dim {cols_d[0]}" if cols_d else "")
    ax.set_ylabel("tiles of dims " + ",".join(map(str, rows_d)) if rows_d else "")
    ax.set_title(f"{name}: {dtype}{list(shape)}\n{spec}", fontsize=9)


def _grid_size(item, mesh_names, mesh_shape) -> tuple[int, int]:
    """(rows, columns) of tiles in the picture of `item`."""
    _, spec, shape, _ = item
    rows_d, cols_d = _grid_dims(spec, len(shape))
    tiles = device_tiles(spec, shape, mesh_names, mesh_shape)
    return (len({tuple(t.index[d] for d in rows_d) for t in tiles}),
            len({tuple(t.index[d] for d in cols_d) for t in tiles}))


def _cell_points(ax, cols: int, rows: int) -> tuple[float, float]:
    """Width and height of one tile's cell, in points."""
    fig, box = ax.figure, ax.get_position()
    w, h = fig.get_size_inches()
    return box.width * w * 72 / max(cols, 1), box.height * h * 72 / max(rows, 1)


def _tile_label(t, devs: list[str], per_line: int) -> str:
    """Index ranges (one dim per line when narrow) and devices, `per_line` to a line."""
    keep = 16 if per_line >= 4 else 4 * per_line
    lab = "\n".join(",".join(devs[j:j + per_line]) for j in range(0, min(len(devs), keep), per_line))
    if len(devs) > keep:
        lab += f"\n(+{len(devs) - keep})"
    sep = " " if per_line >= 2 else "\n"
    return "[" + sep.join(f"{a}:{b}" for a, b in t.ranges) + "]\n" + lab


def _fit_font(text: str, w_pt: float, h_pt: float) -> float:
    """The largest font size up to 7 at which `text` fits its cell (not below 3)."""
    lines = text.splitlines()
    longest = max(len(x) for x in lines)
    return max(3.0, min(7.0, 0.9 * w_pt / (0.62 * longest), 0.9 * h_pt / (1.25 * len(lines))))


def png_figure(items, mesh_names, mesh_shape, device_ids=None):
    """The sharding pictures of ``items`` ((name, spec, shape, dtype) tuples), one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(items))
    cols = min(n, 3)
    rows = -(-n // cols)
    grids = [_grid_size(it, mesh_names, mesh_shape) for it in items] or [(1, 1)]
    panel_w = min(max(5.0, 0.75 * max(c for _, c in grids)), 12.0)   # narrow tiles: wider
    panel_h = min(max(4.0, 0.3 * max(r for r, _ in grids)), 10.0)    # flat tiles: taller
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, panel_h * rows), squeeze=False)
    for ax, item in itertools.zip_longest(axes.flat, items):
        if item is None:
            ax.axis("off")
            continue
        draw(ax, *item, mesh_names, mesh_shape, device_ids)
    mesh = " ".join(f"{a}={s}" for a, s in zip(mesh_names, mesh_shape))
    fig.suptitle(f"which device holds which tile (mesh {mesh})")
    fig.tight_layout()
    return fig


def save_png(path, items, mesh_names, mesh_shape, device_ids=None) -> None:
    """``items``: (name, spec, shape, dtype) tuples, one panel each."""
    import matplotlib.pyplot as plt
    fig = png_figure(items, mesh_names, mesh_shape, device_ids)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----- naming the values of a Lowered -----------------------------------------------------------
def value_table(low, arg_names=None) -> list[tuple[str, object]]:
    """(name, Value) for every input, equation output and output of ``low``: inputs are named
    ``in[i]`` (and by ``arg_names[i]`` when given), equation outputs ``#k`` (``#k.j`` for a
    second result), outputs ``out[i]``."""
    rows = []
    for i, v in enumerate(low.graph.invars):
        rows.append((f"in[{i}]", v))
        if arg_names and i < len(arg_names) and arg_names[i]:
            rows.append((arg_names[i], v))
    for e in low.graph.eqns:
        for j, o in enumerate(e.outputs):
            rows.append((f"#{e.index}" + (f".{j}" if j else ""), o))
    for i, v in enumerate(low.graph.outvars):
        if hasattr(v, "aval") and type(v).__name__ == "Value":
            rows.append((f"out[{i}]", v))
    return rows


def find_value(low, key: str, arg_names=None):
    """The (name, Value) ``key`` names: ``in[i]``, ``out[i]``, ``#k``, an argument name or a
    unique substring of one (pytree paths like ``encoder/layer_1/ffn/wi``), or an integer
    (the i-th input)."""
    table = value_table(low, arg_names)
    if key.isdigit():
        key = f"in[{key}]"
    exact = [(n, v) for n, v in table if n == key]
    if exact:
        return exact[0]
    if arg_names:
        hits = [(n, v) for n, v in zip(arg_names, low.graph.invars) if n and key in n]
        if len(hits) > 1:  # prefer the one shortest name (params/... over opt_state/.../...)
            best = min(len(n) for n, _ in hits)
            short = [h for h in hits if len(h[0]) == best]
            hits = short if len(short) == 1 else hits
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise KeyError(f"{key!r} matches {len(hits)} inputs: "
                           + ", ".join(n for n, _ in hits[:8]) + (" ..." if len(hits) > 8 else ""))
    raise KeyError(f"no value named {key!r}; use in[i], out[i], #k (an equation's output) or an "
                   f"argument name" + (f" such as {arg_names[0]!r}" if arg_names else ""))


def picture_of(low, key: str, arg_names=None, *, spec_of=None):
    """(name, spec, shape, dtype) for the value ``key`` names (see :func:`find_value`)."""
    name, v = find_value(low, key, arg_names)
    spec = low.prop.spec(v)
    label = name if name == key else f"{key} ({name})"
    return label, spec, tuple(v.aval.shape), str(v.aval.dtype)


def device_ids_of(low):
    """Real device ids (row-major over the mesh) or None for an abstract mesh."""
    mesh = low.mesh
    if mesh.is_abstract:
        return None
    return [d.id for d in np.asarray(mesh.mesh.devices).flat]
