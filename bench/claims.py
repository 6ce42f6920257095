"""The paper's claims at small scale (issue 15), each configuration over several seeds:

  * MoE vs dense at equal per-token compute: top-2 over experts of H = d_ff / 2 (two experts'
    FFNs per token = one dense FFN of d_ff) against the dense model with every FFN dense;
  * more experts: 8 vs 32 experts (same H, same per-token compute, 4x the expert parameters);
  * low-resource transfer: the multilingual MoE model against bilingual models (one language's
    pairs only) on three low-resource languages, at equal steps.

Every run trains the `default` preset for the same number of steps on the same corpus, then
scores held-out (dev) cross-entropy and greedy BLEU / chrF (sacrebleu) on test sentences in the
trained length range: pooled over the high and mid tiers, and per low-resource language.

    python bench/claims.py --data-dir data_cache --out runs/claims --steps 250 --seeds 0 1 2
    python bench/claims.py --summarise runs/claims      # the table and plot (docs/training.md)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

D_FF = 256
CONFIGS = {
    "dense": ["moe.every=0", f"model.d_ff={D_FF}"],
    "moe8": ["moe.num_experts=8", f"moe.expert_hidden={D_FF // 2}", f"model.d_ff={D_FF}"],
    "moe32": ["moe.num_experts=32", f"moe.expert_hidden={D_FF // 2}", f"model.d_ff={D_FF}"],
}
LOW = ("lv", "sr_Latn", "da")   # the three largest low-resource languages of the quick corpus


def _score_language(model, lang: str, n: int) -> dict:
    from gshard.evaluate.bleu import score
    pairs = model.in_range(model.corpus.pairs("test", lang))[:n]
    hyps = model.translate([p[0] for p in pairs], beam=0)
    return score(hyps, [p[1] for p in pairs])


def one_run(name: str, overrides: list[str], seed: int, args) -> dict:
    from gshard.evaluate.evaluator import evaluate, load_model
    from gshard.train.config import load_config
    from gshard.train.loop import train

    work = Path(args.out) / f"{name}-s{seed}"
    result = work / "claim.json"
    if result.exists():
        return json.loads(result.read_text())
    ov = overrides + [f"train.seed={seed}", f"train.steps={args.steps}", "train.time_limit_s=0",
                      "train.dev_every=0", f"train.checkpoint_every={args.steps}",
                      f'train.lr_schedule="{args.lr_schedule}"', f'data.dir="{args.data_dir}"']
    t0 = time.perf_counter()
    out = train(load_config("default", ov), work, progress=False, log=lambda m: None)
    secs = time.perf_counter() - t0
    ev_ov = ["eval.beam_size=1", f"eval.max_sentences={args.sentences}", "eval.udhr_max_sentences=0"]
    ev = evaluate(work, ev_ov, log=lambda m: None) if not name.startswith("bi-") else None
    model = load_model(work, ev_ov)
    low = {lang: _score_language(model, lang, args.sentences) for lang in LOW
           if not name.startswith("bi-") or name == f"bi-{lang}"}
    rec = {"name": name, "seed": seed, "steps": out["step"], "train_seconds": round(secs, 1),
           "dev_loss": out["dev_loss"], "low": low,
           "high_mid": ev["tiers"].get("high+mid") if ev else None}
    result.write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: rec[k] for k in ("name", "seed", "steps", "dev_loss", "train_seconds")}),
          flush=True)
    return rec


def run_all(args):
    for seed in args.seeds:
        for name, ov in CONFIGS.items():
            one_run(name, ov, seed, args)
    for lang in LOW:  # bilingual: the moe8 recipe on one language's pairs
        for seed in args.seeds[:args.bilingual_seeds]:
            one_run(f"bi-{lang}", CONFIGS["moe8"] + [f"train.languages={lang}"], seed, args)


def _mean_sd(xs):
    import numpy as np
    xs = np.asarray(xs, float)
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def summarise(out: Path) -> str:
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("*/claim.json"))]
    by = {}
    for r in recs:
        by.setdefault(r["name"], []).append(r)
    lines = ["| model | seeds | steps | dev loss | high+mid BLEU | high+mid chrF |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in CONFIGS:
        rs = by.get(name, [])
        if not rs:
            continue
        cols = [_mean_sd([r["dev_loss"] for r in rs]),
                _mean_sd([r["high_mid"]["bleu"] for r in rs]),
                _mean_sd([r["high_mid"]["chrf"] for r in rs])]
        lines.append(f"| {name} | {len(rs)} | {rs[0]['steps']} | "
                     + " | ".join(f"{m:.3f} ± {s:.3f}" if i == 0 else f"{m:.2f} ± {s:.2f}"
                                  for i, (m, s) in enumerate(cols)) + " |")
    lines += ["", "Paired by seed (same batches, same dev batches; dev batches differ between seeds):", "",
              "| comparison | Δ dev loss per seed | mean Δ dev loss | Δ chrF per seed | mean Δ chrF |",
              "|---|---|---:|---|---:|"]
    for a, b in (("moe8", "dense"), ("moe32", "moe8"), ("moe32", "dense")):
        pairs = _paired(by, a, b)
        if pairs:
            dl = [x["dev_loss"] - y["dev_loss"] for x, y in pairs]
            dc = [x["high_mid"]["chrf"] - y["high_mid"]["chrf"] for x, y in pairs]
            lines.append(f"| {a} − {b} | {', '.join(f'{v:+.3f}' for v in dl)} | "
                         f"{sum(dl) / len(dl):+.3f} | {', '.join(f'{v:+.2f}' for v in dc)} | "
                         f"{sum(dc) / len(dc):+.2f} |")
    lines += ["", "| language | multilingual moe8 chrF | bilingual chrF | multilingual BLEU | "
              "bilingual BLEU |", "|---|---:|---:|---:|---:|"]
    for lang in LOW:
        multi = [r["low"][lang] for r in by.get("moe8", []) if lang in r["low"]]
        bi = [r["low"][lang] for r in by.get(f"bi-{lang}", [])]
        if multi and bi:
            f = lambda rs, k: "%.2f ± %.2f" % _mean_sd([x[k] for x in rs])  # noqa: E731
            lines.append(f"| {lang} | {f(multi, 'chrf')} | {f(bi, 'chrf')} | {f(multi, 'bleu')} | "
                         f"{f(bi, 'bleu')} |")
    _plot(by, out / "claims.png")
    return "\n".join(lines)


def _paired(by: dict, a: str, b: str) -> list:
    seeds = {r["seed"]: r for r in by.get(b, [])}
    return [(r, seeds[r["seed"]]) for r in by.get(a, []) if r["seed"] in seeds]


def claims_figure(by: dict):
    """Per configuration: each seed's dev loss and high+mid chrF (dots) and their mean (bar)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in CONFIGS if n in by]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    panels = ((axes[0], lambda r: r["dev_loss"], "dev cross-entropy (nats/token)",
               "held-out loss (lower is better)"),
              (axes[1], lambda r: r["high_mid"]["chrf"], "chrF, high+mid tiers (greedy)",
               "translation quality (higher is better)"))
    for ax, key, ylabel, title in panels:
        for i, n in enumerate(names):
            ys = [key(r) for r in by[n]]
            ax.scatter([i] * len(ys), ys, color="tab:blue", s=16,
                       label="one seed" if i == 0 else None)
            ax.errorbar([i], [sum(ys) / len(ys)], fmt="k_", markersize=20,
                        label="mean over seeds" if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set(xlabel="configuration", ylabel=ylabel, title=title)
        ax.grid(alpha=.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle("MoE vs dense at equal per-token compute, and more experts", fontsize=10)
    fig.tight_layout()
    return fig


def _plot(by: dict, path: Path):
    import matplotlib.pyplot as plt
    fig = claims_figure(by)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data_cache")
    p.add_argument("--out", default="runs/claims")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bilingual-seeds", type=int, default=1)
    p.add_argument("--lr-schedule", default="constant",
                   help="train.lr_schedule of every run (docs/training.md's table: constant)")
    p.add_argument("--sentences", type=int, default=40, help="test sentences per language")
    p.add_argument("--summarise", default=None, metavar="OUT")
    args = p.parse_args(argv)
    if args.summarise:
        print(summarise(Path(args.summarise)))
        return 0
    run_all(args)
    print(summarise(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
