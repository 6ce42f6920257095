"""The run configuration: typed, frozen, from a commented TOML preset plus `section.key=value`.

    cfg = load_config("tiny", ["train.steps=60", "moe.num_experts=16"])
    cfg.train.steps, cfg.model, cfg.moe, cfg.data, cfg.eval
    cfg.model_config(src_vocab, tgt_vocab, mesh_axes)   # -> gshard.models.config.ModelConfig

Presets live in gshard/presets/<name>.toml (package data); a path to any .toml file works too.
Unknown sections or keys are rejected with a difflib suggestion; values are parsed as TOML
literals (`train.lr=3e-3`, `data.dir="x"` or `data.dir=x`) and checked against the field type.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..models.config import MoEConfig


@dataclass(frozen=True)
class ModelSection:
    """Transformer shape. vocab_size 0: the corpus' SentencePiece models give both sides'
    sizes; > 0: a fixed vocabulary (the paper presets, simulated without a corpus)."""
    vocab_size: int = 0
    shared_vocab: bool = False
    vocab_multiple: int = 1                # tables padded to a multiple (even splits)
    max_len: int = 0                       # learned positions; 0 = from the train/eval lengths
    d_model: int = 64
    d_ff: int = 128
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.0
    positions: str = "sinusoidal"
    dtype: str = "float32"


LR_SCHEDULES = ("constant", "linear", "cosine", "rsqrt")   # gshard.train.step.lr_schedule


@dataclass(frozen=True)
class TrainSection:
    steps: int = 40
    batch_size: int = 16                   # global batch (sequences); split over the data axes
    src_len: int = 24
    tgt_len: int = 24
    length_filter: bool = True             # train on pairs that fit src_len/tgt_len whole
    languages: str = ""                    # comma-separated source languages; "" = all
    optimizer: str = "adam"                # adam | adafactor
    learning_rate: float = 3e-3            # adam peak lr; adafactor base_lr
    warmup_steps: int = 20
    lr_schedule: str = "constant"          # adam after warmup: constant | linear | cosine | rsqrt
    lr_final_fraction: float = 0.1         # linear/cosine: lr at train.steps, times the peak
    clip_norm: float = 1.0                 # adam only; 0 = off
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.01
    temperature: float = 5.0               # language sampling temperature (paper: 5)
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    dev_every: int = 0                     # held-out loss every N steps (0 = at the end only)
    dev_batches: int = 4
    time_limit_s: float = 0.0              # stop (and checkpoint) after this long; 0 = no limit
    shard_optimizer: bool = True           # weight-update sharding over the data axes (ZeRO)
    microbatches: int = 1                  # gradient accumulation over this many slices

    def __post_init__(self):
        for key in ("steps", "batch_size", "src_len", "tgt_len", "log_every", "checkpoint_every",
                    "microbatches"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "keep_checkpoints", "dev_every", "dev_batches"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be 0 or more, got {getattr(self, key)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"train.lr_final_fraction must be in [0, 1], got "
                             f"{self.lr_final_fraction}")


@dataclass(frozen=True)
class DataSection:
    dir: str = "data_cache"                    # prepared corpus (gshard data prepare)
    prepare: str = "quick"                 # what `gshard run` prepares: quick | full | none
    max_pairs_per_lang: int = 8000


@dataclass(frozen=True)
class EvalSection:
    max_sentences: int = 100               # decoded test sentences per language (speed cap)
    min_test_pairs: int = 100              # languages scored: at least this many test pairs
    pool_min_pairs: int = 10               # smaller languages still count in the tier pools...
    pool_max_sentences: int = 20           # ...with at most this many sentences each
    beam_size: int = 4
    length_penalty: float = 0.6            # GNMT alpha for beam scores
    batch_size: int = 64
    max_len: int = 0                       # decoded target length (pieces); 0 = train.tgt_len
    in_train_range: bool = True            # test pairs that fit train.src_len/tgt_len only
    udhr_max_sentences: int = 50


@dataclass(frozen=True)
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    moe: MoEConfig = field(default_factory=MoEConfig)     # the one MoE config (models/config.py)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    preset: str = "tiny"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)

    def model_config(self, src_vocab: int = 0, tgt_vocab: int = 0, mesh_axes=None):
        """The gshard ModelConfig for these vocabularies (or the preset's fixed one) and mesh
        axes."""
        from ..models.config import MeshAxes, ModelConfig

        m = dataclasses.asdict(self.model)
        fixed, shared, max_len = m.pop("vocab_size"), m.pop("shared_vocab"), m.pop("max_len")
        if not fixed and not src_vocab:  # no corpus at hand: a shared 256-piece stand-in
            fixed, shared = 256, True
        src = fixed or src_vocab
        tgt = None if shared else (fixed or tgt_vocab)
        return ModelConfig(vocab_size=src, tgt_vocab_size=tgt, shared_vocab=shared,
                           max_len=max_len or max(self.train.src_len, self.train.tgt_len,
                                                  self.eval.max_len) + 1,
                           moe=self.moe, mesh=mesh_axes or MeshAxes(), **m)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)
            if f.default_factory is not dataclasses.MISSING}


class ConfigError(ValueError):
    pass


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _field_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (args[0] if args else tp), type(None) in typing.get_args(tp)


def _coerce(key: str, cls, name: str, value: Any):
    tp, optional = _field_type(cls, name)
    if optional and (value is None or value == 0):  # TOML has no null: 0 means "unset"
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and not isinstance(value, str):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}")
    return value


def _apply(cfg: RunConfig, section: str, values: dict, where: str) -> RunConfig:
    if section not in SECTIONS:
        raise ConfigError(f"unknown section [{section}] in {where}{_suggest(section, SECTIONS)}")
    cls = SECTIONS[section]
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in values.items():
        key = f"{section}.{k}"
        if k not in names:
            raise ConfigError(f"unknown key {key!r} in {where}{_suggest(key, all_keys())}")
        kw[k] = _coerce(key, cls, k, v)
    try:
        new = dataclasses.replace(getattr(cfg, section), **kw)
    except ValueError as e:  # a validated section (MoEConfig) refused the values
        raise ConfigError(f"{where}: {e}") from None
    return dataclasses.replace(cfg, **{section: new})


def parse_value(text: str):
    """A TOML literal (3, 1e-3, true, "s", [1, 2]); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if "." not in key:
        raise ConfigError(f"override key {key!r} must be section.key{_suggest(key, all_keys())}")
    section, name = key.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"unknown key {key!r}{_suggest(key, all_keys())}")
    return section, name, parse_value(text.strip())


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("gshard.presets").iterdir()
                  if p.name.endswith(".toml"))


