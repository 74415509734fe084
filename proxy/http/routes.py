"""HTTP endpoints: thin I/O around the pure translation in `proxy.translate`.

Each POST handler: authenticate → read (size-capped), parse and validate → plan the upstream calls →
check the key's model access → admit under the key's limits → run the calls (all `n` concurrently) →
translate the answers back → settle the key's tokens. Streams are only started once every upstream
stream has produced its first event, so an upstream failure before the first byte is still a plain
HTTP error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import Caller, bearer_token, model_forbidden
from proxy.errors import OpenAIError
from proxy.gateway import Gateway
from proxy.http.context import RequestLog
from proxy.http.disconnect import cancel_on_disconnect
from proxy.http.pump import StreamResult, pump
from proxy.http.sse_response import EventStreamResponse
from proxy.limits import Admission, BackendUnavailable, RateLimited
from proxy.limits.admission import UNLIMITED
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
from proxy.translate.tokens import count_tokens
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


def authenticate(request: Request, gateway: Gateway) -> Caller | None:
    """The client key's owner when client keys are configured (401 otherwise); None without them."""
    if not gateway.keys.enabled:
        return None
    caller = gateway.keys.authenticate(request.headers)
    _record(request).key_name = caller.name
    return caller


def client_key(request: Request, gateway: Gateway) -> str | None:
    """The client's own upstream key, for pool entries without a key of their own (pass-through).

    Never with client keys configured: then the Bearer token is a key of this proxy (the configuration
    refuses pass-through entries in that case)."""
    if gateway.keys.enabled or not gateway.upstream.pool.needs_client_key():
        return None
    token = bearer_token(request.headers)
    if token is None:
        raise OpenAIError(401, MISSING_KEY_MESSAGE, type="invalid_request_error")
    return token


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def body_too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body is larger than this server accepts ({limit} bytes).",
        type="invalid_request_error",
        code="request_too_large",
    )


def reserved_tokens(plan: Plan) -> int:
    """What a request may cost, reserved at admission: its prompts plus max_tokens for every choice."""
    calls = plan.n * len(plan.prompts)
    return sum(map(count_tokens, plan.prompts)) + int(plan.body["max_tokens_to_sample"]) * calls


async def admit(gateway: Gateway, caller: Caller | None, plan: Plan, record: RequestLog) -> Admission:
    if caller is None:
        return UNLIMITED
    try:
        admission = await gateway.limiter.admit(caller.name, caller.limits, reserved_tokens(plan))
    except (RateLimited, BackendUnavailable) as refused:
        record.limit = refused.decision
        raise
    record.limit = admission.decision
    return admission


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


async def _serve(
    request: Request, plan: Plan, chat: bool, key: str | None, caller: Caller | None
) -> Response | EventStreamResponse:
    gateway = _gateway(request)
    record = _record(request)
    record.upstream_model, record.stream, record.n = plan.model, plan.stream, plan.n * len(plan.prompts)
    admission = await admit(gateway, caller, plan, record)
    try:
        return await _serve_admitted(request, plan, chat, key, admission)
    except BaseException as error:
        if isinstance(error, OpenAIError):
            error.headers = {**admission.headers, **error.headers}
        await admission.finish(0)  # the upstream charged nothing for a failed call
        raise


async def _serve_admitted(
    request: Request, plan: Plan, chat: bool, key: str | None, admission: Admission
) -> Response | EventStreamResponse:
    """Run the upstream calls; the admission is finished here on success (or by the stream's end)."""
    gateway = _gateway(request)
    record = _record(request)
    attempts = Attempts()
    started = time.perf_counter()
    try:
        async with cancel_on_disconnect(request.receive, request.app.state.drain):
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
    headers = dict(admission.headers)
    if record.upstream_request_id:
        headers["x-upstream-request-id"] = record.upstream_request_id
    if plan.stream:
        writer = ChunkWriter(chat=chat, model=plan.model, include_usage=plan.include_usage)
        result = StreamResult()
        body = pump(streams, writer, plan.prompts, plan.echo, plan.n, result)

        async def close() -> None:
            """Runs once the response is over, even if its body never started."""
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
            totals = result.usage or estimate_usage(plan.prompts, ["".join(t) for t in result.texts])
            record.prompt_tokens, record.completion_tokens = (
                totals["prompt_tokens"],
                totals["completion_tokens"],
            )
            record.error_code = result.error or record.error_code
            if result.started is not None:
                record.first_token_ms = round((result.started - record.received) * 1000, 2)
            await admission.finish(totals["total_tokens"])

        return EventStreamResponse(body, headers, on_close=close, drain=request.app.state.drain)
    answer = _completion_body(results, plan, chat, record)
    await admission.finish(answer["usage"]["total_tokens"])
    return json_response(answer, headers)


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


async def chat_completions(request: Request) -> Response | EventStreamResponse:
    gateway = _gateway(request)
    caller = authenticate(request, gateway)  # Before validation, as on api.openai.com.
    key = client_key(request, gateway)
    chat = parse_body(await read_body(request, gateway.config.server.max_body_bytes), ChatRequest)
    _record(request).model = chat.model
    plan = plan_chat(chat, gateway.models, gateway.config.generation)
    if caller is not None and not caller.may_use(chat.model):
        raise model_forbidden(caller, chat.model)
    return await _serve(request, plan, True, key, caller)


async def completions(request: Request) -> Response | EventStreamResponse:
    gateway = _gateway(request)
    caller = authenticate(request, gateway)
    key = client_key(request, gateway)
    completion = parse_body(await read_body(request, gateway.config.server.max_body_bytes), CompletionRequest)
    _record(request).model = completion.model
    plan = plan_completion(completion, gateway.models, gateway.config.generation)
    if caller is not None and not caller.may_use(completion.model):
        raise model_forbidden(caller, completion.model)
    return await _serve(request, plan, False, key, caller)


async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    caller = authenticate(request, gateway)
    return json_response(gateway.models.listing(caller.may_use if caller else None))


async def retrieve_model(request: Request) -> Response:
    gateway = _gateway(request)
    caller = authenticate(request, gateway)
    # The server has already percent-decoded the path, so `org%2Fmodel` arrives as `org/model`.
    return json_response(
        gateway.models.card(str(request.path_params["model"]), caller.may_use if caller else None)
    )
