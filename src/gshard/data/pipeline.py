"""`prepare`: fetch → extract+clean → dedup+split → UDHR → SentencePiece, each step cached
under the data directory and verified through manifest.json."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import manifest as mf
from .catalogs import deb_version
from .clean import GNOME_CLEAN, CleanConfig, clean_pair
from .extract import ddtp_pairs, gnome_pairs, mo_pairs, wheel_pairs
from .fetch import (DDTP_CODES, GNOME_PACKAGE, MO_PACKAGES, QUICK_DDTP_CODES, QUICK_MO_PACKAGES,
                    FetchPlan, apt_available, environ_summary, fetch_all, local_files, log)
from .split import SplitConfig, dedup, split_all, tier
from .udhr import udhr_sets
from .vocab import VocabConfig, sample_source_lines, sample_target_lines, train_spm

EXTRACT_VERSION = 3
SOURCES = ("ddtp", "gnome", "mo", "pypi")  # dedup priority order
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class PrepareConfig:
    data_dir: Path
    languages: tuple[str, ...] = ()          # empty = every language above the floor
    use_pypi: bool = True
    offline: bool = False                     # use only what is under DIR/raw; no network
    quick: bool = False                       # fewer .debs fetched (CI-speed); see quick_config
    split: SplitConfig = SplitConfig()
    vocab: VocabConfig = VocabConfig()
    clean: CleanConfig = CleanConfig()
    mo_packages: tuple[str, ...] = field(default=MO_PACKAGES)
    ddtp_codes: tuple[str, ...] = field(default=DDTP_CODES)


QUICK_TRAIN_CAP = 8000    # keeps high (de, pt: 8k), mid (2k-8k) and low (<2k) apart
QUICK_VOCAB = (8000, 4000)  # source, English: measured in docs/training.md (lengths vs BLEU)
QUICK_SPM_SAMPLE = 60000


def quick_config(cfg: PrepareConfig) -> PrepareConfig:
    """Small-scale mode: 9 DDTP languages, 6 catalog packages, no PyPI, at most 8k train pairs
    per language, 8k source and 4k English pieces."""
    return dataclasses.replace(
        cfg, quick=True, use_pypi=False, mo_packages=QUICK_MO_PACKAGES, ddtp_codes=QUICK_DDTP_CODES,
        split=dataclasses.replace(cfg.split, train_cap=min(cfg.split.train_cap or QUICK_TRAIN_CAP,
                                                           QUICK_TRAIN_CAP)),
        vocab=dataclasses.replace(cfg.vocab, src_vocab=min(cfg.vocab.src_vocab, QUICK_VOCAB[0]),
                                  tgt_vocab=min(cfg.vocab.tgt_vocab, QUICK_VOCAB[1]),
                                  sample=min(cfg.vocab.sample or QUICK_SPM_SAMPLE, QUICK_SPM_SAMPLE)))


# ---- step 1: fetch ----------------------------------------------------------------------------

def step_fetch(cfg: PrepareConfig, man: dict) -> dict[str, list[Path]]:
    root, use_apt = cfg.data_dir, apt_available()
    plan = FetchPlan(root / "raw", use_apt=use_apt, use_pypi=cfg.use_pypi or not use_apt,
                     mo_packages=cfg.mo_packages, ddtp_codes=cfg.ddtp_codes)
    if not use_apt:
        log("apt-get is not available (not Debian/Ubuntu): falling back to the PyPI catalogs only")
    rec = man.get("fetch")
    if cfg.offline or (rec and rec.get("plan") == _plan_key(plan) and mf.outputs_ok(root, rec["files"])):
        files = local_files(plan)
        log("fetch: " + ("offline, using DIR/raw as is" if cfg.offline else "cached, sha256 verified"))
    else:
        files = fetch_all(plan)
    _filter_debs(files, cfg.mo_packages)
    man["fetch"] = _fetch_record(root, plan, files, use_apt)
    mf.save(root, man)
    return files


def _plan_key(plan: FetchPlan) -> str:
    return mf.fingerprint([plan.use_apt, plan.use_pypi, plan.mo_packages, plan.ddtp_codes])


def _filter_debs(files: dict[str, list[Path]], packages: tuple[str, ...]) -> None:
    wanted = set(packages) | {GNOME_PACKAGE}
    files["deb"] = [d for d in files["deb"] if deb_version(d)[0] in wanted]


def _fetch_record(root: Path, plan: FetchPlan, files: dict[str, list[Path]], use_apt: bool) -> dict:
    every = [p for kind in files.values() for p in kind]
    return {"plan": _plan_key(plan), "mode": "apt" if use_apt else "pypi-only",
            "environment": environ_summary(),
            "versions": dict(sorted(deb_version(d) for d in files["deb"])),
            "wheels": [w.name for w in files["wheel"]], "udhr": [u.name for u in files["udhr"]],
            "files": mf.hash_files(root, every)}


# ---- step 2: extract + clean -------------------------------------------------------------------

def _source_pairs(name: str, files: dict[str, list[Path]]) -> Iterator[tuple[str, str, str]]:
    gnome = [d for d in files["deb"] if deb_version(d)[0] == GNOME_PACKAGE]
    catalogs = [d for d in files["deb"] if deb_version(d)[0] != GNOME_PACKAGE]
    if name == "ddtp":
        return ddtp_pairs(files["translation"])
    if name == "gnome":
        return gnome_pairs(gnome)
    return mo_pairs(catalogs) if name == "mo" else wheel_pairs(files["wheel"])


def extract_source(name: str, files: dict[str, list[Path]], out: Path, cfg: CleanConfig) -> dict:
    """Write the cleaned pairs of one source as `lang\\ten\\ttr` lines; returns counts."""
    ccfg = dataclasses.replace(cfg, max_en_chars=GNOME_CLEAN.max_en_chars) if name == "gnome" else cfg
    raw = kept = 0
    with open(out, "w", encoding="utf-8") as f:
        for lang, en, tr in _source_pairs(name, files):
            raw += 1
            pair = clean_pair(en, tr, ccfg)
            if pair:
                kept += 1
                f.write(f"{lang}\t{pair[0]}\t{pair[1]}\n")
    log(f"extract {name}: {raw} raw pairs, {kept} clean")
    return {"raw": raw, "clean": kept}


def step_extract(cfg: PrepareConfig, man: dict, files: dict[str, list[Path]]) -> dict:
    work = cfg.data_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    key = mf.fingerprint([EXTRACT_VERSION, man["fetch"]["files"], dataclasses.asdict(cfg.clean)])
    outs = [work / f"pairs.{s}.tsv" for s in SOURCES]

    def run():
        info = {s: extract_source(s, files, o, cfg.clean) for s, o in zip(SOURCES, outs)}
        return info, outs
    return mf.cached_step(cfg.data_dir, man, "extract", key, run)


# ---- step 3: dedup + split ---------------------------------------------------------------------

def read_source_pairs(work: Path) -> Iterator[tuple[str, str, str, str]]:
    """(source, lang, en, tr) in dedup priority order."""
    for s in SOURCES:
        with open(work / f"pairs.{s}.tsv", encoding="utf-8") as f:
            for line in f:
                lang, en, tr = line.rstrip("\n").split("\t")
                yield s, lang, en, tr


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return path


def step_split(cfg: PrepareConfig, man: dict) -> dict:
    ext = {k: v for k, v in man["steps"]["extract"]["outputs"].items()}
    key = mf.fingerprint([ext, dataclasses.asdict(cfg.split), cfg.languages])

    def run():
        splits = split_all(dedup(read_source_pairs(cfg.data_dir / "work")), cfg.split, cfg.languages)
        corpus, outs, counts = cfg.data_dir / "corpus", [], {}
        for lang, ls in splits.items():
            outs += [write_tsv(corpus / s / f"{lang}.tsv", getattr(ls, s)) for s in SPLITS]
            counts[lang] = {"clean": ls.clean, "train_uncapped": ls.train_uncapped,
                            "train": len(ls.train), "dev": len(ls.dev), "test": len(ls.test),
                            "tier": tier(ls.clean), "sources": ls.sources}
        return {"languages": counts}, outs
    return mf.cached_step(cfg.data_dir, man, "split", key, run)


# ---- step 4: UDHR ------------------------------------------------------------------------------

def step_udhr(cfg: PrepareConfig, man: dict, files: dict[str, list[Path]], langs: list[str]) -> dict:
    key = mf.fingerprint([[mf.sha256_file(u) for u in files["udhr"]], langs])

    def run():
        if not files["udhr"]:
            return {}, []
        sets = udhr_sets(files["udhr"][0], langs)
        outs = [write_tsv(cfg.data_dir / "corpus" / "udhr" / f"{lang}.tsv", pairs)
                for lang, (_, pairs) in sorted(sets.items())]
        return {lang: {"code": code, "pairs": len(p)} for lang, (code, p) in sets.items()}, outs
    return mf.cached_step(cfg.data_dir, man, "udhr", key, run)


# ---- step 5: SentencePiece ---------------------------------------------------------------------

def read_tsv(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f]


def step_spm(cfg: PrepareConfig, man: dict) -> dict:
    train_files = {k: v for k, v in man["steps"]["split"]["outputs"].items() if k.startswith("corpus/train/")}
    key = mf.fingerprint([train_files, dataclasses.asdict(cfg.vocab)])

    def run():
        train = {Path(rel).stem: read_tsv(cfg.data_dir / rel) for rel in sorted(train_files)}
        src = sample_source_lines({k: [p[0] for p in v] for k, v in train.items()}, cfg.vocab)
        tgt = sample_target_lines([p[1] for v in train.values() for p in v], cfg.vocab)
        d, info = cfg.data_dir / "spm", {}
        for name, lines, size, cov in (("src", src, cfg.vocab.src_vocab, cfg.vocab.src_coverage),
                                       ("tgt", tgt, cfg.vocab.tgt_vocab, cfg.vocab.tgt_coverage)):
            t0 = time.time()
            train_spm(lines, d / name, size, cov, cfg.vocab)
            info[name] = {"lines": len(lines), "vocab": size, "seconds": round(time.time() - t0, 1)}
            log(f"spm {name}: {len(lines)} lines, vocab {size}, {info[name]['seconds']}s")
        return info, [d / "src.model", d / "tgt.model"]
    return mf.cached_step(cfg.data_dir, man, "spm", key, run)


# ---- all ---------------------------------------------------------------------------------------

def prepare(cfg: PrepareConfig) -> dict:
    """Run every step (skipping verified cached ones); returns the manifest."""
    t0 = time.time()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    man = mf.load(cfg.data_dir)
    files = step_fetch(cfg, man)
    step_extract(cfg, man, files)
    counts = step_split(cfg, man)["languages"]
    udhr = step_udhr(cfg, man, files, sorted(counts))
    for lang, rec in counts.items():
        rec["udhr"] = udhr.get(lang, {}).get("pairs", 0)
    step_spm(cfg, man)
    man["config"] = _config_record(cfg)
    man["languages"] = counts
    man["udhr"] = udhr
    man["totals"] = totals(counts)
    man["prepare_seconds"] = round(time.time() - t0, 1)
    mf.save(cfg.data_dir, man)
    return man


def _config_record(cfg: PrepareConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["data_dir"] = str(cfg.data_dir)
    return d


def totals(counts: dict[str, dict]) -> dict:
    out = {"languages": len(counts)}
    for t in ("high", "mid", "low"):
        langs = [c for c in counts.values() if c["tier"] == t]
        out[t] = {"languages": len(langs), "clean": sum(c["clean"] for c in langs),
                  "train": sum(c["train"] for c in langs)}
    for k in ("clean", "train", "dev", "test", "udhr"):
        out[k] = sum(c.get(k, 0) for c in counts.values())
    return out
