"""Streaming through the real proxy with the official `openai` SDK (and raw httpx where the SDK hides
what matters): chunk structure, usage, `n`, mid-stream failures, client disconnects, concurrency,
time to first byte, and the cumulative `anthropic-version: 2023-01-01` upstream protocol.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.completion import Completion

from tests.conftest import StartProxy
from tests.support.servers import Server, access_line, mock_requests, mock_stats

MODEL = "gpt-4"
UPSTREAM_MODEL = "claude-2.1"
INSTRUCT_MODEL = "gpt-3.5-turbo-instruct"
ECHO_PREFIX = " Hello! I am the mock upstream. You said: "
CHAT_ECHO = ECHO_PREFIX.removeprefix(" ")  # chat content drops the legacy leading space
TIMEOUT = 30.0  # per request: a hanging proxy fails the test instead of blocking the run
POLL_SECONDS = 5.0


# --- helpers ----------------------------------------------------------------------------------------


def tag() -> str:
    """A unique word to put into a prompt, so a test can find its own upstream requests."""
    return f"tag{uuid.uuid4().hex[:16]}"


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages(text), timeout=TIMEOUT, **kwargs)


def chat_chunks(client: openai.OpenAI, text: str, **kwargs: Any) -> list[ChatCompletionChunk]:
    return list(chat(client, text, stream=True, **kwargs))


async def achat_chunks(client: openai.AsyncOpenAI, text: str, **kwargs: Any) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages(text), stream=True, timeout=TIMEOUT, **kwargs
    )
    return [chunk async for chunk in stream]


def texts(chunks: Iterable[ChatCompletionChunk]) -> dict[int, str]:
    """Each choice's reassembled content."""
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            out[choice.index] = out.get(choice.index, "") + (choice.delta.content or "")
    return out


def finishes(chunks: Iterable[ChatCompletionChunk]) -> list[tuple[int, str]]:
    """(index, finish_reason) of every chunk choice that carries a finish_reason, in order."""
    return [(c.index, c.finish_reason) for chunk in chunks for c in chunk.choices if c.finish_reason]


def roles(chunks: Iterable[ChatCompletionChunk]) -> list[tuple[int, int]]:
    """(chunk position, index) of every delta that carries a role."""
    return [(pos, c.index) for pos, chunk in enumerate(chunks) for c in chunk.choices if c.delta.role]


def tokens(count: int) -> str:
    """What `[[mock:tokens=N]]` answers, as chat content (without the legacy leading space)."""
    return "".join(f" tok{i}" for i in range(count)).removeprefix(" ")


def upstream_records(mock: Server, marker: str) -> list[dict[str, Any]]:
    return [
        record
        for record in mock_requests(mock)
        if isinstance(record["body"], dict) and marker in str(record["body"].get("prompt", ""))
    ]


def read_until_error(stream: Iterable[ChatCompletionChunk]) -> tuple[str, openai.APIError]:
    """Consume a stream expected to fail mid-way: (content received before the error, the error)."""
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            for choice in chunk.choices:
                received += choice.delta.content or ""
    error = caught.value
    assert not isinstance(error, openai.APIStatusError), "expected an in-band error, not an HTTP status"
    return received, error


def wait_for_stats(mock: Server, done: Any) -> dict[str, int]:
    """Poll the mock's stream counters until `done(stats)` holds, for at most POLL_SECONDS."""
    deadline = time.monotonic() + POLL_SECONDS
    stats = mock_stats(mock)
    while not done(stats) and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = mock_stats(mock)
    return stats


# --- chat streams ------------------------------------------------------------------------------------


def test_stream_reassembles_to_the_non_stream_text(client: openai.OpenAI) -> None:
    text = f"same either way {tag()}"
    whole = chat(client, text).choices[0].message.content
    assert texts(chat_chunks(client, text)) == {0: whole}
    assert whole == CHAT_ECHO + text


async def test_async_stream_reassembles_to_the_non_stream_text(async_client: openai.AsyncOpenAI) -> None:
    text = f"same either way, async {tag()}"
    whole = await async_client.chat.completions.create(model=MODEL, messages=messages(text), timeout=TIMEOUT)
    chunks = await achat_chunks(async_client, text)
    assert texts(chunks) == {0: whole.choices[0].message.content}
    assert finishes(chunks) == [(0, "stop")]


def test_stream_chunk_structure(client: openai.OpenAI) -> None:
    chunks = chat_chunks(client, f"structure {tag()}")
    assert len(chunks) > 3
    assert roles(chunks) == [(0, 0)]  # the role comes once, in the first chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes(chunks) == [(0, "stop")]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk.model for chunk in chunks} == {UPSTREAM_MODEL}
    assert all(chunk.usage is None for chunk in chunks)


def test_stream_with_a_token_limit_finishes_with_length(client: openai.OpenAI) -> None:
    chunks = chat_chunks(client, f"long {tag()}", max_tokens=3)
    assert texts(chunks)[0].split() == ["Hello!", "I", "am"]
    assert finishes(chunks) == [(0, "length")]


