"""FastAPI dependencies: the per-app services, stored on `app.state` by `create_app`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.serving.batches import Batches
from server.serving.chat import ChatCompletions
from server.serving.completions import TextCompletions
from server.serving.context import ServingContext
from server.serving.files import Files
from server.serving.responses import Responses
from server.serving.tokenize import Tokenization


def _context(request: Request) -> ServingContext:
    ctx: ServingContext = request.app.state.serving
    return ctx


def _chat(request: Request) -> ChatCompletions:
    service: ChatCompletions = request.app.state.chat
    return service


def _completions(request: Request) -> TextCompletions:
    service: TextCompletions = request.app.state.completions
    return service


def _tokenization(request: Request) -> Tokenization:
    service: Tokenization = request.app.state.tokenization
    return service


def _files(request: Request) -> Files:
    service: Files = request.app.state.files
    return service


def _batches(request: Request) -> Batches:
    service: Batches = request.app.state.batches
    return service


def _responses(request: Request) -> Responses:
    service: Responses = request.app.state.responses
    return service


def request_id(request: Request) -> str:
    """The id the request-context middleware assigned (from X-Request-Id or generated)."""
    rid: str = request.state.request_id
    return rid


Context = Annotated[ServingContext, Depends(_context)]
Chat = Annotated[ChatCompletions, Depends(_chat)]
Completions = Annotated[TextCompletions, Depends(_completions)]
ResponsesService = Annotated[Responses, Depends(_responses)]
FilesService = Annotated[Files, Depends(_files)]
BatchesService = Annotated[Batches, Depends(_batches)]
RequestId = Annotated[str, Depends(request_id)]
Tokenize = Annotated[Tokenization, Depends(_tokenization)]
