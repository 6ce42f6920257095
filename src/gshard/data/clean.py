"""Cleaning rules (DATA.md §6.2, applied identically to every source, in order) and language codes."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_PLACEHOLDER = re.compile(
    r"%(?:\([^)]+\)|\d+\$)?[-#0 +'I]*\d*(?:\.\d+)?(?:hh|h|ll|l|L|q|j|z|t)?[sdifrxXucgGeEpoaA%]"
    r"|\{[^{}]*\}|\$\{[^}]*\}|\$[A-Za-z_]+|<[^>]+>|&[a-z]+;|&#\d+;|\[\[|\]\]|__[A-Za-z]+__"
    r"|\\n|\\t|`")
_ACCEL_SUFFIX = re.compile(r"\s*\((?:_|&)\w\)")
_ACCEL_PREFIX = re.compile(r"(?<!\w)[_&](?=\w)")
_WS = re.compile(r"\s+")
_TWO_ASCII = re.compile(r"[A-Za-z]{2}")
_OPTION = re.compile(r"^--?\w")


@dataclass(frozen=True)
class CleanConfig:
    min_en_words: int = 4
    max_en_chars: int = 300
    max_tr_factor: float = 2.0     # target at most this many times max_en_chars
    min_ratio: float = 0.15        # character-length ratio tr/en
    max_ratio: float = 6.0


GNOME_CLEAN = CleanConfig(max_en_chars=400)


def strip_accelerators(s: str) -> str:
    return _ACCEL_PREFIX.sub("", _ACCEL_SUFFIX.sub("", s))


def normalize_text(s: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFC", s)).strip()


def clean_pair(en: str, tr: str, cfg: CleanConfig = CleanConfig()) -> tuple[str, str] | None:
    """The cleaned (en, tr) pair, or None when a rule drops it."""
    if "\n" in en or "\n" in tr:
        return None
    if _PLACEHOLDER.search(en) or _PLACEHOLDER.search(tr):
        return None
    en = normalize_text(strip_accelerators(en))
    tr = normalize_text(strip_accelerators(tr))
    if en == tr or not _TWO_ASCII.search(en) or _OPTION.match(en):
        return None
    if len(en.split()) < cfg.min_en_words or len(en) > cfg.max_en_chars:
        return None
    if len(tr) > cfg.max_tr_factor * cfg.max_en_chars:
        return None
    ratio = len(tr) / max(len(en), 1)
    if not cfg.min_ratio <= ratio <= cfg.max_ratio:
        return None
    return en, tr


# ---- language codes -------------------------------------------------------------------------

_SCRIPT_VARIANTS = {"sr@latin": "sr_Latn", "sr@Latn": "sr_Latn", "sr@ijekavianlatin": None,
                    "sr@ijekavian": None}
_EXPLICIT = {"zh": "zh_Hans", "zh_cn": "zh_Hans", "zh_sg": "zh_Hans", "zh_hans": "zh_Hans",
             "zh_tw": "zh_Hant", "zh_hk": "zh_Hant", "zh_mo": "zh_Hant", "zh_hant": "zh_Hant",
             "sr_latn": "sr_Latn", "sr_rs@latin": "sr_Latn", "no": "nb", "nb_no": "nb",
             "nn_no": "nn", "iw": "he", "in": "id", "ji": "yi", "fil": "tl"}


def normalize_lang(code: str) -> str | None:
    """Fold a locale code to our language code; None for English and dropped script variants.

    de_DE→de, pt/pt_BR/pt_AO→pt, zh/zh_CN→zh_Hans, zh_TW→zh_Hant, sr@latin→sr_Latn;
    other `@` variants (uz@cyrillic, be@latin, ca@valencia) are dropped, not folded (§6.2.11).
    """
    code = code.split(".", 1)[0].replace("-", "_")
    if "@" in code:
        base, _, var = code.partition("@")
        if base.split("_")[0].lower() == "sr" and var.lower() in ("latin", "latn"):
            return "sr_Latn"
        return None
    low = code.lower()
    if low in _EXPLICIT:
        return _EXPLICIT[low]
    parts = low.split("_")
    lang = parts[0]
    if lang == "zh":               # zh_Hans_CN, zh_Hant_TW, zh_HK ...
        return "zh_Hant" if {"hant", "tw", "hk", "mo"} & set(parts) else "zh_Hans"
    if lang == "sr" and "latn" in parts:
        return "sr_Latn"
    if lang in ("en", "c", "posix", "") or not lang.isalpha():
        return None
    return lang
