"""A chat backend on FastAPI that keeps each conversation in Redis with pyhistory, and streams.

Run it:

    REDIS_URL=redis://localhost:6379/0 python examples/fastapi_chat.py --port 8000

then talk to it:

    curl -s localhost:8000/chat/alice -H 'content-type: application/json' -d '{"message": "hi"}'
    curl -sN localhost:8000/chat/alice/stream -H 'content-type: application/json' \
        -d '{"message": "and now?"}'
    curl -s localhost:8000/chat/alice             # the stored conversation
    curl -s -X DELETE localhost:8000/chat/alice   # forget it

Each turn costs the history two round trips, both asyncio: one read of the newest ``WINDOW``
messages (refreshing the session's TTL) and one atomic append of the question and the answer
(trimmed to ``MAX_MESSAGES``, TTL set). A history per request costs nothing to build: histories of
one URL share a connection pool. When Redis fails, the request gets a 503 naming the error, within
the library's failure bound (10 s).

The model: ``EXAMPLE_MODEL`` (a ``provider:model`` name for LangChain's ``init_chat_model``) when
set, else ``openai:gpt-4o-mini`` when ``OPENAI_API_KEY`` is set, else an offline model that
answers from what it is given (so the answers show what the history carried).

Needs ``pip install "pyhistory[examples]"`` (FastAPI, uvicorn, LangChain).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel

from pyhistory import HistoryError, RedisChatMessageHistory

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
WINDOW = 20  # messages the model is given
MAX_MESSAGES = 200  # messages a session keeps
TTL = 3600  # seconds an idle session lives
SYSTEM = SystemMessage("You are a helpful assistant. Answer briefly.")


class OfflineModel(GenericFakeChatModel):
    """Answers from the conversation it is given; streams its answer word by word."""

    messages: Iterator[Any] = iter(())

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        said = [m for m in messages if isinstance(m, HumanMessage)]
        answer = f"You said {said[-1].text!r}; {len(messages) - 2} earlier messages reached me."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(answer))])


def chat_model() -> BaseChatModel:
    name = os.environ.get("EXAMPLE_MODEL") or (
        "openai:gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else None
    )
    if name is None:
        return OfflineModel()
    from langchain.chat_models import init_chat_model

    return init_chat_model(name)


class ChatIn(BaseModel):
    message: str


def history(session_id: str) -> RedisChatMessageHistory:
    return RedisChatMessageHistory(
        session_id, url=REDIS_URL, ttl=TTL, max_messages=MAX_MESSAGES, window=WINDOW
    )


def unavailable(error: HistoryError) -> JSONResponse:
    return JSONResponse({"error": f"history store unavailable: {error}"}, status_code=503)


def create_app(model: BaseChatModel | None = None) -> FastAPI:
    llm = model or chat_model()
    app = FastAPI(title="pyhistory chat example")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chat/{session_id}", response_model=None)
    async def chat(session_id: str, body: ChatIn) -> JSONResponse | dict[str, Any]:
        session = history(session_id)
        question = HumanMessage(body.message)
        try:
            earlier = await session.aget_messages()
            answer = await llm.ainvoke([SYSTEM, *earlier, question])
            await session.aadd_messages([question, AIMessage(answer.text)])
        except HistoryError as error:
            return unavailable(error)
        return {"answer": answer.text, "earlier": len(earlier)}

    @app.post("/chat/{session_id}/stream", response_model=None)
    async def chat_stream(session_id: str, body: ChatIn) -> JSONResponse | StreamingResponse:
        session = history(session_id)
        question = HumanMessage(body.message)
        try:
            earlier = await session.aget_messages()
        except HistoryError as error:
            return unavailable(error)

        async def events() -> AsyncIterator[str]:
            parts: list[str] = []
            async for chunk in llm.astream([SYSTEM, *earlier, question]):
                parts.append(chunk.text)
                yield f"data: {json.dumps(chunk.text)}\n\n"
            try:  # the turn is stored once the answer is complete
                await session.aadd_messages([question, AIMessage("".join(parts))])
            except HistoryError as error:
                yield f"event: error\ndata: {json.dumps(str(error))}\n\n"
                return
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/chat/{session_id}", response_model=None)
    async def transcript(session_id: str) -> JSONResponse | list[dict[str, str]]:
        try:
            messages = await history(session_id).aget_messages()
        except HistoryError as error:
            return unavailable(error)
        return [{"role": m.type, "content": m.text} for m in messages]

    @app.delete("/chat/{session_id}", response_model=None)
    async def forget(session_id: str) -> JSONResponse | dict[str, bool]:
        try:
            await history(session_id).aclear()
        except HistoryError as error:
            return unavailable(error)
        return {"deleted": True}

    return app


app = create_app()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
