"""An OpenAI-compatible chat-completions server on loopback, for tests of real LLM clients.

Usage, as a context manager (it runs its own event loop in a daemon thread, so it
serves synchronous and asynchronous clients alike)::

    with FakeOpenAI(chunks=("Hello", " world")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
        assert server.requests[-1].body["stream"] is True

or as a pytest fixture, by defining one in the test module::

    @pytest.fixture
    def fake_openai() -> Iterator[FakeOpenAI]:
        with FakeOpenAI() as server:
            yield server

What it serves:

- ``POST /v1/chat/completions`` with ``"stream": true``: ``text/event-stream`` over a
  chunked HTTP/1.1 response, one ``chat.completion.chunk`` per content chunk (the first
  also carries ``role``), a closing chunk with ``finish_reason: "stop"``, a usage chunk
  (``choices: []``) when ``stream_options.include_usage`` is set, then ``data: [DONE]``.
- the same without ``stream``: one ``chat.completion`` with the joined content and usage.
- anything else (``GET /version`` included, which mellea probes): 404 with a JSON error.

Behaviours are chosen per request by markers anywhere in the last user message, so one
server can serve a normal stream, a stall and a failure side by side:

- ``[stall:S]`` or ``[stall:S@K]``: after K content chunks (default 1; 0 means before the
  first), send nothing for S seconds, then carry on.
- ``[fail:CODE]``: answer HTTP CODE (500, 429, ...) with an OpenAI-style error body.
- ``[fail-midstream]`` or ``[fail-midstream@K]``: send K chunks (default 1), then drop the
  connection without ending the chunked body, so the client sees a broken stream.
- ``[chunks:N]``: answer N numbered chunks (``"c0 "``, ``"c1 "``, ...) instead of the defaults.
- ``[delay:S]``: S seconds between chunks, overriding the server's default.

The server keeps every request it received (``requests``), counts the connections it
accepted (``connections``), and stops promptly even in the middle of a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from support.loopback import StartStop

__all__ = ["Behaviour", "FakeOpenAI", "RecordedRequest", "parse_behaviour"]

_MARKER = re.compile(r"\[(stall|fail|fail-midstream|chunks|delay)(?::([^\]@]+))?(?:@(\d+))?\]")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the server does for one request, read from the markers of its last user message."""

    stall_s: float = 0.0
    stall_after: int = 1
    fail_status: int | None = None
    fail_midstream_after: int | None = None
    chunks: tuple[str, ...] | None = None
    delay_s: float | None = None


@dataclass(slots=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)


def _last_user_text(body: Any) -> str:
    """Return the text of the last user message of a chat-completions body, or ``""``."""
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        return ""
    return ""


def parse_behaviour(text: str) -> Behaviour:
    """Read the behaviour markers out of ``text`` (see the module docstring)."""
    stall_s, stall_after = 0.0, 1
    fail_status: int | None = None
    midstream: int | None = None
    chunks: tuple[str, ...] | None = None
    delay: float | None = None
    for name, value, at in _MARKER.findall(text):
        if name == "stall":
            stall_s = float(value)
            stall_after = int(at) if at else 1
        elif name == "fail":
            fail_status = int(value)
        elif name == "fail-midstream":
            midstream = int(at) if at else 1
        elif name == "chunks":
            chunks = tuple(f"c{i} " for i in range(int(value)))
        elif name == "delay":
            delay = float(value)
    return Behaviour(stall_s, stall_after, fail_status, midstream, chunks, delay)


class _Dropped(Exception):
    """Raised inside a handler to drop the connection on purpose."""


