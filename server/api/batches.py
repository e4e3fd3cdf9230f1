"""The Batches API: POST/GET /v1/batches, GET /v1/batches/{batch_id}, POST …/cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from server.api.deps import BatchesService
from server.protocol.batches import Batch, BatchList, CreateBatchRequest

router = APIRouter()


@router.post("/v1/batches")
async def create_batch(body: CreateBatchRequest, batches: BatchesService) -> Batch:
    return await batches.create(body)


@router.get("/v1/batches")
async def list_batches(
    batches: BatchesService,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> BatchList:
    return await batches.page(limit=limit, after=after)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, batches: BatchesService) -> Batch:
    return await batches.get(batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, batches: BatchesService) -> Batch:
    return await batches.cancel(batch_id)
