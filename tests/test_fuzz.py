"""Fuzzing with schemathesis against the gateway's own OpenAPI schema, every operation, with valid
(admin) credentials: no 5xx, and every documented response matches its schema. It runs against a
gateway replica with small caps, so generated requests stay cheap on this CPU; bounded to a few
examples per operation to keep the suite within minutes."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.platform_harness import Platform

# CI runs a fixed, reproducible sample; FUZZ_EXAMPLES=200 FUZZ_RANDOM=1 explores further by hand.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"

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


def test_gateway_api_never_errors_and_keeps_its_schema(platform: Platform, fuzzed_gateway: str) -> None:
    """Each operation gets its own Hypothesis run over the schema's strategy (the plugin's lazy
    fixture mode does not run on pytest 9); failures are gathered and reported together."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_gateway}/openapi.json")
    failures: dict[str, str] = {}
    operations, calls, statuses = 0, 0, Counter[int]()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label == "GET /api/v1/events":  # an endless event stream: tests/console/test_events.py
            continue
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=DERANDOMIZE,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            nonlocal calls
            response = case.call_and_validate(
                base_url=fuzzed_gateway,
                headers=platform.auth,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=60,
            )
            calls += 1
            statuses[response.status_code] += 1

        try:
            check()
        except Exception as exc:
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    print(f"{operations} operations, {calls} calls, statuses {dict(sorted(statuses.items()))}")
    assert operations >= 35 and calls >= 3 * operations
    assert sum(n for status, n in statuses.items() if status < 300) >= operations  # not only refusals
    assert not failures, "\n\n".join(f"{label}: {message}" for label, message in failures.items())
