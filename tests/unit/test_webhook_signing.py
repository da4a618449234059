"""Webhook signatures and bodies, without HTTP: a receiver following the Standard Webhooks spec (by
hand, and with the spec's own library) verifies what we sign, and refuses a changed body, another
secret and an old timestamp; bodies carry the job's state and nothing secret, and stay under the cap."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from bitinglip.db.tables import Job
from bitinglip.webhooks import payload
from bitinglip.webhooks.signing import new_message_id, new_secret, signed_headers

BODY = b'{"type":"job.completed","data":{"id":"j1","status":"completed"}}'


def test_a_receiver_verifies_the_signature_by_the_spec() -> None:
    secret, message_id, now = new_secret(), new_message_id(), datetime.now(UTC)
    headers = signed_headers(secret, message_id, now, BODY)
    assert headers["webhook-id"] == message_id and headers["webhook-timestamp"] == str(int(now.timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{headers['webhook-timestamp']}.".encode() + BODY
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"  # HMAC-SHA256 over id.timestamp.body
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_a_changed_body_another_secret_or_an_old_timestamp_fail() -> None:
    secret = new_secret()
    headers = signed_headers(secret, new_message_id(), datetime.now(UTC), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"completed", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    replayed = signed_headers(secret, new_message_id(), datetime.now(UTC) - timedelta(minutes=10), BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, replayed)


def test_secrets_and_ids_are_fresh() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50 and all(len(base64.b64decode(s[6:])) == 32 for s in secrets)
    assert len({new_message_id() for _ in range(50)}) == 50


def _job(**fields: object) -> Job:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    base = dict(
        id="job-1",
        type="text",
        model="tiny@main",
        params={"prompt": "a secret prompt"},
        priority=1,
        status="completed",
        owner="alice",
        request_id="req-1",
        result={"text": "x" * 5000},
        error=None,
        created_at=now,
        started_at=now,
        finished_at=now + timedelta(seconds=2),
        webhook={"url": "https://93.184.215.14/h", "events": ["completed"]},
    )
    return Job(**(base | fields))


def test_the_body_is_the_jobs_state_and_nothing_secret() -> None:
    data = json.loads(payload.body(_job(), "completed", 64_000))
    assert data["type"] == "job.completed" and data["data"]["result"] == {"text": "x" * 5000}
    assert (data["data"]["id"], data["data"]["status"], data["data"]["object"]) == ("job-1", "completed", "job")
    assert "params" not in data["data"] and "a secret prompt" not in json.dumps(data)
    assert "webhook" not in data["data"] and "owner" not in data["data"]
    start = json.loads(payload.body(_job(), "start", 64_000))["data"]
    assert (start["status"], start["result"], start["finished_at"]) == ("running", None, None)
    batch = json.loads(payload.body(_job(type="batch", params={"key_id": "bl_k1"}), "completed", 64_000))
    assert batch["type"] == "batch.completed" and "bl_k1" not in json.dumps(batch)


def test_a_body_past_the_cap_leaves_the_result_out() -> None:
    encoded = payload.body(_job(), "completed", 2_000)
    assert len(encoded) <= 2_000
    data = json.loads(encoded)["data"]
    assert data["result"] is None and data["result_omitted"] is True


def test_who_wants_which_event() -> None:
    job = _job()
    assert payload.wants(job, "completed") and not payload.wants(job, "start")
    assert not payload.wants(_job(webhook=None), "completed")
