"""The official `anthropic` SDK (0.125.0, the last with `completions`) against the mock.

If the real client library parses our responses, streams and errors the way it parsed the real API's,
the mock is a credible stand-in for the upstream in every other test.
"""

from __future__ import annotations

import functools

import anthropic
import httpx
import pytest
from anthropic import Stream
from anthropic.types import Completion

from tests.mock.helpers import ACCEPTED_KEY
from tests.support.servers import Server, mock_requests

PROMPT = f"{anthropic.HUMAN_PROMPT} hi{anthropic.AI_PROMPT}"
ECHO = " Hello! I am the mock upstream. You said: hi"


@functools.cache
def http_client() -> httpx.Client:
    """The HTTP client the SDK would build for itself, built once: each costs ~20 ms of CPU (its TLS
    context), and these tests make over a dozen SDK clients."""
    return anthropic.DefaultHttpxClient()


def client(server: Server, api_key: str = "k") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.base_url, api_key=api_key, max_retries=0, timeout=10, http_client=http_client()
    )


def create(server: Server, text: str = " hi", **kwargs: object) -> Completion:
    prompt = f"{anthropic.HUMAN_PROMPT}{text}{anthropic.AI_PROMPT}"
    fields: dict[str, object] = {"model": "claude-2.1", "max_tokens_to_sample": 50, **kwargs}
    return client(server).completions.create(prompt=prompt, **fields)  # type: ignore[call-overload,no-any-return]


def create_stream(server: Server, text: str, **kwargs: object) -> Stream[Completion]:
    prompt = f"{anthropic.HUMAN_PROMPT}{text}{anthropic.AI_PROMPT}"
    fields: dict[str, object] = {"model": "claude-2.1", "max_tokens_to_sample": 50, **kwargs}
    return client(server).completions.create(prompt=prompt, stream=True, **fields)  # type: ignore[call-overload,no-any-return]


def test_sdk_version_still_has_completions() -> None:
    assert anthropic.__version__ == "0.125.0"


def test_non_stream_completion(mock: Server) -> None:
    completion = client(mock).completions.create(model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=50)
    assert isinstance(completion, Completion)
    assert completion.type == "completion"
    assert completion.id.startswith("compl_")
    assert completion.completion == ECHO
    assert completion.stop_reason == "stop_sequence"
    assert completion.model == "claude-2.1"
    assert completion._request_id is not None and completion._request_id.startswith("req_")


def test_sdk_request_is_what_the_mock_validates(fresh_mock: Server) -> None:
    create(fresh_mock, temperature=0.5, top_k=3, top_p=0.9, stop_sequences=["X"], metadata={"user_id": "u"})
    (record,) = mock_requests(fresh_mock)
    headers = record["headers"]
    assert isinstance(headers, dict)
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-api-key"] == "k"


def test_stream_reassembles_to_non_stream_text(mock: Server) -> None:
    events = list(
        client(mock).completions.create(
            model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=50, stream=True
        )
    )
    assert all(isinstance(event, Completion) for event in events)
    assert len(events) > 3  # really incremental
    *partial, final = events
    assert all(event.stop_reason is None for event in partial)
    assert final.stop_reason == "stop_sequence"
    assert final.completion == ""
    assert "".join(event.completion for event in events) == ECHO
    assert len({event.id for event in events}) == 1


def test_stream_max_tokens(mock: Server) -> None:
    events = list(create_stream(mock, " [[mock:tokens=10]]", max_tokens_to_sample=3))
    assert [e.completion for e in events] == [" tok0", " tok1", " tok2", ""]
    assert events[-1].stop_reason == "max_tokens"


async def test_async_client(mock: Server) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=mock.base_url, api_key="k", max_retries=0, timeout=10
    ) as aclient:
        completion = await aclient.completions.create(
            model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=50
        )
        assert completion.completion == ECHO
        stream = await aclient.completions.create(
            model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=50, stream=True
        )
        parts = [event async for event in stream]
    assert "".join(p.completion for p in parts) == ECHO
    assert parts[-1].stop_reason == "stop_sequence"


def test_bad_prompt_is_bad_request(mock: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(mock).completions.create(model="claude-2.1", prompt="Hello, world", max_tokens_to_sample=5)
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": 'prompt must start with "\n\nHuman:" turn after an optional system prompt',
        },
        "request_id": info.value.request_id,
    }
    assert info.value.request_id is not None and info.value.request_id.startswith("req_")


def test_missing_assistant_turn_message(mock: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(mock).completions.create(model="claude-2.1", prompt="\n\nHuman: hi", max_tokens_to_sample=5)
    assert info.value.body["error"]["message"] == 'prompt must end with "\n\nAssistant:" turn'  # type: ignore[index]


def test_wrong_key_is_authentication_error(keyed_mock: Server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(keyed_mock, api_key="wrong").completions.create(
            model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=5
        )
    assert info.value.status_code == 401
    ok = client(keyed_mock, api_key=ACCEPTED_KEY).completions.create(
        model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=5
    )
    assert ok.stop_reason == "max_tokens"


def test_auth_token_bearer_is_accepted(keyed_mock: Server) -> None:
    bearer = anthropic.Anthropic(
        base_url=keyed_mock.base_url,
        auth_token=ACCEPTED_KEY,
        max_retries=0,
        timeout=10,
        http_client=http_client(),
    )
    completion = bearer.completions.create(model="claude-2.1", prompt=PROMPT, max_tokens_to_sample=50)
    assert completion.completion == ECHO


def test_unknown_model_is_not_found(mock: Server) -> None:
    with pytest.raises(anthropic.NotFoundError, match="model: claude-next"):
        create(mock, model="claude-next")


def test_claude_3_is_bad_request(mock: Server) -> None:
    with pytest.raises(anthropic.BadRequestError, match="is not supported on this API"):
        create(mock, model="claude-3-opus-20240229")


def test_rate_limit_with_retry_after(mock: Server) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        create(mock, " [[mock:status=429]][[mock:retry_after=7]]")
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_529_is_overloaded_error(mock: Server) -> None:
    with pytest.raises(anthropic.OverloadedError) as info:
        create(mock, " [[mock:status=529]]")
    assert not isinstance(info.value, anthropic.InternalServerError)
    assert info.value.status_code == 529


def test_500_is_internal_server_error(mock: Server) -> None:
    with pytest.raises(anthropic.InternalServerError):
        create(mock, " [[mock:status=500]]")


def test_sdk_retries_succeed_after_fail_times(mock: Server) -> None:
    retrying = anthropic.Anthropic(
        base_url=mock.base_url, api_key="k", max_retries=2, timeout=10, http_client=http_client()
    )
    text = (
        f"{anthropic.HUMAN_PROMPT} [[mock:status=529]][[mock:fail_times=2]][[mock:fail_id=sdk-retry]] "
        f"[[mock:retry_after=0.01]] hi{anthropic.AI_PROMPT}"
    )
    completion = retrying.completions.create(model="claude-2.1", prompt=text, max_tokens_to_sample=50)
    assert completion.completion == ECHO


def test_mid_stream_error_raises_api_status_error(mock: Server) -> None:
    stream = create_stream(mock, " [[mock:tokens=5]][[mock:stream_error_after=2]]")
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in stream:
            received.append(event.completion)
    assert received == [" tok0", " tok1"]
    assert info.value.body == {"error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert info.value.status_code == 200
