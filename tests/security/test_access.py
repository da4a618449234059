"""Security and tenancy against the running gateway: every route needs credentials (checked from the
app's own route table), roles, tenant isolation, key revocation, login tokens and their expiry, rate
limits and quotas (in memory and in the real Redis), the production refusal and the audit trail."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import jwt
import openai
import pytest
from fastapi.routing import APIRoute

from api.app import InsecureSettings, create_app
from bitinglip.auth.limits import Limiter
from bitinglip.auth.principal import Limits, Principal
from bitinglip.config import Settings
from bitinglip.errors import RateLimited
from tests.conftest import IMAGE_MODEL, TEXT_MODEL, result_path
from tests.platform_harness import Platform
from tests.security.conftest import envelope, strong_settings

OPEN = {  # and the docs and the console, which are not API routes
    ("GET", "/health"),
    ("POST", "/api/v1/auth/login"),
    ("GET", "/api/v1/results/signed/{path:path}"),  # its signature is the credential (tests/console)
}


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) of the app's route table (included routers flattened), minus the open ones."""
    app = create_app(strong_settings())
    found = []
    pending = list(app.routes)
    while pending:
        route = pending.pop(0)
        if (included := getattr(route, "original_router", None)) is not None:
            pending += included.routes
        elif isinstance(route, APIRoute):
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            found += [(method, path) for method in sorted(route.methods) if (method, route.path) not in OPEN]
    return found


def test_every_route_without_credentials_is_401(platform: Platform) -> None:
    routes = _routes()
    assert len(routes) >= 35  # the table really was read
    anonymous, forged = platform.client(key=""), platform.client(key="bl-000000000000-" + "x" * 43)
    for method, path in routes:
        for client in (anonymous, forged):
            response = client.request(method, path)
            envelope(response, 401, "authentication_error")
            assert response.headers["WWW-Authenticate"] == "Bearer", (method, path)
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/docs").status_code == 200 and anonymous.get("/openapi.json").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        platform.sdk(key="not-a-key").models.list()


def test_user_is_not_admin(platform: Platform, tenants: dict[str, str]) -> None:
    bob = platform.client(key=tenants["bob"])
    assert bob.get("/api/v1/auth/me").json()["role"] == "user"
    admin_only = [
        ("POST", "/api/v1/models/download", {"name": TEXT_MODEL}),
        ("DELETE", f"/api/v1/models/{TEXT_MODEL}", None),
        ("POST", f"/api/v1/models/{TEXT_MODEL}/pin", None),
        ("GET", "/api/v1/workers", None),
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"username": "mallory"}),
        ("POST", "/api/v1/auth/keys", {"username": tenants["alice_user"]}),
        ("POST", "/api/v1/auth/keys", {"rate_limit_per_minute": 10**6}),
        ("GET", "/metrics", None),
        ("GET", "/api/v1/metrics", None),
    ]
    for method, path, body in admin_only:
        envelope(bob.request(method, path, json=body), 403, "permission_error")
    assert bob.get("/api/v1/models").status_code == 200  # reading the catalogue is for everyone


def test_tenants_see_only_their_own(platform: Platform, tenants: dict[str, str]) -> None:
    alice, bob, admin = (platform.client(key=tenants["alice"]), platform.client(key=tenants["bob"]), platform.client())
    submitted = alice.post("/api/v1/tasks", json={"params": {"prompt": "Hi", "max_tokens": 2}})
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["owner"] == tenants["alice_user"]
    upload = alice.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"}).json()
    image = alice.post(
        "/v1/images/generations", json={"model": IMAGE_MODEL, "prompt": "a cat", "response_format": "url"}
    ).json()
    image_path = f"/api/v1/files/{result_path(image['data'][0]['url'])}"
    assert f"/images/{tenants['alice_user']}/" in image_path

    for method, path in [
        ("GET", f"/api/v1/tasks/{job['id']}"),
        ("DELETE", f"/api/v1/tasks/{job['id']}"),
        ("GET", f"/v1/files/{upload['id']}"),
        ("GET", f"/v1/files/{upload['id']}/content"),
        ("DELETE", f"/v1/files/{upload['id']}"),
        ("GET", image_path),
    ]:
        envelope(bob.request(method, path), 404)  # not 403: others' things do not exist for bob
    assert job["id"] not in [j["id"] for j in bob.get("/api/v1/tasks").json()["items"]]
    assert upload["id"] not in [f["id"] for f in bob.get("/v1/files").json()["data"]]
    envelope(bob.post("/v1/batches", json={"input_file_id": upload["id"], "endpoint": "/v1/embeddings"}), 404)

    assert alice.get(image_path).headers["content-type"] == "image/png"
    assert alice.get(f"/v1/files/{upload['id']}/content").content == b"{}\n"
    assert admin.get(f"/api/v1/tasks/{job['id']}").json()["owner"] == tenants["alice_user"]  # admins see all


def test_revoked_key_is_refused_and_others_keys_are_out_of_reach(platform: Platform, tenants: dict[str, str]) -> None:
    alice, bob = platform.client(key=tenants["alice"]), platform.client(key=tenants["bob"])
    spare = alice.post("/api/v1/auth/keys", json={"name": "spare"}).json()
    assert spare["key"].startswith("bl-") and spare["username"] == tenants["alice_user"]
    listed = alice.get("/api/v1/auth/keys").json()
    assert {k["id"] for k in listed} >= {spare["id"]} and all("key" not in k for k in listed)  # shown once
    envelope(bob.delete(f"/api/v1/auth/keys/{spare['id']}"), 404)
    spare_client = platform.client(key=spare["key"])
    assert spare_client.get("/api/v1/auth/me").status_code == 200
    assert alice.delete(f"/api/v1/auth/keys/{spare['id']}").json()["revoked_at"] is not None
    envelope(spare_client.get("/api/v1/auth/me"), 401, "authentication_error")


