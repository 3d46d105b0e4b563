"""The asyncio chat service under load: FastAPI, run by uvicorn (``httpchat.app:app``).

Endpoints, per session:

- ``POST /chat/{session_id}`` ``{"message": "..."}``: read the session's window from the history,
  call the model with it and the new message, append the human and the AI message; replies
  ``{"answer": ..., "history": <messages read>}`` with a ``Server-Timing`` header (``read``,
  ``model``, ``append``, in ms).
- ``POST /chat/{session_id}/stream``: the same, the answer streamed token by token as server-sent
  events (``data: <token>``); the turn is appended once the answer is complete, then a last
  ``event: done`` carries the timings as JSON (or ``event: error`` when the append failed).
- ``GET /health``.

When the history store fails, the request fails with HTTP 503 and a JSON body naming the error
(``{"error": "history store unavailable: <type>: <message>"}``).

Settings, from the environment: ``CHAT_BACKEND`` (pyhistory, langchain, pipeline, memory),
``CHAT_REDIS_URL``, ``CHAT_WINDOW`` (20), ``CHAT_TTL`` (3600 s), ``CHAT_MAX_MESSAGES`` (200),
and the model's ``CHAT_MODEL_FIRST_TOKEN_MS``, ``CHAT_MODEL_TOKEN_MS``, ``CHAT_MODEL_TOKENS``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness

from httpchat.backends import Backend, make_backend
from httpchat.model import FakeChatModel

T = TypeVar("T")


class ChatIn(BaseModel):
    message: str


class HistoryUnavailable(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(f"history store unavailable: {type(error).__name__}: {error}")


async def _history(call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as error:
        raise HistoryUnavailable(error) from error


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def create_app() -> FastAPI:
    backend_name = os.environ.get("CHAT_BACKEND", "pyhistory")
    url = os.environ.get("CHAT_REDIS_URL", "redis://127.0.0.1:6379/0")
    window = int(os.environ.get("CHAT_WINDOW", "20"))
    ttl = int(os.environ.get("CHAT_TTL", "3600")) or None
    max_messages = int(os.environ.get("CHAT_MAX_MESSAGES", "200")) or None
    model = FakeChatModel.from_env()
    state: dict[str, Backend] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["backend"] = make_backend(
            backend_name, url, window=window, ttl=ttl, max_messages=max_messages
        )
        harness.freeze_collected()  # a full collection would stall every request in flight
        yield
        await state["backend"].close()

    app = FastAPI(title="chat service", lifespan=lifespan)

    @app.exception_handler(HistoryUnavailable)
    async def unavailable(request: Any, error: HistoryUnavailable) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "backend": backend_name}

    @app.post("/chat/{session_id}")
    async def chat(session_id: str, body: ChatIn) -> JSONResponse:
        backend = state["backend"]
        t0 = time.perf_counter()
        history = await _history(backend.read(session_id))
        t1 = time.perf_counter()
        human = HumanMessage(body.message)
        answer = await model.invoke([*history[-window:], human])
        t2 = time.perf_counter()
        await _history(backend.append(session_id, [human, AIMessage(answer)]))
        t3 = time.perf_counter()
        timing = f"read;dur={_ms(t1 - t0)}, model;dur={_ms(t2 - t1)}, append;dur={_ms(t3 - t2)}"
        return JSONResponse(
            {"answer": answer, "history": len(history)}, headers={"Server-Timing": timing}
        )

    @app.post("/chat/{session_id}/stream")
    async def chat_stream(session_id: str, body: ChatIn) -> StreamingResponse:
        backend = state["backend"]
        t0 = time.perf_counter()
        history = await _history(backend.read(session_id))
        read_ms = _ms(time.perf_counter() - t0)
        human = HumanMessage(body.message)

        async def events() -> AsyncIterator[str]:
            parts = []
            async for token in model.stream([*history[-window:], human]):
                parts.append(token)
                yield f"data: {token.rstrip()}\n\n"
            t1 = time.perf_counter()
            try:
                await backend.append(session_id, [human, AIMessage("".join(parts).rstrip())])
            except Exception as error:
                message = str(HistoryUnavailable(error))
                yield f"event: error\ndata: {json.dumps({'error': message})}\n\n"
                return
            done = {"read": read_ms, "append": _ms(time.perf_counter() - t1)}
            yield f"event: done\ndata: {json.dumps(done)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


app = create_app()
