"""Tests of the loopback OpenAI-compatible server the mellea tests stream from.

The raw-HTTP tests run in any environment; the tests that drive a real mellea session
through its OpenAI backend need mellea installed (the mellea test environments, not the
main one) and are skipped elsewhere.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.fake_openai import Behaviour, FakeOpenAI, parse_behaviour
from support.fakes import HANG


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running server with the default four chunks and no delay."""
    with FakeOpenAI() as server:
        yield server


def _post(
    server: FakeOpenAI, body: dict[str, Any], *, timeout: float = 5.0
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    return conn, conn.getresponse()


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def _events(response: http.client.HTTPResponse) -> list[Any]:
    """Read a whole SSE body, returning each ``data:`` payload (JSON-decoded, or the raw text)."""
    payloads: list[Any] = []
    for block in response.read().decode().split("\n\n"):
        if not block.startswith("data: "):
            continue
        data = block.removeprefix("data: ")
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def _stamped_events(response: http.client.HTTPResponse) -> list[tuple[float, str]]:
    """Read an SSE body line by line, noting when each ``data:`` line arrived."""
    stamped = []
    while True:
        line = response.readline()
        if not line:
            return stamped
        if line.startswith(b"data: "):
            stamped.append((time.monotonic(), line.decode().strip()))


def _rest_of_body(response: http.client.HTTPResponse) -> bytes:
    """What is left of a response body, however the server ended it."""
    try:
        return response.read()
    except http.client.IncompleteRead as cut:
        return cut.partial
    except OSError:
        return b""


class TestParseBehaviour:
    """The markers of the last user message choose what the server does."""

    def test_no_marker(self) -> None:
        """Text without markers asks for the default behaviour."""
        assert parse_behaviour("just say hello") == Behaviour()

    def test_stall_default_position(self) -> None:
        """A stall without a position comes after the first chunk."""
        assert parse_behaviour("x [stall:2.5] y") == Behaviour(stall_s=2.5, stall_after=1)

    def test_stall_at_position(self) -> None:
        """``@K`` places the stall after K chunks, 0 meaning before the first."""
        assert parse_behaviour("[stall:0.1@0]") == Behaviour(stall_s=0.1, stall_after=0)

    def test_failures_chunks_and_delay(self) -> None:
        """Failure, midstream cut, chunk count and delay markers combine."""
        assert parse_behaviour("[fail:503][fail-midstream@2][chunks:3][delay:0.01]") == Behaviour(
            fail_status=503,
            fail_midstream_after=2,
            chunks=("c0 ", "c1 ", "c2 "),
            delay_s=0.01,
        )


class TestStreaming:
    """``stream: true`` answers server-sent chat.completion.chunk events."""

    def test_chunks_then_stop_then_done(self, fake_openai: FakeOpenAI) -> None:
        """Each content chunk is one event, then a stop chunk, then ``[DONE]``."""
        conn, response = _post(fake_openai, _chat("hi", stream=True))
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        assert response.getheader("Transfer-Encoding") == "chunked"
        events = _events(response)
        conn.close()
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"content": "Hello", "role": "assistant"}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
            "Hello, world!"
        )
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]
        assert all("usage" not in c for c in chunks)

    def test_usage_chunk_when_asked(self, fake_openai: FakeOpenAI) -> None:
        """``stream_options.include_usage`` adds a usage chunk with no choices before ``[DONE]``."""
        body = _chat("one two three", stream=True, stream_options={"include_usage": True})
        conn, response = _post(fake_openai, body)
        events = _events(response)
        conn.close()
        usage_chunk = events[-2]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "total_tokens": 7,
        }

    def test_model_is_echoed(self, fake_openai: FakeOpenAI) -> None:
        """Chunks name the model the request asked for."""
        conn, response = _post(fake_openai, {**_chat("hi", stream=True), "model": "granite"})
        events = _events(response)
        conn.close()
        assert {e["model"] for e in events[:-1]} == {"granite"}

    def test_numbered_chunks_and_delay(self, fake_openai: FakeOpenAI) -> None:
        """``[chunks:N]`` answers N numbered chunks, ``[delay:S]`` spaces them by S seconds."""
        sent = time.monotonic()
        conn, response = _post(fake_openai, _chat("[chunks:3] [delay:0.05]", stream=True))
        stamped = _stamped_events(response)
        conn.close()
        contents = [json.loads(d.removeprefix("data: ")) for _, d in stamped[:3]]
        assert [c["choices"][0]["delta"]["content"] for c in contents] == ["c0 ", "c1 ", "c2 "]
        # Causal order, not a speed: the third chunk leaves only after two delays have passed
        # since the request, so it cannot arrive earlier however busy the machine is.
        assert stamped[2][0] - sent >= 2 * 0.05

    def test_keep_alive_serves_several_requests(self, fake_openai: FakeOpenAI) -> None:
        """One connection carries a stream and then another request."""
        conn, response = _post(fake_openai, _chat("hi", stream=True))
        _events(response)
        conn.request("POST", "/v1/chat/completions", json.dumps(_chat("again")))
        assert json.loads(conn.getresponse().read())["object"] == "chat.completion"
        conn.close()
        assert fake_openai.connections == 1
        assert len(fake_openai.requests_to("/v1/chat/completions")) == 2


