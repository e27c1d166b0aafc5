"""The HTTP side of ``servesim serve``: a FastAPI app over a backend (``sim.serve.realtime.ServedBackend``: the
simulated ``RealtimeDeployment``, or the real engine's), with OpenAI's routes, /health and /metrics.

Each request is parsed (``sim.serve.openai_api``), checked against the context and the deployment, submitted, and
answered as its tokens come: streamed as server-sent events, one token a chunk, each sent when its simulated time
(plus the modelled frontend's way back) has come; or whole when the last has. Refusals are HTTP 4xx with OpenAI's
error body, never a crash; after ``shutdown`` the requests in flight end with ``finish_reason`` "abort".
FastAPI is imported here (the ``serve`` extra): only ``servesim serve`` and its tests import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from sim.serve import openai_api as api
from sim.serve.prometheus import ServeMetrics
from sim.serve.realtime import Served, ServedBackend, Unservable


class ServeState:
    """The backend, its metrics, the served model's name, and an optional per-request record (``on_record``)."""

    def __init__(self, deployment: ServedBackend, model_name: str,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.deployment = deployment
        self.model_name = model_name
        self.max_model_len = deployment.model.max_context
        self.metrics = ServeMetrics(model_name, len(deployment.schedulers))
        self.on_record = on_record
        deployment.on_token.append(self.metrics.on_token)
        deployment.on_done.append(self._done)
        self._task: asyncio.Task | None = None

    def _done(self, served: Served) -> None:
        end = self.deployment.completion_time(served) if served.finish == "length" else None
        self.metrics.on_done(served, end)
        if self.on_record is not None:
            self.on_record(self.deployment.record(served))

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.deployment.run())

    async def stop(self) -> None:
        self.deployment.shutdown()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def build_app(state: ServeState) -> FastAPI:
    """The FastAPI application serving ``state``."""
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="servesim serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    dep = state.deployment

    def refuse(e: api.ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if dep.closed else 200)

    @app.get("/version")
    async def version() -> JSONResponse:
        from sim.version import __version__
        return JSONResponse({"version": __version__, "server": "servesim"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(api.models_list(state.model_name, state.max_model_len))

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(dep.replica_state()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def generate(request: Request, chat: bool) -> Response:
        try:
            ask = api.parse_ask(api.parse_json(await request.body()), chat)
            if ask.model is not None and ask.model != state.model_name:
                raise api.ApiError(f"The model `{ask.model}` does not exist.", 404, "NotFoundError", "model")
            too_long = api.context_error(ask, state.max_model_len)
            if too_long is not None:
                raise too_long
            max_tokens = ask.max_tokens if ask.max_tokens is not None else state.max_model_len - ask.prompt_tokens
            if dep.closed:
                raise api.ApiError("the server is shutting down", 503, "ServiceUnavailableError")
            try:
                served = dep.submit(ask.prompt_tokens, max_tokens)
            except Unservable as e:
                raise api.ApiError(f"this deployment cannot serve the request ({e.code}): {e}") from None
        except api.ApiError as e:
            return refuse(e)
        rid = api.response_id(chat, served.request.index)
        created = int(time.time())
        if ask.stream:
            return StreamingResponse(_stream(state, served, ask, rid, created), media_type="text/event-stream")
        n, finish = await _drain(state, served)
        if finish == "abort":
            return refuse(api.ApiError("the server shut down before the request finished", 503,
                                       "ServiceUnavailableError"))
        return JSONResponse(api.completion(chat, rid, state.model_name, created, n, finish, ask.prompt_tokens))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    return app


async def _drain(state: ServeState, served: Served) -> tuple[int, str]:
    """Wait for every token of ``served``; (tokens, finish reason), returned when the client would have them all."""
    dep = state.deployment
    n = 0
    while True:
        kind, value = await served.queue.get()
        if kind == "token":
            n += 1
            continue
        if value == "length":
            await dep.sleep_until(dep.completion_time(served))
        return n, value


async def _stream(state: ServeState, served: Served, ask: api.Ask, rid: str, created: int) -> AsyncIterator[bytes]:
    """Server-sent events: (chat: a role chunk,) one chunk per token at its time, the final chunk, usage, [DONE]."""
    dep, model = state.deployment, state.model_name
    n = 0
    try:
        if ask.chat:
            yield api.sse(api.chunk(True, rid, model, created, None, None, first=True))
        while True:
            kind, value = await served.queue.get()
            if kind == "token":
                await dep.sleep_until(value)
                n += 1
                yield api.sse(api.chunk(ask.chat, rid, model, created, api.PLACEHOLDER, None))
                continue
            if value == "length":
                await dep.sleep_until(dep.completion_time(served))
            yield api.sse(api.chunk(ask.chat, rid, model, created, None, value))
            if ask.include_usage:
                yield api.sse(api.usage_chunk(ask.chat, rid, model, created, ask.prompt_tokens, n))
            yield api.sse("[DONE]")
            return
    finally:  # the client went away mid-stream (the generator closed early): stop generating for it
        if served.finish is None:
            dep.cancel(served)


def dumps_line(line: dict[str, Any]) -> str:
    """A record line as one JSON line."""
    return json.dumps(line, separators=(",", ":"), allow_nan=False)
