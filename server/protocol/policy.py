"""The field policy of the request models: every OpenAI field is honoured, or accepted and
ignored because it cannot apply to this model (`ignored()`), or rejected with a 400 naming it
(`unsupported()` in common.py). Ignored fields that a request sets are reported back in the
`X-Ignored-Params` response header and logged at debug level — never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

IGNORED_KEY = "x-ignored"  # marker in a field's json_schema_extra
IGNORED_HEADER = "X-Ignored-Params"


def ignored(reason: str, default: Any = None) -> Any:
    """A field that is accepted and has no effect here; `reason` goes into the OpenAPI schema."""
    return Field(
        default=default,
        description=f"accepted and ignored: {reason}",
        json_schema_extra={IGNORED_KEY: True},
    )


def _walk(model: BaseModel, prefix: str) -> Iterator[str]:
    fields = type(model).model_fields
    for name in sorted(model.model_fields_set):
        info = fields.get(name)
        if info is None:
            continue
        value = getattr(model, name)
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get(IGNORED_KEY) and value not in (None, [], {}):
            yield prefix + (info.alias or name)
        elif isinstance(value, BaseModel):
            yield from _walk(value, f"{prefix}{info.alias or name}.")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    yield from _walk(item, f"{prefix}{info.alias or name}[].")


def ignored_fields(request: BaseModel) -> list[str]:
    """Names (dotted; `[]` for list items) of the ignored fields `request` sets, each once."""
    return list(dict.fromkeys(_walk(request, "")))
