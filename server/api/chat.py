"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.api.deps import Chat, RequestId
from server.api.middleware import on_request_end
from server.api.streaming import EventStreamResponse, cancel_on_disconnect
from server.protocol.chat import ChatCompletion, ChatCompletionRequest

router = APIRouter()

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
    chat: Chat,
    request_id: RequestId,
) -> ChatCompletion | Response:
    prepared = await cancel_on_disconnect(request, lambda: chat.prepare(body, request_id))
    if prepared is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    on_request_end(request, prepared.done)
    if body.stream:
        return EventStreamResponse(chat.stream(prepared), headers=prepared.headers)
    result = await cancel_on_disconnect(request, lambda: chat.complete(prepared))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    response.headers.update(prepared.headers)  # FastAPI copies these onto the JSON response
    return result
