"""The text engine on the real SmolLM2 weights, in-process: batching must not change answers."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from bitinglip.engines.text import TextEngine, _Row
from bitinglip.engines.types import GenerationFailed, SamplingParams, TextDelta, TextRequest, TextResult
from bitinglip.errors import ContextLengthExceeded, InvalidRequest
from bitinglip.models.store import ModelStore
from tests.conftest import CAPITAL_QUESTION, TEXT_MODEL_FP32


@pytest.fixture(scope="module")
def engine(model_store: ModelStore) -> TextEngine:
    manifest = model_store.resolve(TEXT_MODEL_FP32)
    return TextEngine.load(manifest.id, model_store.path(manifest), "cpu", torch.float32, None)


def chat(engine: TextEngine, text: str) -> list[int]:
    return engine.encode(None, [{"role": "user", "content": text}])


def greedy(max_tokens: int = 24, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


def test_model_was_converted_from_gguf_to_safetensors(model_store: ModelStore) -> None:
    manifest = model_store.resolve(TEXT_MODEL_FP32)
    assert manifest.converted_from == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "model.safetensors" in manifest.files and not any(f.endswith(".gguf") for f in manifest.files)
    assert model_store.verify(manifest) == []


def test_mixed_batch_gives_each_request_its_own_answer(engine: TextEngine) -> None:
    paris = chat(engine, CAPITAL_QUESTION)
    alone = engine.run_batch([TextRequest(paris, greedy())])[0]
    mixed = engine.run_batch(
        [
            TextRequest(
                engine.encode("Once upon a time", None), SamplingParams(max_tokens=40, temperature=0.9, seed=3)
            ),
            TextRequest(paris, greedy()),
            TextRequest(engine.encode("1, 2, 3,", None), greedy(max_tokens=5)),
        ]
    )
    assert "Paris" in alone.text
    assert mixed[1].text == alone.text  # padding and neighbours do not change a greedy answer
    assert mixed[2].completion_tokens == 5 and mixed[2].finish_reason == "length"
    assert mixed[0].completion_tokens <= 40
    assert all(r.batch_size == 3 for r in mixed)


def test_seed_makes_sampling_reproducible_inside_any_batch(engine: TextEngine) -> None:
    prompt = engine.encode("The weather today is", None)
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=42)
    solo = engine.run_batch([TextRequest(prompt, params)])[0].text
    batched = engine.run_batch([TextRequest(prompt, greedy()), TextRequest(prompt, params)])[1].text
    assert solo == batched


def test_stop_strings_cut_the_text_and_streaming_matches(engine: TextEngine) -> None:
    deltas: list[str] = []
    result = engine.run_batch(
        [
            TextRequest(
                engine.encode("1, 2, 3,", None),
                greedy(max_tokens=30, stop=(" 7",)),
                sink=lambda d: deltas.append(d.text),
            )
        ]
    )[0]
    assert result.finish_reason == "stop"
    assert result.text.startswith(" 4, 5, 6,") and "7" not in result.text
    assert "".join(deltas) == result.text


def test_logprobs_are_reported_per_token(engine: TextEngine) -> None:
    result = engine.run_batch([TextRequest(engine.encode("Hello", None), greedy(max_tokens=4, logprobs=3))])[0]
    assert result.logprobs is not None and len(result.logprobs) == 4
    for lp in result.logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][1] == pytest.approx(lp.logprob)  # greedy picks the top alternative


def test_cancelled_request_stops_early_and_neighbours_finish(engine: TextEngine) -> None:
    cancel = threading.Event()
    tokens: list[TextDelta] = []

    def sink(delta: TextDelta) -> None:
        tokens.append(delta)
        if len(tokens) == 3:
            cancel.set()

    prompt = chat(engine, "Write a long story about a dragon who learns to fly.")
    stopped, finished = engine.run_batch(
        [
            TextRequest(prompt, greedy(max_tokens=60), sink=sink, cancelled=cancel),
            TextRequest(prompt, greedy(max_tokens=20)),
        ]
    )
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens < 10
    assert finished.completion_tokens == 20


def test_context_and_input_checks(engine: TextEngine) -> None:
    with pytest.raises(ContextLengthExceeded):
        engine.check_length(list(range(8000)), 500)
    with pytest.raises(InvalidRequest):
        engine.encode(None, None)
    with pytest.raises(InvalidRequest):
        engine.check_length([], 10)


def test_continuous_batching_admits_requests_mid_flight_without_changing_answers(engine: TextEngine) -> None:
    assert engine.supports_continuous
    first = TextRequest(chat(engine, CAPITAL_QUESTION), greedy(max_tokens=24))
    late = TextRequest(engine.encode("1, 2, 3,", None), greedy(max_tokens=12))
    expected = {id(r): engine.run_batch([TextRequest(r.input_ids, r.sampling)])[0].text for r in (first, late)}
    done = {id(req): result for req, result in engine.step([first])}
    for _ in range(3):
        done.update({id(req): result for req, result in engine.step([])})
    assert len(engine.running_requests()) == 1  # `first` is mid-generation when `late` joins
    done.update({id(req): result for req, result in engine.step([late])})
    assert len(engine.running_requests()) == 2
    for _ in range(60):
        if len(done) == 2:
            break
        done.update({id(req): result for req, result in engine.step([])})
    assert {k: v.text for k, v in done.items()} == expected
    assert engine.running_requests() == []


def test_a_preempted_row_restarts_and_gives_the_same_answer(engine: TextEngine) -> None:
    """transformers sets a background row aside by dropping it from the batch and its cache; admitted
    again it starts from its prompt: same greedy and seeded text, nothing of the other row disturbed.
    A row that streamed text is not set aside (a restart would stream it twice)."""
    job = TextRequest(chat(engine, "Write a short story about the sea."), greedy(max_tokens=20))
    seeded = TextRequest(chat(engine, "Name a fruit."), SamplingParams(max_tokens=12, temperature=0.9, seed=3))
    streamed = TextRequest(engine.encode("1, 2, 3,", None), greedy(max_tokens=30), sink=lambda delta: None)
    expected = {id(r): engine.run_batch([TextRequest(r.input_ids, r.sampling)])[0].text for r in (job, seeded)}
    done = {id(req): result for req, result in engine.step([job, seeded, streamed])}
    for _ in range(4):
        done.update({id(req): result for req, result in engine.step([])})
    assert engine.preempt([job, seeded, streamed]) == [job, seeded]
    assert engine.running_requests() == [streamed]
    done.update({id(req): result for req, result in engine.step([job, seeded])})
    for _ in range(60):
        if len(done) == 3:
            break
        done.update({id(req): result for req, result in engine.step([])})
    assert {k: ok.text for k, ok in done.items() if k != id(streamed)} == expected
    assert engine.running_requests() == []


def test_a_watched_async_jobs_row_is_still_preempted_and_its_text_never_repeats(engine: TextEngine) -> None:
    """An async job's text goes to its token log (worker/tokens.py) through a sink that takes a restart:
    its row makes way for interactive requests like any background row, and the log, told of the
    restart, skips the text it already has, so the watched pieces add up to the result exactly."""
    import asyncio

    from bitinglip.worker.tokens import TokenLog

    async def scenario() -> None:
        log = TokenLog(asyncio.get_running_loop())
        job = TextRequest(
            chat(engine, "Write a short story about the sea."),
            greedy(max_tokens=20),
            sink=lambda delta: log.add(delta.text),
            on_restart=log.restart,
        )
        done = {id(req): result for req, result in engine.step([job])}
        for _ in range(6):
            done.update({id(req): result for req, result in engine.step([])})
        assert engine.preempt([job]) == [job] and engine.running_requests() == []
        done.update({id(req): result for req, result in engine.step([job])})
        for _ in range(60):
            if done:
                break
            done.update({id(req): result for req, result in engine.step([])})
        log.close()
        pieces = [piece async for piece in log.follow() if piece is not None]
        assert len(pieces) > 1 and "".join(text for _, text in pieces) == done[id(job)].text

    asyncio.run(scenario())


# -- one request must not fail its batch (security item 4)

# Temperatures and top_p values the HTTP schemas let through (or that only the engine sees): each must be
# decoded greedily (tiny temperatures) or sampled without a NaN, never fail the batch.
TINY = (1e-300, 1e-30, 5e-324, 1e-6)


def poison_rows(engine: TextEngine, prompt: list[int]) -> list[TextRequest]:
    return [
        *(TextRequest(prompt, SamplingParams(max_tokens=16, temperature=t, seed=7, logprobs=20)) for t in TINY),
        TextRequest(prompt, SamplingParams(max_tokens=16, temperature=1e-300, top_p=1e-300)),
        TextRequest(prompt, SamplingParams(max_tokens=16, temperature=1.0, top_p=5e-324, seed=1)),
        TextRequest(prompt, SamplingParams(max_tokens=16, temperature=1e300, top_p=1e-30, seed=2)),
        TextRequest(prompt, SamplingParams(max_tokens=16, temperature=1e300, seed=3)),
    ]


def out_of_vocabulary(engine: TextEngine) -> TextRequest:
    """A prompt whose forward raises (token id past the embedding table): prefill isolation's culprit."""
    return TextRequest([1, engine.model.config.vocab_size + 10], greedy(max_tokens=8))


