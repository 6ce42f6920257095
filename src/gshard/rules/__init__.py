"""Rule families: each module registers its propagation and partition rules beside each other."""
from . import (annotation, control_flow, conv, dot, elementwise, indexing, manual, misc,  # noqa: F401
               pool, random, reduce, scatter, shape, shift)
