"""`/openapi.json` describes what the server does (request bodies as sent by clients, the error
envelope for every error status, no 422, event streams, /metrics as text), and a schema fuzzer
(schemathesis) driving the real app over the stand-in engine finds no server error, no
undocumented status or content type, and no response off its schema."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from server.app import create_app
from server.settings import load_settings
from tests.fake_engine import FakeEngine
from tests.tiny_tokenizer import load_tiny_tokenizer

FUZZ_EXAMPLES = 25  # per operation


def _app(tmp: Any) -> Any:
    settings_ = load_settings({"model": "fake/model", "served_model_name": ["m"]})
    return create_app(settings_, FakeEngine(load_tiny_tokenizer(tmp)))


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    doc: dict[str, Any] = _app(tmp_path_factory.mktemp("tok")).openapi()
    return doc


def _body_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {"$ref": ref["$ref"], "components": spec["components"]}


def test_every_error_status_is_the_envelope_and_there_is_no_422(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}"
            for status in ("400", "401", "404", "500", "503"):
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    ok = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "https://example.com/a.png"},
                            {"type": "image_url", "image_url": {"url": "x", "detail": "original"}},
                            {"type": "file", "file": {"file_data": "data:application/pdf;base64,"}},
                            {"type": "text", "text": "?"},
                        ],
                    }
                ],
                "stop": "END",
                "document": {"pages": "1-3"},
            },
        ),
        ("/v1/completions", {"prompt": "Hello"}),
        ("/v1/completions", {"prompt": [1, 2, 3]}),
        ("/v1/completions", {"prompt": [[1, 2], [3]], "stop": ["a", "b"]}),
        ("/v1/responses", {"input": "Hello"}),
        ("/v1/responses", {"input": [{"role": "user", "content": "Hi"}]}),
        ("/tokenize", {"prompt": "Hello"}),
    ],
)
def test_the_request_shapes_clients_send_are_valid_for_the_schema(
    spec: dict[str, Any], path: str, body: dict[str, Any]
) -> None:
    jsonschema.validate(body, _body_schema(spec, path))


# Built at import: schemathesis parametrizes the test over the schema's operations.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _app(Path(tempfile.mkdtemp(prefix="openapi-fuzz-")))
)


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: CI never fails on a lucky draw
)
def test_fuzzed_requests_get_documented_answers(case: Any) -> None:
    """Excluded checks: cross-field rules (e.g. a tool message needs `content`) make some
    schema-valid bodies 400s, as with OpenAI; and request fields are read with pydantic's lax
    coercion (`"1"` for an integer), so a few schema-violating values are accepted."""
    case.call_and_validate(excluded_checks=[positive_data_acceptance, negative_data_rejection])
