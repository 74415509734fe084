"""HTTP endpoints: thin I/O around the pure translation in `proxy.translate`.

Each POST handler: authenticate → parse and validate → plan the upstream calls → run them (all `n`
concurrently) → translate the answers back. Streams are only started once every upstream stream has
produced its first event, so an upstream failure before the first byte is still a plain HTTP error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import OpenAIError
from proxy.gateway import Gateway
from proxy.http.context import RequestLog
from proxy.http.disconnect import cancel_on_disconnect
from proxy.http.pump import StreamResult, pump
from proxy.http.sse_response import EventStreamResponse
from proxy.translate.params import Plan, plan_chat, plan_completion
from proxy.translate.responses import (
    Choice,
    ChunkWriter,
    chat_completion,
    estimate_usage,
    finish_reason,
    new_id,
    text_completion,
)
from proxy.translate.schema import ChatRequest, CompletionRequest
from proxy.translate.validation import parse_body
from proxy.upstream.client import Attempts, UpstreamStream

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). This proxy passes it to Anthropic as x-api-key."
)


def json_response(body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json", headers=headers)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _record(request: Request) -> RequestLog:
    record: RequestLog = request.state.log
    return record


def client_key(request: Request, gateway: Gateway) -> str | None:
    """The client's own upstream key, for pool entries without a key of their own (pass-through)."""
    if not gateway.upstream.pool.needs_client_key():
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if api_key := request.headers.get("x-api-key", "").strip():
        return api_key
    raise OpenAIError(401, MISSING_KEY_MESSAGE, "invalid_request_error")


T = TypeVar("T")


async def _run_all(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the upstream calls concurrently; the first failure cancels the rest and is raised."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except ExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]


async def _serve(request: Request, plan: Plan, chat: bool, key: str | None) -> Response | EventStreamResponse:
    gateway = _gateway(request)
    record = _record(request)
    record.upstream_model, record.stream, record.n = plan.model, plan.stream, plan.n * len(plan.prompts)
    attempts = Attempts()
    started = time.perf_counter()
    try:
        async with cancel_on_disconnect(request.receive):
            if plan.stream:
                streams = await _open_streams(gateway, plan, key, attempts)
            else:
                complete = gateway.upstream.complete
                results = await _run_all([complete(plan.model, body, key, attempts) for body in plan.calls()])
    except OpenAIError as error:
        if error.code == "context_length_exceeded" and error.param is None:
            error.param = "messages" if chat else "prompt"  # as OpenAI reports it
        raise
    finally:
        record.attempts = attempts.count
        # Wall-clock time of the upstream phase: the whole answer, or a stream's first event.
        record.upstream_ms = round((time.perf_counter() - started) * 1000, 2)
        record.upstream_request_id = ",".join(attempts.request_ids) or None
        record.upstream_entry = ",".join(dict.fromkeys(attempts.entries)) or None
    headers = {"x-upstream-request-id": record.upstream_request_id} if record.upstream_request_id else {}
    if plan.stream:
        writer = ChunkWriter(chat=chat, model=plan.model, include_usage=plan.include_usage)
        return EventStreamResponse(_logged_stream(streams, writer, plan, record), headers)
    return json_response(_completion_body(results, plan, chat, record), headers)


def _completion_body(
    results: list[dict[str, Any]], plan: Plan, chat: bool, record: RequestLog
) -> dict[str, Any]:
    """The non-streamed OpenAI body for the upstream answers, one per choice in index order."""
    completions = [str(result.get("completion", "")) for result in results]
    choices = []
    for index, (text, result) in enumerate(zip(completions, results, strict=True)):
        if plan.echo is not None:
            text = plan.echo[index // plan.n] + text
        choices.append(Choice(text, finish_reason(result.get("stop_reason"))))
    totals = estimate_usage(plan.prompts, completions)
    record.prompt_tokens, record.completion_tokens = totals["prompt_tokens"], totals["completion_tokens"]
    build = chat_completion if chat else text_completion
    return build(new_id("chatcmpl-" if chat else "cmpl-"), int(time.time()), plan.model, choices, totals)


async def _open_streams(
    gateway: Gateway, plan: Plan, key: str | None, attempts: Attempts
) -> list[UpstreamStream]:
    """Open every choice's stream; if one fails, close those already open and raise its error."""
    opened: list[UpstreamStream] = []

    async def open_one(body: dict[str, Any]) -> UpstreamStream:
        stream = await gateway.upstream.stream(plan.model, body, key, attempts)
        opened.append(stream)
        return stream

    try:
        return await _run_all([open_one(body) for body in plan.calls()])
    except BaseException:
        await asyncio.gather(*(s.aclose() for s in opened), return_exceptions=True)
        raise


async def _logged_stream(
    streams: list[UpstreamStream], writer: ChunkWriter, plan: Plan, record: RequestLog
) -> AsyncGenerator[bytes, None]:
    """The pump's output, then its token estimates put in the access log."""
    result = StreamResult()
    body = pump(streams, writer, plan.prompts, plan.echo, plan.n, result)
    try:
        async for chunk in body:
            yield chunk
    finally:
        await body.aclose()
        totals = result.usage or estimate_usage(plan.prompts, ["".join(t) for t in result.texts])
        record.prompt_tokens, record.completion_tokens = totals["prompt_tokens"], totals["completion_tokens"]
        record.error_code = result.error


async def chat_completions(request: Request) -> Response | EventStreamResponse:
    gateway = _gateway(request)
    key = client_key(request, gateway)  # Before validation, as on api.openai.com.
    chat = parse_body(await request.body(), ChatRequest)
    _record(request).model = chat.model
    plan = plan_chat(chat, gateway.models, gateway.config.generation)
    return await _serve(request, plan, True, key)


async def completions(request: Request) -> Response | EventStreamResponse:
    gateway = _gateway(request)
    key = client_key(request, gateway)
    completion = parse_body(await request.body(), CompletionRequest)
    _record(request).model = completion.model
    plan = plan_completion(completion, gateway.models, gateway.config.generation)
    return await _serve(request, plan, False, key)


async def list_models(request: Request) -> Response:
    return json_response(_gateway(request).models.listing())


async def retrieve_model(request: Request) -> Response:
    # The server has already percent-decoded the path, so `org%2Fmodel` arrives as `org/model`.
    return json_response(_gateway(request).models.card(str(request.path_params["model"])))
