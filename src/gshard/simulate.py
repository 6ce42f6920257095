"""Simulate the paper's scaling study (GShard §5, Fig. 6) without devices.

For each device count D: experts E = D (one expert per device), the paper's 1-D mesh
(``MeshAxes(data="x", expert="x")`` on ``AbstractMesh((D,), ("x",))``), G = D MoE groups (one
per device) and a fixed per-device batch (tokens per device constant). One training step
(forward, backward, optimizer update) is lowered with ``jax.ShapeDtypeStruct`` inputs -- nothing
is allocated, no device is needed -- and the cost model (:mod:`gshard.cost`) prices it.

Two modes:

* ``"pair"`` (default): lower the model with 0 layers (embeddings, softmax, loss, optimizer:
  the "base") and with 2+2 layers (one dense + one MoE layer in the encoder and in the decoder:
  the paper's "MoE + adjacent layer", once per stack). Per-pair cost = difference; the full
  model = base + (layers / 4) x pair. Times, FLOPs and weight / optimizer bytes are additive, so
  this is exact for them; peak activation memory is extrapolated linearly (activations saved
  for the backward pass are linear in depth). Lowering 36 layers takes ~10x longer and gives
  the same numbers (``mode="full"`` checks that).
* ``"full"``: lower the whole model.

Deviations from the paper's run, each forced or harmless:

* the loss is token cross-entropy written with a one-hot product instead of
  ``take_along_axis`` (identical value); ``step="library"`` uses
  :func:`gshard.train.step.make_train_step` as is (its scatter-add gradient is split along the
  batch like the rest: per-device memory stays flat in D, docs/simulation.md);
* the paper's dropout 0.1 and random second-expert policy by default (random numbers are
  drawn per shard: each device computes only its own counters, so they stay O(1) per device);
* expert capacity C = max(1, round(2 S / E)), the paper's ``2N/E`` without the reference
  code's floor of 4 -- with the floor, per-device dispatch bytes would jump 4x at 2048 experts.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

PAPER = {  # GShard §5 / Fig. 6 / Table 3
    "step_time_ratio_128_2048": 1.7,
    "alltoall_share": {128: 0.16, 2048: 0.36},
    "alltoall_ratio_128_2048": 3.75,
}


@dataclass(frozen=True)
class SimSettings:
    preset: str = "paper-36L"
    hardware: str = "tpu-v3"
    per_device_batch: int = 2      # sentence pairs per device
    length: int = 512              # source and target length: 2 x 2 x 512 = 2048 tokens/device
    optimizer: str = "adafactor"
    mode: str = "pair"             # pair | full
    step: str = "onehot"           # onehot | library
    capacity: str = "paper"        # paper (2S/E) | reference (floor 4, multiple of 4)
    overlap: bool = False
    dropout: float = 0.1           # the paper's recipe
    second_expert_policy: str = "random"
    shard_optimizer: bool = True   # weight-update sharding over the data axes (train/zero.py)
    expert_axis: int = 0           # 0: the paper's 1-D mesh (E = D); N: data (D/N) x expert (N), E = N

    def __post_init__(self):
        if self.mode not in ("pair", "full"):
            raise ValueError(f"mode must be 'pair' or 'full', got {self.mode!r}")
        if self.step not in ("onehot", "library"):
            raise ValueError(f"step must be 'onehot' or 'library', got {self.step!r}")
        if self.capacity not in ("paper", "reference"):
            raise ValueError(f"capacity must be 'paper' or 'reference', got {self.capacity!r}")
        if self.per_device_batch < 1 or self.length < 1:
            raise ValueError("per_device_batch and length must be >= 1")


# ----- building the lowered step ----------------------------------------------------------------
def mesh_of(s: SimSettings, devices: int):
    """(mesh shape, axis names, MeshAxes keywords, experts): the paper's 1-D mesh with one expert
    per device, or a data x expert mesh whose experts are replicated over `data`."""
    if not s.expert_axis:
        return (devices,), ("x",), dict(data="x", expert="x"), devices
    e = s.expert_axis
    if devices % e:
        raise ValueError(f"expert_axis={e} does not divide {devices} devices")
    return (devices // e, e), ("data", "expert"), dict(data=("data", "expert"), expert="expert"), e


def model_config(s: SimSettings, devices: int, enc: int | None = None, dec: int | None = None):
    """The preset with E experts (E = D on the 1-D mesh), G = D groups, explicit C."""
    from .models.presets import get_preset

    base = get_preset(s.preset)
    S = s.per_device_batch * s.length                      # tokens per group (= per device)
    _, _, axes, experts = mesh_of(s, devices)
    cap = None
    if s.capacity == "paper":
        cap = max(1, round(base.moe.capacity_factor * S / experts))
    over = dict(num_experts=experts, num_groups=devices, **axes, vocab_multiple=devices,
                second_expert_policy=s.second_expert_policy, dropout=s.dropout, capacity=cap)
    if enc is not None:
        over.update(num_encoder_layers=enc, num_decoder_layers=dec)
    return get_preset(s.preset, **over)


def _onehot_step(cfg, optimizer, update_specs=None):
    from .models.transformer import forward
    from .train.step import AUX_LOSS_WEIGHT, _update
    from .train.zero import constrain

    def loss_fn(params, batch, rng):
        logits, aux = forward(params, cfg, batch["src"], batch["tgt_in"], src_pad=batch["src_pad"],
                              tgt_pad=batch["tgt_pad"], deterministic=cfg.dropout == 0, rng=rng)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        onehot = jax.nn.one_hot(batch["tgt_out"], logits.shape[-1], dtype=logp.dtype)
        w = 1.0 - batch["tgt_pad"]
        nll = -jnp.sum(logp * onehot, axis=-1)
        ce = jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)
        return ce + AUX_LOSS_WEIGHT * aux["aux_loss"]

    def step(params, opt_state, batch, rng):
        if update_specs is not None:
            params = constrain(params, update_specs[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        if update_specs is not None:
            grads = constrain(grads, update_specs[1])
        params, opt_state = _update(optimizer, params, opt_state, grads, update_specs)
        return params, opt_state, loss
    return step


@dataclass
class LoweredStep:
    low: object
    roles: list
    replicated: list
    axis_sizes: dict
    lower_seconds: float


def lower_train_step(cfg, devices: int, s: SimSettings) -> LoweredStep:
    """Lower one training step of ``cfg`` on the abstract mesh of ``mesh_of``."""
    import gshard
    from .train.step import init_train_state, make_optimizer, make_train_step

    opt = make_optimizer(s.optimizer)
    params, state = jax.eval_shape(lambda k: init_train_state(cfg, opt, k), jax.random.PRNGKey(0))
    B, L = s.per_device_batch * devices, s.length
    ids = jax.ShapeDtypeStruct((B, L), jnp.int32)
    pad = jax.ShapeDtypeStruct((B, L), jnp.float32)
    batch = {"src": ids, "tgt_in": ids, "tgt_out": ids, "src_pad": pad, "tgt_pad": pad}
    make = (lambda specs=None: make_train_step(cfg, opt, update_specs=specs)) if s.step == "library" \
        else (lambda specs=None: _onehot_step(cfg, opt, specs))
    fn = make()
    args = (params, state, batch, jax.random.key(0))  # dropout and the random policy
    shape, names, axes, _ = mesh_of(s, devices)
    mesh = AbstractMesh(shape, names)
    t0 = time.perf_counter()
    low = gshard.partition(fn, mesh).lower(*args)
    if s.shard_optimizer:  # the forward layouts, then the step with the weight update sharded
        from .train.step import loss_fn
        from .train.zero import weight_update_specs
        data = axes["data"] if isinstance(axes["data"], tuple) else (axes["data"],)
        fwd = lambda p, b, k: loss_fn(p, cfg, b, k, deterministic=True)[0]  # noqa: E731
        specs = weight_update_specs(fwd, params, (batch, args[3]), mesh, data)
        low = gshard.partition(make(specs), mesh).lower(*args)
    secs = time.perf_counter() - t0
    n_p = len(jax.tree_util.tree_leaves(params))
    n_o = len(jax.tree_util.tree_leaves(state))
    n_all = len(low.graph.invars)
    # the per-device jaxpr may take hoisted constants (e.g. sinusoidal positions) first
    extra = len(low.per_device_jaxpr.jaxpr.invars) - n_all
    roles = (["activation"] * extra + ["weight"] * n_p + ["opt_state"] * n_o
             + ["activation"] * (n_all - n_p - n_o))
    replicated = [True] * extra + [sp.is_replicated() for sp in low.in_specs]
    return LoweredStep(low, roles, replicated, dict(zip(names, shape)), secs)


def price(ls: LoweredStep, s: SimSettings):
    from .cost import estimate

    return estimate(ls.low.per_device_jaxpr, ls.low.collectives, ls.axis_sizes, s.hardware,
                    input_roles=ls.roles, input_replicated=ls.replicated, overlap=s.overlap)


# ----- one row -----------------------------------------------------------------------------------
_ADD = ("step_time_s", "compute_time_s", "alltoall_time_s", "allreduce_time_s",
        "other_collective_time_s", "flops_per_device", "weight_bytes_per_device",
        "weight_bytes_replicated", "weight_bytes_distributed", "opt_state_bytes_per_device",
        "activation_bytes_per_device", "peak_bytes_per_device", "num_collectives",
        "num_collectives_combined")


def _numbers(r, low) -> dict:
    ct = r.collective_time_s
    a2a, ar = ct.get("all_to_all", 0.0), ct.get("all_reduce", 0.0)
    return {"step_time_s": r.step_time_s, "compute_time_s": r.compute_time_s,
            "alltoall_time_s": a2a, "allreduce_time_s": ar,
            "other_collective_time_s": r.total_collective_time_s - a2a - ar,
            "flops_per_device": r.flops, "weight_bytes_per_device": r.weight_bytes,
            "weight_bytes_replicated": r.weight_bytes_replicated,
            "weight_bytes_distributed": r.weight_bytes_distributed,
            "opt_state_bytes_per_device": r.opt_state_bytes,
            "activation_bytes_per_device": r.activation_bytes,
            "peak_bytes_per_device": r.peak_bytes, "num_collectives": len(low.collectives),
            "num_collectives_combined": len(r.collectives)}


def simulate_point(devices: int, s: SimSettings) -> dict:
    """One row of the study for ``devices`` devices (and experts)."""
    full_cfg = model_config(s, devices)
    n_enc, n_dec = full_cfg.num_encoder_layers, full_cfg.num_decoder_layers
    row = {"preset": s.preset, "hardware": s.hardware, "devices": devices,
           "experts": full_cfg.moe.num_experts, "shard_optimizer": s.shard_optimizer,
           "layers": n_enc + n_dec, "tokens_per_device": 2 * s.per_device_batch * s.length,
           "capacity": full_cfg.moe.capacity, "mode": s.mode}
    if s.mode == "full" or n_enc != n_dec or n_enc % 2:
        ls = lower_train_step(full_cfg, devices, s)
        r = price(ls, s)
        row.update(_numbers(r, ls.low), mode="full", lowered_layers=n_enc + n_dec,
                   partition_seconds=ls.low.partition_seconds,
                   pair_time_s=None, pair_alltoall_time_s=None)
        return _finish(row)
    lows = {}
    for layers in (0, 2):
        ls = lower_train_step(model_config(s, devices, layers, layers), devices, s)
        lows[layers] = (ls, price(ls, s))
    base = _numbers(lows[0][1], lows[0][0].low)
    unit = _numbers(lows[2][1], lows[2][0].low)
    pairs = n_enc // 2                       # pairs per stack; unit - base = one enc + one dec pair
    for k in _ADD:
        row[k] = base[k] + pairs * (unit[k] - base[k])
    # "MoE + adjacent layer" (one pair, the mean of the encoder's and the decoder's)
    row["pair_time_s"] = (unit["step_time_s"] - base["step_time_s"]) / 2
    row["pair_alltoall_time_s"] = (unit["alltoall_time_s"] - base["alltoall_time_s"]) / 2
    row["pair_compute_time_s"] = (unit["compute_time_s"] - base["compute_time_s"]) / 2
    row["lowered_layers"] = 4
    row["partition_seconds"] = lows[2][0].low.partition_seconds
    row["partition_seconds_base"] = lows[0][0].low.partition_seconds
    return _finish(row)


def _finish(row: dict) -> dict:
    row["alltoall_share"] = row["alltoall_time_s"] / row["step_time_s"]
    if row.get("pair_time_s"):
        row["pair_alltoall_share"] = row["pair_alltoall_time_s"] / row["pair_time_s"]
    row["num_collectives"] = int(row["num_collectives"])
    row["num_collectives_combined"] = int(row["num_collectives_combined"])
    return row


def simulate(devices, settings: SimSettings | None = None, progress=None,
             warmup: bool = True) -> list[dict]:
    """Rows for each device count in ``devices``. ``warmup``: lower once before timing, so that
    ``partition_seconds`` measures steady-state partitioning, not first-trace costs."""
    s = settings or SimSettings()
    rows = []
    if warmup and devices:  # first-trace costs (imports, jax caches) out of partition_seconds
        d0 = int(devices[0])
        lower_train_step(model_config(s, d0, *((2, 2) if s.mode == "pair" else (None, None))),
                         d0, s)
    for d in devices:
        t0 = time.perf_counter()
        rows.append(simulate_point(int(d), s))
        if progress:
            progress(f"  D={d}: lowered and priced in {time.perf_counter() - t0:.1f} s")
    return rows


# ----- reporting ----------------------------------------------------------------------------------
def _gib(b):
    return b / (1 << 30)


def summary(rows: list[dict]) -> dict:
    """Ratios between the first and last row (the paper compares 128 and 2048)."""
    if len(rows) < 2:
        return {}
    a, b = rows[0], rows[-1]
    out = {"from": a["devices"], "to": b["devices"],
           "step_time_ratio": b["step_time_s"] / a["step_time_s"],
           "alltoall_ratio": b["alltoall_time_s"] / max(a["alltoall_time_s"], 1e-30),
           "alltoall_share": [a["alltoall_share"], b["alltoall_share"]],
           "weight_bytes_ratio": b["weight_bytes_per_device"] / a["weight_bytes_per_device"],
           "peak_bytes_ratio": b["peak_bytes_per_device"] / a["peak_bytes_per_device"]}
    if a.get("pair_time_s"):
        out["pair_time_ratio"] = b["pair_time_s"] / a["pair_time_s"]
        out["pair_alltoall_share"] = [a["pair_alltoall_share"], b["pair_alltoall_share"]]
    ps = [r["partition_seconds"] for r in rows]
    out["partition_seconds_spread"] = (max(ps) - min(ps)) / (sum(ps) / len(ps))
    return out


def format_table(rows: list[dict]) -> str:
    head = (f"{'devices':>8}{'experts':>8}{'step':>10}{'compute':>10}{'all2all':>10}{'a2a %':>7}"
            f"{'allred':>9}{'pair':>9}{'pair a2a%':>10}{'weights':>10}{'opt':>9}{'act':>9}"
            f"{'peak':>9}{'part s':>8}")
    units = (f"{'':>8}{'':>8}{'(s)':>10}{'(s)':>10}{'(s)':>10}{'':>7}{'(s)':>9}{'(ms)':>9}{'':>10}"
             f"{'(GiB)':>10}{'(GiB)':>9}{'(GiB)':>9}{'(GiB)':>9}{'':>8}")
    lines = [head, units]
    for r in rows:
        pair = r.get("pair_time_s")
        lines.append(
            f"{r['devices']:>8}{r['experts']:>8}{r['step_time_s']:>10.4f}"
            f"{r['compute_time_s']:>10.4f}{r['alltoall_time_s']:>10.4f}"
            f"{100 * r['alltoall_share']:>6.1f}%{r['allreduce_time_s']:>9.4f}"
            + (f"{1e3 * pair:>9.2f}{100 * r['pair_alltoall_share']:>9.1f}%" if pair else
               f"{'-':>9}{'-':>10}")
            + f"{_gib(r['weight_bytes_per_device']):>10.3f}"
            f"{_gib(r['opt_state_bytes_per_device']):>9.3f}"
            f"{_gib(r['activation_bytes_per_device']):>9.3f}{_gib(r['peak_bytes_per_device']):>9.3f}"
            f"{r['partition_seconds']:>8.2f}")
    sm = summary(rows)
    if sm:
        lines.append("")
        lines.append(f"{sm['from']} -> {sm['to']} devices: step x{sm['step_time_ratio']:.2f}"
                     + (f", MoE+adjacent layer pair x{sm['pair_time_ratio']:.2f}"
                        if "pair_time_ratio" in sm else "")
                     + f", AllToAll x{sm['alltoall_ratio']:.2f} (share "
                     f"{100 * sm['alltoall_share'][0]:.0f}% -> {100 * sm['alltoall_share'][1]:.0f}%)"
                     f", weights/device x{sm['weight_bytes_ratio']:.2f}, peak x"
                     f"{sm['peak_bytes_ratio']:.2f}, partition-time spread "
                     f"{100 * sm['partition_seconds_spread']:.0f}%")
        if sm["from"] == 128 and sm["to"] == 2048:
            lines.append("paper (GShard Fig. 6): MoE+adjacent layer x1.7, AllToAll x3.75 "
                         "(share 16% -> 36%), memory/device constant, compile time constant")
    if rows and rows[0].get("mode") == "pair":
        lines.append(f"note: lowered 0 and 2+2 layers (one dense+MoE pair per stack) and scaled "
                     f"to {rows[0]['layers']} layers (exact for time, FLOPs, weights; linear for "
                     f"activations); partition s = lowering time of the 2+2-layer step")
    return "\n".join(lines)


def _axis(ax, title: str, ylabel: str, xlabel: str = "devices"):
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)


def _plot_time(ax, rows, d):
    comp = [r["compute_time_s"] for r in rows]
    a2a = [r["alltoall_time_s"] for r in rows]
    other = [r["step_time_s"] - c - a for r, c, a in zip(rows, comp, a2a)]
    ax.stackplot(d, comp, a2a, other, labels=["compute", "all-to-all", "other collectives"])
    _axis(ax, "step time", "step time (s)", "devices = experts")


def _plot_share(ax, rows, d):
    ax.plot(d, [100 * r["alltoall_share"] for r in rows], "o-", label="full step")
    if rows[0].get("pair_time_s"):
        ax.plot(d, [100 * r["pair_alltoall_share"] for r in rows], "s-", label="MoE+adjacent layer")
    if 128 in d and 2048 in d:
        ax.plot([128, 2048], [16, 36], "k--", label="paper")
    _axis(ax, "AllToAll share", "AllToAll share of time (%)")


def _plot_memory(ax, rows, d):
    for key, lab in (("weight_bytes_per_device", "weights"),
                     ("opt_state_bytes_per_device", "optimizer state"),
                     ("activation_bytes_per_device", "activations"),
                     ("peak_bytes_per_device", "peak")):
        ax.plot(d, [_gib(r[key]) for r in rows], "o-", label=lab)
    _axis(ax, "memory per device", "GiB per device")


def plot(rows: list[dict], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = [r["devices"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    _plot_time(ax[0], rows, d)
    _plot_share(ax[1], rows, d)
    _plot_memory(ax[2], rows, d)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(rows: list[dict], path: str, settings: SimSettings) -> None:
    with open(path, "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), "paper": PAPER,
                   "summary": summary(rows), "rows": rows}, f, indent=2, default=str)
