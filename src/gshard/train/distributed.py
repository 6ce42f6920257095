"""Meshes from `--mesh data=2,expert=4`, multi-process start-up, and a peer watchdog.

Multi-host: `gshard train --coordinator HOST:PORT --num-processes N --process-id I` (or the
environment variables GSHARD_COORDINATOR / JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) runs jax.distributed with gloo CPU collectives. Every process computes the same
global batch (BatchIterator is a pure function of the step), the mesh spans all processes'
devices, and process 0 writes metrics and checkpoints (the workdir must be shared, e.g. on one
machine or a network file system).

The watchdog: each process bumps a heartbeat counter in the coordination service's key-value
store every `interval` seconds and watches its peers'. A peer whose counter stops moving for
`timeout` seconds (or a coordinator that stops answering) makes the process print which peer
died and exit with status 3, instead of hanging in a collective.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import jax

AXIS_ORDER = ("data", "expert", "model")
DEAD_PEER_EXIT = 3


class MeshError(ValueError):
    pass


@dataclass(frozen=True)
class MeshPlan:
    shape: tuple
    names: tuple

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def axes(self):
        """MeshAxes: batch and MoE groups over the data/expert axes, experts over every axis
        (the paper's layout), attention heads and dense hidden over `model`."""
        from ..models.config import MeshAxes

        batch = tuple(n for n in self.names if n != "model")
        one = lambda t: t[0] if len(t) == 1 else (t or None)  # noqa: E731
        return MeshAxes(data=one(batch), expert=one(tuple(self.names)),
                        model="model" if "model" in self.names else None)

    def data_size(self) -> int:
        return self.size // dict(zip(self.names, self.shape)).get("model", 1)

    def make(self):
        devs = jax.devices()
        if len(devs) != self.size:
            raise MeshError(f"mesh {self.describe()} needs {self.size} devices, have {len(devs)}")
        return jax.make_mesh(self.shape, self.names, devices=devs)

    def describe(self) -> str:
        return ",".join(f"{n}={s}" for n, s in zip(self.names, self.shape))


def parse_mesh(text: str | None, num_devices: int) -> MeshPlan:
    """'data=2,expert=4' -> MeshPlan((2, 4), ('data', 'expert')); None/'' = all devices on
    one `data` axis. One size may be -1 (the rest of the devices). The spelling is gshard's one
    mesh spelling (gshard.mesh.parse_mesh_spec); the trainer's axes are data, expert, model."""
    from ..mesh import MeshSpecError, parse_mesh_spec
    if not text:
        return MeshPlan((num_devices,), ("data",))
    try:
        names, shape = parse_mesh_spec(text, rest=True)
    except MeshSpecError as e:
        raise MeshError(str(e)) from None
    for name in names:
        if name not in AXIS_ORDER:
            raise MeshError(f"mesh axis {name!r} must be one of {AXIS_ORDER} (in {text!r})")
    sizes = dict(zip(names, shape))
    known = math.prod(s for s in shape if s > 0)
    sizes = {n: (num_devices // known if s == -1 else s) for n, s in sizes.items()}
    names = tuple(n for n in AXIS_ORDER if n in sizes)
    plan = MeshPlan(tuple(sizes[n] for n in names), names)
    if plan.size != num_devices or min(plan.shape) < 1:
        raise MeshError(f"mesh {text!r} has {plan.size} devices but {num_devices} are available")
    return plan


# ----- multi-process ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessSpec:
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    heartbeat_timeout: float = 20.0

    @property
    def multi(self) -> bool:
        return self.num_processes > 1


def process_spec(coordinator=None, num_processes=None, process_id=None,
                 heartbeat_timeout: float = 20.0) -> ProcessSpec:
    """Flags first, then GSHARD_COORDINATOR / JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID."""
    env = os.environ
    coord = coordinator or env.get("GSHARD_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
    n = num_processes if num_processes is not None else int(env.get("JAX_NUM_PROCESSES", 1))
    pid = process_id if process_id is not None else int(env.get("JAX_PROCESS_ID", 0))
    if n > 1 and not coord:
        raise ValueError("--num-processes > 1 needs --coordinator HOST:PORT")
    if not 0 <= pid < max(n, 1):
        raise ValueError(f"--process-id {pid} is not in [0, {n})")
    return ProcessSpec(coord, n, pid, heartbeat_timeout)


def initialize(spec: ProcessSpec) -> "Watchdog | None":
    """Start jax.distributed (gloo CPU collectives) and the peer watchdog; no-op for 1 process."""
    if not spec.multi:
        return None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(spec.coordinator, spec.num_processes, spec.process_id,
                               initialization_timeout=int(max(30, 3 * spec.heartbeat_timeout)),
                               heartbeat_timeout_seconds=int(max(10, 2 * spec.heartbeat_timeout)))
    dog = Watchdog(spec.process_id, spec.num_processes, timeout=spec.heartbeat_timeout)
    dog.start()
    return dog


def _die(msg: str):
    print(f"\ngshard: {msg}", file=sys.stderr, flush=True)
    os._exit(DEAD_PEER_EXIT)


class Watchdog:
    """Heartbeats through the jax.distributed key-value store; exits when a peer goes silent."""

    def __init__(self, pid: int, n: int, timeout: float = 20.0, interval: float = 1.0,
                 on_dead=_die):
        from jax._src import distributed as _dist
        self.client = _dist.global_state.client
        self.pid, self.n, self.timeout, self.interval = pid, n, timeout, interval
        self.on_dead, self.beat, self.finished = on_dead, 0, False
        self._stop = threading.Event()
        now = time.monotonic()
        self.seen = {p: (None, now) for p in range(n) if p != pid}
        self.thread = threading.Thread(target=self._run, name="gshard-watchdog", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        """Say this process finished cleanly (peers stop watching it), then stop."""
        self.finished = True
        try:
            self.client.key_value_set(f"gshard/done/{self.pid}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001
            pass
        self._stop.set()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.beat += 1
                self.client.key_value_set(f"gshard/hb/{self.pid}", str(self.beat),
                                          allow_overwrite=True)
                self._check(time.monotonic())
            except Exception as e:  # noqa: BLE001  (the coordinator itself went away)
                if not self._stop.is_set():
                    self.on_dead(f"process {self.pid}: lost the coordinator ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]}); a peer probably died. Exiting.")
                return

    def _check(self, now: float):
        for p, (last, since) in list(self.seen.items()):
            if self._try(f"gshard/done/{p}") is not None:
                self.seen.pop(p)
                continue
            val = self._try(f"gshard/hb/{p}")
            if val != last:
                self.seen[p] = (val, now)
            elif now - since > self.timeout:
                self.on_dead(f"process {self.pid}: peer process {p} sent no heartbeat for "
                             f"{now - since:.0f}s (it died or hangs). Exiting instead of waiting "
                             f"in a collective forever.")
                return

    def _try(self, key: str):
        try:
            return self.client.key_value_try_get(key)
        except Exception as e:  # noqa: BLE001
            if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
                return None
            raise
