"""`/v1/responses` over real HTTP with the official `openai` SDK (and raw httpx for the wire): create,
stream with the full event lifecycle, the stream helper, stored responses and `previous_response_id`,
ownership by key, the errors OpenAI gives, and the store shared by two replicas through Redis."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import StartProxy, redis_replicas
from tests.support.redis import RedisServer
from tests.support.servers import Server, mock_requests

MODEL = "claude-2.1"


def tag() -> str:
    return f"resp{uuid.uuid4().hex[:12]}"


def sdk(server: Server, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def upstream_prompt(mock: Server, word: str) -> str:
    prompts = [str(r["body"]["prompt"]) for r in mock_requests(mock) if word in str(r["body"].get("prompt"))]  # type: ignore[index]
    assert prompts, f"no upstream request with {word}"
    return prompts[-1]


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) pairs of a Responses stream, checking the framing as OpenAI sends it."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        events.append((name_line[7:], data))
    return events


def test_create_returns_a_response_object(proxy: Server) -> None:
    word = tag()
    response = sdk(proxy).responses.create(model=MODEL, input=f"Hello {word}", instructions="Be brief.")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert word in response.output_text
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    assert response.usage is not None and response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )
    assert response.instructions == "Be brief." and response.store is True


def test_the_stream_has_the_whole_lifecycle_with_sequence_numbers(proxy: Server) -> None:
    body = {"model": MODEL, "input": "[[mock:tokens=6]] go", "stream": True}
    with httpx.Client(timeout=30, headers={"authorization": "Bearer k"}) as http:
        raw = http.post(f"{proxy.base_url}/v1/responses", json=body).content
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert deltas and all(d["logprobs"] == [] for d in deltas)
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "".join(
        d["delta"] for d in deltas
    )
    assert b"[DONE]" not in raw


def test_the_sdk_stream_helper_gives_the_final_response(proxy: Server) -> None:
    word = tag()
    with sdk(proxy).responses.stream(model=MODEL, input=f"stream {word}") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.status == "completed" and word in final.output_text


def test_max_output_tokens_gives_an_incomplete_response(proxy: Server) -> None:
    client = sdk(proxy)
    response = client.responses.create(model=MODEL, input="[[mock:tokens=60]] long", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    with client.responses.stream(
        model=MODEL, input="[[mock:tokens=60]] long", max_output_tokens=16
    ) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"


def test_previous_response_id_continues_without_the_old_instructions(
    proxy: Server, mock_upstream: Server
) -> None:
    client = sdk(proxy)
    first_word, second_word = tag(), tag()
    first = client.responses.create(model=MODEL, input=f"first {first_word}", instructions="OLD-INSTRUCTIONS")
    second = client.responses.create(
        model=MODEL, input=f"second {second_word}", previous_response_id=first.id, instructions="NEW-ONES"
    )
    assert second.previous_response_id == first.id
    prompt = upstream_prompt(mock_upstream, second_word)
    assert first_word in prompt and first.output_text.strip() in prompt  # both turns of the first exchange
    assert "NEW-ONES" in prompt and "OLD-INSTRUCTIONS" not in prompt
    third = client.responses.create(model=MODEL, input="third", previous_response_id=second.id)
    assert third.status == "completed"


def test_retrieve_input_items_and_delete(proxy: Server) -> None:
    client = sdk(proxy)
    created = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
        ],
    )
    assert client.responses.retrieve(created.id).output_text == created.output_text
    items = client.responses.input_items.list(created.id, order="asc")
    assert [item.role for item in items.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    newest_first = client.responses.input_items.list(created.id)
    assert [item.id for item in newest_first.data] == [item.id for item in items.data][::-1]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_cannot_be_retrieved_or_continued(proxy: Server) -> None:
    client = sdk(proxy)
    unstored = client.responses.create(model=MODEL, input="forget me", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="again", previous_response_id=unstored.id)
    assert raised.value.code == "previous_response_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "max_output_tokens": 15}, "max_output_tokens"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "background": True}, "background"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, None),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].id"),  # no such stored item
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": 7}, None),
        ({"input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id"),
    ],
)
def test_what_cannot_be_done_is_a_clear_400(proxy: Server, body: dict[str, Any], param: str | None) -> None:
    with httpx.Client(timeout=30, headers={"authorization": "Bearer k"}) as http:
        response = http.post(f"{proxy.base_url}/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_upstream_failures_before_and_after_the_first_byte(proxy: Server) -> None:
    client = sdk(proxy)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=MODEL, input="[[mock:status=429]] x")
    body = {"model": MODEL, "stream": True, "input": "[[mock:tokens=6]][[mock:stream_error_after=3]] x"}
    with httpx.Client(timeout=30) as http:
        events = sse_events(http.post(f"{proxy.base_url}/v1/responses", json=body).content)
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed" and data["response"]["error"]["code"] == "server_error"
    assert "response.completed" not in [n for n, _ in events]


def test_other_openai_capabilities_say_the_upstream_has_none(proxy: Server) -> None:
    client = sdk(proxy)
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert raised.value.code == "unsupported_endpoint" and "embeddings" in raised.value.message
    with httpx.Client(timeout=30) as http:
        for method, path in [
            ("POST", "/v1/images/generations"),
            ("GET", "/v1/files"),
            ("POST", "/v1/moderations"),
        ]:
            response = http.request(method, f"{proxy.base_url}{path}")
            assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_endpoint"


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_a_stored_response_belongs_to_its_key(start_proxy: StartProxy) -> None:
    config = {
        "auth": {
            "keys": [{"name": "a", "key_sha256": sha("key-a")}, {"name": "b", "key_sha256": sha("key-b")}]
        }
    }
    with start_proxy(config=config) as server:
        mine = sdk(server, "key-a").responses.create(model=MODEL, input="private")
        other = sdk(server, "key-b")
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(mine.id)
        with pytest.raises(openai.BadRequestError):
            other.responses.create(model=MODEL, input="steal", previous_response_id=mine.id)
        assert sdk(server, "key-a").responses.retrieve(mine.id).id == mine.id


@pytest.fixture
def two_replicas(
    mock_upstream: Server, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Server, Server]]:
    with redis_replicas(mock_upstream, redis_server, tmp_path) as servers:
        yield servers


def test_any_replica_continues_a_conversation_through_redis(
    two_replicas: tuple[Server, Server], mock_upstream: Server
) -> None:
    a, b = two_replicas
    word = tag()
    first = sdk(a).responses.create(model=MODEL, input=f"remember {word}")
    assert sdk(b).responses.retrieve(first.id).output_text == first.output_text
    second = sdk(b).responses.create(model=MODEL, input="what did I say?", previous_response_id=first.id)
    assert second.status == "completed"
    assert word in upstream_prompt(mock_upstream, "what did I say?")


def test_fields_the_upstream_cannot_honour_follow_the_chat_policy(start_proxy: StartProxy) -> None:
    body = {"model": MODEL, "input": "x", "reasoning": {"effort": "high"}, "service_tier": "flex"}
    with httpx.Client(timeout=30) as http:
        with start_proxy() as dropping:  # the default policy: dropped, answered
            assert http.post(f"{dropping.base_url}/v1/responses", json=body).status_code == 200
        with start_proxy(env={"PROXY_GENERATION__UNSUPPORTED_PARAMS": "reject"}) as rejecting:
            refused = http.post(f"{rejecting.base_url}/v1/responses", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_parameter"
