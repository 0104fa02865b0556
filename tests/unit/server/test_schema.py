"""The proxy's OpenAPI document matches what it accepts and answers (schemathesis, in-process).

Schemathesis draws requests from ``/openapi.json``, valid ones and ones that break the
schema, sends them to the app through its ASGI transport (no network) and checks every
answer: no 5xx, a documented status, content type and headers, a body of the documented
shape, valid requests accepted and invalid ones refused. The controller is the embedded
default (bundled carbon trace, SQLite ledger in a temporary directory) with an in-process
engine that answers any prompt, as the replay engine answers only the bundled ones.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from sprout.chat import ChatRequest
from sprout.config import load_settings
from sprout.engines.base import Engine, Generation
from sprout.factory import build_controller
from sprout.server.keys import key_digest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

from sprout.server import create_app  # noqa: E402

KEY = "sk-sprout-schema-gateway"
CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.positive_data_acceptance,
]
#: Examples per operation and generation mode: the run stays well under a minute.
EXAMPLES = {"POST /v1/chat/completions": 80}
OPERATIONS = [
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /healthz",
    "GET /metrics",
]
#: Operations with something to break (a body, parameters, a key): negative cases too.
NEGATIVE = OPERATIONS[:3]
RUNS = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in NEGATIVE
]


class EchoEngine(Engine):
    """Answers any prompt at once."""

    name = "echo"

    def generate(self, request: ChatRequest) -> Generation:
        return Generation(request.prompt[:40] or "ok", 5, 3, 0.001, "echo-1", finish_reason="stop")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Settings with a trusted-gateway key (so the tenant header is honoured), a controller."""
    tmp = tmp_path_factory.mktemp("schema")
    keys = tmp / "keys.json"
    entry = {"id": "gw", "tenant": "gateway", "key_sha256": key_digest(KEY).hex()}
    keys.write_text(json.dumps({"keys": [{**entry, "trusted_gateway": True}]}))
    cfg = load_settings(
        env={},
        db_url=f"sqlite:///{tmp / 'ledger.db'}",
        meter="estimate",
        server_threads=4,
        server_keys_file=str(keys),
    )
    with build_controller(cfg, engine=EchoEngine(), poll=False) as controller:
        yield cfg, controller


@pytest.fixture
def schema(served):
    # An app per test: schemathesis's pytest plugin ends the app's lifespan after each test.
    cfg, controller = served
    app = create_app(controller, settings=cfg, models=["m-1", "m-2"])
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_document_lists_every_route(schema):
    labels = sorted(r.ok().label for r in schema.get_all_operations())
    assert labels == sorted(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), RUNS, ids=[f"{m.value}:{op}" for op, m in RUNS])
def test_answers_conform_to_the_document(schema, label, mode):
    operation = schema.find_operation_by_label(label)
    assert operation is not None

    @settings(
        max_examples=EXAMPLES.get(label, 25),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(headers={"authorization": f"Bearer {KEY}"})
        case.validate_response(response, checks=CHECKS)

    run()
