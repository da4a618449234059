"""Batch lines charged to their owner's daily token quota, chunk by chunk, as they run.

A chunk task reserves the most its lines may cost before it runs them (in the usage ledger of the
gateway DB, which every gateway replica shares) and settles their real count when they are done. The
reservation happens inside the task body, which a cached chunk never runs: a resumed or re-submitted
batch gets its finished chunks back without paying twice, and a chunk refused for quota raises, so
the refusal is never cached. The flow then runs the lines that still fit and fails the rest with
`tokens_quota_exceeded`: the batch completes with those lines in its error file."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bitinglip.auth import usage
from bitinglip.auth.accounts import AccountStore
from bitinglip.auth.limits import effective_limits
from bitinglip.auth.principal import Cap, Limits, Principal
from bitinglip.batches.format import BatchItem, chunk_key, error_line
from bitinglip.config import Settings
from bitinglip.db.session import Database
from bitinglip.db.tables import ApiKey
from bitinglip.errors import RateLimited
from bitinglip.schemas import TextGenerationParams
from bitinglip.serving.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

_ledger: usage.UsageLedger | None = None  # the flow run's, while it runs an API batch


def bind_ledger(db: Database | None) -> None:
    global _ledger
    _ledger = usage.UsageLedger(db) if db is not None else None


@dataclass(frozen=True)
class ChunkMeter:
    """Whose quota a batch's chunks are charged to: the owner's, and the submitting key's own when it
    narrows it. Hold ids are per batch and chunk, so a retried or resumed chunk replaces its hold."""

    job_id: str
    caps: list[Cap]

    def hold(self, key: str) -> str:
        return f"batch:{self.job_id}:{key}"


class QuotaShortfall(Exception):
    """The chunk does not fit in what is left of its owner's quota: nothing of it ran."""


def no_retry_on_shortfall(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: a refusal for quota is final (retrying cannot make room)."""
    return not isinstance(getattr(state, "data", None), QuotaShortfall)


def meter_for(db: Database, settings: Settings, job_id: str, owner: str, key_id: str | None) -> ChunkMeter:
    accounts = AccountStore(db)
    key_limits = Limits()
    if key_id is not None:
        with db.session() as s:
            key = s.get(ApiKey, key_id)
        if key is not None:
            key_limits = Limits(key.rate_limit_per_minute, key.tokens_per_day, key.images_per_day)
    who = Principal(
        owner,
        "user",
        key_id,
        user_limits=effective_limits(accounts.stored_limits(owner), settings),
        key_limits=key_limits,
    )
    return ChunkMeter(job_id, who.quota_caps("tokens"))


def result_settings(settings: Settings, device: str, dtype: str) -> str:
    """What besides the lines and the weights shapes a chunk's outputs (defaults, bounds, batching,
    numerics): part of its cache key, so a changed setting does not return stale outputs."""
    shaping = {
        "default_max_tokens": settings.default_max_tokens,
        "max_tokens_cap": settings.max_tokens_cap,
        "max_prompt_chars": settings.max_prompt_chars,
        "max_embedding_inputs": settings.max_embedding_inputs,
        "text_batching": settings.batch_text_batching,
        "device": device,
        "dtype": dtype,
    }
    return json.dumps(shaping, sort_keys=True)


def owned_chunk_key(items: list[BatchItem], models: dict[str, str], owner: str | None, shaping: str) -> str:
    """The chunk's cache key: its owner (a chunk cached for one user is never another's), the
    settings that shape its outputs, and its content with the models' revisions."""
    digest = hashlib.sha256(json.dumps([owner, shaping]).encode())
    digest.update(chunk_key(items, models).encode())
    return digest.hexdigest()


def line_cost(item: BatchItem, default_max_tokens: int) -> int:
    """The most one line may cost in tokens: what the gateway would reserve for the same request."""
    if item.url == "/v1/embeddings":
        embedding = EmbeddingRequest.model_validate(item.body)
        texts = [embedding.input] if isinstance(embedding.input, str) else list(embedding.input)
        return usage.embedding_tokens_estimate(texts)
    if item.url == "/v1/chat/completions":
        chat = ChatCompletionRequest.model_validate(item.body)
        params = TextGenerationParams(messages=chat.messages, max_tokens=chat.max_completion_tokens or chat.max_tokens)
        return chat.n * usage.text_tokens_estimate(params, default_max_tokens)
    completion = CompletionRequest.model_validate(item.body)
    prompts = [completion.prompt] if isinstance(completion.prompt, str) else completion.prompt
    per_prompt = (
        usage.text_tokens_estimate(TextGenerationParams(prompt=p, max_tokens=completion.max_tokens or 16), 16)
        for p in prompts
    )
    return completion.n * sum(per_prompt)


def line_usage(line: dict[str, Any]) -> int:
    if line.get("error") is not None:
        return 0  # a failed line costs nothing
    return usage.tokens_used((line.get("response") or {}).get("body"))


async def reserve(meter: ChunkMeter | None, key: str, items: list[BatchItem], settings: Settings) -> str | None:
    """Holds the chunk's most possible cost; QuotaShortfall when it does not fit. The hold id, or None
    when the chunk is not metered (a scheduled run has no owner)."""
    ledger = _ledger
    if meter is None or ledger is None:
        return None
    cost = sum(line_cost(item, settings.default_max_tokens) for item in items)
    hold = meter.hold(key)
    try:
        await asyncio.to_thread(lambda: ledger.reserve("tokens", cost, meter.caps, hold_id=hold, replace=True))
    except RateLimited as exc:
        raise QuotaShortfall(exc.message) from None
    return hold


async def settle(hold: str | None, lines: list[dict[str, Any]]) -> None:
    if hold is not None and _ledger is not None:
        await asyncio.to_thread(_ledger.settle, hold, sum(line_usage(line) for line in lines))


async def release(meter: ChunkMeter | None, key: str) -> None:
    """A chunk that failed for good gives its hold back (failed lines cost nothing)."""
    if meter is not None and _ledger is not None:
        await asyncio.to_thread(_ledger.settle, meter.hold(key), 0)


async def fitting(meter: ChunkMeter, items: list[BatchItem], settings: Settings) -> int:
    """How many of the chunk's lines, from the first, still fit in the owner's quota."""
    if _ledger is None:
        return len(items)
    costs = [line_cost(item, settings.default_max_tokens) for item in items]
    return await asyncio.to_thread(_ledger.fitting, meter.caps, "tokens", costs)


def quota_error_line(item: BatchItem) -> dict[str, Any]:
    refused = RateLimited(
        f"line {item.line}: the daily tokens quota is used up; this line did not run",
        limit=0,
        reset_after=usage.seconds_to_reset(),
        code="tokens_quota_exceeded",
    )
    return error_line(item.custom_id, "tokens_quota_exceeded", refused.message, status_code=429, body=refused.body())
