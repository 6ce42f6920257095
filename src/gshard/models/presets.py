"""The presets as ModelConfigs: the model part of every gshard/presets/<name>.toml.

The TOML presets are run configs (train/config.py reads and validates them); this module sits
above both configs, so models/config.py (the model's own dataclasses) never imports the run
config that contains it.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..train.config import ConfigError, load_config, preset_names
from .config import ModelConfig


class _Presets(Mapping):
    """The model part of every preset in gshard/presets/*.toml (the one preset system)."""

    def __iter__(self):
        return iter(preset_names())

    def __len__(self):
        return len(preset_names())

    def __getitem__(self, name: str) -> ModelConfig:
        try:
            return load_config(name).model_config()
        except ConfigError as e:
            raise KeyError(name) from e


PRESETS: Mapping[str, ModelConfig] = _Presets()


def get_preset(name: str, **overrides) -> ModelConfig:
    """A preset (gshard/presets/<name>.toml), with any ModelConfig / MoEConfig / MeshAxes field
    overridden by name, e.g. get_preset("paper-12L", num_experts=512, expert="x", data="x").
    A preset sized by its corpus gets a shared 256-piece vocabulary here."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
