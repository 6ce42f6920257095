"""Readers for gettext catalogs (.mo, .po), Debian packages (.deb) and wheels (.whl).

Standard library only. `read_mo` is a minimal reader: Python's `gettext.GNUTranslations`
raises UnicodeDecodeError on catalogs whose header is Latin-1 (DATA.md §6.2.B).
"""
from __future__ import annotations

import ast
import io
import re
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

MO_MAGIC = 0x950412DE
_CHARSET = re.compile(rb"charset=([A-Za-z0-9_.:-]+)", re.I)


def _mo_charset(raw: bytes, endian: str, n: int, orig: int, trans: int) -> str:
    for i in range(n):
        olen, _ = struct.unpack_from(endian + "2I", raw, orig + 8 * i)
        if olen == 0:
            tlen, toff = struct.unpack_from(endian + "2I", raw, trans + 8 * i)
            m = _CHARSET.search(raw[toff:toff + tlen])
            if m and m.group(1).upper() != b"CHARSET":
                return m.group(1).decode("ascii")
            break
    return "utf-8"


def read_mo(raw: bytes) -> list[tuple[str, str]]:
    """(msgid, msgstr) singular forms of a .mo file; msgctxt dropped; header entry skipped."""
    if len(raw) < 20:
        raise ValueError("not a .mo file: too short")
    endian = "<" if struct.unpack_from("<I", raw)[0] == MO_MAGIC else ">"
    if struct.unpack_from(endian + "I", raw)[0] != MO_MAGIC:
        raise ValueError("not a .mo file: bad magic")
    n, orig, trans = struct.unpack_from(endian + "3I", raw, 8)
    charset = _mo_charset(raw, endian, n, orig, trans)
    out = []
    for i in range(n):
        olen, ooff = struct.unpack_from(endian + "2I", raw, orig + 8 * i)
        tlen, toff = struct.unpack_from(endian + "2I", raw, trans + 8 * i)
        if olen == 0:
            continue
        msgid = _singular(raw[ooff:ooff + olen], charset)
        msgstr = _singular(raw[toff:toff + tlen], charset)
        if msgid and msgstr:
            out.append((msgid, msgstr))
    return out


def _singular(b: bytes, charset: str) -> str:
    try:
        s = b.decode(charset, errors="replace")
    except LookupError:
        s = b.decode("utf-8", errors="replace")
    s = s.rsplit("\x04", 1)[-1]
    return s.split("\x00", 1)[0]


def write_mo(pairs: list[tuple[str, str]], charset: str = "utf-8", big_endian: bool = False) -> bytes:
    """A tiny .mo writer (for tests and fixtures); header entry added with the charset."""
    header = f"Content-Type: text/plain; charset={charset}\n"
    entries = sorted([("", header)] + list(pairs))
    ids = [k.encode(charset) for k, _ in entries]
    strs = [v.encode(charset) for _, v in entries]
    e = ">" if big_endian else "<"
    n = len(entries)
    orig, trans = 28, 28 + 8 * n
    data_off = trans + 8 * n
    blob, otab, ttab = b"", [], []
    for table, items in ((otab, ids), (ttab, strs)):
        for s in items:
            table.append((len(s), data_off + len(blob)))
            blob += s + b"\x00"
    head = struct.pack(e + "7I", MO_MAGIC, 0, n, orig, trans, 0, 0)
    tabs = b"".join(struct.pack(e + "2I", *t) for t in otab + ttab)
    return head + tabs + blob


def read_po(text: str) -> list[tuple[str, str]]:
    """(msgid, msgstr[0]) of a .po file; fuzzy and obsolete entries skipped."""
    out, cur, key, fuzzy = [], {}, None, False
    for line in text.splitlines() + [""]:
        line = line.strip()
        if not line or (line.startswith("#") and cur.get("msgstr") is not None):
            _po_flush(cur, fuzzy, out)
            cur, key, fuzzy = {}, None, False
        if line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        elif line.startswith('"') and key:
            cur[key] += _po_str(line)
        elif line and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            key = "msgstr" if key == "msgstr[0]" else key
            cur[key] = _po_str(rest)
    return out


def _po_flush(cur: dict, fuzzy: bool, out: list) -> None:
    if cur.get("msgid") and cur.get("msgstr") and not fuzzy:
        out.append((cur["msgid"], cur["msgstr"]))


def _po_str(s: str) -> str:
    s = s.strip()
    try:
        return ast.literal_eval(s) if s.startswith('"') else ""
    except (SyntaxError, ValueError):
        return ""


def ar_members(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """Members of a Unix `ar` archive (the .deb container)."""
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(raw):
        head = raw[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        yield name, raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)


def _data_tar(deb: Path) -> tarfile.TarFile:
    for name, body in ar_members(deb.read_bytes()):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):  # no zstd in the stdlib: let dpkg-deb unpack it
                body = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                                      stdout=subprocess.PIPE).stdout
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    raise ValueError(f"{deb}: no data.tar member")


def deb_files(deb: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the regular files in a .deb whose normalised path satisfies `want`."""
    with _data_tar(deb) as tar:
        for member in tar:
            path = member.name.lstrip("./")
            if member.isfile() and want(path):
                yield path, tar.extractfile(member).read()


def wheel_files(whl: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(whl) as zf:
        for name in sorted(zf.namelist()):
            if want(name):
                yield name, zf.read(name)


def deb_version(deb: Path) -> tuple[str, str]:
    """(package, version) from a `name_version_arch.deb` file name."""
    parts = deb.name[:-4].split("_")
    return parts[0], parts[1].replace("%3a", ":") if len(parts) > 1 else ""
