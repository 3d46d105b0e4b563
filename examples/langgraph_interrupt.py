"""A LangGraph graph that stops for a human, checkpointed in Redis by pyhistory's RedisSaver.

    export REDIS_URL=redis://localhost:6379/0
    python examples/langgraph_interrupt.py start THREAD "question"
    python examples/langgraph_interrupt.py resume THREAD approve      # or "edit: <reply>"
    python examples/langgraph_interrupt.py demo                       # both, one after the other

The graph drafts an answer to a customer's question with a model, then stops at a review step
(``interrupt()``): the draft waits in Redis, in the thread's checkpoint, for a human. ``resume``
may run in another process, on another machine, hours later (within the thread's TTL): it builds
the graph again, and LangGraph continues from the checkpoint with the reviewer's decision, which
either sends the draft as it is or replaces it. A finished thread is deleted (``--keep`` keeps
it). ``demo`` runs ``start`` and ``resume`` one after the other, each with a saver of its own.

The model: ``EXAMPLE_MODEL`` (a ``provider:model`` name for LangChain's ``init_chat_model``) when
set, else ``openai:gpt-4o-mini`` when ``OPENAI_API_KEY`` is set, else an offline model.

Needs ``pip install "pyhistory[checkpoint,agents]"`` (LangGraph).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from pyhistory.checkpoint import RedisSaver

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


class OfflineModel(GenericFakeChatModel):
    """Drafts a polite, deterministic answer from the question it is given."""

    messages: Iterator[Any] = iter(())

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        question = messages[-1].text
        draft = f"Thank you for asking ({question!r}). We are looking into it and will reply soon."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(draft))])


def chat_model() -> BaseChatModel:
    name = os.environ.get("EXAMPLE_MODEL") or (
        "openai:gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else None
    )
    if name is None:
        return OfflineModel()
    from langchain.chat_models import init_chat_model

    return init_chat_model(name)


class Ticket(TypedDict, total=False):
    question: str
    draft: str
    reply: str
    reviewed_by_human: bool


def draft(ticket: Ticket) -> Ticket:
    system = SystemMessage("Draft a short, polite answer to the customer's question.")
    answer = chat_model().invoke([system, HumanMessage(ticket["question"])])
    return {"draft": answer.text}


def review(ticket: Ticket) -> Ticket:
    # Stops the run here; the value passed to interrupt() is what the reviewer is shown, and
    # what Command(resume=...) carries is what interrupt() returns when the run continues.
    decision = interrupt({"question": ticket["question"], "draft": ticket["draft"]})
    if isinstance(decision, str) and decision.startswith("edit:"):
        return {"reply": decision.removeprefix("edit:").strip(), "reviewed_by_human": True}
    return {"reply": ticket["draft"], "reviewed_by_human": True}


def build_graph(saver: RedisSaver) -> Any:
    builder = StateGraph(Ticket)
    builder.add_node("draft", draft)
    builder.add_node("review", review)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "review")
    builder.add_edge("review", END)
    return builder.compile(checkpointer=saver)


def saver() -> RedisSaver:
    return RedisSaver(REDIS_URL, ttl=7 * 24 * 3600)  # a ticket waits a week for its review at most


def start(thread: str, question: str) -> None:
    graph = build_graph(saver())
    config = {"configurable": {"thread_id": thread}}
    result = graph.invoke({"question": question}, config)
    (waiting,) = result["__interrupt__"]
    print(f"thread {thread} waits for a review of the draft:\n  {waiting.value['draft']}")


def resume(thread: str, decision: str, keep: bool) -> None:
    checkpoints = saver()
    graph = build_graph(checkpoints)
    config = {"configurable": {"thread_id": thread}}
    state = graph.get_state(config)
    if not state.next:
        raise SystemExit(f"thread {thread} is not waiting for a review")
    result = graph.invoke(Command(resume=decision), config)
    print(
        f"thread {thread} resumed ({decision.split(':')[0]}); the reply sent:\n  {result['reply']}"
    )
    if not keep:
        checkpoints.delete_thread(thread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="draft an answer and stop for its review")
    begin.add_argument("thread")
    begin.add_argument("question")
    go_on = commands.add_parser("resume", help="continue a thread with the reviewer's decision")
    go_on.add_argument("thread")
    go_on.add_argument("decision", help='"approve", or "edit: <the reply to send instead>"')
    go_on.add_argument("--keep", action="store_true", help="keep the finished thread")
    commands.add_parser("demo", help="start and resume one thread, then delete it")
    args = parser.parse_args()

    if args.command == "start":
        start(args.thread, args.question)
    elif args.command == "resume":
        resume(args.thread, args.decision, args.keep)
    else:
        start("example-ticket", "Where is my order #1234?")
        resume("example-ticket", "edit: Your order #1234 ships tomorrow.", keep=False)


if __name__ == "__main__":
    main()
