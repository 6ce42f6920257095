"""Typed, frozen configs for the GShard MoE Transformer (the presets as ModelConfigs: presets.py).

Paper sizes (GShard §3): M=1024, H=8192, 16 heads, dropout 0.1, 128-2048 experts; "12L"/"36L"
count the layers of encoder and decoder together (so 6+6 and 18+18), which is what reproduces the
paper's parameter counts (2048 experts, 36L: about 600B).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..moe.gating import KINDS, SECOND_EXPERT_POLICIES
from ..moe.layer import DISPATCH
from ..moe.routing import SCORES

BALANCES = ("aux", "bias", "none")

POSITIONS = ("sinusoidal", "learned")
DTYPES = ("float32", "bfloat16")


def _axes_ok(a) -> bool:
    return a is None or isinstance(a, str) or (
        isinstance(a, tuple) and all(isinstance(n, str) for n in a))


def _positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(obj).__name__}.{n} must be a positive int, got {v!r}")


@dataclass(frozen=True)
class MeshAxes:
    """Which mesh axes the model's annotations use (None everywhere = no annotations).

    data: batch / MoE groups; model: attention heads and dense FFN hidden; expert: the expert dim
    of MoE weights and dispatched tensors; expert_hidden: the expert hidden dim H (optional);
    group: MoE groups (defaults to `data`).
    Paper 1-D mesh: MeshAxes(data="x", expert="x"). 2-D mesh: MeshAxes(data="data",
    model="model", expert="data") or expert=("data", "model")."""
    data: Any = None
    model: Any = None
    expert: Any = None
    expert_hidden: Any = None
    group: Any = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not _axes_ok(getattr(self, f.name)):
                raise ValueError(f"MeshAxes.{f.name} must be None, an axis name or a tuple of "
                                 f"names, got {getattr(self, f.name)!r}")

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))

    @property
    def moe_group(self):
        return self.group if self.group is not None else self.data


@dataclass(frozen=True)
class MoEConfig:
    """The MoE FFN: experts, gating and dispatch (DESIGN §7)."""
    num_experts: int = 4
    expert_hidden: int = 128                 # H
    gating: str = "top2"                     # top2 | top1 | topk | expert_choice
    top_k: int = 2                           # for gating="topk"
    capacity_factor: float = 2.0
    capacity: Optional[int] = None           # explicit C overrides capacity_factor
    second_expert_policy: str = "all"
    second_expert_threshold: float = 0.5
    jitter_eps: float = 0.0
    num_groups: Optional[int] = None         # G; None = one group per sequence (G = B)
    dispatch: str = "einsum"                 # einsum | gather | dropless
    every: int = 2                           # layer i is MoE iff (i + 1) % every == 0; 0 = none
    router: str = "softmax"                  # dropless: route() score, softmax | sigmoid
    balance: str = "aux"                     # aux (loss) | bias (aux-loss-free update) | none
    bias_rate: float = 1e-3                  # balance=bias: the per-step bias update γ
    shared_experts: int = 0                  # dense shared FFN of shared_experts·expert_hidden
    expert_groups: int = 1                   # dropless: experts in equal groups ...
    top_groups: int = 1                      # ... a token's k experts from its best top_groups
    eval_capacity_factor: Optional[float] = None  # capacity factor at eval (None = training's)

    def __post_init__(self):
        _positive(self, "num_experts", "expert_hidden", "top_k")
        if self.gating not in KINDS:
            raise ValueError(f"MoEConfig.gating must be one of {KINDS}, got {self.gating!r}")
        if self.second_expert_policy not in SECOND_EXPERT_POLICIES:
            raise ValueError(f"MoEConfig.second_expert_policy must be one of "
                             f"{SECOND_EXPERT_POLICIES}, got {self.second_expert_policy!r}")
        if self.dispatch not in DISPATCH:
            raise ValueError(f"MoEConfig.dispatch must be one of {DISPATCH}, got {self.dispatch!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEConfig.top_k={self.top_k} > num_experts={self.num_experts}")
        if self.capacity_factor <= 0 or (self.capacity is not None and self.capacity < 1):
            raise ValueError("MoEConfig: capacity_factor must be > 0 and capacity >= 1")
        if self.num_groups is not None and self.num_groups < 1:
            raise ValueError(f"MoEConfig.num_groups must be >= 1 or None, got {self.num_groups}")
        if not 0.0 <= self.jitter_eps < 1.0 or not 0.0 < self.second_expert_threshold:
            raise ValueError("MoEConfig: jitter_eps must be in [0, 1), threshold > 0")
        if self.every < 0:
            raise ValueError(f"MoEConfig.every must be >= 0, got {self.every}")

        self._check_today()

    def _check_today(self):
        """The §7b keys: router, balance, shared experts, expert groups, eval capacity."""
        if self.router not in SCORES:
            raise ValueError(f"MoEConfig.router must be one of {SCORES}, got {self.router!r}")
        if self.balance not in BALANCES:
            raise ValueError(f"MoEConfig.balance must be one of {BALANCES}, got {self.balance!r}")
        if self.dispatch != "dropless" and (self.router != "softmax" or self.balance == "bias"
                                            or self.expert_groups != 1):
            raise ValueError("moe.router=sigmoid, moe.balance=bias and moe.expert_groups>1 use "
                             "route(): set moe.dispatch=dropless")
        if self.bias_rate < 0 or self.shared_experts < 0:
            raise ValueError("MoEConfig: bias_rate and shared_experts must be >= 0")
        if self.expert_groups < 1 or self.top_groups < 1:   # their fit with E and k: route()
            raise ValueError("MoEConfig: expert_groups and top_groups must be >= 1")
        if self.eval_capacity_factor is not None and self.eval_capacity_factor <= 0:
            raise ValueError("MoEConfig.eval_capacity_factor must be > 0 or None")

    def is_moe_layer(self, i: int) -> bool:
        return self.every > 0 and (i + 1) % self.every == 0


@dataclass(frozen=True)
class ModelConfig:
    """Encoder-decoder pre-layer-norm Transformer with MoE in every other FFN."""
    vocab_size: int = 256                    # source vocabulary
    tgt_vocab_size: Optional[int] = None     # None = same as vocab_size
    shared_vocab: bool = True                # one table for source, target and softmax
    vocab_multiple: int = 1                  # tables padded to a multiple (even splits at scale)
    d_model: int = 64                        # M
    d_ff: int = 128                          # dense FFN hidden
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.0
    positions: str = "sinusoidal"            # sinusoidal | learned
    max_len: int = 256                       # for learned positions
    dtype: str = "float32"                   # activation dtype; params are float32
    moe: MoEConfig = field(default_factory=MoEConfig)
    mesh: MeshAxes = field(default_factory=MeshAxes)

    def __post_init__(self):
        _positive(self, "vocab_size", "vocab_multiple", "d_model", "d_ff", "num_heads", "max_len")
        if self.tgt_vocab_size is not None:
            _positive(self, "tgt_vocab_size")
        for n in ("num_encoder_layers", "num_decoder_layers"):
            if not isinstance(getattr(self, n), int) or getattr(self, n) < 0:
                raise ValueError(f"ModelConfig.{n} must be an int >= 0")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.shared_vocab and self.target_vocab != self.vocab_size:
            raise ValueError(f"shared_vocab=True needs equal vocab sizes, got {self.vocab_size} "
                             f"and {self.target_vocab}; set shared_vocab=False")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.moe, MoEConfig) or not isinstance(self.mesh, MeshAxes):
            raise ValueError("ModelConfig.moe must be a MoEConfig and .mesh a MeshAxes")

    @property
    def target_vocab(self) -> int:
        return self.vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    def padded(self, vocab: int) -> int:
        """Table rows for a vocabulary: rounded up to `vocab_multiple` (the padded ids never
        win: their logits are masked), so the table splits evenly over that many devices."""
        return -(-vocab // self.vocab_multiple) * self.vocab_multiple

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads

    def replace(self, **overrides) -> "ModelConfig":
        """A copy with fields of ModelConfig, MoEConfig or MeshAxes replaced by name."""
        return _replace_nested(self, overrides)


def _replace_nested(cfg: ModelConfig, overrides: dict) -> ModelConfig:
    top = {f.name for f in dataclasses.fields(ModelConfig)}
    moe_f = {f.name for f in dataclasses.fields(MoEConfig)}
    mesh_f = {f.name for f in dataclasses.fields(MeshAxes)}
    top_kw, moe_kw, mesh_kw = {}, {}, {}
    for k, v in overrides.items():
        if k in top:
            top_kw[k] = v
        elif k in moe_f:
            moe_kw[k] = v
        elif k in mesh_f:
            mesh_kw[k] = v
        else:
            raise ValueError(f"unknown config field {k!r}")
    moe = dataclasses.replace(top_kw.pop("moe", cfg.moe), **moe_kw)
    mesh = dataclasses.replace(top_kw.pop("mesh", cfg.mesh), **mesh_kw)
    return dataclasses.replace(cfg, moe=moe, mesh=mesh, **top_kw)
