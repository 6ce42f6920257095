"""gshard.manual regions (a shard_map in the user's program): operands resharded to the region's
in_specs, its per-device body evaluated on local shards, results at its out_specs."""
from __future__ import annotations

from jax.extend.core import jaxpr_as_fun, ClosedJaxpr

from ..compat import primitive
from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.shard import Local

SHARD_MAP = primitive("shard_map")


def _specs(pspecs, values):
    return [ShardingSpec.from_partition_spec(p, len(v.shape)) for p, v in zip(pspecs, values)]


def prop_manual(eqn, ins, outs, mesh):
    return (_specs(eqn.params["in_specs"], eqn.inputs), _specs(eqn.params["out_specs"], eqn.outputs))


def _check_even(ctx, eqn, specs, values):
    for s, v in zip(specs, values):
        if s.is_uneven(v.shape, ctx.sizes):
            from ..errors import GShardError
            raise GShardError(f"a gshard.manual region at {eqn.where} splits a dim unevenly: shape "
                              f"{list(v.shape)} with {s} on mesh {ctx.mesh.describe()}"
                              f"\n  fix: make each split dim a multiple of its number of tiles")


def part_manual(ctx, eqn, ins, targets):
    in_specs = _specs(eqn.params["in_specs"], eqn.inputs)
    out_specs = _specs(eqn.params["out_specs"], eqn.outputs)
    _check_even(ctx, eqn, in_specs + out_specs, list(eqn.inputs) + list(eqn.outputs))
    vals = [ctx.reshard(x, s, "operand of a manual region").val for x, s in zip(ins, in_specs)]
    ctx.rec.source = eqn.where
    outs = jaxpr_as_fun(ClosedJaxpr(eqn.params["jaxpr"], ()))(*vals)
    return [Local(v, s, o.shape) for v, s, o in zip(outs, out_specs, eqn.outputs)]


rule(SHARD_MAP, prop=prop_manual, fwd_level=0)(part_manual)
