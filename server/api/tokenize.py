"""POST /tokenize and POST /detokenize (vLLM's extra endpoints)."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Tokenize
from server.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, service: Tokenize) -> TokenizeResponse:
    return await service.tokenize(body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, service: Tokenize) -> DetokenizeResponse:
    return service.detokenize(body)
