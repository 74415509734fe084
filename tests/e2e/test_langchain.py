"""LangChain's OpenAI integrations (`ChatOpenAI` and the legacy `OpenAI` LLM) pointed at the real proxy."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI, OpenAI

from tests.support.servers import Server

ECHO_PREFIX = " Hello! I am the mock upstream. You said: "
CHAT_ECHO = ECHO_PREFIX.removeprefix(" ")  # chat content drops the legacy leading space
TIMEOUT = 30.0


def tag() -> str:
    return f"tag{uuid.uuid4().hex[:16]}"


def chat_model_for(proxy: Server, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{proxy.base_url}/v1", api_key="x", model="gpt-4", max_retries=0, timeout=TIMEOUT, **kwargs
    )


@pytest.fixture
def chat_model(proxy: Server) -> ChatOpenAI:
    return chat_model_for(proxy)


@pytest.fixture
async def async_chat_model(proxy: Server) -> AsyncIterator[ChatOpenAI]:
    """langchain-openai caches one default async HTTP client per process, but every async test has its
    own event loop; a pooled connection from an earlier test's (closed) loop would break this one. So
    each async test gets its own HTTP client, closed with the test's loop."""
    async with openai.DefaultAsyncHttpxClient(timeout=TIMEOUT) as http:
        yield chat_model_for(proxy, http_async_client=http)


@pytest.fixture
def llm(proxy: Server) -> OpenAI:
    return OpenAI(
        base_url=f"{proxy.base_url}/v1",
        api_key="x",
        model="gpt-3.5-turbo-instruct",
        max_retries=0,
        timeout=TIMEOUT,
    )


def joined(chunks: Iterable[AIMessageChunk]) -> str:
    return "".join(str(chunk.content) for chunk in chunks)


def check_message(message: AIMessage, said: str) -> None:
    assert isinstance(message, AIMessage)
    assert message.content == CHAT_ECHO + said
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == "claude-2.1"
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_invoke(chat_model: ChatOpenAI) -> None:
    said = f"hello langchain {tag()}"
    check_message(chat_model.invoke(said), said)


async def test_ainvoke(async_chat_model: ChatOpenAI) -> None:
    said = f"hello async langchain {tag()}"
    check_message(await async_chat_model.ainvoke(said), said)


def test_stream_reassembles_to_the_invoke_text(chat_model: ChatOpenAI) -> None:
    said = f"stream me {tag()}"
    chunks = list(chat_model.stream(said))
    assert len(chunks) > 3
    assert joined(chunks) == chat_model.invoke(said).content
    finish = [
        c.response_metadata["finish_reason"] for c in chunks if c.response_metadata.get("finish_reason")
    ]
    assert finish == ["stop"]


async def test_astream_gives_the_answer_text(async_chat_model: ChatOpenAI) -> None:
    said = f"astream me {tag()}"
    chunks = [chunk async for chunk in async_chat_model.astream(said)]
    assert joined(chunks) == CHAT_ECHO + said


def test_stream_usage_matches_the_non_stream_usage(chat_model: ChatOpenAI) -> None:
    said = f"count my tokens {tag()}"
    chunks = list(chat_model.stream(said, stream_usage=True))
    with_usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert len(with_usage) == 1, with_usage
    expected = chat_model.invoke(said).usage_metadata
    assert expected is not None
    streamed = with_usage[0]
    assert (streamed["input_tokens"], streamed["output_tokens"], streamed["total_tokens"]) == (
        expected["input_tokens"],
        expected["output_tokens"],
        expected["total_tokens"],
    )
    assert joined(chunks) == CHAT_ECHO + said


def test_legacy_llm_generate_with_n_groups_choices_by_prompt(llm: OpenAI) -> None:
    marker = tag()
    prompts = [f"a {marker}", f"b {marker}", f"c {marker}"]
    result = llm.generate(prompts, n=2)
    assert len(result.generations) == 3
    for prompt, group in zip(prompts, result.generations, strict=True):
        assert [generation.text for generation in group] == [ECHO_PREFIX + prompt] * 2
        assert all(g.generation_info and g.generation_info["finish_reason"] == "stop" for g in group)
    assert result.llm_output is not None
    usage = result.llm_output["token_usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
