"""Fuzzing with schemathesis against the gateway's own OpenAPI schema, every operation, with valid
(admin) credentials: no 5xx, and every documented response matches its schema. It runs against a
gateway replica with small caps, so generated requests stay cheap on this CPU; bounded to a few
examples per operation to keep the suite within minutes."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.platform_harness import Platform

SMALL_CAPS = {
    "BITINGLIP_MAX_TOKENS_CAP": "4",
    "BITINGLIP_MAX_PROMPT_CHARS": "2000",
    "BITINGLIP_MAX_EMBEDDING_INPUTS": "8",
    "BITINGLIP_MAX_IMAGE_SIDE": "64",
    "BITINGLIP_MAX_IMAGE_STEPS": "2",
    "BITINGLIP_MAX_IMAGES_PER_REQUEST": "1",
}


@pytest.fixture(scope="module")
def fuzzed_gateway(platform: Platform) -> Any:
    url = platform.start_extra_gateway("gateway-fuzz", SMALL_CAPS)
    yield url
    platform.stop("gateway-fuzz")


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_gateway: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_gateway}/openapi.json")


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_gateway_api_never_errors_and_keeps_its_schema(case: Any, platform: Platform, fuzzed_gateway: str) -> None:
    case.call_and_validate(
        base_url=fuzzed_gateway,
        headers=platform.auth,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=60,
    )
