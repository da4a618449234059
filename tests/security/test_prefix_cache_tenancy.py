"""The llama.cpp engine's prompt-prefix cache, across tenants, through the gateway: a user's repeated
prompt reuses its cached prefix (reported as `usage.prompt_tokens_details.cached_tokens`); another user
sending the same prompt right after gets nothing from it, so neither that field nor the time to first
token can confirm what someone else just asked."""

from __future__ import annotations

from tests.platform_harness import Platform


def test_a_cached_prompt_is_reused_only_by_its_own_user(platform: Platform, tenants: dict[str, str]) -> None:
    alice, bob = platform.client(tenants["alice"]), platform.client(tenants["bob"])
    secret = [{"role": "user", "content": "My account number at the bank is 4417-2291-0038. Say hello."}]
    body = {"messages": secret, "max_tokens": 2, "temperature": 0}
    engine = {"Cache-Control": "no-store"}  # about the engine's prefix cache: every call runs, none is replayed

    def cached(client: object) -> int:
        answered = client.post("/api/v1/inference/text", json=body, headers=engine)  # type: ignore[attr-defined]
        assert answered.status_code == 200, answered.text
        return int(answered.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    cached(alice)
    assert cached(alice) >= 32  # her prompt's blocks were cached for her
    assert cached(bob) == 0  # the same words from bob: nothing reused
    openai_body = {"model": "smollm2-135m-instruct", **body}
    openai_usage = bob.post("/v1/chat/completions", json=openai_body, headers=engine).json()["usage"]
    assert openai_usage["prompt_tokens_details"]["cached_tokens"] >= 32  # bob's own, on the OpenAI route
    assert cached(alice) == 0  # bob's prompt is the one cached now
