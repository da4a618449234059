"""Batch lines are charged to their owner's daily token quota as they run: when it runs out, the
remaining lines go to the error file with `tokens_quota_exceeded` and the batch still completes."""

from __future__ import annotations

from typing import Any

from tests.conftest import TEXT_MODEL
from tests.platform_harness import Platform
from tests.security.test_quotas import new_user, settled_usage
from tests.test_batches import parse, submit, wait_batch

QUOTA = 60


def test_batch_lines_are_charged_and_the_rest_fail_when_the_quota_runs_out(platform: Platform) -> None:
    _, key = new_user(platform, tokens_per_day=QUOTA)
    sdk = platform.sdk(key=key)
    body = {"model": TEXT_MODEL, "max_tokens": 3, "temperature": 0}
    requests: list[dict[str, Any]] = [
        {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/completions", "body": {**body, "prompt": f"Count {i}"}}
        for i in range(12)  # three chunks of 4; together far more than the quota
    ]
    done = wait_batch(sdk, submit(sdk, requests, endpoint="/v1/completions").id, timeout=600)
    assert done.status == "completed", done
    counts = done.request_counts
    assert counts.total == 12 and counts.completed >= 1 and counts.failed >= 1
    assert counts.completed + counts.failed == 12

    outputs = parse(sdk.files.content(done.output_file_id).text)
    errors = parse(sdk.files.content(done.error_file_id).text)
    assert all(e["error"]["code"] == "tokens_quota_exceeded" for e in errors), errors
    assert all(e["response"]["status_code"] == 429 for e in errors)
    ran = sorted(int(o["custom_id"].split("-")[1]) for o in outputs)
    refused = sorted(int(e["custom_id"].split("-")[1]) for e in errors)
    assert ran == list(range(len(ran))) and max(ran) < min(refused)  # the remaining lines, in order

    spent = sum(o["response"]["body"]["usage"]["total_tokens"] for o in outputs)
    tokens = settled_usage(platform, key)["tokens"]
    assert tokens["used"] == spent <= QUOTA  # every line that ran is charged; none past the quota
