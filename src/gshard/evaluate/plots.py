"""PNG pictures in the workdir: loss curves, BLEU per language vs training-set size (the shape
of the paper's Figure 6), and expert load per MoE layer over training. Each `*_figure` builds a
matplotlib Figure (titles, axis labels, legends); `plot_*` writes it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..train.metrics import METRICS, read_jsonl

TIER_COLORS = {"high": "tab:blue", "mid": "tab:orange", "low": "tab:green"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def loss_figure(records: list[dict]):
    steps = [r for r in records if "loss" in r]
    if not steps:
        return None
    from matplotlib.ticker import MaxNLocator
    fig, ax = _plt().subplots(figsize=(6, 4))
    x = [r["step"] for r in steps]
    ax.plot(x, [r["loss"] for r in steps], label="train loss", lw=1)
    if "cross_entropy" in steps[0]:
        ax.plot(x, [r["cross_entropy"] for r in steps], label="train cross-entropy", lw=1, alpha=.7)
    dev = [r for r in records if "dev_loss" in r]
    if dev:
        ax.plot([r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="dev cross-entropy")
    ax.set(xlabel="training step", ylabel="loss (nats per target token)", title="training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=.3)
    fig.tight_layout()
    return fig


def moe_layer_names(cfg) -> list[str]:
    """'encoder layer i' / 'decoder layer i' of each MoE layer, in expert_load's order."""
    if cfg is None:
        return []
    every = cfg.moe.every
    is_moe = lambda i: every > 0 and (i + 1) % every == 0  # noqa: E731  (MoEConfig's rule)
    return ([f"encoder layer {i}" for i in range(cfg.model.num_encoder_layers) if is_moe(i)] +
            [f"decoder layer {i}" for i in range(cfg.model.num_decoder_layers) if is_moe(i)])


def expert_load_figure(records: list[dict], layer_names=()):
    """One panel per MoE layer: fraction of routed tokens per expert (stacked) over steps."""
    rows = [r for r in records if r.get("expert_load")]
    if not rows:
        return None
    from matplotlib.ticker import MaxNLocator
    load = np.array([r["expert_load"] for r in rows])          # [T, n_moe, E]
    steps = [r["step"] for r in rows]
    n, E = load.shape[1], load.shape[2]
    names = list(layer_names) if len(layer_names) == n else [f"MoE layer {i}" for i in range(n)]
    fig, axes = _plt().subplots(1, n, figsize=(3.4 * n + 1.6, 3.4), squeeze=False, sharey=True)
    for i, ax in enumerate(axes[0]):
        bands = ax.stackplot(steps, load[:, i, :].T, lw=0, labels=[f"expert {e}" for e in range(E)])
        ax.set(title=names[i], xlabel="training step", ylim=(0, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("share of routed tokens")
    cols = min(E, 8)
    rows_ = -(-E // cols)
    fig.legend(bands, [f"expert {e}" for e in range(E)], loc="lower center", fontsize=7,
               ncol=cols, title="experts (bottom band = expert 0)", title_fontsize=7)
    fig.suptitle(f"expert load per MoE layer over training ({E} experts; uniform = equal bands)",
                 fontsize=10)
    fig.set_figheight(3.4 + 0.2 * rows_)
    fig.tight_layout(rect=(0, (0.35 + 0.2 * rows_) / (3.4 + 0.2 * rows_), 1, 1))
    return fig


def bleu_vs_size_figure(eval_json: dict):
    """BLEU per language against its natural data size (clean pairs before the training cap, which
    also sets its tier; the paper's Figure 6 shape), log x, colored by tier."""
    langs = eval_json.get("languages", {})
    if not langs:
        return None
    from matplotlib.ticker import LogLocator, NullFormatter
    fig, ax = _plt().subplots(figsize=(7, 4.5))
    pts = sorted((r.get("clean_pairs", r["train_pairs"]), r["bleu"], lang, r["tier"])
                 for lang, r in langs.items())
    for tier, color in TIER_COLORS.items():
        mine = [p for p in pts if p[3] == tier]
        if mine:                                          # a legend entry only with points
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], c=color, s=18, label=tier)
    for k, (size, bleu, lang, _) in enumerate(pts):      # alternate offsets: fewer collisions
        ax.annotate(lang, (size, bleu), fontsize=6, alpha=.8, xytext=(3, 4 if k % 2 else -8),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_minor_formatter(NullFormatter())       # decades only: no colliding labels
    ax.set(xlabel="sentence pairs of the language in the corpus (log scale)",
           ylabel=f"BLEU ({eval_json.get('decoder', 'greedy')})",
           title="BLEU per language vs training-set size")
    ax.legend(title="tier")
    ax.grid(alpha=.3)
    fig.tight_layout()
    return fig


def plot_loss(records: list[dict], path: Path) -> Path | None:
    fig = loss_figure(records)
    return _save(fig, path) if fig else None


def plot_expert_load(records: list[dict], path: Path, layer_names=()) -> Path | None:
    fig = expert_load_figure(records, layer_names)
    return _save(fig, path) if fig else None


def plot_bleu_vs_size(eval_json: dict, path: Path) -> Path | None:
    fig = bleu_vs_size_figure(eval_json)
    return _save(fig, path) if fig else None


def _workdir_cfg(workdir: Path):
    from ..train.loop import load_workdir_config
    try:
        return load_workdir_config(workdir)
    except (FileNotFoundError, ValueError):
        return None


def training_plots(workdir) -> list[Path]:
    workdir = Path(workdir)
    recs = read_jsonl(workdir / METRICS)
    out = [plot_loss(recs, workdir / "loss.png"),
           plot_expert_load(recs, workdir / "expert_load.png",
                            moe_layer_names(_workdir_cfg(workdir)))]
    return [p for p in out if p is not None]


def eval_plots(workdir) -> list[Path]:
    workdir = Path(workdir)
    path = workdir / "eval.json"
    if not path.exists():
        return []
    p = plot_bleu_vs_size(json.loads(path.read_text()), workdir / "bleu_vs_size.png")
    return [p] if p else []