def test_stream_include_usage_adds_one_final_usage_chunk(client: openai.OpenAI) -> None:
    text = f"usage please {tag()}"
    chunks = chat_chunks(client, text, stream_options={"include_usage": True})
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert all(chunk.usage is None for chunk in body)
    assert all(chunk.choices for chunk in body)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage == chat(client, text).usage  # the same estimate as the non-streamed answer


def test_stream_with_n_gives_every_choice_one_role_and_one_finish(client: openai.OpenAI) -> None:
    text = f"three streams {tag()}"
    chunks = chat_chunks(client, text, n=3)
    assert sorted(index for _, index in roles(chunks)) == [0, 1, 2]
    assert sorted(finishes(chunks)) == [(0, "stop"), (1, "stop"), (2, "stop")]
    assert texts(chunks) == {i: CHAT_ECHO + text for i in range(3)}
    for index in range(3):  # within a choice: role first, finish last
        positions = [pos for pos, chunk in enumerate(chunks) for c in chunk.choices if c.index == index]
        assert chunks[positions[0]].choices[0].delta.role == "assistant"
        assert chunks[positions[-1]].choices[0].finish_reason == "stop"


# --- legacy completions stream -----------------------------------------------------------------------


def test_completion_stream_reassembles_to_the_non_stream_text(client: openai.OpenAI) -> None:
    prompt = f"Say hi {tag()}"
    whole: Completion = client.completions.create(model=INSTRUCT_MODEL, prompt=prompt, timeout=TIMEOUT)
    chunks = list(
        client.completions.create(model=INSTRUCT_MODEL, prompt=prompt, stream=True, timeout=TIMEOUT)
    )
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert {chunk.object for chunk in chunks} == {"text_completion"}


# --- the SDK's stream helper --------------------------------------------------------------------------


def test_stream_helper_final_completion(client: openai.OpenAI) -> None:
    text = f"helper {tag()}"
    with client.chat.completions.stream(model=MODEL, messages=messages(text), timeout=TIMEOUT) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == CHAT_ECHO + text == "".join(deltas)
    assert choice.finish_reason == "stop"


async def test_stream_helper_final_completion_async(async_client: openai.AsyncOpenAI) -> None:
    text = f"helper async {tag()}"
    async with async_client.chat.completions.stream(
        model=MODEL, messages=messages(text), timeout=TIMEOUT
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == CHAT_ECHO + text
    assert choice.finish_reason == "stop"


# --- failures ----------------------------------------------------------------------------------------


def test_mid_stream_upstream_error_raises_after_content(client: openai.OpenAI) -> None:
    stream = chat(client, "[[mock:stream_error_after=3]][[mock:message=Upstream fell over]]", stream=True)
    received, error = read_until_error(stream)
    assert received == "Hello! I am"
    assert error.message == "Upstream fell over"
    assert error.code == "overloaded_error"


async def test_mid_stream_upstream_error_raises_after_content_async(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model=MODEL,
        messages=messages("[[mock:stream_error_after=3]][[mock:message=Upstream fell over]]"),
        stream=True,
        timeout=TIMEOUT,
    )
    received = ""
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received += "".join(c.delta.content or "" for c in chunk.choices)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert received == "Hello! I am"
    assert caught.value.message == "Upstream fell over"


def test_upstream_error_before_the_first_token_is_a_plain_http_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, f"refused {tag()} [[mock:status=400]][[mock:message=Bad prompt]]", stream=True)
    assert caught.value.status_code == 400
    assert caught.value.request_id
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == "Bad prompt"
    assert caught.value.response.headers["content-type"].startswith("application/json")


def test_dropped_upstream_connection_raises_mid_stream(client: openai.OpenAI) -> None:
    stream = chat(client, f"drop {tag()} [[mock:drop_connection_after=2]]", stream=True)
    received, error = read_until_error(stream)
    assert received == "Hello! I"
    assert error.code == "upstream_connection_error"
    assert "lost mid-stream" in error.message


# --- client disconnect, concurrency, latency ----------------------------------------------------------


