"""POST /v1/responses, GET and DELETE /v1/responses/{response_id} (OpenAI's Responses API)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.api.chat import CLIENT_CLOSED_REQUEST
from server.api.deps import RequestId, ResponsesService
from server.api.middleware import on_request_end
from server.api.streaming import EventStreamResponse, cancel_on_disconnect
from server.protocol.responses import DeletedResponse, ResponseObject, ResponsesRequest

router = APIRouter()


@router.post("/v1/responses", response_model=None)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    response: Response,
    service: ResponsesService,
    request_id: RequestId,
) -> ResponseObject | Response:
    prepared = await cancel_on_disconnect(request, lambda: service.prepare(body, request_id))
    if prepared is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    on_request_end(request, prepared.done)
    if body.stream:
        return EventStreamResponse(service.stream(prepared), headers=prepared.headers)
    result = await cancel_on_disconnect(request, lambda: service.complete(prepared))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    response.headers.update(prepared.headers)  # FastAPI copies these onto the JSON response
    return result


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, service: ResponsesService) -> ResponseObject:
    return service.retrieve(response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, service: ResponsesService) -> DeletedResponse:
    return service.delete(response_id)
