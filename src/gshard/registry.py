"""The one rule registry: per primitive, its propagation rule and its partition rule side by side.

A rule family module registers both with one decorator on the partition rule:

    @rule(P.transpose_p, prop=prop_transpose, fwd_level=0)
    def part_transpose(ctx, eqn, ins, targets): ...

Propagation (`propagate/engine.py`) reads `.prop`, levels and body ties; partitioning
(`spmd/interpret.py`) calls `.part`. Every primitive has both or neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .mesh import MeshInfo
    from .spec import ShardingSpec
    from .spmd.local import Ctx
    from .spmd.shard import Local
    from .trace.graph import Eqn

    Proposals = list[Optional[ShardingSpec]]
    # (eqn, operand specs or None, result specs or None, mesh) -> (operand proposals, result proposals)
    PropFn = Callable[[Eqn, Proposals, Proposals, MeshInfo], tuple[Proposals, Proposals]]
    # (ctx, eqn, local operands, propagated result specs) -> local results
    PartFn = Callable[[Ctx, Eqn, list[Local], list[ShardingSpec]], list[Local]]
    # eqn -> [(outer value, body value, spec outer->body, spec body->outer)]
    TiesFn = Callable[[Eqn], list[tuple[Any, Any, Callable, Callable]]]


@dataclass(frozen=True)
class Rule:
    prim: Any
    prop: "PropFn"
    part: "PartFn"
    fwd_level: int = 1
    bwd_level: int = 1
    levels: Callable | None = None  # eqn -> (fwd_level, bwd_level) when they depend on the eqn
    ties: "TiesFn | None" = None    # loop / branch bodies: values tied to their outer values
    carries_padded: bool = False    # a padded-tile split a same-shaped neighbour holds passes on

    def levels_of(self, eqn) -> tuple[int, int]:
        return self.levels(eqn) if self.levels else (self.fwd_level, self.bwd_level)


RULES: dict[Any, Rule] = {}


def rule(prims, *, prop: "PropFn", fwd_level: int = 1, bwd_level: int | None = None,
         levels: Callable | None = None, ties: "TiesFn | None" = None,
         carries_padded: bool = False):
    """Decorator on a partition rule: register it with its propagation rule for `prims`."""
    def deco(part: "PartFn") -> "PartFn":
        for p in _as_list(prims):
            if p is None:
                continue
            RULES[p] = Rule(p, prop, part, fwd_level,
                            fwd_level if bwd_level is None else bwd_level, levels, ties,
                            carries_padded)
        return part
    return deco


def _as_list(prims) -> Sequence:
    return prims if isinstance(prims, (list, tuple)) else [prims]
