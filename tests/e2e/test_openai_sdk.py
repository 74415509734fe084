"""The official `openai` SDK against the real proxy and the real mock upstream: non-streamed chat and
completions, the mapping of every parameter onto the upstream body, error classes, and retries.

Streaming is in `test_streaming.py`. Every test puts a unique tag into its prompt so that it can find
its own upstream requests among everything the session-wide mock has recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion

from tests.conftest import GOOD_UPSTREAM_KEY, SERVER_KEY, StartProxy
from tests.support.servers import Server, mock_requests
from tests.support.upstream import UPSTREAM_FIELDS

MODEL = "gpt-4"
UPSTREAM_MODEL = "claude-2.1"
INSTRUCT_MODEL = "gpt-3.5-turbo-instruct"
INSTRUCT_UPSTREAM_MODEL = "claude-instant-1.2"
ECHO_PREFIX = " Hello! I am the mock upstream. You said: "
CHAT_ECHO = ECHO_PREFIX.removeprefix(" ")  # chat content drops the legacy leading space
TIMEOUT = 30.0  # per request: a hanging proxy fails the test instead of blocking the run


# --- helpers ----------------------------------------------------------------------------------------


def tag() -> str:
    """A unique word to put into a prompt, so a test can find its own upstream requests."""
    return f"tag{uuid.uuid4().hex[:16]}"


def chat(client: openai.OpenAI, text: str, **kwargs: Any) -> ChatCompletion:
    """One user message to the default model, non-streamed."""
    return client.chat.completions.create(
        model=kwargs.pop("model", MODEL),
        messages=[{"role": "user", "content": text}],
        timeout=TIMEOUT,
        **kwargs,
    )


async def achat(client: openai.AsyncOpenAI, text: str, **kwargs: Any) -> ChatCompletion:
    return await client.chat.completions.create(
        model=kwargs.pop("model", MODEL),
        messages=[{"role": "user", "content": text}],
        timeout=TIMEOUT,
        **kwargs,
    )


def complete(client: openai.OpenAI, prompt: str | list[str], **kwargs: Any) -> Completion:
    return client.completions.create(model=INSTRUCT_MODEL, prompt=prompt, timeout=TIMEOUT, **kwargs)


def upstream_records(mock: Server, marker: str) -> list[dict[str, Any]]:
    """Every request the mock received whose prompt contains `marker`, oldest first."""
    return [
        record
        for record in mock_requests(mock)
        if isinstance(record["body"], dict) and marker in str(record["body"].get("prompt", ""))
    ]


def upstream_bodies(mock: Server, marker: str) -> list[dict[str, Any]]:
    return [record["body"] for record in upstream_records(mock, marker)]


def only_upstream_body(mock: Server, marker: str) -> dict[str, Any]:
    bodies = upstream_bodies(mock, marker)
    assert len(bodies) == 1, bodies
    return bodies[0]


def assert_no_server_key(response: httpx.Response | Any) -> None:
    """The proxy's own upstream key must never reach a client, in the body or in a header."""
    assert SERVER_KEY not in response.text
    assert all(SERVER_KEY not in value for value in response.headers.values())


def assert_api_error(error: openai.APIStatusError, status: int) -> None:
    """What every error response must carry: its status, a request id, and no secret."""
    assert error.status_code == status
    assert error.request_id, "the SDK exception has no request_id (x-request-id header missing)"
    assert_no_server_key(error.response)


def check_chat_completion(completion: ChatCompletion, said: str) -> None:
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert isinstance(completion.created, int)
    assert completion.model == UPSTREAM_MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == CHAT_ECHO + said
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"


@pytest.fixture
def passthrough_client(passthrough_proxy: Server) -> Iterator[openai.OpenAI]:
    """An SDK client for the pass-through proxy; tests set the key with `with_options(api_key=...)`."""
    with openai.OpenAI(base_url=f"{passthrough_proxy.base_url}/v1", api_key="unset", max_retries=0) as sdk:
        yield sdk


# --- chat, non-streamed -------------------------------------------------------------------------------


def test_chat_completion_fields(client: openai.OpenAI) -> None:
    said = f"hello {tag()}"
    check_chat_completion(chat(client, said), said)


async def test_chat_completion_fields_async(async_client: openai.AsyncOpenAI) -> None:
    said = f"hello async {tag()}"
    check_chat_completion(await achat(async_client, said), said)


