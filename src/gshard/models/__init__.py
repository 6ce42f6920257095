"""The GShard MoE Transformer (encoder-decoder) and its configs."""
from .config import MeshAxes, ModelConfig, MoEConfig
from .presets import PRESETS, get_preset
from .transformer import decode, encode, forward, init_params, param_count

__all__ = ["PRESETS", "MeshAxes", "ModelConfig", "MoEConfig", "get_preset", "decode", "encode",
           "forward", "init_params", "param_count"]
