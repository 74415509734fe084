"""HTTP endpoints: thin I/O around the pure translation in `proxy.translate`.

One handler serves every generation surface (`proxy.translate.surfaces`): authenticate → read
(size-capped), parse and validate → plan the upstream calls → check the key's model access → admit
under the key's limits → run the calls (all choices concurrently) → translate the answers back →
settle the key's tokens. Streams are only started once every upstream stream has produced its first
event, so an upstream failure before the first byte is still a plain HTTP error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import Caller, bearer_token, missing_key, model_forbidden
from proxy.errors import OpenAIError
from proxy.gateway import Gateway
from proxy.http.context import first_header
from proxy.http.disconnect import ClientDisconnected, cancel_on_disconnect
from proxy.http.dispatch import Endpoint
from proxy.http.drain import SHUTTING_DOWN_MESSAGE, Drain
from proxy.http.record import RequestLog
from proxy.http.relay import relay
from proxy.http.responses import json_response
from proxy.http.sse_response import EventStreamResponse, Write
from proxy.limits import Admission, BackendUnavailable, RateLimited
from proxy.limits.admission import UNLIMITED
from proxy.store.cache import CachedAnswer, ResponseCache, cache_key, cache_policy
from proxy.store.responses import owner_of
from proxy.translate.events import Failure, Piece, answer_event
from proxy.translate.params import Plan
from proxy.translate.render import BodyRenderer, StreamRenderer
from proxy.translate.stream import Out, StreamTranslator
from proxy.translate.surfaces import Surface
from proxy.translate.tokens import count_tokens
from proxy.translate.upstream_errors import Redactor, upstream_error
from proxy.translate.validation import parse_body
from proxy.upstream.client import Attempts, UpstreamFailure, UpstreamStream

#: Added to the missing-key message when the client's key is what goes upstream.
PASS_THROUGH_HINT = " This proxy passes it to Anthropic as x-api-key."


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.scope["app"].gateway  # `ProxyApp.gateway`
    return gateway


def _drain(request: Request) -> Drain:
    drain: Drain = request.scope["app"].drain  # `ProxyApp.drain`
    return drain


def _record(request: Request) -> RequestLog:
    """The request's log record (set by `RequestContextMiddleware`), read from the scope directly: no
    Starlette `State` wrapper per request."""
    record: RequestLog = request.scope["state"]["log"]
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
        raise missing_key(PASS_THROUGH_HINT)
    return token


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes.

    A client that hangs up during its upload has nothing left to answer: `ClientDisconnected` (logged
    as 499)."""
    declared = first_header(request.scope, b"content-length") or ""
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    # ASGI's `receive` read directly (what `Request.stream()` does, without an async generator per request).
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def _joined(values: list[str], *, unique: bool = False) -> str | None:
    """The comma-separated values for the access line (each once if `unique`); None if there are none.
    One value, the common case, is taken as is."""
    if len(values) == 1:
        return values[0]
    return ",".join(dict.fromkeys(values) if unique else values) or None


class _Redaction:
    """Redacts the server's secrets and the client's key from upstream text, with a `Redactor` made only
    when a message needs it (rare: errors). A plain class: a frozen dataclass's `__init__` costs twice
    as much, on every request."""

    __slots__ = ("key", "secrets")

    def __init__(self, secrets: tuple[str, ...], key: str | None) -> None:
        self.secrets = secrets
        self.key = key

    def redactor(self) -> Redactor:
        return Redactor([*self.secrets, self.key])

    def __call__(self, text: str) -> str:
        return self.redactor()(text)