def test_chat_usage_is_consistent(client: openai.OpenAI) -> None:
    usage = chat(client, f"count me {tag()}").usage
    assert usage is not None
    assert all(isinstance(v, int) for v in (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_token_limit_gives_finish_reason_length(
    client: openai.OpenAI, mock_upstream: Server, limit: str
) -> None:
    marker = tag()
    completion = chat(client, f"a long answer please {marker}", **{limit: 3})
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content is not None
    assert choice.message.content.split() == ["Hello!", "I", "am"]
    assert only_upstream_body(mock_upstream, marker)["max_tokens_to_sample"] == 3


def test_stop_sequence_cuts_the_answer_and_goes_upstream(
    client: openai.OpenAI, mock_upstream: Server
) -> None:
    marker = tag()
    completion = chat(client, f"hi {marker}", stop=["mock"])
    assert completion.choices[0].message.content == "Hello! I am the"
    assert completion.choices[0].finish_reason == "stop"
    assert only_upstream_body(mock_upstream, marker)["stop_sequences"] == ["mock"]


def test_n_gives_n_choices_from_n_upstream_calls(client: openai.OpenAI, mock_upstream: Server) -> None:
    marker = tag()
    completion = chat(client, f"three times {marker}", n=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    for choice in completion.choices:
        assert choice.message.content == f"{CHAT_ECHO}three times {marker}"
        assert choice.finish_reason == "stop"
    assert len(upstream_bodies(mock_upstream, marker)) == 3


def test_user_becomes_upstream_metadata_user_id(client: openai.OpenAI, mock_upstream: Server) -> None:
    marker = tag()
    chat(client, f"who am I {marker}", user="u1")
    assert only_upstream_body(mock_upstream, marker)["metadata"] == {"user_id": "u1"}


@pytest.mark.parametrize(("sent", "upstream"), [(1.7, 1), (0.3, 0.3)])
def test_temperature_is_clamped_to_the_upstream_range(
    client: openai.OpenAI, mock_upstream: Server, sent: float, upstream: float
) -> None:
    marker = tag()
    chat(client, f"warm {marker}", temperature=sent)
    assert only_upstream_body(mock_upstream, marker)["temperature"] == pytest.approx(upstream)


def test_unsupported_and_unknown_fields_never_reach_the_upstream(
    client: openai.OpenAI, mock_upstream: Server
) -> None:
    marker = tag()
    completion = chat(
        client,
        f"extras {marker}",
        presence_penalty=0.5,
        seed=1,
        store=True,
        metadata={"purpose": "test"},
        extra_body={"foo": 1},
    )
    assert completion.choices[0].message.content == f"{CHAT_ECHO}extras {marker}"
    body = only_upstream_body(mock_upstream, marker)
    assert set(body) <= UPSTREAM_FIELDS
    assert "metadata" not in body  # the OpenAI `metadata` is not the upstream's, and no user was given


def test_chat_messages_become_the_exact_legacy_prompt(client: openai.OpenAI, mock_upstream: Server) -> None:
    marker = tag()
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": f"You are terse. {marker}"},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
        ],
        timeout=TIMEOUT,
    )
    body = only_upstream_body(mock_upstream, marker)
    assert body["prompt"] == (
        f"You are terse. {marker}\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:"
    )
    assert body["model"] == UPSTREAM_MODEL


# --- legacy completions, non-streamed ----------------------------------------------------------------


def test_completion_with_a_string_prompt(client: openai.OpenAI, mock_upstream: Server) -> None:
    marker = tag()
    completion = complete(client, f"Say hi {marker}")
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion"
    assert completion.model == INSTRUCT_UPSTREAM_MODEL
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, f"{ECHO_PREFIX}Say hi {marker}", "stop")
    ]
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert only_upstream_body(mock_upstream, marker)["prompt"] == f"\n\nHuman: Say hi {marker}\n\nAssistant:"


def test_completion_with_several_prompts_and_n_is_prompt_major(
    client: openai.OpenAI, mock_upstream: Server
) -> None:
    marker = tag()
    prompts = [f"first {marker}", f"second {marker}", f"third {marker}"]
    n = 2
    completion = complete(client, prompts, n=n)
    assert [choice.index for choice in completion.choices] == list(range(len(prompts) * n))
    for choice in completion.choices:
        assert choice.text == ECHO_PREFIX + prompts[choice.index // n]
    assert len(upstream_bodies(mock_upstream, marker)) == len(prompts) * n


def test_completion_echo_prepends_the_prompt(client: openai.OpenAI) -> None:
    prompt = f"Echo this {tag()}"
    completion = complete(client, prompt, echo=True)
    assert completion.choices[0].text == prompt + ECHO_PREFIX + prompt


def test_completion_suffix_is_rejected(client: openai.OpenAI, mock_upstream: Server) -> None:
    marker = tag()
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, f"def f({marker}):", suffix="    return 1")
    assert_api_error(caught.value, 400)
    assert caught.value.param == "suffix"
    assert upstream_bodies(mock_upstream, marker) == []


# --- errors ------------------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, "hi", model="no-such-model")
    assert_api_error(caught.value, 404)
    assert caught.value.code == "model_not_found"


def test_invalid_temperature_names_the_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "hi", temperature=5)
    assert_api_error(caught.value, 400)
    assert caught.value.param == "temperature"


