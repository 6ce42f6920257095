"""The training step: token cross-entropy + 0.01 · MoE aux loss, Adafactor (paper) or Adam.

`make_train_step(cfg, optimizer)` returns a pure function
    (params, opt_state, batch, rng) -> (params, opt_state, metrics)
suitable for jax.jit and gshard.partition. A batch is a dict: src [B, Ls], tgt_in [B, Lt],
tgt_out [B, Lt] int32 and optional src_pad [B, Ls], tgt_pad [B, Lt] float (1 = pad).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ..models.config import ModelConfig
from .config import LR_SCHEDULES
from ..models.transformer import forward

AUX_LOSS_WEIGHT = 0.01


# ----- schedules and optimizers -----------------------------------------------------------------
def rsqrt_schedule(base_lr: float = 1.0, warmup_steps: int = 10000, linear_warmup: bool = False):
    """lr(t) = base_lr · rsqrt(max(t, warmup_steps)): constant base/sqrt(warmup) (paper: 0.01)
    for the first warmup_steps, then rsqrt decay; with linear_warmup the first phase ramps
    linearly from 0 instead."""
    def schedule(step):
        t = jnp.asarray(step, jnp.float32) + 1.0
        lr = base_lr * jax.lax.rsqrt(jnp.maximum(t, float(warmup_steps)))
        if linear_warmup:
            lr = lr * jnp.minimum(t / max(warmup_steps, 1), 1.0)
        return lr
    return schedule


def adafactor(learning_rate=None, *, base_lr: float = 1.0, warmup_steps: int = 10000,
              decay_rate: float = 0.8, clipping_threshold: float = 1.0,
              factored: bool = True) -> optax.GradientTransformation:
    """Adafactor as in the paper: no momentum (β1 = 0), second-moment decay 1 - t^-0.8,
    update clipping 1.0, parameter-scaled updates; lr defaults to rsqrt_schedule(base_lr,
    warmup_steps)."""
    lr = learning_rate if learning_rate is not None else rsqrt_schedule(base_lr, warmup_steps)
    return optax.adafactor(learning_rate=lr, decay_rate=decay_rate, momentum=None,
                           clipping_threshold=clipping_threshold,
                           multiply_by_parameter_scale=True, factored=factored)


def lr_schedule(peak: float, warmup_steps: int = 0, *, kind: str = "constant",
                decay_steps: int = 0, final_fraction: float = 0.1):
    """Linear warmup to `peak` over warmup_steps, then: constant; linear or cosine decay to
    final_fraction · peak at step decay_steps (held there after); or rsqrt_schedule's decay
    peak · sqrt(warmup / (t + 1))."""
    if kind not in LR_SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    if kind == "rsqrt":
        w = max(warmup_steps, 1)
        return rsqrt_schedule(peak * w ** 0.5, w, linear_warmup=True)
    rest = max(decay_steps - warmup_steps, 1)
    after = {"constant": lambda: optax.constant_schedule(peak),
             "linear": lambda: optax.linear_schedule(peak, peak * final_fraction, rest),
             "cosine": lambda: optax.cosine_decay_schedule(peak, rest, alpha=final_fraction)}[kind]()
    if not warmup_steps:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), after],
                                [warmup_steps])


def adam(learning_rate=1e-3, *, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9,
         warmup_steps: int = 0, clip_norm: Optional[float] = None, schedule: str = "constant",
         decay_steps: int = 0, final_fraction: float = 0.1) -> optax.GradientTransformation:
    """Adam with the learning rate of `lr_schedule` (a callable learning_rate is used as is)
    and optional global-norm gradient clipping."""
    lr = learning_rate if callable(learning_rate) else lr_schedule(
        learning_rate, warmup_steps, kind=schedule, decay_steps=decay_steps,
        final_fraction=final_fraction)
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*chain, optax.adam(lr, b1=b1, b2=b2, eps=eps))


def make_optimizer(name: str, **kwargs) -> optax.GradientTransformation:
    """"adafactor" or "adam", with that function's keyword arguments."""
    if name == "adafactor":
        return adafactor(**kwargs)
    if name == "adam":
        return adam(**kwargs)
    raise ValueError(f"optimizer must be 'adafactor' or 'adam', got {name!r}")


# ----- loss ------------------------------------------------------------------------------------
def cross_entropy(logits, targets, pad=None, label_smoothing: float = 0.0, vocab=None):
    """Mean over non-pad tokens of the token cross-entropy; logits [B, L, V], targets [B, L];
    `vocab`: the real vocabulary when the table is padded (smoothing spreads over it only).
    Returns (loss, number of non-pad tokens, accuracy)."""
    V = logits.shape[-1] if vocab is None else vocab
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)        # [B, L, Vp]
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, L]
    if label_smoothing:
        real = jnp.arange(logp.shape[-1]) < V                              # [Vp]
        smooth = jnp.sum(jnp.where(real, logp, 0.0), axis=-1) / V          # [B, L]
        nll = (1.0 - label_smoothing) * nll - label_smoothing * smooth
    weight = jnp.ones_like(nll) if pad is None else 1.0 - pad.astype(jnp.float32)
    ntok = jnp.sum(weight)
    denom = jnp.maximum(ntok, 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == targets) * weight) / denom
    return jnp.sum(nll * weight) / denom, ntok, acc


