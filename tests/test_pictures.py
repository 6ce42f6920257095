"""Every PNG says what it shows: titles, axis labels, legends and readable ticks, checked on the
matplotlib Figure each one is drawn from (and the files are written)."""
from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import pytest

from gshard.evaluate import plots

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))


def _records(E=8, n_moe=2, steps=7):
    rng = np.random.default_rng(0)
    recs = [{"step": s, "loss": 5.0 - 0.1 * s, "cross_entropy": 4.9 - 0.1 * s,
             "expert_load": rng.dirichlet(np.ones(E), size=n_moe).tolist()}
            for s in range(1, steps + 1)]
    return recs + [{"step": steps, "dev_loss": 4.2, "final": True}]


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def _no_overlap(fig, texts):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in texts if t.get_text()]
    assert boxes
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def test_loss_png_has_labels_and_integer_step_ticks(tmp_path):
    fig = plots.loss_figure(_records())
    ax = fig.axes[0]
    assert ax.get_title() == "training loss"
    assert "step" in ax.get_xlabel() and "loss" in ax.get_ylabel()
    assert _legend_texts(ax.get_legend()) == ["train loss", "train cross-entropy",
                                              "dev cross-entropy"]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert plots.plot_loss(_records(), tmp_path / "loss.png").stat().st_size > 0


def test_expert_load_png_names_encoder_decoder_and_every_expert(tmp_path):
    from gshard.train.config import load_config
    names = plots.moe_layer_names(load_config("tiny"))
    assert names == ["encoder layer 1", "decoder layer 1"]
    fig = plots.expert_load_figure(_records(), names)
    assert [ax.get_title() for ax in fig.axes] == names
    assert all("step" in ax.get_xlabel() for ax in fig.axes) and fig.axes[0].get_ylabel()
    assert _legend_texts(fig.legends[0]) == [f"expert {e}" for e in range(8)]
    assert "8 experts" in fig._suptitle.get_text()
    assert plots.plot_expert_load(_records(), tmp_path / "e.png", names).exists()


def test_bleu_vs_size_png_decade_ticks_and_only_tiers_with_points(tmp_path):
    rng = np.random.default_rng(1)
    langs = {f"l{i}": {"clean_pairs": int(10 ** rng.uniform(2.5, 4.5)), "train_pairs": 100,
                       "bleu": float(rng.uniform(1, 20)), "tier": "mid" if i % 3 else "high"}
             for i in range(30)}
    fig = plots.bleu_vs_size_figure({"languages": langs, "decoder": "beam4"})
    ax = fig.axes[0]
    assert ax.get_title() and "log" in ax.get_xlabel() and "BLEU (beam4)" == ax.get_ylabel()
    assert sorted(_legend_texts(ax.get_legend())) == ["high", "mid"]    # no empty "low" entry
    fig.canvas.draw()
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    _no_overlap(fig, [t for t in ax.get_xticklabels() if t.get_text()])
    assert plots.plot_bleu_vs_size({"languages": langs}, tmp_path / "b.png").exists()


def test_explain_png_labels_of_narrow_tiles_do_not_overlap(tmp_path):
    import gshard
    from gshard import picture
    from gshard.cli.explain_cmd import build_mesh, parse_args_spec

    mesh = build_mesh("x=16")
    low = gshard.partition(lambda x: gshard.mesh_split(x, [-1, 0]) * 2, mesh).lower(
        *parse_args_spec("f32[4,64]"))
    item = picture.picture_of(low, "in[0]")
    fig = picture.png_figure([item], low.mesh.names, low.mesh.shape)
    ax = fig.axes[0]
    assert "in[0]" in ax.get_title() and ax.get_xlabel() == "tiles of dim 1"
    assert len(ax.texts) == 16
    _no_overlap(fig, ax.texts)
    picture.save_png(tmp_path / "p.png", [item], low.mesh.names, low.mesh.shape)
    assert (tmp_path / "p.png").stat().st_size > 0


def test_claims_png_has_axis_labels_and_legend():
    import claims
    run = lambda loss, chrf, seed: {"dev_loss": loss, "seed": seed,  # noqa: E731
                                    "high_mid": {"chrf": chrf}}
    by = {"dense": [run(3.1, 20, 0), run(3.2, 21, 1)], "moe8": [run(3.0, 22, 0), run(2.9, 23, 1)]}
    fig = claims.claims_figure(by)
    for ax in fig.axes:
        assert ax.get_xlabel() == "configuration" and ax.get_ylabel() and ax.get_title()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["dense", "moe8"]
    assert _legend_texts(fig.axes[0].get_legend()) == ["one seed", "mean over seeds"]
