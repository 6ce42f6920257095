"""Issue 15: `gshard run --minutes N` scales the default recipe; train.languages restricts the
training languages (bilingual baselines); the default recipe's knobs."""
import argparse

import pytest

from gshard.cli.run_cmd import _minutes
from gshard.train.config import load_config
from gshard.train.loop import _languages


def _args(minutes, *overrides):
    return argparse.Namespace(preset="default", data_dir=None, minutes=minutes,
                              overrides=list(overrides), steps=None)


def test_minutes_scales_time_and_steps_together():
    base = load_config("default").train
    ov = dict(x.split("=") for x in _minutes(_args(60)))
    assert float(ov["train.time_limit_s"]) == 60 * 60 - 60
    assert int(ov["train.steps"]) == round(base.steps * 3540 / base.time_limit_s)
    assert _minutes(_args(None)) == []
    with pytest.raises(ValueError, match="at least 2"):
        _minutes(_args(1))


def test_default_recipe_uses_the_fast_dispatch_and_whole_pairs():
    cfg = load_config("default")
    assert cfg.moe.dispatch == "gather" and cfg.train.length_filter
    assert cfg.eval.in_train_range and cfg.eval.max_len == 0  # decode to train.tgt_len
    # every gating knob is reachable from the command line (one MoE config)
    cfg = load_config("default", ["moe.top_k=1", "moe.jitter_eps=0.01", "moe.gating='top2'"])
    assert cfg.moe.top_k == 1 and cfg.moe.jitter_eps == 0.01


def test_train_languages_are_checked():
    class C:
        languages = ("da", "lv")
    t = load_config("default", ["train.languages='lv'"]).train
    assert _languages(t, C) == ("lv",)
    assert _languages(load_config("default").train, C) is None
    with pytest.raises(ValueError, match="unknown language"):
        _languages(load_config("default", ["train.languages='xx,lv'"]).train, C)
