"""Extract raw (lang, en, tr) pairs from the four sources (DATA.md §6.2 A–C and §6.1.5).

Each extractor yields pairs in a deterministic order (sorted paths); the language code is
already normalised (`clean.normalize_lang`), and pairs whose language is dropped are skipped.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import unquote

from .catalogs import deb_files, read_mo, read_po, wheel_files
from .clean import normalize_lang

Pair = tuple[str, str, str]  # (lang, en, tr)

# ---- A. DDTP ----------------------------------------------------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+(?=[^\s.a-z])|(?<=[。！？])")


def ddtp_code(path: Path) -> str:
    """Language code of an apt `..._i18n_Translation-<code>` file (percent-decoded)."""
    return unquote(path.name.rsplit("Translation-", 1)[1])


def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Deb822 stanzas as {field: value}; continuation lines keep their leading space."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = None
        for line in block.split("\n"):
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields


def description_paragraphs(desc: str) -> list[str]:
    """[short description, paragraph 1, ...]; each paragraph's lines joined with single spaces."""
    lines = desc.split("\n")
    paras, cur = [lines[0].strip()], []
    for line in lines[1:]:
        if line.strip() == ".":
            paras.append(" ".join(cur))
            cur = []
        else:
            cur.append(line.strip())
    paras.append(" ".join(cur))
    return [p for p in paras if p] if paras[0] else []


def _description(stanza: dict[str, str]) -> tuple[str, str] | None:
    for field, value in stanza.items():
        if field.startswith("Description-") and field != "Description-md5":
            return field[len("Description-"):], value
    return None


def index_english(paths: Iterable[Path]) -> dict[str, list[str]]:
    """md5 → English paragraphs, over every Translation-en file (all suites)."""
    index: dict[str, list[str]] = {}
    for path in paths:
        for st in parse_stanzas(path.read_text(encoding="utf-8", errors="replace")):
            d = _description(st)
            if d and "Description-md5" in st:
                index.setdefault(st["Description-md5"], description_paragraphs(d[1]))
    return index


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s.strip()]


def align_paragraphs(en: str, tr: str) -> Iterator[tuple[str, str]]:
    """Sentence pairs when both sides split into the same number (>1) of sentences, else the pair."""
    es, ts = _sentences(en), _sentences(tr)
    if len(es) == len(ts) and len(es) > 1:
        yield from zip(es, ts)
    else:
        yield en, tr


def ddtp_pairs(paths: list[Path]) -> Iterator[Pair]:
    """Aligned DDTP pairs: short descriptions always, paragraphs when their counts match."""
    index = index_english(p for p in paths if ddtp_code(p) == "en")
    for path in sorted(paths):
        lang = normalize_lang(ddtp_code(path))
        if lang is None:
            continue
        for st in parse_stanzas(path.read_text(encoding="utf-8", errors="replace")):
            yield from _stanza_pairs(lang, st, index)


def _stanza_pairs(lang: str, st: dict[str, str], index: dict[str, list[str]]) -> Iterator[Pair]:
    d = _description(st)
    en = index.get(st.get("Description-md5", ""))
    if not d or not en:
        return
    tr = description_paragraphs(d[1])
    if not tr:
        return
    yield lang, en[0], tr[0]
    if len(en) == len(tr):
        for e, t in zip(en[1:], tr[1:]):
            for es, ts in align_paragraphs(e, t):
                yield lang, es, ts


# ---- B. gettext catalogs in .debs --------------------------------------------------------------

_MO_PATH = re.compile(r"^usr/share/locale/([^/]+)/LC_MESSAGES/([^/]+)\.mo$")


def _is_catalog(path: str) -> bool:
    m = _MO_PATH.match(path)
    return bool(m) and not m.group(2).startswith("iso_")


def mo_pairs(debs: list[Path]) -> Iterator[Pair]:
    """Pairs from every non-iso_* .mo under usr/share/locale, in sorted (locale, path) order."""
    found = []
    for deb in sorted(debs):
        found.extend(deb_files(deb, _is_catalog))
    for path, raw in sorted(found):
        lang = normalize_lang(_MO_PATH.match(path).group(1))
        if lang is None:
            continue
        for en, tr in read_mo(raw):
            yield lang, en, tr


# ---- C. GNOME help (Mallard) -------------------------------------------------------------------

_HELP = re.compile(r"^usr/share/help/([^/]+)/gnome-help/([^/]+\.page)$")
_TEXT_TAGS = {"p", "title", "desc", "cite", "subtitle"}


def mallard_segments(raw: bytes) -> list[str] | None:
    """Whitespace-collapsed text of p/title/desc/cite/subtitle elements, in document order."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        return None
    return [" ".join("".join(el.itertext()).split())
            for el in root.iter() if isinstance(el.tag, str) and el.tag.rsplit("}", 1)[-1] in _TEXT_TAGS]


def gnome_pairs(debs: list[Path]) -> Iterator[Pair]:
    """Position-aligned segments of each localized page against its C page, equal counts only."""
    pages: dict[str, dict[str, bytes]] = defaultdict(dict)
    for deb in sorted(debs):
        for path, raw in deb_files(deb, lambda p: bool(_HELP.match(p))):
            loc, name = _HELP.match(path).groups()
            pages[loc][name] = raw
    english = {name: mallard_segments(raw) for name, raw in pages.pop("C", {}).items()}
    for loc in sorted(pages):
        lang = normalize_lang(loc)
        if lang is None:
            continue
        for name in sorted(pages[loc]):
            en, tr = english.get(name), mallard_segments(pages[loc][name])
            if en and tr and len(en) == len(tr):
                yield from ((lang, e, t) for e, t in zip(en, tr))


# ---- PyPI wheels (optional extension) -----------------------------------------------------------

_WHEEL_CAT = re.compile(r"/locale/([^/]+)/LC_MESSAGES/([^/]+)\.(mo|po)$|"
                        r"/translations/([^/]+)/LC_MESSAGES/([^/]+)\.(mo|po)$")


def _wheel_catalogs(whl: Path) -> dict[str, tuple[str, bytes]]:
    """{catalog path without extension: (ext, bytes)}; a compiled .mo wins over its .po."""
    best: dict[str, tuple[str, bytes]] = {}
    for name, raw in wheel_files(whl, lambda n: bool(_WHEEL_CAT.search(n))):
        stem, ext = name.rsplit(".", 1)
        if stem not in best or ext == "mo":
            best[stem] = (ext, raw)
    return best


def wheel_pairs(wheels: list[Path]) -> Iterator[Pair]:
    for whl in sorted(wheels):
        for stem, (ext, raw) in sorted(_wheel_catalogs(whl).items()):
            m = _WHEEL_CAT.search(stem + "." + ext)
            lang = normalize_lang(m.group(1) or m.group(4))
            if lang is None:
                continue
            entries = read_mo(raw) if ext == "mo" else read_po(raw.decode("utf-8", "replace"))
            yield from ((lang, en, tr) for en, tr in entries)