def test_client_disconnect_closes_the_upstream_stream(proxy: Server, mock_upstream: Server) -> None:
    wait_for_stats(mock_upstream, lambda s: s["active_streams"] == 0)  # let earlier tests' streams settle
    before = mock_stats(mock_upstream)
    body = {
        "model": MODEL,
        "stream": True,
        "messages": messages("[[mock:tokens=200]][[mock:token_delay_ms=50]]"),
    }
    with (
        httpx.Client(timeout=TIMEOUT) as http,
        http.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        # Keep the iterator referenced: a dropped line generator would close the connection by itself.
        lines = response.iter_lines()
        chunks = [next(line for line in lines if line.startswith("data: ")) for _ in range(2)]
        assert '"content":"tok0"' in chunks[1]
        assert mock_stats(mock_upstream)["active_streams"] == before["active_streams"] + 1
    # Leaving the block closed the response. 200 tokens at 50 ms would take 10 s: the mock must see
    # its stream cancelled within the polling bound.
    stats = wait_for_stats(
        mock_upstream,
        lambda s: (
            s["cancelled_streams"] >= before["cancelled_streams"] + 1
            and s["active_streams"] <= before["active_streams"]
        ),
    )
    assert stats["cancelled_streams"] == before["cancelled_streams"] + 1, stats
    assert stats["active_streams"] == before["active_streams"], stats
    assert stats["completed_streams"] == before["completed_streams"], stats


def abandon(proxy: Server, body: dict[str, Any], request_id: str) -> None:
    """Send a request and give up on it after 0.5 s, closing the connection."""
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=httpx.Timeout(30.0, read=0.5)) as http:
        http.post(f"{proxy.base_url}/v1/chat/completions", json=body, headers={"x-request-id": request_id})


def test_client_leaving_before_the_first_event_closes_the_upstream(
    proxy: Server, mock_upstream: Server
) -> None:
    """The upstream phase (before any byte was sent) is cancelled as soon as the client goes away."""
    wait_for_stats(mock_upstream, lambda s: s["active_streams"] == 0)
    before = mock_stats(mock_upstream)
    request_id = tag()
    body = {"model": MODEL, "stream": True, "messages": messages("[[mock:first_token_delay_ms=8000]]")}
    abandon(proxy, body, request_id)
    # Without the cancellation the mock would finish this stream after 8 s and count it as completed.
    stats = wait_for_stats(mock_upstream, lambda s: s["cancelled_streams"] >= before["cancelled_streams"] + 1)
    assert stats["completed_streams"] == before["completed_streams"], stats
    line = access_line(proxy, request_id)
    assert line["status"] == 499 and line["client_disconnected"] is True, line


def test_client_leaving_a_non_streamed_request_is_logged_promptly(proxy: Server) -> None:
    request_id = tag()
    body = {"model": MODEL, "messages": messages("[[mock:tokens=8]][[mock:token_delay_ms=1000]]")}
    abandon(proxy, body, request_id)
    line = access_line(proxy, request_id)
    assert line["status"] == 499 and line["client_disconnected"] is True, line
    assert line["latency_ms"] < 4000, line  # cancelled, not waited for: the upstream answer takes 8 s


async def test_fifty_concurrent_streams(async_client: openai.AsyncOpenAI) -> None:
    count, length = 50, 30

    async def one(i: int) -> list[ChatCompletionChunk]:
        return await achat_chunks(
            async_client, f"stream {i} [[mock:tokens={length}]][[mock:token_delay_ms=5]]"
        )

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout=60)
    assert len(results) == count
    for chunks in results:
        assert texts(chunks) == {0: tokens(length)}
        assert finishes(chunks) == [(0, "stop")]
        assert roles(chunks) == [(0, 0)]
    assert len({chunks[0].id for chunks in results}) == count


def test_time_to_first_byte_does_not_depend_on_answer_length(client: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = chat(client, "[[mock:tokens=40]][[mock:token_delay_ms=50]]", stream=True)
    arrivals: list[float] = []
    received = ""
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append(time.monotonic() - started)
                received += choice.delta.content
    assert received == tokens(40)
    # The upstream needs 40 x 50 ms = 2 s for the whole answer; the first piece must not wait for it.
    assert arrivals[0] < 1.0, arrivals
    assert arrivals[-1] >= 1.9, arrivals
    assert arrivals[-1] - arrivals[0] >= 1.5, arrivals


# --- anthropic-version 2023-01-01 (cumulative upstream stream) ----------------------------------------


def test_legacy_anthropic_version_gives_the_same_text(
    start_proxy: StartProxy, client: openai.OpenAI, mock_upstream: Server
) -> None:
    marker = tag()
    text = f"old protocol {marker}"
    expected = chat(client, text).choices[0].message.content  # through the default 2023-06-01 proxy
    limited = texts(chat_chunks(client, f"{text} [[mock:tokens=9]]", max_tokens=5))
    with (
        start_proxy(env={"ANTHROPIC_VERSION": "2023-01-01"}) as server,
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as legacy,
    ):
        assert chat(legacy, text).choices[0].message.content == expected
        chunks = chat_chunks(legacy, text)
        assert texts(chunks) == {0: expected}
        assert finishes(chunks) == [(0, "stop")]
        assert roles(chunks) == [(0, 0)]
        legacy_limited = chat_chunks(legacy, f"{text} [[mock:tokens=9]]", max_tokens=5)
        assert texts(legacy_limited) == limited == {0: tokens(5)}
        assert finishes(legacy_limited) == [(0, "length")]
    versions = [record["headers"]["anthropic-version"] for record in upstream_records(mock_upstream, marker)]
    assert sorted(versions) == ["2023-01-01"] * 3 + ["2023-06-01"] * 2
