"""Issue 5 item 5: `gshard train` as 2 processes x 4 CPU devices over jax.distributed (gloo): a
dead peer makes the survivor exit with a message, not hang. (That 2 processes continue the loss
curve of 1 process is tests/test_train_scale.py's killed-run test.)"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from test_train_cli import tiny_corpus


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, corpus, port, steps, extra_env=None, timeout=20, extra_args=()):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               **(extra_env or {}))
    cmd = [sys.executable, "-m", "gshard", "train", "--preset", "tiny", "--steps", str(steps),
           "--workdir", str(workdir), "--data-dir", str(corpus), "--no-progress", "--no-plots",
           "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
           "--heartbeat-timeout", str(timeout), *extra_args]
    return [subprocess.Popen(cmd + ["--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def _wait(procs, limit):
    t0, outs = time.time(), []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1, limit - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-process run hung")
        outs.append((p.returncode, out, err))
    return outs


def test_dead_peer_makes_the_survivor_exit(tmp_path_factory, tmp_path):
    corpus = tiny_corpus(tmp_path_factory.getbasetemp())
    procs = _launch(tmp_path / "w", corpus, _port(), 3, {"GSHARD_TEST_DIE_AT": "1:1"}, timeout=4)
    t0 = time.time()
    (rc0, _, err0), (rc1, _, _) = _wait(procs, 80)
    assert rc1 == 17                                            # the injected death
    assert rc0 != 0 and time.time() - t0 < 80
    assert "peer process 1" in err0 or "lost the coordinator" in err0, err0[-2000:]
