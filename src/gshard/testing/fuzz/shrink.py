"""Structural shrinking of a failing program: fewer outputs, ops bypassed, annotations dropped,
gradient mode dropped, until no single edit keeps the failure (same outcome class)."""
from __future__ import annotations

from typing import Callable

from .program import Op, Program


def dce(prog: Program) -> Program:
    """Drop ops whose results are unused and inputs no op reads."""
    live = set(prog.outputs)
    kept = []
    for op in reversed(prog.ops):
        if any(v.name in live for v in op.outs):
            kept.append(op)
            live |= set(op.args)
    kept.reverse()
    inputs = tuple(v for v in prog.inputs if v.name in live)
    return prog.replace(ops=tuple(kept), inputs=inputs)


def _rename(prog: Program, old: str, new: str, after: int) -> Program:
    """Uses of `old` by ops after position `after` (and by the outputs) read `new` instead."""
    ops = list(prog.ops)
    for i in range(after + 1, len(ops)):
        op = ops[i]
        if old in op.args:
            ops[i] = Op(op.family, op.fmt, tuple(new if a == old else a for a in op.args), op.outs,
                        op.annotation)
    outs = tuple(dict.fromkeys(new if o == old else o for o in prog.outputs))
    return prog.replace(ops=tuple(ops), outputs=outs)


def candidates(prog: Program):
    """Smaller variants of `prog`, most aggressive first."""
    if prog.outer != "none":
        yield prog.replace(outer="none")
    if prog.grad and prog.outer != "grad":
        yield prog.replace(grad=False)
    for k in range(len(prog.outputs)):
        if len(prog.outputs) > 1:
            yield dce(prog.replace(outputs=prog.outputs[:k] + prog.outputs[k + 1:]))
    for i in reversed(range(len(prog.ops))):
        op = prog.ops[i]
        for out in op.outs:
            for name in _same_typed(prog, i, out):
                yield dce(_rename(prog, out.name, name, i))


def _same_typed(prog: Program, i: int, out) -> list[str]:
    """Names defined before op i with the shape and dtype of `out` (op i's own args first)."""
    earlier = list(prog.inputs) + [v for op in prog.ops[:i] for v in op.outs]
    same = [v.name for v in earlier if v.shape == out.shape and v.dtype == out.dtype]
    own = [a for a in prog.ops[i].args if a in same]
    return list(dict.fromkeys(own + same[::-1]))[:3]


def shrink(prog: Program, fails: Callable[[Program], bool], budget: int = 200) -> Program:
    """Greedy: take the first candidate that still fails, until none does (or budget runs out)."""
    prog = dce(prog)
    tried: set = set()
    while budget > 0:
        for cand in candidates(prog):
            key = cand.body_source() + str(cand.grad) + cand.outer
            if key in tried:
                continue
            tried.add(key)
            budget -= 1
            if fails(cand):
                prog = cand
                break
            if budget <= 0:
                break
        else:
            return prog
    return prog
