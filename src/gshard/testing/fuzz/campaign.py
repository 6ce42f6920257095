"""Long fuzz campaigns: `gshard fuzz --cases N --seed S [--jobs J] [--out DIR]`.

Cases run in worker processes (each with 8 simulated devices) under a per-case watchdog, so a hang
is seen and counted rather than stalling the campaign. Case i of seed S is replayable; every
"wrong" or "crash" is shrunk and written to DIR as a standalone script.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

FAILURES = ("wrong", "crash", "hang")


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    by_mode: dict = field(default_factory=dict)      # "forward"/"gradient" -> Counter
    families: Counter = field(default_factory=Counter)  # families of failing programs
    failures: list = field(default_factory=list)      # (index, class, detail, script path)
    refusals: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, index: int, res: dict):
        k = res["class"]
        self.counts[k] += 1
        self.by_mode.setdefault(res["mode"], Counter())[k] += 1
        if k == "refused":
            self.refusals[res["detail"].splitlines()[0][:120]] += 1
        if k in FAILURES:
            self.families.update(res.get("families", []))

    def summary(self) -> str:
        n = sum(self.counts.values())
        lines = [f"{n} programs in {self.seconds:.0f} s: " +
                 ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))]
        for mode, c in sorted(self.by_mode.items()):
            lines.append(f"  {mode}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        for reason, c in self.refusals.most_common(10):
            lines.append(f"  refused x{c}: {reason}")
        for i, k, detail, path in self.failures:
            lines.append(f"  case {i}: {k}: {detail.splitlines()[0][:160] if detail else ''} -> {path}")
        return "\n".join(lines)


# ----- worker side ------------------------------------------------------------------------------
def _case(seed: int, index: int, shrink: bool) -> dict:
    from .check import run_case
    from .gen import random_program
    from .program import script
    from .shrink import shrink as shrink_program

    prog = random_program(seed, index)
    out = run_case(prog)
    res = {"class": out.klass, "detail": out.detail, "mode": _mode(prog),
           "families": prog.families(), "mesh": prog.mesh}
    if shrink and out.klass in ("wrong", "crash"):
        small = shrink_program(prog, lambda p: run_case(p).klass == out.klass)
        detail = run_case(small).detail
        res["script"] = script(small, out.klass, f"case {index} of seed {seed}\n{detail}")
    return res


def _mode(prog) -> str:
    base = "gradient" if prog.grad else "forward"
    return {"none": base, "jit": f"{base} under jax.jit",
            "grad": "jax.grad of the partitioned function"}[prog.outer]


def worker_main():
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            res = _case(msg["seed"], msg["index"], msg.get("shrink", True))
        except Exception as e:  # noqa: BLE001 - the generator itself failed
            res = {"class": "crash", "detail": f"fuzzer error: {type(e).__name__}: {e}",
                   "mode": "?", "families": []}
        res["index"] = msg["index"]
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


# ----- parent side ------------------------------------------------------------------------------
class Worker:
    def __init__(self):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
        env.setdefault("JAX_PLATFORMS", "cpu")
        self.proc = subprocess.Popen([sys.executable, "-m", "gshard.testing.fuzz.campaign", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, bufsize=1)
        self.out: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.out.put(json.loads(line))
        self.out.put(None)

    def submit(self, seed: int, index: int, shrink: bool):
        self.proc.stdin.write(json.dumps({"seed": seed, "index": index, "shrink": shrink}) + "\n")
        self.proc.stdin.flush()

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def campaign(cases: int, seed: int, jobs: int = 1, out_dir: str = "fuzz-failures",
             timeout: float = 300.0, shrink: bool = True, start: int = 0, log=print,
             only: str | None = None, record: str | None = None) -> Report:
    """Cases start..start+cases of `seed` (those with an op of family `only`, if given); one
    JSON line per finished case appended to `record`."""
    rep, t0 = Report(), time.time()
    todo = _indices(seed, start, cases, only)
    cases = len(todo)
    workers: list = [None] * jobs
    busy: dict = {}  # slot -> (index, started)
    done = 0
    while todo or busy:
        for slot in range(jobs):
            if slot not in busy and todo:
                workers[slot] = workers[slot] or Worker()
                i = todo.pop(0)
                workers[slot].submit(seed, i, shrink)
                busy[slot] = (i, time.time())
        for slot in list(busy):
            res = _collect(workers, slot, busy[slot], timeout)
            if res:
                i = busy.pop(slot)[0]
                rep.add(i, res)
                _save(rep, res, seed, out_dir)
                _record(record, seed, i, res)
                done += 1
                if res["class"] in FAILURES:
                    log(f"case {i}: {res['class']}: {res['detail'][:600]}", flush=True)
                if done % 100 == 0 or res["class"] in FAILURES:
                    log(f"[{done}/{cases}] {dict(rep.counts)}", flush=True)
        time.sleep(0.01)
    for w in workers:
        if w is not None:
            w.kill()
    rep.seconds = time.time() - t0
    return rep


def _indices(seed: int, start: int, cases: int, only: str | None) -> list:
    if only is None:
        return list(range(start, start + cases))
    from .gen import random_program
    return [i for i in range(start, start + cases) if only in random_program(seed, i).families()]


def _record(path: str | None, seed: int, index: int, res: dict):
    if path:
        keep = {k: res.get(k) for k in ("class", "mode", "mesh", "families")}
        with open(path, "a") as f:
            f.write(json.dumps({"seed": seed, "index": index, **keep}) + "\n")


def _collect(workers: list, slot: int, job: tuple, timeout: float):
    """The answer of the case running in `slot` (None while it runs); a worker past the
    watchdog is killed (a hang), one that died is a crash; either slot gets a fresh worker."""
    i, started = job
    res = _poll(workers[slot])
    if res is None and time.time() - started > timeout:
        workers[slot].kill()
        workers[slot] = None
        return {"class": "hang", "detail": f"no answer in {timeout:.0f} s", "mode": "?",
                "families": [], "index": i}
    if res is False:
        workers[slot] = None
        return {"class": "crash", "detail": "worker process died", "mode": "?",
                "families": [], "index": i}
    return res


def _poll(w):
    try:
        res = w.out.get(timeout=0.05)
    except queue.Empty:
        return None
    return False if res is None else res


def _save(rep: Report, res: dict, seed: int, out_dir: str):
    if res["class"] not in FAILURES:
        return
    path = ""
    if not res.get("script"):  # a hang or a dead worker: write the unshrunk program
        from .gen import random_program
        from .program import script
        res["script"] = script(random_program(seed, res["index"]), "hang", res["detail"])
    if res.get("script"):
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"seed{seed}_case{res['index']}_{res['class']}.py")
        with open(path, "w") as f:
            f.write(res["script"])
    rep.failures.append((res["index"], res["class"], res["detail"], path))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_main()
