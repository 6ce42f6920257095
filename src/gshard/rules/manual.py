"""gshard.manual regions (a shard_map in the user's program): operands resharded to the region's
in_specs, its per-device body evaluated on local shards, results at its out_specs."""
from __future__ import annotations

from types import SimpleNamespace

from jax.extend.core import ClosedJaxpr, jaxpr_as_fun, jaxprs_in_params

from ..compat import primitive
from ..registry import rule
from ..spec import ShardingSpec
from ..spmd.shard import Local
from ..cost.flops import COLLECTIVES, var_bytes
from ..errors import source_line

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
    _record_own(ctx, eqn.params["jaxpr"], eqn.where)
    ctx.rec.source = eqn.where
    outs = jaxpr_as_fun(ClosedJaxpr(eqn.params["jaxpr"], ()))(*vals)
    return [Local(v, s, o.shape) for v, s, o in zip(outs, out_specs, eqn.outputs)]


def _record_own(ctx, jaxpr, where: str) -> None:
    """The region's own collectives (the user wrote them) go in the report like gshard's: kind,
    axes, per-device bytes (result bytes for an AllGather), the user's line."""
    for e in jaxpr.eqns:
        kind = COLLECTIVES.get(e.primitive.name)
        if kind is not None:
            vs = e.outvars if kind == "all_gather" else e.invars
            nbytes = sum(var_bytes(v) for v in vs)
            ref = SimpleNamespace(shape=(nbytes // max(1, e.invars[0].aval.dtype.itemsize),),
                                  dtype=e.invars[0].aval.dtype)
            axes = e.params.get("axes", e.params.get("axis_name", ()))
            axes = axes if isinstance(axes, (tuple, list)) else (axes,)
            ctx.rec.source = source_line(e.source_info) or where
            ctx.rec.add(kind, tuple(a for a in axes if isinstance(a, str)), e.invars[0].aval,
                        "written in a gshard.manual region", result=ref)
        for sub in jaxprs_in_params(e.params):
            _record_own(ctx, sub, where)


rule(SHARD_MAP, prop=prop_manual, fwd_level=0)(part_manual)
