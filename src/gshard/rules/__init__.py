"""Rule families: each module registers its propagation and partition rules beside each other."""
from . import (annotation, control_flow, conv, dot, dus, elementwise, indexing, manual,  # noqa: F401
               misc, pool, random, reduce, rotate, scatter, shape, shift)
