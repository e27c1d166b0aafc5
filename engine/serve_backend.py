"""``servesim serve --engine``: the real engine (a Llama-family model in PyTorch, random weights) behind the
OpenAI-compatible endpoint, so that the frontend's and the engine loop's costs are measured, not modelled.

The loop is ``engine.replay``'s (``schedule(now)`` -> ``runner.execute(batch)`` -> ``on_batch_done(batch, now)``,
the simulator's own policy objects), run in a worker thread so that forward passes never block the HTTP side;
requests enter the scheduler at the loop's next iteration; each token's time is when its iteration finished (wall
seconds since start). The prompt's token ids are the engine's seeded ones (``ModelRunner``): only the count a client
sends matters, as in every other servesim run. ``sim.serve.cli`` imports this module by name when --engine is given
(``sim/`` never imports ``engine/``).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections import deque
from typing import Any

from engine.replay import EngineConfig, _execute, build_runner, cap_prefill_tokens
from sim.cli.args import scheduler_of
from sim.request import TraceRequest
from sim.serve.realtime import ServedBackend
from sim.serving.frontend import PRESETS

#: seconds the idle loop waits for a request before looking again (a submit wakes it at once)
IDLE_WAIT_S = 0.05


class EngineBackend(ServedBackend):
    """The real engine as a ``sim.serve`` backend: one replica, the wall clock (speedup 1), no modelled frontend."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(speedup=1.0)
        self.model = config.model_spec()
        # CPU KV capacity when --kv-blocks is not given: room for max_num_seqs requests of the whole context
        # (engine.replay sizes it from the trace; capped at its 1 GiB there)
        room = [TraceRequest("capacity", 0.0, self.model.max_context, 1)] * config.effective_max_batch_size()
        self.runner = build_runner(config, self.model, room)
        self.config = cap_prefill_tokens(config, self.runner.device)
        self.num_blocks = self.runner.num_blocks
        self.schedulers = [self.config.make_scheduler(self.num_blocks)]
        self.frontend = PRESETS["none"]  # the HTTP server in front is real: nothing modelled
        self.set_limits(self.config, self.num_blocks)
        self._pending: deque = deque()
        self._lock = threading.Lock()  # the loop's token bookkeeping against _emit's reading of it
        self._wake = threading.Event()
        self.error: BaseException | None = None

    def describe(self) -> str:
        return (f"real engine: {self.config.scheduler}, {self.runner.device}, {self.num_blocks} KV blocks of "
                f"{self.runner.block_size}")

    def submit(self, prompt_tokens: int, output_tokens: int) -> Any:
        now = self.now()
        served = self._new(prompt_tokens, output_tokens, now, now)
        self._pending.append(served.request)
        self._wake.set()
        return served

    async def run(self) -> None:
        """Run the engine loop in a worker thread until ``shutdown``; tokens reach the queues after each iteration."""
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._loop, args=(loop,), name="servesim-engine", daemon=True)
        thread.start()
        while not self.closed:
            self._kick.clear()
            await self._kick.wait()
        self._wake.set()
        await asyncio.to_thread(thread.join)

    def _loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Admit arrivals, schedule, execute, hand the tokens over; stop when closed (or the engine fails)."""
        sched = self.schedulers[0]
        try:
            while not self.closed:
                while self._pending:
                    r = self._pending.popleft()
                    r.replica = 0
                    sched.add_request(r)
                batch = sched.schedule(self.now())
                if batch is None:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                _execute(self.runner, batch)
                with self._lock:
                    finished = sched.on_batch_done(batch, self.now())
                for r in finished:
                    self.runner.release(r)
                loop.call_soon_threadsafe(self._emit)
        except BaseException as e:  # noqa: BLE001 - the server must answer, not hang: abort what is in flight
            self.error = e
            loop.call_soon_threadsafe(self.shutdown)

    def _emit(self) -> None:
        with self._lock:
            super()._emit()

    def cancel(self, served: Any) -> None:
        with self._lock:
            super().cancel(served)


def backend_from_args(args: argparse.Namespace) -> EngineBackend:
    """The engine backend that ``servesim serve --engine``'s flags describe (the scheduler and KV flags as the
    simulator's; --device; the engine's defaults for the rest)."""
    for flag, value, default in (("--speedup", args.speedup, 1.0), ("--tp", args.tp, 1), ("--pp", args.pp, 1),
                                 ("--replicas", args.replicas, 1), ("--profile", args.profile, None),
                                 ("--deployment", args.deployment, None), ("--cost-model", args.cost_model,
                                                                           "roofline")):
        if value != default:
            raise ValueError(f"--engine serves the real engine on one device in real time: drop {flag}")
    config = EngineConfig(model=args.model_config or args.model, max_model_len=args.max_model_len,
                          scheduler=scheduler_of(args), token_budget=args.token_budget, max_batch_size=args.max_batch,
                          chunk_align=args.chunk_align, block_size=args.block_size, watermark=args.watermark,
                          gpu_memory_utilization=args.gpu_mem_util, kv_blocks=args.kv_blocks,
                          enable_prefix_caching=args.enable_prefix_caching, usage_context=args.usage_context,
                          device=args.device, warmup=0)
    return EngineBackend(config)
