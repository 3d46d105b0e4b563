"""Locust users of the chat service (``loadtest/httpchat/app.py``): people holding conversations.

Each user holds a conversation of 3-8 turns with think time between them (``--think``, seconds,
e.g. ``1-3``), then either starts a new conversation (a new session arrives) or comes back to one
of its earlier sessions, which the service must still hold. A turn is ``POST /chat/{session}``,
or, for a share of the turns (``--stream-share``), the streaming ``POST /chat/{session}/stream``
read to its end.

Reported to locust under the names ``chat`` and ``chat (stream)`` (the whole stream, through its
last event, timed here: locust's own timing of a streamed response stops at the headers). A
request fails on a status other than 200, on a timeout (``--timeout``, 30 s), on a broken
connection, on a body that is not what the endpoint promises, and on a stream that does not end
with its ``done`` event.

With ``--record FILE``, every request's end time, response time (exact, in ms) and outcome, the
service's Server-Timing (history read and append, ms) and the time the ramp-up ended are written
there as JSON when locust quits, for the summary (locust's own percentiles are rounded to whole
milliseconds). Each option is also read from the environment, ``LOADTEST_HTTP_<NAME>`` (e.g.
``LOADTEST_HTTP_THINK``), which is how ``run.py`` sets them.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from pathlib import Path

import requests
from locust import HttpUser, events, task
from locust.exception import CatchResponseError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness

_WORDS = (
    "the of and to in is you that it for on with as are this be at or have from an by not "
    "but what all were when we there can your which their said if will each about how up "
    "out them then she many some so these would other into has more her two like him see "
    "time could no make than first been its who now people my made over did down only way "
    "find use may water long little redis session history window message model prompt token "
    "latency answer question deploy"
)
WORDS = _WORDS.split()


# Each also from the environment, LOADTEST_HTTP_<NAME>.
OPTIONS: tuple[harness.Option, ...] = (
    ("think", "1-3", None, "think time between turns, s: 0, 1.5 or 0.5-2"),
    ("stream-share", 0.3, None, "share of the turns that stream the answer"),
    ("timeout", 30.0, None, "request timeout, s"),
    ("record", "", None, "write every request's record (JSON) here at exit"),
)
harness.add_locust_options(events, OPTIONS, "LOADTEST_HTTP_", hidden=["record"])
RUN = uuid.uuid4().hex[:8]

_server: dict[str, list[float]] = {
    "read": [],
    "append": [],
    "first_token": [],
    "stream_read": [],
    "stream_append": [],
}
_users = iter(range(1 << 30))


@events.test_start.add_listener
def _on_test_start(**_: object) -> None:
    harness.freeze_collected()  # a full collection would stall every user at once


_requests = harness.RequestLog()
_requests.install(
    events,
    lambda env: getattr(env.parsed_options, "record", "") or "",
    lambda requests, path: requests.dump(path, server_timing=_server),
)


def _server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest)
    return out


class ChatUser(HttpUser):
    def wait_time(self) -> float:
        return self.think.sample()

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.think = harness.Range.parse(options.think)
        self.stream_share = float(options.stream_share)
        self.timeout = float(options.timeout)
        self.number = next(_users)
        self.sessions: list[str] = []
        self.stream_http = requests.Session()
        self._new_conversation()

    def on_stop(self) -> None:
        self.stream_http.close()

    def _new_conversation(self) -> None:
        self.session = f"http-{RUN}-u{self.number}-c{len(self.sessions)}"
        self.sessions.append(self.session)
        self.turns_left = random.randint(3, 8)

    def _message(self) -> str:
        return " ".join(random.choices(WORDS, k=random.randint(25, 60))).capitalize() + "?"

    @task
    def turn(self) -> None:
        if self.turns_left <= 0:
            if len(self.sessions) > 1 and random.random() < 0.5:
                self.session = random.choice(self.sessions[:-1])
                self.turns_left = random.randint(2, 5)
            else:
                self._new_conversation()
        self.turns_left -= 1
        if random.random() < self.stream_share:
            self._stream_turn(self._message())
        else:
            self._turn(self._message())

    def _turn(self, message: str) -> None:
        with self.client.post(
            f"/chat/{self.session}",
            json={"message": message},
            name="chat",
            timeout=self.timeout,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                detail = response.text[:300] or repr(response.error)
                response.failure(f"HTTP {response.status_code}: {detail}")
                return
            try:
                body = response.json()
                ok = isinstance(body.get("answer"), str) and isinstance(body.get("history"), int)
            except ValueError:
                ok = False
            if not ok:
                response.failure(f"unexpected body: {response.text[:300]}")
                return
            timing = _server_timing(response.headers.get("Server-Timing", ""))
            for name in ("read", "append"):
                if name in timing:
                    _server[name].append(timing[name])

    def _stream_turn(self, message: str) -> None:
        start = time.perf_counter()
        error: BaseException | None = None
        length = 0
        try:
            with self.stream_http.post(
                f"{self.host}/chat/{self.session}/stream",
                json={"message": message},
                stream=True,
                timeout=self.timeout,
            ) as response:
                if response.status_code != 200:
                    raise CatchResponseError(f"HTTP {response.status_code}: {response.text[:300]}")
                event, last = "", ""
                first_token: float | None = None
                for line in response.iter_lines(decode_unicode=True):
                    length += len(line) + 1
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        if first_token is None and not event:
                            first_token = time.perf_counter() - start
                        last = line[5:].strip()
                if event != "done":
                    raise CatchResponseError(
                        f"the stream ended with {event or 'no'} event: {last[:300]}"
                    )
                timing = json.loads(last)
                for part in ("read", "append"):
                    _server[part].append(float(timing[part]))
                    _server[f"stream_{part}"].append(float(timing[part]))
                if first_token is not None:
                    _server["first_token"].append(first_token * 1000)
        except Exception as exc:
            error = exc
        events.request.fire(
            request_type="POST",
            name="chat (stream)",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=error,
            context={},
        )
