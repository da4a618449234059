"""Grammar-constrained decoding in both text engines on the real SmolLM2 (the GGUF on llama.cpp, the
same weights converted for transformers), in-process: every reply follows its own row's grammar, free
rows beside it are untouched, and a row set aside for interactive work keeps to its grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from bitinglip.engines.llama import LlamaEngine
from bitinglip.engines.protocol import TextGenerator
from bitinglip.engines.text import TextEngine
from bitinglip.engines.types import GenerationFailed, SamplingParams, TextRequest, TextResult
from bitinglip.models.store import ModelStore
from bitinglip.schemas import TextGenerationParams
from bitinglip.structured.tools import parse_call
from tests.conftest import TEXT_MODEL_FP32
from tests.unit.test_llama_engine import _engine as llama_engine


class City(BaseModel):
    """What the openai SDK's `parse` sends for such a model: no other keys (additionalProperties: false).
    Bounded, as a schema for a 135M model at temperature 0.9 must be: unbounded, it may write landmarks
    until max_tokens (grammatical, but cut)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    is_capital: bool
    founded: int = Field(ge=-1000, le=2100)
    landmarks: list[Annotated[str, Field(max_length=40)]] = Field(max_length=3)


CITY = {"type": "json_schema", "json_schema": {"name": "city", "schema": City.model_json_schema()}}
ASK = [{"role": "user", "content": "Describe Paris."}]


@pytest.fixture(scope="module", params=["llama.cpp", "transformers"])
def engine(request: pytest.FixtureRequest) -> Iterator[TextGenerator]:
    if request.param == "llama.cpp":
        llama = llama_engine()
        yield llama
        llama.unload()
    else:
        store: ModelStore = request.getfixturevalue("model_store")
        manifest = store.resolve(TEXT_MODEL_FP32)
        yield TextEngine.load(manifest.id, store.path(manifest), "cpu", torch.float32, None)


def constrained(engine: TextGenerator, sampling: SamplingParams, **fields: Any) -> TextRequest:
    """A request as the pool makes it: the chat rendered with its tools, its grammar compiled."""
    params = TextGenerationParams(messages=ASK, **fields)  # type: ignore[arg-type]
    grammar = params.grammar()
    assert grammar is not None
    ids = engine.encode(None, params.template_messages(), params.template_tools())
    return TextRequest(ids, sampling, constraint=engine.constraint(grammar))


def ok(result: TextResult | GenerationFailed) -> TextResult:
    assert isinstance(result, TextResult), result
    return result


def run(engine: TextGenerator, requests: list[TextRequest]) -> list[TextResult]:
    assert isinstance(engine, LlamaEngine | TextEngine)
    engine.reset()
    return [ok(r) for r in engine.run_batch(requests)]


def test_every_seed_gives_a_valid_object_beside_a_free_row(engine: TextGenerator) -> None:
    free = TextRequest(engine.encode(None, ASK), SamplingParams(max_tokens=24, temperature=0.0))
    alone = run(engine, [TextRequest(free.input_ids, free.sampling)])[0].text
    sampling = [SamplingParams(max_tokens=320, temperature=0.9, seed=s) for s in range(4)]
    rows = [constrained(engine, s, response_format=CITY) for s in sampling]
    *replies, beside = run(engine, [*rows, free])
    for reply in replies:
        assert reply.finish_reason == "stop", reply.text
        City.model_validate_json(reply.text)
    # a free row in the same batch is not masked: it answers in prose, as alone (word for word on
    # transformers; llama.cpp's greedy text is best effort across batch shapes, docs/architecture.md §3.15)
    assert beside.completion_tokens == 24 and not beside.text.startswith("{")
    if isinstance(engine, TextEngine):
        assert beside.text == alone


def test_a_reply_cut_by_max_tokens_ends_with_length(engine: TextGenerator) -> None:
    reply = run(engine, [constrained(engine, SamplingParams(max_tokens=6, temperature=0.0), response_format=CITY)])[0]
    assert reply.finish_reason == "length" and reply.completion_tokens == 6 and reply.text.startswith("{")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_required_call_is_well_formed(engine: TextGenerator, choice: Any) -> None:
    sampling = [SamplingParams(max_tokens=80, temperature=0.8, seed=s) for s in range(3)]
    for reply in run(engine, [constrained(engine, s, tools=[WEATHER], tool_choice=choice) for s in sampling]):
        call = parse_call(reply.text)
        assert call is not None and call.function.name == "get_weather", reply.text
        arguments = json.loads(call.function.arguments)
        assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")


def test_a_preempted_constrained_row_keeps_to_its_grammar(engine: TextGenerator) -> None:
    """llama.cpp resumes the row where it was, with its matcher where it was; transformers restarts
    it with a fresh matcher (so its seeded reply is the one it gives unpreempted)."""
    assert isinstance(engine, LlamaEngine | TextEngine)
    engine.reset()
    sampling = SamplingParams(max_tokens=320, temperature=0.9, seed=11)
    expected = run(engine, [constrained(engine, sampling, response_format=CITY)])[0].text
    job = constrained(engine, sampling, response_format=CITY)
    other = TextRequest(engine.encode(None, ASK), SamplingParams(max_tokens=12, temperature=0.0))
    done = dict((id(r), res) for r, res in engine.step([job, other]))
    for _ in range(6):
        done.update((id(r), res) for r, res in engine.step([]))
    assert engine.preempt([job]) == [job]
    for _ in range(3):
        done.update((id(r), res) for r, res in engine.step([]))
    done.update((id(r), res) for r, res in engine.step([job]))
    for _ in range(200):
        if id(job) in done:
            break
        done.update((id(r), res) for r, res in engine.step([]))
    reply = ok(done[id(job)])
    City.model_validate_json(reply.text)
    if isinstance(engine, TextEngine):
        assert reply.text == expected
