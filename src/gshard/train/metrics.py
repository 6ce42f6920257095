"""metrics.jsonl (one JSON object per logged step) and a terminal progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

METRICS = "metrics.jsonl"


def to_jsonable(x):
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    a = np.asarray(x)
    if a.ndim == 0:
        v = a.item()
        return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v
    return np.round(a.astype(np.float64), 6).tolist()


def read_jsonl(path) -> list[dict]:
    """Every complete JSON line of a metrics file (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class MetricsLog:
    """Appends records to WORKDIR/metrics.jsonl; on resume from step s, drops records of
    steps > s (written after the checkpoint a crashed run resumed from)."""

    def __init__(self, workdir, resume_step: int = 0, enabled: bool = True):
        self.path = Path(workdir) / METRICS
        self.enabled = enabled
        if enabled:
            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, self.path)

    def write(self, record: dict):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(to_jsonable(record)) + "\n")


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """`step 12/40 [#####.....] loss 5.210 | 3.2k tok/s | ETA 0:21` on stderr; redrawn in place
    on a terminal, one line per `every` steps otherwise."""

    def __init__(self, start: int, total: int, enabled: bool = True, every: int = 10,
                 stream=None, width: int = 24):
        self.start, self.total, self.enabled, self.every = start, total, enabled, max(every, 1)
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.width, self.t0, self.first_done = width, time.perf_counter(), None

    def update(self, step: int, loss: float, tokens_per_s: float):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first_done is None:          # the first step includes compilation: skip it
            self.first_done = (step, now)
        s0, t0 = self.first_done
        rate = (now - t0) / (step - s0) if step > s0 else float("nan")
        eta = rate * (self.total - step)
        frac = (step - 0) / max(self.total, 1)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = (f"step {step}/{self.total} [{bar}] loss {loss:.3f} | "
                f"{tokens_per_s / 1000:.1f}k tok/s | ETA {_fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + line)
        elif step % self.every == 0 or step == self.total or step == self.start + 1:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