class Exchange:
    """One admitted request's upstream calls and the translation of their answers.

    `chunks` makes the renderer of a stream, `body` that of a non-streamed answer, each from the plan
    (only the one the plan needs is made); `on_complete` runs once the answer is whole (before its last bytes are
    written, so a client reading them finds it done). Secrets are redacted from upstream messages
    by a redactor made only when a message needs it.

    A started stream does not keep the exchange: its response (`RelayedStream`) holds only what it
    needs (no request, plan, prompts or renderer factories), as an open stream holds it for its life."""

    __slots__ = (
        "_translator",
        "admission",
        "body",
        "cache",
        "chunks",
        "gateway",
        "key",
        "on_complete",
        "plan",
        "prompt_param",
        "record",
        "redact",
        "request",
    )

    def __init__(
        self,
        request: Request,
        plan: Plan,
        key: str | None,
        admission: Admission,
        *,
        prompt_param: str,
        chunks: Callable[[Plan], StreamRenderer],
        body: Callable[[Plan], BodyRenderer],
        on_complete: Callable[[], Awaitable[None]] | None = None,
        cache: CacheUse | None = None,
    ) -> None:
        self.request = request
        self.cache = cache
        self.gateway = _gateway(request)
        self.record = _record(request)
        self.plan = plan
        self.key = key
        self.admission = admission
        self.prompt_param = prompt_param
        self.chunks = chunks
        self.body = body
        self.on_complete = on_complete
        #: Not a bound method: the translator keeps it, and a bound method would make the exchange and
        #: its translator a reference cycle (and keep the exchange for a stream's whole life).
        self.redact = _Redaction(self.gateway.upstream.secrets, key)
        self._translator: StreamTranslator | None = None

    @property
    def translator(self) -> StreamTranslator:
        """Made when the first answer is in: a request waiting for the upstream need not hold it."""
        if self._translator is None:
            self._translator = self._new_translator()
        return self._translator

    def _new_translator(self) -> StreamTranslator:
        plan = self.plan
        return StreamTranslator(
            plan.prompts, n=plan.n, echo=plan.echo, transform=plan.transform, redact=self.redact
        )

    def _redactor(self) -> Redactor:
        """Made only when an upstream message is on its way to the client (rare: errors)."""
        return self.redact.redactor()

    def error(self, failure: UpstreamFailure) -> OpenAIError:
        """The client's error for an upstream failure (`proxy.translate.upstream_errors`)."""
        return upstream_error(
            failure.status,
            failure.error_type,
            failure.message,
            failure.headers,
            failure.server_key,
            prompt_param=self.prompt_param,
            redact=self._redactor(),
        )

    async def run(self) -> Response | EventStreamResponse:
        """Answer from the cache, or run the upstream calls. The admission is finished here (or by the
        stream's end); a failure settles it with nothing charged and carries its limit headers."""
        try:
            if self.cache is not None and self.cache.read:
                cached = await self.cache.store.get(self.cache.key)
                self.record.cache = "hit" if cached is not None else "miss"
                if cached is not None:
                    return await self._replay(cached)
            return await self._call_upstream()
        except BaseException as error:
            if isinstance(error, OpenAIError):
                error.headers = {**self.admission.headers, **error.headers}
            await self.admission.finish(0)  # the upstream charged nothing for a failed call
            raise

    def _headers(self) -> dict[str, str]:
        limits = self.admission.headers
        headers = dict(limits) if limits else {}  # without limits: no copy of an empty mapping proxy
        if self.record.upstream_request_id:
            headers["x-upstream-request-id"] = self.record.upstream_request_id
        if self.cache is not None:
            headers["x-cache"] = {"hit": "HIT", "miss": "MISS"}.get(self.record.cache or "", "BYPASS")
        return headers

    async def _keep(self) -> None:
        await keep_answer(self.cache, self.translator, self.on_complete)

    async def _replay(self, cached: CachedAnswer) -> Response | EventStreamResponse:
        """A cached answer through the translator and renderer: fresh ids, a stream as a stream."""
        translator = self.translator
        out = translator.start()
        for index, (text, stop) in enumerate(cached.choices):
            out += translator.feed(index, Piece(text, stop or "stop_sequence"))
        totals = translator.usage()
        self.record.prompt_tokens, self.record.completion_tokens = (
            totals["prompt_tokens"],
            totals["completion_tokens"],
        )
        await self.admission.finish(0)  # the upstream was not asked: nothing to charge
        if not self.plan.stream:
            body = self.body(self.plan)
            body.add(out)
            return json_response(body.body(), self._headers())
        renderer = self.chunks(self.plan)

        async def produce(write: Write) -> None:
            await write(renderer.render(out))

        return EventStreamResponse(produce, self._headers(), drain=_drain(self.request))

    async def _call_upstream(self) -> Response | EventStreamResponse:
        gateway, record, plan, request = self.gateway, self.record, self.plan, self.request
        attempts = Attempts()
        started = time.perf_counter()
        validated: list[Out] | None = None
        try:
            with cancel_on_disconnect(request.scope, request.receive, _drain(request)):
                if plan.strict:
                    validated = await self._validated(attempts)
                elif plan.stream and plan.n * len(plan.prompts) == 1:  # inline: every waiting stream
                    call = plan.calls()[0]  # would hold another frame for the whole wait
                    streams = [await gateway.upstream.stream(plan.model, call, self.key, attempts)]
                elif plan.stream:
                    streams = await self._open_streams(attempts)
                else:
                    complete = gateway.upstream.complete
                    calls = [complete(plan.model, body, self.key, attempts) for body in plan.calls()]
                    answers = await _run_all(calls)
        except UpstreamFailure as failure:
            raise self.error(failure) from None
        finally:
            record.attempts = attempts.count
            # Wall-clock time of the upstream phase: the whole answer, or a stream's first event.
            record.upstream_ms = round((time.perf_counter() - started) * 1000, 2)
            record.upstream_request_id = _joined(attempts.request_ids)
            record.upstream_entry = _joined(attempts.entries, unique=True)
        headers = self._headers()
        if validated is not None and plan.stream:
            return self._validated_stream(validated, headers)
        if plan.stream:
            return self._stream(streams, headers)
        translator, body = self.translator, self.body(self.plan)
        if validated is not None:
            body.add(validated)
        else:
            body.add(translator.start())
            for index, answer in enumerate(answers):
                body.add(translator.feed(index, answer_event(answer)))
        totals = translator.usage()
        record.prompt_tokens, record.completion_tokens = totals["prompt_tokens"], totals["completion_tokens"]
        await self.admission.finish(totals["total_tokens"])
        if self.cache is not None or self.on_complete is not None:
            await self._keep()
        return json_response(body.body(), headers)

    async def _validated(self, attempts: Attempts) -> list[Out]:
        """A strict answer (schema-checked), asked for whole; an invalid choice is asked again with a
        corrective turn (`plan.retries` times), then the request fails with 502 `invalid_model_output`.
        Returns every output event of the accepted answers (streams replay them)."""
        plan, complete = self.plan, self.gateway.upstream.complete
        bodies = [{k: v for k, v in body.items() if k != "stream"} for body in plan.calls()]
        answers = await _run_all([complete(plan.model, body, self.key, attempts) for body in bodies])
        for attempt in range(plan.retries + 1):
            self._translator = translator = self._new_translator()
            events = translator.start()
            for index, answer in enumerate(answers):
                events += translator.feed(index, answer_event(answer))
            problems = translator.problems()
            bad = [index for index, problem in enumerate(problems) if problem is not None]
            if not bad:
                return events
            if attempt == plan.retries or plan.retry_prompt is None:
                raise OpenAIError(
                    502,
                    f"The model's answer did not satisfy the requested schema after {attempt + 1} "
                    f"attempt(s): {problems[bad[0]]}",
                    type="server_error",
                    code="invalid_model_output",
                    headers={"x-should-retry": "false"},
                )
            texts = translator.upstream_texts()
            retry = plan.retry_prompt
            fixed = await _run_all(
                [
                    complete(
                        plan.model,
                        {**bodies[i], "prompt": retry(texts[i], str(problems[i]))},
                        self.key,
                        attempts,
                    )
                    for i in bad
                ]
            )
            for i, answer in zip(bad, fixed, strict=True):
                answers[i] = answer
        raise AssertionError("unreachable")

    def _validated_stream(self, events: list[Out], headers: dict[str, str]) -> EventStreamResponse:
        """A validated strict answer, sent as a stream."""
        translator, record = self.translator, self.record
        renderer = self.chunks(self.plan)

        async def produce(write: Write) -> None:
            await self._keep()
            await write(renderer.render(events))

        async def close() -> None:
            totals = translator.usage()
            record.prompt_tokens, record.completion_tokens = (
                totals["prompt_tokens"],
                totals["completion_tokens"],
            )
            await self.admission.finish(totals["total_tokens"])

        return EventStreamResponse(produce, headers, on_close=close, drain=_drain(self.request))

    async def _open_streams(self, attempts: Attempts) -> list[UpstreamStream]:
        """Open every choice's stream; if one fails, close those already open and raise its error."""
        opened: list[UpstreamStream] = []
        stream = self.gateway.upstream.stream

        async def open_one(body: dict[str, Any]) -> UpstreamStream:
            upstream = await stream(self.plan.model, body, self.key, attempts)
            opened.append(upstream)
            return upstream

        try:
            return await _run_all([open_one(body) for body in self.plan.calls()])
        except BaseException:
            await asyncio.gather(*(s.aclose() for s in opened), return_exceptions=True)
            raise

    def _stream(self, streams: list[UpstreamStream], headers: dict[str, str]) -> EventStreamResponse:
        cache = self.cache if self.cache is not None and self.cache.write else None
        return RelayedStream(
            streams,
            self.translator,
            self.chunks(self.plan),
            headers,
            record=self.record,
            admission=self.admission,
            cache=cache,
            on_complete=self.on_complete,
            drain=_drain(self.request),
        )


