"""manifest.json under the data directory: versions, sha256 of inputs and outputs, counts, and
the record of each finished step (its input key), so a re-run skips verified steps."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from .fetch import log

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able object (step keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load(root: Path) -> dict:
    path = root / MANIFEST
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == FORMAT:
                return data
        except json.JSONDecodeError:
            log(f"{path} is unreadable: rebuilding every step")
    return {"format": FORMAT, "steps": {}}


def save(root: Path, manifest: dict) -> None:
    """Atomic write (temp file + rename)."""
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False))
    os.replace(tmp, root / MANIFEST)


def hash_files(root: Path, paths: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(paths)}


def outputs_ok(root: Path, outputs: dict[str, str]) -> bool:
    """Every recorded file exists with the recorded sha256."""
    return all((root / rel).is_file() and sha256_file(root / rel) == sha
               for rel, sha in outputs.items())


def cached_step(root: Path, manifest: dict, name: str, key: str,
                fn: Callable[[], tuple[dict, list[Path]]]) -> dict:
    """Run `fn` unless the manifest records this step with the same key and intact outputs.

    `fn` returns (info, output paths); info is stored in the manifest and returned.
    """
    rec = manifest["steps"].get(name)
    if rec and rec.get("key") == key and outputs_ok(root, rec.get("outputs", {})):
        log(f"{name}: cached (key {key}, {len(rec['outputs'])} files verified)")
        return rec["info"]
    t0 = time.time()
    info, outputs = fn()
    manifest["steps"][name] = {"key": key, "info": info, "outputs": hash_files(root, outputs),
                               "seconds": round(time.time() - t0, 2)}
    save(root, manifest)
    log(f"{name}: done in {time.time() - t0:.1f}s")
    return info
