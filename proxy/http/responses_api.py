"""`/v1/responses`: create (streamed or not), retrieve, list input items, delete — thin I/O.

Creating runs the same exchange as chat (`proxy.http.routes.Exchange`): the request becomes a chat
request (`proxy.translate.responses_request`), the answer is rendered by
`proxy.translate.render.responses`. With `store` (OpenAI's default), the finished response is kept in
the gateway's response store for its owner before its last bytes are sent.
"""

from __future__ import annotations

import itertools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import Caller, model_forbidden
from proxy.errors import OpenAIError, invalid_request, unknown_url
from proxy.gateway import Gateway
from proxy.http.record import RequestLog
from proxy.http.responses import json_response
from proxy.http.routes import Exchange, admit, authenticate, client_key, read_body
from proxy.http.sse_response import EventStreamResponse
from proxy.store.responses import ResponseStore, StoredResponse, owner_of
from proxy.translate.params import plan_chat
from proxy.translate.render.responses import ResponseBody, ResponseEvents, ResponseState, item_id
from proxy.translate.responses_request import (
    ResponsesRequest,
    custom_tools,
    input_items,
    input_messages,
    namespaced_tools,
    output_messages,
    response_of_item,
    to_chat,
)
from proxy.translate.validation import parse_body

#: Request fields the response object echoes, with OpenAI's values when they were not given.
_ECHOED: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


def _settings(request: ResponsesRequest) -> dict[str, Any]:
    given = request.model_dump(include=set(_ECHOED), exclude_none=True)
    return {**_ECHOED, **given}


def not_found(response_id: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"No response found with id '{response_id}'.",
        type="invalid_request_error",
        param="response_id",
    )


def _owner(request: Request, gateway: Gateway, caller: Caller | None) -> str:
    return owner_of(caller.name if caller else None, client_key(request, gateway))


async def _referenced(store: ResponseStore, owner: str, reference: dict[str, Any], where: str) -> Any:
    """The stored item an `item_reference` names: an output or input item of a response this owner
    stored (the AI SDK sends one for each earlier assistant message when `store` is on)."""
    wanted = reference.get("id")
    if not isinstance(wanted, str):
        raise invalid_request(f"Missing required parameter: '{where}.id'.", f"{where}.id")
    response_id = response_of_item(wanted)
    stored = await store.get(response_id, owner) if response_id else None
    if stored is not None:
        for item in [*stored.response.get("output", []), *stored.input_items]:
            if item.get("id") == wanted:
                return item
    raise invalid_request(f"Item with id '{wanted}' not found.", f"{where}.id", "item_not_found")


async def _resolve(store: ResponseStore, owner: str, items: str | list[Any] | None) -> Any:
    """`input` with every `item_reference` replaced by the item it names."""
    if not isinstance(items, list):
        return items
    return [
        await _referenced(store, owner, item, f"input[{number}]")
        if isinstance(item, dict) and item.get("type") == "item_reference"
        else item
        for number, item in enumerate(items)
    ]


async def create_response(request: Request) -> Response | EventStreamResponse:
    gateway: Gateway = request.app.state.gateway
    record: RequestLog = request.state.log
    caller = authenticate(request, gateway)
    key = client_key(request, gateway)
    parsed = parse_body(await read_body(request, gateway.config.server.max_body_bytes), ResponsesRequest)
    record.model = parsed.model
    owner = owner_of(caller.name if caller else None, key)
    history: list[dict[str, Any]] = []
    if parsed.previous_response_id is not None:
        previous = await gateway.responses.get(parsed.previous_response_id, owner)
        if previous is None:
            raise invalid_request(
                f"Previous response with id '{parsed.previous_response_id}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        history = previous.conversation
    parsed = parsed.model_copy(update={"input": await _resolve(gateway.responses, owner, parsed.input)})
    plan = plan_chat(to_chat(parsed, history), gateway.models, gateway.config.generation)
    if caller is not None and not caller.may_use(parsed.model):
        raise model_forbidden(caller, parsed.model)
    record.upstream_model, record.stream, record.n = plan.model, plan.stream, 1
    state = ResponseState(
        plan.model,
        settings=_settings(parsed),
        custom_tools=custom_tools(parsed.tools),
        namespaced=namespaced_tools(parsed.tools),
    )

    async def keep() -> None:
        if parsed.store is False or state.status not in ("completed", "incomplete"):
            return
        numbers = itertools.count()
        items = input_items(parsed.input, lambda prefix: item_id(prefix, state.id, f"in{next(numbers)}"))
        conversation = history + input_messages(parsed.input) + output_messages(state.output)
        await gateway.responses.put(StoredResponse(owner, state.response(), items, conversation))

    admission = await admit(gateway, caller, plan, record)
    exchange = Exchange(
        request,
        plan,
        key,
        admission,
        prompt_param="input",
        chunks=lambda _plan: ResponseEvents(state),
        body=lambda _plan: ResponseBody(state),
        on_complete=keep,
    )
    return await exchange.run()


async def response_resource(request: Request) -> Response:
    """`GET /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`, `DELETE /v1/responses/{id}`."""
    gateway: Gateway = request.app.state.gateway
    caller = authenticate(request, gateway)
    owner = _owner(request, gateway, caller)
    response_id, _, rest = str(request.path_params["rest"]).partition("/")
    if rest not in ("", "input_items") or (rest and request.method == "DELETE"):
        raise unknown_url(request.method, request.url.path)
    if request.method == "DELETE":
        if not await gateway.responses.delete(response_id, owner):
            raise not_found(response_id)
        return json_response({"id": response_id, "object": "response", "deleted": True})
    stored = await gateway.responses.get(response_id, owner)
    if stored is None:
        raise not_found(response_id)
    if not rest:
        return json_response(stored.response)
    return json_response(_page(stored, request))


def _page(stored: StoredResponse, request: Request) -> dict[str, Any]:
    """A page of input items: `order` (desc by default, as OpenAI), `limit` (1–100, 20), `after`."""
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_request(f"Invalid value for 'order': {order!r}.", "order", "invalid_value")
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise invalid_request(
            "Invalid 'limit': expected an integer between 1 and 100.", "limit", "invalid_value"
        )
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    after = request.query_params.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[: int(raw_limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
