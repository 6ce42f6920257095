"""The plan autoshard returns (DESIGN §6): specs, the partitioned function, predictions, the
candidates considered, and an explanation of every decision against its runner-up."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from .points import spec_text
from .price import TOL, Price


@dataclass
class Decision:
    """One decision point at the chosen plan, against the best other candidate for it."""
    point: str
    shape: tuple
    candidate: str            # what the search set: a PartitionSpec or "(propagated)"
    spec: str                 # the spec the input got in the lowered plan
    where: str                # the user's line that first reads the input
    runner_up: str | None
    runner_up_price: Price | None
    price: Price

    def line(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        head = f"  {self.point} [{dims}]: {self.spec}"
        if self.candidate != self.spec:
            head += f"   (set as {self.candidate})"
        head += f"\n      first read at {self.where}"
        if self.runner_up is None:
            return head + "\n      no other candidate lowered to a different program"
        return head + f"\n      runner-up {self.runner_up}: {_delta(self.runner_up_price, self.price)}"


def _delta(other: Price, mine: Price) -> str:
    if other.error:
        return f"does not lower ({other.error})"
    dt = (other.step_s / mine.step_s - 1) * 100 if mine.step_s else 0.0
    fit = "" if other.fits else ", over the memory limit"
    tie = f" (a tie within {TOL:.0%}: fewer collective bytes, then less memory, win)" \
        if abs(dt) < TOL * 100 else ""
    return (f"step {_secs(other.step_s)} ({dt:+.1f}%), peak {_mib(other.peak_bytes)}, "
            f"collectives {_mib(other.collective_bytes)}{fit}{tie}")


@dataclass
class AutoPlan:
    in_specs: tuple                 # matching args: pytrees of PartitionSpec
    partitioned: Any                # gshard.Partitioned applying the plan
    predicted: dict                 # step_s, peak_bytes, collective_bytes (per device)
    candidates: list                # dicts, best first
    search_seconds: float
    mesh: str = ""
    hardware: str = ""
    memory_limit: float = 0.0
    decisions: list = field(default_factory=list)
    fixed: list = field(default_factory=list)      # (path, why) the user fixed
    checked: str = ""                              # what was verified before returning
    measured_peak_bytes: int | None = None         # XLA's memory analysis (concrete mesh)
    lowerings: int = 0
    failures: list = field(default_factory=list)   # candidates that did not lower
    candidate_in_specs: list = field(default_factory=list)  # in_specs= of each candidate
    notes: list = field(default_factory=list)      # how it was priced (layer stacks)

    def explain(self) -> str:
        p = self.predicted
        lines = [f"gshard.autoshard on mesh {self.mesh}, hardware {self.hardware}, memory limit "
                 f"{_mib(self.memory_limit)} per device",
                 f"searched {len(self.candidates)} distinct plans ({self.lowerings} lowerings) "
                 f"in {self.search_seconds:.2f} s",
                 f"chosen: step {_secs(p['step_s'])}, peak {_mib(p['peak_bytes'])}, collectives "
                 f"{_mib(p['collective_bytes'])} per device (predicted)"]
        if self.measured_peak_bytes is not None:
            lines.append(f"XLA memory analysis of the compiled per-device program: "
                         f"{_mib(self.measured_peak_bytes)}")
        if self.checked:
            lines.append(self.checked)
        lines += self.notes
        lines.append("decisions:" if self.decisions else "decisions: none (nothing to choose)")
        lines += [d.line() for d in self.decisions]
        lines += [f"  {path}: kept as you set it ({why})" for path, why in self.fixed]
        lines.append("candidates (best first):")
        for i, c in enumerate(self.candidates[:8]):
            fit = "" if c["fits"] else "  ** over the memory limit **"
            lines.append(f"  {i + 1}. step {_secs(c['step_s'])}, peak {_mib(c['peak_bytes'])}, "
                         f"collectives {_mib(c['collective_bytes'])}: {c['summary']}{fit}")
        if self.failures:
            lines.append(f"{len(self.failures)} candidate(s) did not lower; first: "
                         f"{self.failures[0]}")
        return "\n".join(lines)


def _secs(t: float) -> str:
    if t >= 1:
        return f"{t:.3g} s"
    return f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} us"


def _mib(b: float) -> str:
    if b >= 1 << 30:
        return f"{b / (1 << 30):.2f} GiB"
    return f"{b / (1 << 20):.3f} MiB"


# ----- the check before returning ---------------------------------------------------------------
def example_values(args, seed: int = 0):
    """Concrete leaves as given; ShapeDtypeStructs filled (floats ~ N(0, 1), ints 0, keys)."""
    rng = np.random.default_rng(seed)

    def fill(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended):
            n = int(np.prod(x.shape)) if x.shape else 1
            keys = jax.random.split(jax.random.key(seed), n)
            return keys.reshape(x.shape) if x.shape else keys[0]
        if jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
            return jax.numpy.asarray(rng.standard_normal(x.shape), x.dtype)
        return jax.numpy.zeros(x.shape, x.dtype)
    return jax.tree_util.tree_map(fill, args)


def check_values(fn, partitioned, args) -> str:
    """Run the plan and `fn` unpartitioned on the same inputs; raise if they differ. Then the
    same for the gradient of a random projection of the float outputs with respect to the float
    inputs, partitioned with the plan's specs (skipped, and said so, where gshard cannot
    partition that gradient program)."""
    vals = example_values(args)
    want = jax.tree_util.tree_leaves(jax.jit(fn)(*vals))
    got = jax.tree_util.tree_leaves(partitioned(*vals))
    _compare(want, got, "output")
    return (f"checked: the plan's outputs equal the unpartitioned function's ({len(want)} "
            f"outputs); {_check_grads(fn, partitioned, vals)}")


def _compare(want, got, what: str):
    from ..errors import GShardError
    for i, (w, g) in enumerate(zip(want, got)):
        w, g = np.asarray(w), np.asarray(g)
        if w.dtype.kind in "VO":   # typed PRNG keys
            continue
        tol = 2e-2 if w.dtype.itemsize <= 2 else 1e-4
        w64, g64 = w.astype(np.float64), g.astype(np.float64)
        scale = 1.0 + (float(np.max(np.abs(w64))) if w64.size else 0.0)  # float reassociation
        if w.shape != g.shape or (w64.size and np.max(np.abs(g64 - w64)) > tol * scale):
            diff = np.max(np.abs(g64 - w64)) if w.shape == g.shape else "shape"
            raise GShardError(
                f"gshard.autoshard: the chosen plan's {what} {i} differs from the unpartitioned "
                f"function's (max |diff| {diff}, max |value| {scale - 1:.3g}); this is a gshard bug, not yours.\n  fix: "
                "report it with the function and shapes; meanwhile pass in_specs= by hand")


def _floating(x) -> bool:
    return hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)


def _check_grads(fn, partitioned, vals) -> str:
    from .. import api as gshard
    from ..errors import GShardError

    flat, tree = jax.tree_util.tree_flatten(vals)
    fidx = [i for i, x in enumerate(flat) if _floating(x)]
    outs = jax.tree_util.tree_leaves(jax.eval_shape(fn, *vals))
    if not fidx or not any(_floating(o) for o in outs):
        return "gradients: no float inputs or outputs to differentiate"
    rng = np.random.default_rng(1)
    proj = [rng.standard_normal(o.shape).astype(np.float32) if _floating(o) else None
            for o in outs]

    def scalar(*fl):
        full = list(flat)
        for i, x in zip(fidx, fl):
            full[i] = x
        res = jax.tree_util.tree_leaves(fn(*jax.tree_util.tree_unflatten(tree, full)))
        return sum(jax.numpy.sum(o.astype(jax.numpy.float32) * w)   # [] per output
                   for o, w in zip(res, proj) if w is not None)

    grad_fn = jax.grad(scalar, argnums=tuple(range(len(fidx))))
    specs = jax.tree_util.tree_leaves(partitioned.in_specs, is_leaf=lambda s: s is None or
                                      isinstance(s, jax.sharding.PartitionSpec))
    fl = [flat[i] for i in fidx]
    try:
        got = gshard.partition(grad_fn, partitioned.mesh.mesh,
                               in_specs=tuple(specs[i] for i in fidx))(*fl)
    except GShardError as e:
        return f"gradients: not checked (gshard cannot partition them: {str(e).splitlines()[0]})"
    _compare(jax.tree_util.tree_leaves(jax.jit(grad_fn)(*fl)), jax.tree_util.tree_leaves(got),
             "gradient")
    return f"gradients with respect to {len(fidx)} float inputs match"


def xla_peak_bytes(low) -> int | None:
    """Per-device peak of the compiled program from XLA's memory analysis (None if absent)."""
    ma = low.program.call.memory_analysis()
    if ma is None:
        return None
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes)


def summary_row(pricer, assign: tuple, price: Price) -> dict:
    row = price.as_dict()
    row["summary"] = pricer.summary(assign)
    row["priced"] = "1- and 2-layer copies, extrapolated" if pricer.depth else "full lowering"
    row["in_specs"] = [str(s) for s in price.specs]
    return row


def candidate_text(point, c: int) -> str:
    return spec_text(point.candidates[c])