async def keep_answer(
    cache: CacheUse | None, translator: StreamTranslator, on_complete: Callable[[], Awaitable[None]] | None
) -> None:
    """Cache a complete, successful answer (when the request allows it), then run `on_complete`.
    A stream runs this before its last bytes, so a client that read the whole answer and asks
    again (or reads the stored response) finds it."""
    if cache is not None and cache.write and (answer := translator.answer()) is not None:
        await cache.store.put(cache.key, CachedAnswer(answer))
    if on_complete is not None:
        await on_complete()


def _settle_usage(record: RequestLog, translator: StreamTranslator) -> int:
    """The usage estimate into the access record; returns the total tokens to charge."""
    totals = translator.usage()
    record.prompt_tokens, record.completion_tokens = totals["prompt_tokens"], totals["completion_tokens"]
    return totals["total_tokens"]


class RelayedStream(EventStreamResponse):
    """A streamed answer relayed from open upstream streams (`proxy.http.relay`); at its end, closes
    them and settles the request (usage, first-token time, admission).

    One object per stream, holding only what the stream needs: no closures, no exchange."""

    __slots__ = ("admission", "cache", "on_complete", "record", "renderer", "streams", "translator")

    def __init__(
        self,
        streams: list[UpstreamStream],
        translator: StreamTranslator,
        renderer: StreamRenderer,
        headers: dict[str, str],
        *,
        record: RequestLog,
        admission: Admission,
        cache: CacheUse | None,
        on_complete: Callable[[], Awaitable[None]] | None,
        drain: Drain | None,
    ) -> None:
        super().__init__(None, headers, drain=drain)
        self.streams = streams
        self.translator = translator
        self.renderer = renderer
        self.record = record
        self.admission = admission
        self.cache = cache
        self.on_complete = on_complete

    def produce(self) -> Awaitable[None]:
        keep = self._keep if self.cache is not None or self.on_complete is not None else None
        return relay(self.streams, self.translator, self.renderer, self.write, on_complete=keep)

    def _keep(self) -> Awaitable[None]:
        return keep_answer(self.cache, self.translator, self.on_complete)

    def last_words(self) -> bytes:
        failure = Failure("server_shutting_down", SHUTTING_DOWN_MESSAGE)
        return self.renderer.render(self.translator.fail(failure))

    async def close(self) -> None:
        """Runs once the response is over, even if its body never started."""
        await asyncio.gather(*(s.aclose() for s in self.streams), return_exceptions=True)
        translator, record = self.translator, self.record
        total = _settle_usage(record, translator)
        record.error_code = translator.error or record.error_code
        if self.first_write is not None:
            record.first_token_ms = round((self.first_write - record.received) * 1000, 2)
        await self.admission.finish(total)