def _preset_text(name: str) -> tuple[str, str]:
    path = Path(name)
    if name.endswith(".toml") and path.exists():
        return path.read_text(), str(path)
    res = resources.files("gshard.presets") / f"{name}.toml"
    if not res.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}"
                          f"{_suggest(name, preset_names())}")
    return res.read_text(), f"preset {name}"


def load_config(preset: str = "tiny", overrides=()) -> RunConfig:
    """The preset's TOML over the dataclass defaults, then each `section.key=value`."""
    text, where = _preset_text(preset)
    cfg = RunConfig(preset=preset)
    for section, values in tomllib.loads(text).items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: top-level key {section!r} is not a [section]")
        cfg = _apply(cfg, section, values, where)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: RunConfig, overrides=()) -> RunConfig:
    for item in overrides:
        section, name, value = parse_override(item)
        cfg = _apply(cfg, section, {name: value}, f"override {item!r}")
    cfg.model_config(8, 8)          # validate the model part early (ValueError on bad values)
    return cfg


def from_dict(d: dict) -> RunConfig:
    cfg = RunConfig(preset=d.get("preset", "tiny"))
    for section in SECTIONS:
        cfg = _apply(cfg, section, d.get(section, {}), "saved config")
    return cfg


def dumps(cfg: RunConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=1, sort_keys=True)
