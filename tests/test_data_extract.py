"""Extraction and cleaning on small real fixtures (tests/data/README.md) plus tiny built inputs."""
from __future__ import annotations

import gettext
import io
import lzma
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from gshard.data.catalogs import ar_members, deb_files, read_mo, read_po, write_mo
from gshard.data.clean import clean_pair, normalize_lang
from gshard.data.extract import (align_paragraphs, ddtp_code, ddtp_pairs, description_paragraphs,
                                 gnome_pairs, index_english, mallard_segments, mo_pairs, parse_stanzas)
from gshard.data.udhr import align as udhr_align
from gshard.data.udhr import code_map

DATA = Path(__file__).parent / "data"
EN = DATA / "Translation-en"
PT_BR = DATA / "Translation-pt%5fBR"
PSMISC = DATA / "psmisc_23.6-1_amd64.deb"


# ---- DDTP ---------------------------------------------------------------------------------------

def test_ddtp_code_is_percent_decoded_and_folded():
    assert ddtp_code(PT_BR) == "pt_BR"
    assert normalize_lang(ddtp_code(PT_BR)) == "pt"
    assert ddtp_code(Path("x_main_i18n_Translation-zh%5fTW")) == "zh_TW"


def test_ddtp_alignment_on_real_translation_file(tmp_path):
    stanzas = list(parse_stanzas(PT_BR.read_text()))
    assert len(stanzas) == 200 and len(index_english([EN])) == 199   # two packages share one md5
    pairs = list(ddtp_pairs([EN, PT_BR]))
    assert {lang for lang, _, _ in pairs} == {"pt"}
    # a stanza whose md5 has no English description yields nothing
    en_blocks = EN.read_text().split("\n\n")
    first_md5 = stanzas[0]["Description-md5"]
    trimmed = tmp_path / "x_i18n_Translation-en"
    trimmed.write_text("\n\n".join(b for b in en_blocks if first_md5 not in b))
    fewer = list(ddtp_pairs([trimmed, PT_BR]))
    short0 = description_paragraphs(stanzas[0]["Description-pt_BR"])[0]
    assert short0 in {t for _, _, t in pairs} and short0 not in {t for _, _, t in fewer}
    assert ("pt", "Real-time strategy game of ancient warfare",
            "jogo de estratégia em tempo real de guerra na antiguidade") in pairs
    assert len(pairs) > 600                       # paragraphs and sentences, not only shorts
    clean = [p for p in (clean_pair(e, t) for _, e, t in pairs) if p]
    assert 0.5 * len(pairs) < len(clean) < len(pairs)


def test_description_paragraphs_and_sentence_split():
    desc = "short one\n First line of\n the paragraph.\n .\n Second. Third one!"
    assert description_paragraphs(desc) == ["short one", "First line of the paragraph.", "Second. Third one!"]
    assert list(align_paragraphs("A b. C d.", "E f. G h.")) == [("A b.", "E f."), ("C d.", "G h.")]
    assert list(align_paragraphs("A b. C d.", "E f g h.")) == [("A b. C d.", "E f g h.")]
    assert list(align_paragraphs("One. Two.", "一。二。")) == [("One.", "一。"), ("Two.", "二。")]


# ---- .deb and .mo -------------------------------------------------------------------------------

def test_real_deb_catalogs_align_and_clean():
    names = [p for p, _ in deb_files(PSMISC, lambda p: p.endswith(".mo"))]
    assert len(names) == 29 and all(n.startswith("usr/share/locale/") for n in names)
    pairs = list(mo_pairs([PSMISC]))
    langs = Counter(lang for lang, _, _ in pairs)
    assert len(langs) >= 25 and "pt" in langs and "zh_Hans" in langs and "zh_Hant" in langs
    clean = [(lang, *c) for lang, e, t in pairs if (c := clean_pair(e, t))]
    assert 100 < len(clean) < len(pairs) / 4       # most messages carry placeholders or are short
    for _, en, tr in clean:
        assert "%" not in en and "\n" not in en and len(en.split()) >= 4
    assert ("de", "No process specification given") in {(lang, e) for lang, e, _ in clean}


