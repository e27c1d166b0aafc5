"""Test helpers: ``servesim serve``'s app on a free port in a background thread, and the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import uvicorn

from sim.serve.app import ServeState, build_app
from sim.serve.cli import bind_socket
from sim.serve.realtime import RealtimeDeployment
from tests.paths import ROOT

#: generous bound on start-up and shutdown waits (a busy 2-core machine); never a timing assertion
WAIT_S = 60


@contextlib.contextmanager
def serving(config, cost_model=None, speedup: float = 1.0, name: str = "m") -> Iterator[tuple[str, ServeState]]:
    """(base URL, state) of the app serving ``config`` on 127.0.0.1 at a free port, until the block ends."""
    state = ServeState(RealtimeDeployment(config, cost_model, speedup=speedup), name)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


@contextlib.contextmanager
def serve_process(*flags: str, env: dict | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """(process, base URL) of ``servesim serve --port 0 FLAGS`` run as a subprocess; killed if still running."""
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli.main", "serve", "--port", "0", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        first = proc.stderr.readline()  # the start line names the port (or the error)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", first)
        if not m:
            proc.kill()
            raise RuntimeError(f"servesim serve did not start: {first}{proc.stderr.read()}")
        yield proc, f"http://127.0.0.1:{m.group(1)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
