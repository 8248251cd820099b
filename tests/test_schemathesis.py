"""A schemathesis run against the service's own ``/openapi.json``, in process (ASGI transport):
every operation, with requests generated from the schema (valid ones and invalid ones), and no
answer is a server error; every error the service answers is JSON ``{"error": "..."}``, the one
error shape of the contract. Bounded: a few examples per operation and mode, well under a minute.

The operations are read from the schema when the tests are collected (building the app loads no
model), so each gets its own test id; the requests go to the app over the committed models.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from conftest import MODELS_DIR
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("AESERVE_SCHEMATHESIS_EXAMPLES", "10"))  # per operation and mode
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def runs() -> list[tuple[str, str, GenerationMode]]:
    """``(METHOD, path, mode)`` for every operation of the app's OpenAPI schema: valid requests for all,
    invalid ones for those with something to get wrong (a body or a query parameter; a string path
    parameter has no invalid value)."""
    from app.main import create_app
    from app.settings import Settings

    spec = create_app(Settings(models_dir=MODELS_DIR)).openapi()
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            found.append((method.upper(), path, GenerationMode.POSITIVE))
            query = [p for p in operation.get("parameters", []) if p.get("in") in ("query", "header")]
            if "requestBody" in operation or query:
                found.append((method.upper(), path, GenerationMode.NEGATIVE))
    return sorted(found)


RUNS = runs()


@pytest.fixture(scope="module")
def api_schema(committed_app):
    """The schema as the app serves it at /openapi.json, bound to the app (loaded and warm) for its calls."""
    return schemathesis.openapi.from_asgi("/openapi.json", committed_app)


@schemathesis.check
def error_is_json_with_a_message(ctx, response, case) -> bool | None:
    """A 4xx or 5xx answer is ``{"error": "<words>"}`` as JSON, with no traceback."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} answered as {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert "Traceback" not in body["error"]
    return None


def test_the_schema_has_the_five_inference_operations():
    posts = {path for method, path, _ in RUNS if method == "POST"}
    assert {"/encode", "/reconstruct", "/denoise", "/classify", "/cluster"} <= posts


@pytest.mark.parametrize(("method", "path", "mode"), RUNS, ids=[f"{m} {p} {mode}" for m, p, mode in RUNS])
def test_no_server_error(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case):
        case.call_and_validate(checks=[not_a_server_error, error_is_json_with_a_message])

    call()