def test_mo_reader_matches_gettext_on_a_real_catalog():
    path, raw = next(deb_files(PSMISC, lambda p: p.endswith("/de/LC_MESSAGES/psmisc.mo")))
    ours = dict(read_mo(raw))
    ref = gettext.GNUTranslations(io.BytesIO(raw))
    for msgid, msgstr in list(ours.items())[:50]:
        if "\x04" not in msgid:
            assert ref.gettext(msgid) == msgstr


@pytest.mark.parametrize("big_endian", [False, True])
def test_mo_reader_byte_orders_latin1_context_plural(big_endian):
    pairs = [("Open the file now", "Öffne die Datei jetzt"), ("menu\x04Save all files", "Alle Dateien speichern"),
             ("one file removed\x00%d files removed", "un fichier supprimé\x00%d fichiers supprimés")]
    raw = write_mo(pairs, charset="ISO-8859-1", big_endian=big_endian)
    assert raw[:4] == (b"\x95\x04\x12\xde" if big_endian else b"\xde\x12\x04\x95")
    got = dict(read_mo(raw))
    assert got["Open the file now"] == "Öffne die Datei jetzt"
    assert got["Save all files"] == "Alle Dateien speichern"            # msgctxt dropped
    assert got["one file removed"] == "un fichier supprimé"           # singular form
    assert len(got) == 3                                                # header entry skipped


def test_mo_reader_rejects_garbage():
    with pytest.raises(ValueError):
        read_mo(b"\x00" * 40)


def test_po_reader_skips_fuzzy_and_joins_continuations():
    po = ('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
          'msgid "Hello "\n"world"\nmsgstr "Hallo "\n"Welt"\n\n'
          '#, fuzzy\nmsgid "Old one"\nmsgstr "Alt"\n\n'
          'msgid "File"\nmsgid_plural "Files"\nmsgstr[0] "Datei"\nmsgstr[1] "Dateien"\n')
    assert read_po(po) == [("Hello world", "Hallo Welt"), ("File", "Datei")]


# ---- GNOME help (a tiny .deb built here: ar + data.tar.xz) ---------------------------------------

PAGE = ('<page xmlns="http://projectmallard.org/1.0/" id="x"><info><desc>{d}</desc></info>'
        '<title>{t}</title><p>{p} <em>now</em>.</p></page>')


