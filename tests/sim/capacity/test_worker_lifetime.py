"""Pool workers of `servesim plan` exit when their parent is killed (kill -9 leaves nothing running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.paths import ROOT


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_plan_workers_exit_when_the_parent_is_killed(tmp_path):
    cmd = [sys.executable, "-m", "sim.cli", "plan", "--model", "tiny", "--gpus", "a100-80gb", "-n", "3000",
           "--seeds", "3", "--jobs", "2", "-q", "--out", str(tmp_path / "plan")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers: list[int] = []
        deadline = time.time() + 180  # generous: a busy machine may take long to start Python and the pool
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = _children(p.pid)
        assert len(workers) >= 2, "the plan never started its workers"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.time() + 60  # the kernel signals at once; the wait only bounds a busy machine's delay
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), [w for w in workers if _alive(w)]
    finally:
        if p.poll() is None:
            p.kill()