@dataclass(frozen=True)
class CacheUse:
    """How one request uses the response cache (`proxy.store.cache`)."""

    store: ResponseCache
    key: str
    read: bool
    write: bool


def cache_use(
    request: Request, gateway: Gateway, plan: Plan, caller: Caller | None, key: str | None
) -> CacheUse | None:
    if gateway.cache is None:
        return None
    read, write = cache_policy(request.headers)
    owner = owner_of(caller.name if caller else None, key)
    return CacheUse(gateway.cache, cache_key(owner, plan), read, write)


def generation(surface: Surface[Any]) -> Endpoint:
    """The endpoint for one surface: `POST /v1/chat/completions`, `POST /v1/completions`, …"""

    async def endpoint(request: Request) -> Response | EventStreamResponse:
        gateway = _gateway(request)
        record = _record(request)
        caller = authenticate(request, gateway)  # Before validation, as on api.openai.com.
        key = client_key(request, gateway)
        parsed: BaseModel = parse_body(
            await read_body(request, gateway.config.server.max_body_bytes), surface.schema
        )
        model = str(parsed.model)  # type: ignore[attr-defined]  # every surface's schema has one
        record.model = model
        plan = surface.plan(parsed, gateway.models, gateway.config.generation)
        del parsed  # ~3 KiB of pydantic models that the upstream wait (and a stream) need not hold
        if caller is not None and not caller.may_use(model):
            raise model_forbidden(caller, model)
        record.upstream_model, record.stream, record.n = plan.model, plan.stream, plan.n * len(plan.prompts)
        admission = await admit(gateway, caller, plan, record)
        exchange = Exchange(
            request,
            plan,
            key,
            admission,
            prompt_param=surface.prompt_param,
            chunks=surface.chunks,
            body=surface.body,
            cache=cache_use(request, gateway, plan, caller, key),
        )
        return await exchange.run()

    return endpoint


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