def _make_deb(tmp: Path, files: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    members = {"debian-binary": b"2.0\n", "control.tar.xz": lzma.compress(b""),
               "data.tar.xz": lzma.compress(buf.getvalue())}
    out = b"!<arch>\n"
    for name, body in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    path = tmp / "gnome-user-docs_1.0_all.deb"
    path.write_bytes(out)
    return path


def test_gnome_help_pages_align_by_position(tmp_path):
    base = "usr/share/help/{}/gnome-help/{}.page"
    deb = _make_deb(tmp_path, {
        base.format("C", "a"): PAGE.format(d="Change the size of the font", t="Font size",
                                           p="You can change the size").encode(),
        base.format("de", "a"): PAGE.format(d="Die Schriftgröße ändern", t="Schriftgröße",
                                            p="Sie können die Größe ändern").encode(),
        base.format("fr", "a"): b"<page xmlns='http://projectmallard.org/1.0/'><p>only one</p></page>"})
    assert [n for n, _ in ar_members(deb.read_bytes())][0] == "debian-binary"
    pairs = list(gnome_pairs([deb]))
    assert pairs == [("de", "Change the size of the font", "Die Schriftgröße ändern"),
                     ("de", "Font size", "Schriftgröße"),
                     ("de", "You can change the size now.", "Sie können die Größe ändern now.")]
    assert mallard_segments(b"<broken") is None


# ---- cleaning rules (§6.2) -------------------------------------------------------------------------

@pytest.mark.parametrize("en,tr", [
    ("Line one of it\nline two", "Zeile eins\nZeile zwei"),
    ("Cannot open file %s for reading", "Kann Datei %s nicht öffnen"),
    ("Cannot open %(name)s for reading", "Kann %(name)s nicht öffnen"),
    ("Delete {count} items right now", "Lösche {count} Einträge jetzt"),
    ("Click <b>here</b> to continue on", "Klicke <b>hier</b> um fortzufahren"),
    ("Tom &amp; Jerry are here now", "Tom &amp; Jerry sind jetzt hier"),
    ("Use `make` to build this", "Benutze `make` zum Bauen"),
    ("The same text in both", "The same text in both"),
    ("--verbose print more output please", "--verbose mehr Ausgabe bitte"),
    ("Too short here", "Zu kurz hier"),
    ("A perfectly fine English sentence here", "x"),                    # ratio < 0.15
    ("1 2 3 4 5", "eins zwei drei vier fünf"),                          # no two ASCII letters
])
def test_cleaning_drops(en, tr):
    assert clean_pair(en, tr) is None


def test_cleaning_strips_accelerators_and_normalizes():
    assert clean_pair("_Open the selected file now", "_Öffne die gewählte Datei jetzt") == \
        ("Open the selected file now", "Öffne die gewählte Datei jetzt")
    assert clean_pair("Save the whole document (_S)", "Das ganze Dokument speichern (_S)") == \
        ("Save the whole document", "Das ganze Dokument speichern")
    en, tr = clean_pair("Show  the   e\u0301lan of it", "Zeige den\tElan davon")
    assert en == "Show the \u00e9lan of it" and tr == "Zeige den Elan davon"
    assert clean_pair("x" * 200 + " a b c", "y" * 200) is not None
    assert clean_pair("word " * 70, "wort " * 70) is None               # English over 300 chars


def test_language_codes():
    cases = {"de_DE": "de", "pt_BR": "pt", "pt_AO": "pt", "zh": "zh_Hans", "zh_CN": "zh_Hans",
             "zh_TW": "zh_Hant", "sr@latin": "sr_Latn", "sr_Latn": "sr_Latn", "uz@cyrillic": None,
             "be@latin": None, "en_GB": None, "en@quot": None, "nb_NO": "nb", "fr.UTF-8": "fr",
             "zh_Hans_CN": "zh_Hans", "zh_TW.Big5": "zh_Hant", "zh-Hant": "zh_Hant", "sr_Latn_RS": "sr_Latn"}
    assert {k: normalize_lang(k) for k in cases} == cases


# ---- UDHR ------------------------------------------------------------------------------------------

def _decl(code, lang, pre, arts):
    body = "".join(f'<article data-number="{i + 1}"><h2>A</h2>{"".join(f"<p>{p}</p>" for p in a)}</article>'
                   for i, a in enumerate(arts))
    return (f'<!doctype html><html data-code="{code}" data-iso6393="{code[:3]}" dir="ltr" lang="{lang}">'
            f'<body><header><h2>P</h2>{"".join(f"<p>{p}</p>" for p in pre)}</header>{body}</body></html>')


def test_udhr_alignment_skips_mismatched_sections():
    en = _decl("eng", "en", ["Whereas one", "Whereas two"], [["All are free."], ["Everyone is entitled.", "More."]])
    de = _decl("deu_1996", "de", ["Da eins"], [["Alle sind frei."], ["Jeder hat Anspruch.", "Mehr."]])
    assert udhr_align(en, de) == [("Alle sind frei.", "All are free."),
                                  ("Jeder hat Anspruch.", "Everyone is entitled."), ("Mehr.", "More.")]
    cmap = code_map({"eng": en, "deu_1996": de, "jpn": _decl("jpn", "ja", [], []),
                     "jpn_osaka": _decl("jpn_osaka", "ja", [], [])})
    assert cmap["de"] == "deu_1996" and cmap["ja"] == "jpn"
