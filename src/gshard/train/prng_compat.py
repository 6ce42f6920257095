"""Workaround: register gshard's PRNG rule for random_wrap / random_unwrap where this JAX keeps
them outside jax.extend.core.primitives (jax 0.10: jax._src.random.prng), so dropout and the
random second-expert policy partition; likewise bitcast_convert_type between equal bit widths
(elementwise). rules/misc.py looks them up only in jax.extend; once it
finds them itself this module does nothing."""
from __future__ import annotations


def _find(name: str):
    import importlib
    for mod in ("jax.extend.core.primitives", "jax._src.random.prng", "jax._src.prng"):
        try:
            p = getattr(importlib.import_module(mod), f"{name}_p", None)
        except ImportError:
            continue
        if p is not None:
            return p
    return None


def _same_shape(eqn) -> bool:
    return tuple(eqn.inputs[0].shape) == tuple(eqn.outputs[0].shape)


def _install_bitcast(added: list):
    """bitcast_convert_type between equal widths (dropout's uint32 -> float32) is elementwise."""
    from ..propagate.engine import RULES as PROP, register as register_prop
    from ..rules import elementwise as ew, misc
    from ..spmd.table import register as register_part

    p = _find("bitcast_convert_type")
    if p is None or p in PROP:
        return
    register_prop([p], lambda eqn, ins, outs, mesh: (ew.prop_elementwise if _same_shape(eqn)
                                                     else misc.prop_none)(eqn, ins, outs, mesh),
                  fwd_level=0)
    register_part([p])(lambda ctx, eqn, ins, targets: (
        ew.part_elementwise if _same_shape(eqn) else misc.part_whole)(ctx, eqn, ins, targets))
    added.append("bitcast_convert_type")


def install() -> list[str]:
    from ..propagate.engine import register as register_prop
    from ..rules import misc
    from ..spmd.table import RULES, register as register_part

    added = []
    for name in ("random_wrap", "random_unwrap"):
        p = _find(name)
        if p is None or p in misc.RANDOM or p in RULES:
            continue
        register_prop([p], misc.prop_none, fwd_level=1)
        register_part([p])(misc.part_whole)
        misc.RANDOM.append(p)
        added.append(name)
    _install_bitcast(added)
    return added


install()
