"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.api.chat import CLIENT_CLOSED_REQUEST
from server.api.deps import Completions, RequestId
from server.api.middleware import on_request_end
from server.api.streaming import EventStreamResponse, cancel_on_disconnect
from server.protocol.completions import Completion, CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    response: Response,
    completions: Completions,
    request_id: RequestId,
) -> Completion | Response:
    prepared = await cancel_on_disconnect(request, lambda: completions.prepare(body, request_id))
    if prepared is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    on_request_end(request, prepared.done)
    if body.stream:
        return EventStreamResponse(completions.stream(prepared), headers=prepared.headers)
    result = await cancel_on_disconnect(request, lambda: completions.complete(prepared))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    response.headers.update(prepared.headers)  # FastAPI copies these onto the JSON response
    return result
