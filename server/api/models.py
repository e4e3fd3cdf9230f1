"""GET /v1/models and /v1/models/{model}: the served model, once under each of its names."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Context
from server.errors import ModelNotFound
from server.protocol.common import ModelCard, ModelList
from server.serving.context import ServingContext

router = APIRouter()


def _card(ctx: ServingContext, name: str) -> ModelCard:
    info = ctx.model_info
    return ModelCard(
        id=name,
        created=info.created,
        root=info.root,
        max_model_len=info.max_model_len or None,
    )


@router.get("/v1/models")
async def list_models(ctx: Context) -> ModelList:
    return ModelList(data=[_card(ctx, name) for name in ctx.model_names])


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, ctx: Context) -> ModelCard:
    if model not in ctx.model_names:
        raise ModelNotFound(model)
    return _card(ctx, model)
