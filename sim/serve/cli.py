"""The ``servesim serve`` command: an OpenAI-compatible endpoint answering with a simulated deployment's timing.

The deployment flags are ``servesim simulate``'s (``sim.cli.args``'s groups; ``--deployment FILE`` for an aggregated
one); FastAPI and uvicorn come with the ``serve`` extra and are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from sim.cli.args import add_command, add_cost_model_arguments, add_deployment_arguments
from sim.cli.values import float_range, int_range

DEFAULT_PORT = 8000  # vLLM's
#: seconds uvicorn waits for open connections after SIGINT/SIGTERM (streams end at once: their requests are aborted)
GRACEFUL_SHUTDOWN_S = 10


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``servesim`` subcommands; returns its parser."""
    p = add_command(subparsers, "serve", cmd_serve,
                    "an OpenAI-compatible HTTP endpoint that answers with a simulated deployment's timing")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int_range(0, 65535), default=DEFAULT_PORT,
                   help="port to listen on, as vLLM's (0: any free port, printed at start) (default: %(default)s)")
    s.add_argument("--speedup", type=float_range(0.0, 1e6, low_open=True), default=1.0, metavar="X",
                   help="run simulated time X times faster than the wall clock (tests: a 10 s simulated answer "
                        "arrives after 10/X s) (default: %(default)s)")
    s.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients give and /v1/models lists, as vLLM's flag (default: --model)")
    s.add_argument("--record", default=None, metavar="FILE",
                   help="append one JSON line per finished request: a trace line (arrival in simulated seconds "
                        "since start, prompt and output tokens) that `servesim simulate --trace` replays, with the "
                        "served TTFT, token gaps and end-to-end time")
    e = p.add_argument_group("the real engine instead of the simulation")
    e.add_argument("--engine", action="store_true",
                   help="serve the real engine (engine/: a Llama-family model in PyTorch with random weights; --model "
                        "tiny on a CPU) with the same scheduler flags, in real time: the frontend and engine-loop "
                        "costs are measured, not modelled (needs torch)")
    e.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="with --engine: where the model runs (default: cuda when available, else cpu)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile instead of the roofline (as simulate)")
    p.add_argument("--deployment", default=None, metavar="FILE",
                   help="an aggregated deployment from a YAML or TOML file instead of the deployment flags")
    add_deployment_arguments(p)
    add_cost_model_arguments(p)
    p.set_defaults(disaggregated=False, strict=False, seed=0)
    return p


def build_state(args: argparse.Namespace, on_record: Any = None) -> Any:
    """The ``ServeState`` the flags describe (the deployment checked, the cost model built), before any socket."""
    from sim.cli.simulate import config_from_args, costs_from_args
    from sim.serve.app import ServeState
    from sim.serve.realtime import RealtimeDeployment
    from sim.serving.simulator import SimConfig

    if args.engine:  # the engine layer's backend, found by sim.cli.main: the simulator never imports engine/
        from sim.cli.main import serve_backend
        backend = serve_backend("engine")(args)
        return ServeState(backend, args.served_model_name or backend.model.name, on_record)
    if args.device:
        raise ValueError("--device chooses where --engine runs the real model: add --engine, or drop it")
    config, costs = costs_from_args(args, config_from_args(args))
    if not isinstance(config, SimConfig):
        msg = f"--deployment {args.deployment}: serve runs one aggregated deployment, not disaggregated pools"
        raise ValueError(msg)  # noqa: TRY004 - a refused input (exit 2), as every deployment error
    deployment = RealtimeDeployment(config, costs, speedup=args.speedup)
    name = args.served_model_name or (args.model_config or config.model)
    return ServeState(deployment, name, on_record)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (an address in use is refused here, one line, before uvicorn starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve /v1/completions and /v1/chat/completions (streamed or not), /v1/models, /health and /metrics (vLLM's
    metric names) from a simulated deployment: requests are scheduled by the simulator's scheduler and answered with
    placeholder tokens at the times its cost model gives, in real time divided by --speedup. Prompt tokens: the ids
    given, or text at ceil(UTF-8 bytes / 4); output: max_tokens, always all of them (as ignore_eos). SIGINT or
    SIGTERM ends the requests in flight (finish_reason "abort") and exits.
    """
    import asyncio

    import uvicorn

    from sim.serve.app import build_app, dumps_line

    record = None

    def on_record(line: dict) -> None:
        record.write(dumps_line(line) + "\n")
        record.flush()

    try:
        state = build_state(args, on_record if args.record else None)  # refusals first: no file left behind
        record = open(args.record, "a", encoding="utf-8") if args.record else None  # noqa: SIM115 - closed below
        sock = bind_socket(args.host, args.port)
        host, port = sock.getsockname()[:2]
        dep = state.deployment
        print(f"servesim serve: http://{host}:{port}/v1 model {state.model_name!r} ({dep.describe()})",
              file=sys.stderr, flush=True)
        config = uvicorn.Config(build_app(state), log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        server = _Server(config, dep.shutdown)
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        if record is not None:
            record.close()
    print("servesim serve: stopped", file=sys.stderr, flush=True)
    return 0


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which on SIGINT/SIGTERM first aborts the deployment's requests, so that streams end."""

        def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
            super().__init__(config)
            self._on_exit = on_exit

        def handle_exit(self, sig: int, frame: Any) -> None:
            import asyncio
            try:
                asyncio.get_running_loop().call_soon_threadsafe(self._on_exit)
            except RuntimeError:  # no loop running (yet): nothing is in flight
                pass
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after shutting down (the exit status would be "killed"); a graceful
            # shutdown exits 0
            getattr(self, "_captured_signals", []).clear()

    return Server


def _Server(config: Any, on_exit: Any) -> Any:
    return _server_class()(config, on_exit)