def loss_fn(params, cfg: ModelConfig, batch, rng, *, deterministic=False, label_smoothing=0.0,
            aux_loss_weight=AUX_LOSS_WEIGHT, z_loss_weight=0.0):
    """(loss, metrics): cross-entropy + aux_loss_weight · aux + z_loss_weight · z."""
    logits, aux = forward(params, cfg, batch["src"], batch["tgt_in"],
                          src_pad=batch.get("src_pad"), tgt_pad=batch.get("tgt_pad"),
                          deterministic=deterministic, rng=rng)
    ce, ntok, acc = cross_entropy(logits, batch["tgt_out"], batch.get("tgt_pad"),
                                  label_smoothing, vocab=cfg.target_vocab)
    loss = ce + aux_loss_weight * aux["aux_loss"] + z_loss_weight * aux["z_loss"]
    metrics = {"loss": loss, "cross_entropy": ce, "accuracy": acc, "num_tokens": ntok,
               "aux_loss": aux["aux_loss"], "z_loss": aux["z_loss"],
               "dropped_fraction": aux["dropped_fraction"], "expert_load": aux["expert_load"],
               "layer_dropped": aux["first_dropped"] + aux["second_dropped"]}
    return loss, metrics


# ----- the step ----------------------------------------------------------------------------------
def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, *,
                    label_smoothing: float = 0.0, aux_loss_weight: float = AUX_LOSS_WEIGHT,
                    z_loss_weight: float = 0.0, deterministic: bool = False,
                    microbatches: int = 1, update_specs=None):
    """A pure (params, opt_state, batch, rng) -> (params, opt_state, metrics).

    rng drives dropout and the random second-expert policy; deterministic=True turns dropout
    off (rng still drives the gating policy). microbatches=k accumulates the gradient over k
    slices of the batch (train/accumulate.py). update_specs=(forward, update) PartitionSpec trees
    shard the weight update over the data axes (train/zero.py)."""
    if cfg.moe.balance != "aux":  # moe.balance=bias|none: no auxiliary balance loss
        aux_loss_weight = 0.0
    kw = dict(deterministic=deterministic, label_smoothing=label_smoothing,
              aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight)

    def step(params, opt_state, batch, rng):
        if update_specs is not None:  # weights enter in their forward layout
            from .zero import constrain
            params = constrain(params, update_specs[0])
        if microbatches > 1:
            from .accumulate import accumulate
            metrics, grads = accumulate(loss_fn, params, cfg, batch, rng, microbatches, **kw)
        else:
            (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, cfg, batch, rng, **kw)
        if update_specs is not None:  # the gradient's pending sum becomes a ReduceScatter
            from .zero import constrain
            grads = constrain(grads, update_specs[1])
        grad_norm = optax.tree.norm(grads)
        new_params, opt_state = _update(optimizer, params, opt_state, grads, update_specs)
        if cfg.moe.balance == "bias":
            new_params = update_router_biases(new_params, params, cfg, metrics["expert_load"])
        return new_params, opt_state, dict(metrics, grad_norm=grad_norm)
    return step


def update_router_biases(new_params, params, cfg: ModelConfig, expert_load):
    """moe.balance=bias: each MoE layer's router_bias = update_bias(its value before the step,
    its load this step [E], moe.bias_rate); expert_load [n_moe, E] is in forward's order
    (encoder MoE layers, then decoder's). The optimizer's own change to the bias is discarded."""
    from ..moe.routing import update_bias
    new_params = jax.tree_util.tree_map(lambda x: x, new_params)         # a copy to edit
    n = 0
    for stack, count in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        for i in range(count):
            if cfg.moe.is_moe_layer(i):
                old = params[stack][f"layer_{i}"]["ffn"]["router_bias"]
                new_params[stack][f"layer_{i}"]["ffn"]["router_bias"] = update_bias(
                    old, expert_load[n], cfg.moe.bias_rate)
                n += 1
    return new_params


def _update(optimizer, params, opt_state, grads, update_specs):
    """The optimizer step; with update_specs each replica updates its shard of every weight."""
    if update_specs is None:
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
    from .zero import constrain, constrain_state
    fwd, upd, axes, sizes = update_specs
    params = constrain(params, upd)                                       # a local slice
    opt_state = constrain_state(opt_state, params, upd, axes, sizes)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    return constrain(new, fwd), constrain_state(opt_state, params, upd, axes, sizes)  # AllGather


def init_train_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, rng):
    """(params, opt_state) for a fresh model."""
    from ..models.transformer import init_params
    params = init_params(cfg, rng)
    return params, optimizer.init(params)
