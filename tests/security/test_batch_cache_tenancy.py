"""The batch chunk cache is per owner: the same lines submitted by another user are computed for them,
never served from the first user's outputs; the owner's own re-submission still comes from the cache."""

from __future__ import annotations

from typing import Any

from tests.conftest import TEXT_MODEL
from tests.platform_harness import Platform
from tests.security.test_quotas import new_user
from tests.test_batches import parse, submit, wait_batch


def lines(tag: str) -> list[dict[str, Any]]:
    body = {"model": TEXT_MODEL, "max_tokens": 3, "temperature": 0}
    return [
        {
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {**body, "prompt": f"{i} + {i} ="},
        }
        for i in range(8)  # two chunks of 4
    ]


def chunks_of(platform: Platform, batch_id: str) -> dict[str, int]:
    return dict(platform.client().get(f"/api/v1/tasks/{batch_id}").json()["result"]["chunks"])


def test_another_user_resubmitting_the_same_lines_gets_no_cache_hit(platform: Platform) -> None:
    (_, alice_key), (_, bob_key) = new_user(platform), new_user(platform)
    alice, bob = platform.sdk(key=alice_key), platform.sdk(key=bob_key)
    same = lines("shared")

    first = wait_batch(alice, submit(alice, same, endpoint="/v1/completions").id, timeout=600)
    assert first.status == "completed" and chunks_of(platform, first.id)["computed"] == 2
    again = wait_batch(alice, submit(alice, same, endpoint="/v1/completions").id, timeout=600)
    assert chunks_of(platform, again.id)["cached"] == 2  # the owner's own re-submission: from the cache

    theirs = wait_batch(bob, submit(bob, same, endpoint="/v1/completions").id, timeout=600)
    assert theirs.status == "completed" and theirs.request_counts.completed == 8
    assert chunks_of(platform, theirs.id) == {"total": 2, "done": 2, "cached": 0, "computed": 2}
    outputs = parse(bob.files.content(theirs.output_file_id).text)
    assert sorted(o["custom_id"] for o in outputs) == sorted(line["custom_id"] for line in same)