class FakeOpenAI(StartStop):
    """A loopback OpenAI-compatible streaming chat-completions server in a background thread.

    Args:
        chunks: The content chunks of every answer, unless a request's markers say otherwise.
        delay_s: Seconds between two chunks of a stream.
        model: The model name echoed in answers when a request names none.
        host: The loopback address to listen on.
    """

    def __init__(
        self,
        chunks: Sequence[str] = ("Hello", ",", " world", "!"),
        *,
        delay_s: float = 0.0,
        model: str = "fake-model",
        host: str = "127.0.0.1",
    ) -> None:
        self.chunks = tuple(chunks)
        self.delay_s = delay_s
        self.model = model
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root URL, ending in ``/``."""
        return f"http://{self.host}:{self.port}/"

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client as ``base_url`` (the root plus ``v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> Self:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI is already started")
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(30.0) or self._server is None:
            raise RuntimeError("FakeOpenAI did not start within 5 s")
        return self

    def stop(self) -> None:
        """Stop serving, cutting open connections and stalls short; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._begin_stop)
        thread.join(5.0)
        self._thread = None

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests whose path is ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._stopping.wait()
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._handlers:
                _, pending = await asyncio.wait(list(self._handlers), timeout=1.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await self._server.wait_closed()

    def _begin_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the server is stopping."""
        if seconds <= 0 or self._stopping is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- HTTP -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                with self._lock:
                    self.requests.append(request)
                keep_alive = await self._respond(request, writer)
                if not keep_alive:
                    break
        except (_Dropped, ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
        except asyncio.CancelledError:
            # Only the server's own shutdown cancels a handler; end it quietly.
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        raw = b""
        length = int(headers.get("content-length", "0") or 0)
        if length:
            raw = await reader.readexactly(length)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        return RecordedRequest(method, path.split("?", 1)[0], headers, body)

    async def _respond(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        if request.path.rstrip("/") != "/v1/chat/completions":
            await self._send_json(writer, 404, _error("Not found", "not_found_error"))
            return True
        if request.method != "POST":
            await self._send_json(writer, 405, _error("Method not allowed", "invalid_request"))
            return True
        body = request.body if isinstance(request.body, dict) else {}
        behaviour = parse_behaviour(_last_user_text(body))
        if behaviour.fail_status is not None:
            status = behaviour.fail_status
            await self._send_json(
                writer, status, _error(f"injected failure {status}", "server_error")
            )
            return True
        if body.get("stream"):
            await self._stream(writer, body, behaviour)
            return True
        await self._send_json(writer, 200, self._completion(body, behaviour))
        return True

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Connection: keep-alive\r\n\r\n"
        )
        writer.write(head.encode() + data)
        await writer.drain()

    async def _stream(
        self, writer: asyncio.StreamWriter, body: dict[str, Any], behaviour: Behaviour
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\n\r\n"
        )
        await writer.drain()
        chunks = behaviour.chunks if behaviour.chunks is not None else self.chunks
        delay = behaviour.delay_s if behaviour.delay_s is not None else self.delay_s
        cid, created, model = _ids(body, self.model)

        async def event(payload: Any) -> None:
            data = b"data: " + (
                payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            )
            data += b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

        for index, text in enumerate(chunks):
            if behaviour.stall_s and index == behaviour.stall_after:
                await self._pause(behaviour.stall_s)
            if (
                behaviour.fail_midstream_after is not None
                and index == behaviour.fail_midstream_after
            ):
                raise _Dropped
            if index and delay:
                await self._pause(delay)
            delta: dict[str, Any] = {"content": text}
            if index == 0:
                delta["role"] = "assistant"
            await event(_chunk(cid, created, model, delta, None))
        n = len(chunks)
        if behaviour.stall_s and behaviour.stall_after >= n:
            await self._pause(behaviour.stall_s)
        if behaviour.fail_midstream_after is not None and behaviour.fail_midstream_after >= n:
            raise _Dropped
        await event(_chunk(cid, created, model, {}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            usage_chunk = _chunk(cid, created, model, None, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(body, chunks)
            await event(usage_chunk)
        await event(b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def _completion(self, body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
        chunks = behaviour.chunks if behaviour.chunks is not None else self.chunks
        cid, created, model = _ids(body, self.model)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(chunks)},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(body, chunks),
        }


def _ids(body: dict[str, Any], default_model: str) -> tuple[str, int, str]:
    model = body.get("model")
    return (
        f"chatcmpl-{uuid.uuid4().hex[:24]}",
        int(time.time()),
        model if isinstance(model, str) else default_model,
    )


def _chunk(
    cid: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}],
    }


def _usage(body: dict[str, Any], chunks: Sequence[str]) -> dict[str, int]:
    prompt = sum(
        len(str(m.get("content", "")).split())
        for m in body.get("messages", [])
        if isinstance(m, dict)
    )
    completion = len(chunks)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@contextlib.contextmanager
def fake_openai_server(
    chunks: Sequence[str] = ("Hello", ",", " world", "!"), *, delay_s: float = 0.0
) -> Iterator[FakeOpenAI]:
    """Run a `FakeOpenAI` for the duration of a ``with`` block (the fixture body)."""
    with FakeOpenAI(chunks, delay_s=delay_s) as server:
        yield server