def test_tiny_temperature_is_greedy_and_params_are_checked() -> None:
    assert all(SamplingParams(temperature=t).greedy for t in (0.0, *TINY))
    assert not SamplingParams(temperature=0.01).greedy
    for bad in ({"temperature": float("nan")}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": float("nan")}):
        with pytest.raises(InvalidRequest):
            SamplingParams(**bad)  # type: ignore[arg-type]


def test_poison_rows_beside_normal_rows_in_a_static_batch(engine: TextEngine) -> None:
    paris = chat(engine, CAPITAL_QUESTION)
    count = engine.encode("1, 2, 3,", None)
    expected = [engine.run_batch([TextRequest(p, greedy())])[0] for p in (paris, count)]
    greedy_count = engine.run_batch([TextRequest(count, greedy(max_tokens=16))])[0]
    assert all(isinstance(r, TextResult) for r in (*expected, greedy_count))

    poison = poison_rows(engine, count)
    broken = out_of_vocabulary(engine)
    batch = [TextRequest(paris, greedy()), *poison, broken, TextRequest(count, greedy())]
    results = engine.run_batch(batch)

    normal = [results[0], results[-1]]
    assert [r.text for r in normal] == [e.text for e in expected]  # type: ignore[union-attr]
    failed = results[batch.index(broken)]
    assert isinstance(failed, GenerationFailed) and failed.message == "generation failed for this request"
    for request, result in zip(poison, results[1 : 1 + len(poison)], strict=True):
        assert isinstance(result, TextResult), result
        assert result.completion_tokens >= 1
        if request.sampling.greedy:
            assert result.text == greedy_count.text
    for lp in (lp for r in results[1 : 1 + len(TINY)] for lp in r.logprobs or []):  # type: ignore[union-attr]
        assert all(math.isfinite(v) for _, v in (("", lp.logprob), *lp.top))
        json.dumps([lp.logprob, lp.top], allow_nan=False)


def test_poison_admitted_mid_flight_leaves_the_running_batch_alone(engine: TextEngine) -> None:
    first = TextRequest(chat(engine, CAPITAL_QUESTION), greedy(max_tokens=24))
    late = TextRequest(engine.encode("1, 2, 3,", None), greedy(max_tokens=12))
    expected = {id(r): engine.run_batch([TextRequest(r.input_ids, r.sampling)])[0] for r in (first, late)}
    broken = out_of_vocabulary(engine)
    poison = poison_rows(engine, late.input_ids)
    done: dict[int, TextResult | GenerationFailed] = {}

    def step(admitted: list[TextRequest]) -> None:
        done.update({id(request): outcome for request, outcome in engine.step(admitted)})

    engine.reset()
    step([first])
    for _ in range(3):
        step([])
    step([broken, *poison, late])
    assert isinstance(done.pop(id(broken)), GenerationFailed)  # failed at admission, alone
    assert len(engine.running_requests()) == 2 + len(poison)  # `first`, `late` and every poison row go on
    for _ in range(60):
        if len(done) == 2 + len(poison):
            break
        step([])
    assert engine.running_requests() == []
    for request in (first, late):
        assert done[id(request)].text == expected[id(request)].text  # type: ignore[union-attr]
    assert all(isinstance(done[id(p)], TextResult) for p in poison)


def test_non_finite_logits_fail_their_row_only(engine: TextEngine) -> None:
    """The guard in `_sample` on the model's own logits for four rows, three of them then doctored."""
    prompts = [chat(engine, "Hi")] * 4
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor(prompts)).logits[:, -1, :].float()
    logits[1, 5] = float("nan")
    logits[2] = float("-inf")
    logits[3, :100] = float("-inf")  # some -inf is a masked token, not a poison
    rows = [_Row(TextRequest(p, SamplingParams(temperature=0.7, seed=s))) for s, p in enumerate(prompts)]
    chosen, usable = TextEngine._sample(logits, rows)
    assert usable == [True, False, False, True]
    assert chosen[3] >= 100
    lp = engine._logprob(int(chosen[3]), logits[3], 5)
    assert all(math.isfinite(v) for _, v in lp.top) and lp.logprob <= 0
    assert engine._logprob(0, logits[3], 0).logprob == -9999.0  # -inf is reported as OpenAI does


def test_rows_decode_their_text_as_the_tokenizer_does(engine: TextEngine) -> None:
    """Rows decode through the fast tokenizer's backend (`_text_decoder`): the same text as
    `tokenizer.decode`, special tokens skipped, a split multi-byte character left as the replacement."""
    from bitinglip.engines.text import _text_decoder

    decode = _text_decoder(engine.tokenizer)
    samples = [
        engine.encode(None, [{"role": "user", "content": "Héllo, wörld! 日本語 🙂  spaces  , punct ."}]),
        engine.encode("  leading and trailing  ", None),
        engine.encode("🙂", None)[:1],  # half of a character
        [],
    ]
    for ids in samples:
        assert decode(ids) == engine.tokenizer.decode(ids, skip_special_tokens=True)