class TestBehaviours:
    """Markers make a request stall, fail or break off."""

    def test_stall_mid_stream(self, fake_openai: FakeOpenAI) -> None:
        """``[stall:S@K]`` holds back everything after the K-th chunk for S seconds."""
        sent = time.monotonic()
        conn, response = _post(fake_openai, _chat("[stall:0.3@2]", stream=True))
        stamped = _stamped_events(response)
        conn.close()
        contents = [json.loads(d.removeprefix("data: ")) for _, d in stamped[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in contents)
        assert text == "Hello, world!"  # the stall delays the stream, it loses nothing
        assert stamped[-1][1] == "data: [DONE]"
        # Causal order, not a speed: chunk 2 leaves only after the stall, which begins after
        # the request arrived, so it cannot arrive sooner than the stall after the request.
        assert stamped[2][0] - sent >= 0.3

    def test_stall_holds_back_only_what_follows_its_chunk(self, fake_openai: FakeOpenAI) -> None:
        """During ``[stall:S@K]`` the first K chunks are already readable; the rest wait."""
        conn, response = _post(fake_openai, _chat("[stall:30@2]", stream=True), timeout=30.0)
        first_two = [response.readline() for _ in range(4)]  # two events: data line + blank
        fake_openai.stop()  # cuts the 30 s stall short
        rest = _rest_of_body(response)
        conn.close()
        assert [line.startswith(b"data: ") for line in first_two] == [True, False, True, False]
        assert b"data: " not in rest  # nothing after chunk K came out of the stall

    def test_fail_with_status(self, fake_openai: FakeOpenAI) -> None:
        """``[fail:500]`` answers HTTP 500 with an OpenAI-style error body."""
        conn, response = _post(fake_openai, _chat("[fail:500]", stream=True))
        body = json.loads(response.read())
        conn.close()
        assert response.status == 500
        assert body["error"]["message"] == "injected failure 500"

    def test_fail_midstream_cuts_the_body(self, fake_openai: FakeOpenAI) -> None:
        """``[fail-midstream]`` drops the connection after one chunk, mid-body."""
        conn, response = _post(fake_openai, _chat("[fail-midstream]", stream=True))
        with pytest.raises(http.client.IncompleteRead) as info:
            response.read()
        conn.close()
        assert info.value.partial.count(b"data: ") == 1

    def test_stop_cuts_a_stall_short(self) -> None:
        """Stopping the server ends a long stall at once instead of waiting it out."""
        server = FakeOpenAI().start()
        conn, response = _post(server, _chat("[stall:30]", stream=True))
        response.readline()  # the first event has arrived; the stall has begun
        server.stop()
        rest = _rest_of_body(response)
        conn.close()
        # Had stop() waited the stall out, the remaining chunks and [DONE] would follow.
        assert b"data: " not in rest


class TestOtherRequests:
    """Non-streaming completions and every other path."""

    def test_non_streaming_completion(self, fake_openai: FakeOpenAI) -> None:
        """Without ``stream`` the answer is one chat.completion with usage."""
        conn, response = _post(fake_openai, _chat("hi"))
        body = json.loads(response.read())
        conn.close()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello, world!"}
        assert body["usage"]["completion_tokens"] == 4

    @pytest.mark.parametrize(("method", "path"), [("GET", "/version"), ("GET", "/v1/models")])
    def test_unknown_paths_are_404(self, fake_openai: FakeOpenAI, method: str, path: str) -> None:
        """Paths other than chat completions answer 404 (mellea's /version probe among them)."""
        conn = http.client.HTTPConnection(fake_openai.host, fake_openai.port, timeout=5)
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 404
        assert fake_openai.requests[-1].path == path

    def test_urls(self, fake_openai: FakeOpenAI) -> None:
        """``base_url`` is the root URL plus ``v1``, on the bound loopback port."""
        assert fake_openai.port > 0
        assert fake_openai.url == f"http://127.0.0.1:{fake_openai.port}/"
        assert fake_openai.base_url == f"{fake_openai.url}v1"


@pytest.mark.mellea
class TestWithMellea:
    """A real mellea session, with its OpenAI backend, streams from the server."""

    @pytest.fixture
    def session(self, fake_openai: FakeOpenAI) -> Iterator[Any]:
        """A mellea session on the OpenAI backend pointed at the fake server."""
        pytest.importorskip("mellea")
        from support.mellea_session import openai_session

        with openai_session(fake_openai.base_url) as session:
            yield session

    def test_streamed_reply(self, fake_openai: FakeOpenAI, session: Any) -> None:
        """A streamed chat reply is the joined chunks, asked for with a usage chunk."""
        from mellea.backends import ModelOption

        reply = session.chat("say hello", model_options={ModelOption.STREAM: True})
        assert reply.content == "Hello, world!"
        (request,) = fake_openai.requests_to("/v1/chat/completions")
        assert request.body["stream"] is True
        assert request.body["stream_options"] == {"include_usage": True}
        assert request.body["model"] == "fake-model"
        assert request.body["messages"][-1] == {"role": "user", "content": "say hello"}
        assert [r.path for r in fake_openai.requests_to("/version")] == ["/version"]

    def test_non_streamed_reply(self, fake_openai: FakeOpenAI, session: Any) -> None:
        """Without STREAM the backend asks for one completion."""
        reply = session.chat("say hello")
        assert reply.content == "Hello, world!"
        (request,) = fake_openai.requests_to("/v1/chat/completions")
        assert "stream" not in request.body

    @pytest.mark.mellea07plus
    def test_stall_hits_mellea_stream_timeout(self, session: Any) -> None:
        """A stall longer than STREAM_TIMEOUT ends in mellea's own TimeoutError."""
        from mellea.backends import ModelOption

        options = {ModelOption.STREAM: True, ModelOption.STREAM_TIMEOUT: HANG / 10}
        with pytest.raises(TimeoutError, match="STREAM_TIMEOUT"):
            session.chat(f"hello [stall:{HANG}]", model_options=options)

    def test_server_error_reaches_the_caller(self, session: Any) -> None:
        """An HTTP 500 surfaces as the OpenAI client's InternalServerError, with no retry."""
        import openai
        from mellea.backends import ModelOption

        with pytest.raises(openai.InternalServerError):
            session.chat("hello [fail:500]", model_options={ModelOption.STREAM: True})

    def test_broken_stream_reaches_the_caller(self, session: Any) -> None:
        """A stream cut mid-body surfaces as the OpenAI client's connection error."""
        import openai
        from mellea.backends import ModelOption

        with pytest.raises(openai.APIConnectionError):
            session.chat("hello [fail-midstream]", model_options={ModelOption.STREAM: True})
