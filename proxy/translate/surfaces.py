"""The OpenAI endpoints served over the legacy upstream, each described by its parts (pure).

A surface names how a request body is read (schema), how it becomes upstream calls (planner), which
request field a prompt-size error points at, and how the translator's output is written back
(stream renderer, body renderer). The HTTP layer has one handler for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from proxy.config import GenerationConfig
from proxy.translate.models import ModelRegistry
from proxy.translate.params import Plan, plan_chat, plan_completion
from proxy.translate.render import BodyRenderer, StreamRenderer
from proxy.translate.render.chat import ChatBody, ChatChunks
from proxy.translate.render.completions import CompletionBody, CompletionChunks
from proxy.translate.schema import ChatRequest, CompletionRequest

RequestT = TypeVar("RequestT", bound=BaseModel)


@dataclass(frozen=True)
class Surface(Generic[RequestT]):
    name: str
    schema: type[RequestT]
    plan: Callable[[RequestT, ModelRegistry, GenerationConfig], Plan]
    prompt_param: str  # where OpenAI points `context_length_exceeded`
    chunks: Callable[[Plan], StreamRenderer]
    body: Callable[[Plan], BodyRenderer]


CHAT: Surface[ChatRequest] = Surface(
    name="chat",
    schema=ChatRequest,
    plan=plan_chat,
    prompt_param="messages",
    chunks=lambda plan: ChatChunks(
        plan.model, include_usage=plan.include_usage, functions=plan.functions, tools=plan.tools
    ),
    body=lambda plan: ChatBody(plan.model, functions=plan.functions),
)

COMPLETIONS: Surface[CompletionRequest] = Surface(
    name="completions",
    schema=CompletionRequest,
    plan=plan_completion,
    prompt_param="prompt",
    chunks=lambda plan: CompletionChunks(plan.model, include_usage=plan.include_usage),
    body=lambda plan: CompletionBody(plan.model),
)
