"""`gshard calibrate`: measure this host with XLA itself and write a CPU hardware profile.

What runs on simulated CPU devices is XLA:CPU, many devices sharing a few cores, so the rates
that matter are XLA's, measured on a real mesh of ``num_devices`` devices:

* ``launch_s``: one call of a jitted program over the mesh (dispatch and the devices' threads);
* ``op_overhead_s``: each further kernel (a chain of tiny dependent dots, which XLA cannot fuse);
* ``flops_f32``: a sharded f32 matmul, per device; ``hbm_bw``: a sharded element-wise pass
  (read + write), per device;
* collectives: AllReduce, AllGather, ReduceScatter, AllToAll and CollectivePermute over groups
  of each size that divides the device count (a ``(D/n, n)`` mesh, the collective on the
  second axis), at per-device sizes from 4 KiB to 4 MiB (``low.collectives``' byte convention:
  operand bytes, result bytes for AllGather). The cost model interpolates these tables
  (:func:`gshard.cost.collective_time.collective_time_n`).

The profile is JSON at ``profile_path(num_devices)`` (``$GSHARD_PROFILE_DIR``, default
``~/.cache/gshard/hardware``); ``get_hardware("cpu", num_devices=D)`` uses it when it exists for
this host and device count, and otherwise a quick numpy estimate.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from .hardware import _host, _host_memory, load, profile_path, read, to_hardware  # noqa: F401

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute")
SIZES = (4 << 10, 64 << 10, 512 << 10, 4 << 20)
DIMS = (32, 256, 1024)        # the matmul grid: every (M, K, N) from these
QUICK = {"sizes": (64 << 10, 1 << 20), "dims": (32, 512), "reps": 3}


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0.0


def _best_time(fn, arg, reps: int) -> float:
    """The lower quartile of ``reps`` timed calls (robust to other jobs on the host)."""
    import jax
    jax.block_until_ready(fn(arg))                       # compile + warm up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        ts.append(time.perf_counter() - t0)
    return float(np.percentile(ts, 25))


def _sharded(mesh, shape, spec):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    return jax.device_put(jnp.ones(shape, jnp.float32), NamedSharding(mesh, spec))


def _compute_rates(mesh, reps: int) -> dict:
    """launch, per-kernel overhead, matmul FLOP/s and memory bandwidth per device."""
    import jax
    from jax.sharding import PartitionSpec as P
    D, m = mesh.size, 256
    tiny = _sharded(mesh, (D * 8, 8), P("d"))
    launch = _best_time(jax.jit(lambda x: x + 1.0), tiny, reps)
    w = np.eye(8, dtype=np.float32) * 0.5

    def chain(k):  # k dependent tiny dots: k kernels
        def f(x):
            for _ in range(k):
                x = x @ w
            return x
        return jax.jit(f)
    per_op = max(0.0, (_best_time(chain(96), tiny, reps) - _best_time(chain(8), tiny, reps)) / 88)
    a, b = _sharded(mesh, (D * m, m), P("d")), np.ones((m, m), np.float32)
    t_mm = _best_time(jax.jit(lambda a: a @ b), a, reps) - launch
    big = _sharded(mesh, (D * (1 << 20),), P("d"))
    t_bw = _best_time(jax.jit(lambda x: x * 1.5 + 1.0), big, reps) - launch
    return {"launch_s": launch, "op_overhead_s": per_op,
            "flops_f32": 2 * m ** 3 / max(t_mm, 1e-7),
            "hbm_bw": 2 * (1 << 22) / max(t_bw, 1e-7)}


def _dot_loop(mesh, r: int, dot: bool):
    """Each device runs ``r`` iterations of ``acc += A[i] @ b`` (A: r different [M, K]
    blocks, so nothing is hoisted); with ``dot=False`` the same loop adds ``A[i][:, :1]``."""
    import jax
    from jax.sharding import PartitionSpec as P

    def body(A, b):                                   # A: [r, M, K]  b: [K, N]
        def step(i, acc):
            a = jax.lax.dynamic_index_in_dim(A, i, keepdims=False)     # [M, K]
            return acc + (a @ b if dot else a[:, :1])                   # [M, N]
        acc = jax.numpy.zeros((A.shape[1], b.shape[1] if dot else 1), A.dtype)
        return jax.lax.fori_loop(0, r, step, acc)
    spec = P("d")
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec, spec), out_specs=spec,
                                 check_vma=False))


def _matmul_table(mesh, reps: int, dims=DIMS) -> list:
    """[[M, K, N, FLOP/s per device]] for every (M, K, N) in DIMS^3: each device multiplies
    its own [M, K] @ [K, N] blocks in a loop (as a partitioned program does, one kernel each),
    less the same loop without the dot."""
    from jax.sharding import PartitionSpec as P
    D, rows = mesh.size, []
    for m, k, n in itertools.product(dims, dims, dims):
        r = int(np.clip(4e7 / (2 * m * k * n), 2, 32))
        args = (_sharded(mesh, (D * r, m, k), P("d")), _sharded(mesh, (D * k, n), P("d")))
        with_dot, without = _dot_loop(mesh, r, True), _dot_loop(mesh, r, False)
        t = (_best_time(lambda x: with_dot(*x), args, reps)
             - _best_time(lambda x: without(*x), args, reps)) / r
        rows.append([m, k, n, 2.0 * m * k * n / max(t, 1e-7)])
    return rows


def _collective_step(kind: str, n: int):
    """One collective on the per-device block ``a``, shaped so that steps chain (same shape)."""
    import jax
    import jax.numpy as jnp
    if kind == "all_reduce":
        return lambda a: jax.lax.psum(a, "g") * 0.5
    if kind == "all_gather":
        def gather(a):
            whole = jax.lax.all_gather(a, "g", tiled=True)                # [n * m]
            return jax.lax.dynamic_slice_in_dim(whole, jax.lax.axis_index("g") * a.size, a.size)
        return gather
    if kind == "reduce_scatter":
        return lambda a: jnp.tile(jax.lax.psum_scatter(a, "g", tiled=True), n)   # [m]
    if kind == "all_to_all":
        return lambda a: jax.lax.all_to_all(a, "g", 0, 0, tiled=True)
    return lambda a: jax.lax.ppermute(a, "g", [(i, (i + 1) % n) for i in range(n)])


def _chained(kind: str, n: int, mesh, spec, k: int, collective: bool = True):
    """``k`` steps of (collective, then an element-wise pass over the block): collectives
    measured between computations, as they run in a program (each one a barrier)."""
    import jax
    step = _collective_step(kind, n)

    def body(a):
        for _ in range(k):
            a = (step(a) if collective else a) * 0.5 + 1.0
        return a
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec,
                                 check_vma=False))


def _collective_table(kind: str, n: int, D: int, reps: int, sizes=SIZES, k: int = 6) -> list:
    """[(bytes, seconds)] for ``kind`` over groups of ``n`` on a (D/n, n) mesh: ``k`` steps
    with the collective against the same ``k`` steps without it."""
    import jax
    from jax.sharding import PartitionSpec as P
    mesh = jax.make_mesh((D // n, n), ("r", "g"), devices=jax.devices()[:D])
    spec = P(("r", "g"))
    with_c, without = _chained(kind, n, mesh, spec, k), _chained(kind, n, mesh, spec, k, False)
    rows = []
    for nbytes in sizes:
        elems = nbytes // 4 // (n if kind == "all_gather" else 1)   # per-device operand
        elems -= elems % n
        x = _sharded(mesh, (D * elems,), spec)
        t = (_best_time(with_c, x, reps) - _best_time(without, x, reps)) / k
        rows.append((float(nbytes), max(t, 1e-6)))
    return rows


def measure(num_devices: int | None = None, *, reps: int = 9, sizes=SIZES, dims=DIMS,
            kinds=KINDS) -> dict:
    """Measure this host on ``num_devices`` simulated devices (default: all); a profile dict.
    ``sizes`` (collective bytes per device), ``dims`` (matmul grid) and ``reps`` set the
    effort (``QUICK`` is a 10-second version)."""
    import jax
    D = int(num_devices or len(jax.devices()))
    if D > len(jax.devices()) or D < 2:
        raise ValueError(f"calibrate: {D} devices asked for, {len(jax.devices())} present; "
                         f"set XLA_FLAGS=--xla_force_host_platform_device_count={max(D, 2)} "
                         "before JAX starts (gshard calibrate does it for you)")
    mesh = jax.make_mesh((D,), ("d",), devices=jax.devices()[:D])
    t0, load = time.perf_counter(), _load_average()
    rates = _compute_rates(mesh, reps)
    rates["matmul"] = _matmul_table(mesh, reps, dims)
    groups = sorted({n for n in range(2, D + 1) if D % n == 0 and (n & (n - 1) == 0 or n == D)})
    tables = {kind: {str(n): _collective_table(kind, n, D, reps, sizes) for n in groups}
              for kind in kinds}
    return {"name": f"cpu(x{D}, calibrated)", "num_devices": D, "host": _host(),
            "jax": jax.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - t0, 2), "load_average": load, **rates,
            "hbm_bytes": _host_memory() / D, "collectives": tables}


def save(profile: dict, path: str | Path | None = None) -> Path:
    path = Path(path) if path else profile_path(profile["num_devices"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1))
    return path
