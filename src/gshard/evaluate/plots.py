"""PNG pictures in the workdir: loss curves, BLEU per language vs training-set size (the shape
of the paper's Figure 6), and expert load per MoE layer over training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..train.metrics import METRICS, read_jsonl


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_loss(records: list[dict], path: Path) -> Path | None:
    steps = [r for r in records if "loss" in r]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["step"] for r in steps]
    ax.plot(x, [r["loss"] for r in steps], label="train loss", lw=1)
    if "cross_entropy" in steps[0]:
        ax.plot(x, [r["cross_entropy"] for r in steps], label="train cross-entropy", lw=1, alpha=.7)
    dev = [r for r in records if "dev_loss" in r]
    if dev:
        ax.plot([r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="dev cross-entropy")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="training loss")
    ax.legend()
    ax.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_expert_load(records: list[dict], path: Path) -> Path | None:
    """One panel per MoE layer: fraction of routed tokens per expert (stacked) over steps."""
    rows = [r for r in records if r.get("expert_load")]
    if not rows:
        return None
    load = np.array([r["expert_load"] for r in rows])          # [T, n_moe, E]
    steps = [r["step"] for r in rows]
    n = load.shape[1]
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False, sharey=True)
    for i, ax in enumerate(axes[0]):
        ax.stackplot(steps, load[:, i, :].T, lw=0)
        ax.set(title=f"MoE layer {i}", xlabel="step", ylim=(0, 1))
    axes[0][0].set_ylabel("fraction of routed tokens per expert")
    fig.suptitle("expert load over training (uniform = equal bands)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bleu_vs_size(eval_json: dict, path: Path) -> Path | None:
    """BLEU per language against its natural data size (clean pairs before the training cap, which
    also sets its tier; the paper's Figure 6 shape), log x, colored by tier."""
    langs = eval_json.get("languages", {})
    if not langs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"high": "tab:blue", "mid": "tab:orange", "low": "tab:green"}
    for lang, r in langs.items():
        size = r.get("clean_pairs", r["train_pairs"])
        ax.scatter(size, r["bleu"], c=colors.get(r["tier"], "gray"), s=18)
        ax.annotate(lang, (size, r["bleu"]), fontsize=7, alpha=.8)
    for t, c in colors.items():
        ax.scatter([], [], c=c, label=t)
    ax.set_xscale("log")
    ax.set(xlabel="pairs of the language in the corpus (before the training cap)", ylabel=f"BLEU ({eval_json.get('decoder', 'greedy')})",
           title="BLEU per language vs training-set size")
    ax.legend(title="tier")
    ax.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_plots(workdir) -> list[Path]:
    workdir = Path(workdir)
    recs = read_jsonl(workdir / METRICS)
    out = [plot_loss(recs, workdir / "loss.png"),
           plot_expert_load(recs, workdir / "expert_load.png")]
    return [p for p in out if p is not None]


def eval_plots(workdir) -> list[Path]:
    workdir = Path(workdir)
    path = workdir / "eval.json"
    if not path.exists():
        return []
    p = plot_bleu_vs_size(json.loads(path.read_text()), workdir / "bleu_vs_size.png")
    return [p] if p else []