#: Paths of OpenAI capabilities the legacy upstream does not have, and what to call each.
MISSING_CAPABILITIES: dict[str, str] = {
    "/embeddings": "embeddings",
    "/moderations": "moderations",
    "/images/{rest}": "image generation",
    "/audio/{rest}": "audio (speech, transcription, translation)",
    "/files": "files",
    "/files/{rest}": "files",
    "/batches": "batches",
    "/batches/{rest}": "batches",
    "/uploads": "uploads",
    "/uploads/{rest}": "uploads",
    "/fine_tuning/{rest}": "fine-tuning",
    "/vector_stores": "vector stores",
    "/vector_stores/{rest}": "vector stores",
    "/assistants": "assistants",
    "/assistants/{rest}": "assistants",
    "/threads": "threads",
    "/threads/{rest}": "threads",
    "/realtime/{rest}": "the realtime API",
}

ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def no_capability(capability: str) -> Endpoint:
    """An endpoint that says, in OpenAI's envelope, that the upstream cannot do `capability`."""

    async def endpoint(request: Request) -> Response:
        raise OpenAIError(
            400,
            f"This proxy cannot serve {capability}: its upstream, Anthropic's legacy Text Completions API "
            f"(/v1/complete), only generates text. {request.method} {request.url.path} is not available here.",
            type="invalid_request_error",
            code="unsupported_endpoint",
        )

    return endpoint