async def test_errors_raise_the_same_classes_with_the_async_client(async_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await achat(async_client, "hi", model="no-such-model")
    assert_api_error(not_found.value, 404)
    with pytest.raises(openai.BadRequestError) as bad_request:
        await achat(async_client, "hi", temperature=5)
    assert_api_error(bad_request.value, 400)
    assert bad_request.value.param == "temperature"


def test_upstream_rate_limit_is_a_rate_limit_error_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, f"busy {tag()} [[mock:status=429]][[mock:retry_after=1]]")
    assert_api_error(caught.value, 429)
    assert caught.value.response.headers.get("retry-after") == "1"


def test_upstream_overloaded_is_a_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client, f"overloaded {tag()} [[mock:status=529]]")
    assert_api_error(caught.value, 503)


def test_upstream_rejecting_the_server_key_is_a_non_retryable_5xx(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client, f"auth {tag()} [[mock:status=401]]")
    assert 500 <= caught.value.status_code < 600
    assert_api_error(caught.value, caught.value.status_code)
    assert caught.value.response.headers.get("x-should-retry") == "false"


def test_passthrough_with_a_wrong_key_is_an_authentication_error(passthrough_client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(passthrough_client.with_options(api_key="sk-ant-wrong"), "hi")
    assert_api_error(caught.value, 401)
    assert caught.value.code == "invalid_api_key"


def test_passthrough_with_the_right_key_succeeds(
    passthrough_client: openai.OpenAI, keyed_mock: Server
) -> None:
    said = f"pass me through {tag()}"
    completion = chat(passthrough_client.with_options(api_key=GOOD_UPSTREAM_KEY), said)
    check_chat_completion(completion, said)
    [record] = upstream_records(keyed_mock, said)
    assert record["headers"]["x-api-key"] == GOOD_UPSTREAM_KEY


def test_passthrough_without_any_key_is_a_401_envelope(passthrough_proxy: Server) -> None:
    response = httpx.post(
        f"{passthrough_proxy.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=TIMEOUT,
    )
    assert response.status_code == 401
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "API key" in error["message"]


# --- retries -----------------------------------------------------------------------------------------


def test_transient_upstream_failures_are_retried(client: openai.OpenAI, mock_upstream: Server) -> None:
    fail_id = uuid.uuid4().hex
    completion = chat(client, f"retry me [[mock:status=529]][[mock:fail_times=2]][[mock:fail_id={fail_id}]]")
    assert completion.choices[0].message.content == f"{CHAT_ECHO}retry me"
    assert len(upstream_bodies(mock_upstream, fail_id)) == 3


def test_client_errors_are_not_retried(client: openai.OpenAI, mock_upstream: Server) -> None:
    marker = tag()
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, f"bad {marker} [[mock:status=400]]")
    assert_api_error(caught.value, 400)
    assert len(upstream_bodies(mock_upstream, marker)) == 1


def test_without_retries_the_client_gets_the_503(start_proxy: StartProxy, mock_upstream: Server) -> None:
    fail_id = uuid.uuid4().hex
    with (
        start_proxy(env={"PROXY_UPSTREAM__MAX_RETRIES": "0"}) as server,
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as sdk,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        chat(sdk, f"no retry [[mock:status=529]][[mock:fail_times=2]][[mock:fail_id={fail_id}]]")
    assert_api_error(caught.value, 503)
    assert len(upstream_bodies(mock_upstream, fail_id)) == 1


def test_a_stream_failing_before_its_first_token_is_retried(
    client: openai.OpenAI, mock_upstream: Server
) -> None:
    marker = tag()
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client, f"fail early {marker} [[mock:stream_error_after=0]]", stream=True)
    # Nothing had been sent to the client, so the proxy retried (1 + max_retries=2 attempts), then
    # answered with a plain HTTP error rather than a 200 stream.
    assert_api_error(caught.value, 503)
    assert len(upstream_bodies(mock_upstream, marker)) == 3


# --- secrets (last: it also checks the log of everything above) --------------------------------------


def test_the_server_key_never_reaches_clients_or_the_log(proxy: Server) -> None:
    requests = [
        {"model": MODEL, "messages": [{"role": "user", "content": f"ok {tag()}"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": f"ok {tag()}"}], "stream": True},
        {"model": MODEL, "messages": [{"role": "user", "content": "denied [[mock:status=401]]"}]},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "denied [[mock:status=401]]"}],
            "stream": True,
        },
        {"model": MODEL, "messages": [{"role": "user", "content": "forbidden [[mock:status=403]]"}]},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "oops [[mock:stream_error_after=1]]"}],
            "stream": True,
        },
    ]
    with httpx.Client(base_url=proxy.base_url, timeout=TIMEOUT) as http:
        for body in requests:
            assert_no_server_key(http.post("/v1/chat/completions", json=body))
        assert_no_server_key(http.get("/v1/models"))
    assert proxy.log(), "the proxy wrote no log at all"
    assert SERVER_KEY not in proxy.log()
