"""gshard: GShard (Lepikhin et al., 2020) for JAX.

Annotate a single-device program with `replicate`, `split`, `mesh_split` or `shard`; then
`gshard.partition(fn, mesh)` propagates shardings over the whole program (backward pass included),
partitions it into one SPMD per-device program and runs it with jax.shard_map under jax.jit.
"""
import os as _os

from jax._src import source_info_util as _siu

from .errors import USER_CODE as _USER_CODE  # noqa: E402

_HERE = _os.path.dirname(_os.path.abspath(__file__))
# Source lines name user code: gshard's machinery is excluded from JAX's source info, but the
# library's own models (models/, moe/, train/, evaluate/) are user code to explain and report.
for _entry in sorted(_os.listdir(_HERE)):
    if _entry.split(".")[0] not in _USER_CODE and not _entry.startswith("__pycache__"):
        _siu.register_exclusion(_os.path.join(_HERE, _entry))

from .annotate import mesh_split, replicate, shard, split  # noqa: E402
from .errors import AnnotationError, GShardError, UnsupportedPrimitiveError  # noqa: E402
from .manual import manual  # noqa: E402
from .spec import ShardingSpec  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("partition", "Partitioned", "Lowered"):
        from . import api
        return getattr(api, name)
    if name in ("autoshard", "AutoPlan"):
        from . import auto as _auto
        return getattr(_auto, name)
    if name == "moe":
        import importlib
        return importlib.import_module(".moe", __name__)
    raise AttributeError(name)


__all__ = ["replicate", "split", "mesh_split", "shard", "partition", "autoshard", "manual",
           "ShardingSpec",
           "GShardError", "AnnotationError", "UnsupportedPrimitiveError"]