def test_login_token_works_with_the_sdk_and_expires(platform: Platform) -> None:
    anonymous = platform.client(key="")
    password = platform.settings.secret("admin_password")
    envelope(anonymous.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong"}), 401)
    login = anonymous.post("/api/v1/auth/login", json={"username": "admin", "password": password}).json()
    assert login["token_type"] == "bearer" and login["expires_in"] == platform.settings.jwt_ttl_s
    assert platform.sdk(key=login["access_token"]).models.list().data  # the openai SDK's api_key= works
    secret = platform.settings.secret("jwt_secret")
    now = int(time.time())
    expired = jwt.encode({"sub": "admin", "role": "admin", "iat": now - 100, "exp": now - 10}, secret, "HS256")
    assert envelope(platform.client(key=expired).get("/api/v1/auth/me"), 401)["code"] == "token_expired"
    forged = jwt.encode({"sub": "admin", "role": "admin", "iat": now, "exp": now + 60}, "another-secret" * 4, "HS256")
    envelope(platform.client(key=forged).get("/api/v1/auth/me"), 401)


def test_rate_limit_and_quotas_over_http(platform: Platform, tenants: dict[str, str]) -> None:
    admin = platform.client()

    def key(**limits: int) -> httpx.Client:
        created = admin.post("/api/v1/auth/keys", json={"username": tenants["bob_user"], **limits})
        return platform.client(key=created.json()["key"])

    limited = key(rate_limit_per_minute=3)
    for remaining in (2, 1, 0):
        assert limited.get("/api/v1/auth/me").headers["X-RateLimit-Remaining"] == str(remaining)
    refused = limited.get("/api/v1/auth/me")
    assert envelope(refused, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["X-RateLimit-Limit"] == "3"

    tokens = key(tokens_per_day=40)  # the key narrows bob's (unlimited) quota
    chat = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4}
    assert tokens.post("/v1/chat/completions", json=chat).status_code == 200  # ~40 tokens with the template
    assert envelope(tokens.post("/v1/chat/completions", json=chat), 429)["code"] == "tokens_quota_exceeded"
    envelope(tokens.post("/api/v1/tasks", json={"params": {"prompt": "x", "max_tokens": 2}}), 429)

    images = key(images_per_day=1)
    body = {"model": IMAGE_MODEL, "prompt": "a dog"}
    assert images.post("/v1/images/generations", json=body).status_code == 200
    assert envelope(images.post("/v1/images/generations", json=body), 429)["code"] == "images_quota_exceeded"


async def test_limits_shared_through_redis_and_not_in_memory() -> None:
    """Two limiters are two gateway replicas: with Redis they count together (the real server on
    127.0.0.1:6379, under a prefix of this run's own); in memory each counts alone. (Quotas are in
    the gateway DB's usage ledger, which replicas share by construction: tests/security/test_quota_ledger.py.)"""
    prefix = f"bitinglip-test-{uuid.uuid4().hex}"
    who = Principal("carol", "user", "k1", user_limits=Limits(rate_limit_per_minute=4))
    shared = Settings(redis_url="redis://127.0.0.1:6379", redis_prefix=prefix)
    one, two = Limiter(shared), Limiter(shared)
    try:
        for limiter in (one, two, one, two):
            await limiter.hit(who)
        with pytest.raises(RateLimited):
            await two.hit(who)
        other_key = Principal("carol", "user", "k2", user_limits=Limits(rate_limit_per_minute=4))
        with pytest.raises(RateLimited):
            await one.hit(other_key)  # the limit is the user's: another key of carol's is over it too
    finally:
        await one.reset()
    alone = [Limiter(Settings()), Limiter(Settings())]
    for limiter in (*alone, *alone):
        await limiter.hit(who)
    await alone[0].hit(who)  # a third on one replica: still under 4 there


def test_replicated_gateways_share_rate_limits_in_redis(platform: Platform, tenants: dict[str, str]) -> None:
    env = {"BITINGLIP_REDIS_URL": "redis://127.0.0.1:6379", "BITINGLIP_REDIS_PREFIX": f"bl-test-{uuid.uuid4().hex}"}
    urls = [platform.start_extra_gateway(f"gateway-redis-{i}", env) for i in range(2)]
    try:
        created = platform.client().post(
            "/api/v1/auth/keys", json={"username": tenants["bob_user"], "rate_limit_per_minute": 4}
        )
        headers = {"Authorization": f"Bearer {created.json()['key']}"}
        statuses = [httpx.get(f"{urls[i % 2]}/api/v1/auth/me", headers=headers).status_code for i in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
    finally:
        for i in range(2):
            platform.stop(f"gateway-redis-{i}")


def test_production_refuses_open_access() -> None:
    with pytest.raises(InsecureSettings, match="OPEN_ACCESS"):
        create_app(strong_settings(environment="production", open_access=True))
    assert create_app(strong_settings(environment="production"))


def test_audit_log_records_security_events(platform: Platform, tenants: dict[str, str]) -> None:
    platform.client(key="").get("/api/v1/tasks")  # a denied request
    deadline = time.monotonic() + 10
    wanted = {"user_created", "api_key_created", "api_key_revoked", "login", "request_denied"}
    while True:
        lines = (platform.settings.home_dir / "logs" / "gateway.log").read_text().splitlines()
        seen = {m.group(1) for line in lines if "audit=True" in line and (m := re.search(r"\] (\w+)\s", line))}
        if wanted <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert wanted <= seen, seen
    assert not any(tenants["alice"] in line for line in lines)  # keys never reach the log
