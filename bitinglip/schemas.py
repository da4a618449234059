"""Request shapes shared by the gateway, the model workers and async jobs (one definition each)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest
from bitinglip.keep_alive import KeepAlive
from bitinglip.keep_alive import checked as checked_keep_alive
from bitinglip.structured import grammar
from bitinglip.structured.formats import (
    RESPONSE_FORMAT_HELP,
    TOOL_CHOICE_HELP,
    TOOLS_HELP,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from bitinglip.types import SamplingParams

MAX_SEED = 2**63 - 1
KEEP_ALIVE_HELP = (
    'How long the model stays loaded after this request: "30s", "5m", "1h", seconds as a number, '
    "0 (unload right after) or -1 (until evicted); default BITINGLIP_MODEL_KEEP_ALIVE."
)
MIN_TOKENS_HELP = "vLLM's extension: no end-of-sequence token before this many tokens (stop strings still stop)."
IGNORE_EOS_HELP = "vLLM's extension: never end at an end-of-sequence token, so the reply has max_tokens tokens."
RAW_HELP = (
    "Send `prompt` to the model exactly as it is. By default a model with a chat template gets the prompt "
    "as one user message through that template, as Ollama's generate does (/v1/completions is always raw)."
)


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where in JSON data (strings, list items, object keys and values) a lone UTF-16 surrogate sits,
    described for an error message, or None. JSON can carry one (`"\\ud800"`) but no UTF-8 text can:
    it would fail later, in a tokenizer, a log line or the hop to a worker, as a 500."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            what = f"a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X}, character {exc.start})"
            return f"at {where}, {what}" if where else what
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if found := lone_surrogate(item, f"{where}[{i}]"):
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if found := lone_surrogate(key, f"a key of {where or 'the object'}"):
                return found
            if found := lone_surrogate(item, f"{where}.{key}" if where else str(key)):
                return found
    return None


class UnicodeRequest(BaseModel):
    """Base of every request shape: refuses text that is not valid Unicode in any field, nested
    content parts and extra fields included, as a 4xx naming where."""

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if found := lone_surrogate(value):
            raise ValueError(f"{found}: text must be valid Unicode")
        return value

    @model_validator(mode="after")
    def _valid_unicode_extras(self) -> UnicodeRequest:
        if self.model_extra and (found := lone_surrogate(self.model_extra)):
            raise ValueError(f"{found}: text must be valid Unicode")
        return self


class ChatMessage(UnicodeRequest):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)  # an assistant turn's calls
    tool_call_id: str | None = Field(default=None, max_length=256)  # the call a tool turn answers

    def as_template_dict(self) -> dict[str, Any]:
        """The turn as chat templates take it; tool calls and answers are adapted to the template by
        `bitinglip.structured.tools.template_inputs`."""
        content = self.content
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        turn: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            turn["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        return turn

    def chars(self) -> int:
        """What the turn costs in prompt characters, its calls' text included."""
        calls = sum(len(c.function.name) + len(c.function.arguments) for c in self.tool_calls or [])
        return len(str(self.content or "")) + calls


class EmbeddingParams(UnicodeRequest):
    """Embeddings for one text or a list of texts."""

    model: str | None = Field(default=None, description="Installed embedding model; default when empty.")
    input: str | list[str]
    keep_alive: KeepAlive | None = Field(default=None, description=KEEP_ALIVE_HELP)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def check_limits(self, settings: Settings) -> None:
        """One check for every way in (sync, OpenAI, async jobs): refused at the door, never queued."""
        checked_keep_alive(self.keep_alive)
        texts = self.texts()
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        if len(texts) > settings.max_embedding_inputs:
            raise InvalidRequest(f"at most {settings.max_embedding_inputs} inputs per request", param="input")
        if any(len(t) > settings.max_prompt_chars for t in texts):
            raise InvalidRequest(f"an input is longer than {settings.max_prompt_chars} characters", param="input")


class ImageParams(UnicodeRequest):
    """Text-to-image. Bounds on size, steps and count come from settings (checked by the engine)."""

    model: str | None = Field(default=None, description="Installed image model; default when empty.")
    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    width: int = Field(default=64, ge=8)
    height: int = Field(default=64, ge=8)
    num_inference_steps: int = Field(default=4, ge=1)
    guidance_scale: float = Field(default=1.0, ge=0.0, le=30.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    n: int = Field(default=1, ge=1)

    def check_limits(self, settings: Settings) -> None:
        """Refuse what would exhaust memory or time before it reaches a device."""
        if max(self.width, self.height) > settings.max_image_side:
            raise InvalidRequest(
                f"width and height must be <= {settings.max_image_side}", param="width", code="image_too_large"
            )
        if self.num_inference_steps > settings.max_image_steps:
            raise InvalidRequest(
                f"num_inference_steps must be <= {settings.max_image_steps}", param="num_inference_steps"
            )
        if self.n > settings.max_images_per_request:
            raise InvalidRequest(f"n must be <= {settings.max_images_per_request}", param="n")

    @model_validator(mode="after")
    def _multiple_of_8(self) -> ImageParams:
        if self.width % 8 or self.height % 8:
            raise ValueError("width and height must be multiples of 8")
        return self


class TextGenerationParams(UnicodeRequest):
    """Text generation: a raw `prompt` or chat `messages`, and sampling settings."""

    model: str | None = Field(default=None, description="Installed model id; default text model when empty.")
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: list[Annotated[str, StringConstraints(max_length=256)]] | None = Field(default=None, max_length=8)
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Top alternatives per token.")
    keep_alive: KeepAlive | None = Field(default=None, description=KEEP_ALIVE_HELP)
    min_tokens: int = Field(default=0, ge=0, description=MIN_TOKENS_HELP)
    ignore_eos: bool = Field(default=False, description=IGNORE_EOS_HELP)
    raw: bool = Field(default=False, description=RAW_HELP)
    response_format: ResponseFormat | None = Field(default=None, description=RESPONSE_FORMAT_HELP)
    tools: list[Tool] | None = Field(default=None, max_length=grammar.MAX_TOOLS, description=TOOLS_HELP)
    tool_choice: ToolChoice | None = Field(default=None, description=TOOL_CHOICE_HELP)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TextGenerationParams:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.raw and self.messages is not None:
            raise ValueError("`raw` applies to a `prompt`; `messages` always go through the chat template")
        if self.stop and any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must be <= max_tokens")
        self._check_tools()
        if self.constrained and (self.min_tokens or self.ignore_eos):
            raise ValueError(
                "min_tokens and ignore_eos cannot be combined with response_format or tools: the grammar ends the reply"
            )
        return self

    def _check_tools(self) -> None:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        if self.tools and self.messages is None:
            raise ValueError("tools need `messages` (a chat), not a raw `prompt`")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice: a call is asked for, but no tools are given")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice: no tool is named {self.tool_choice.function.name!r}")

    @property
    def constrained(self) -> bool:
        """Whether the reply follows a grammar (a response format, or tools it may call)."""
        formatted = self.response_format is not None and self.response_format.type != "text"
        return formatted or self.calls_tools

    @property
    def calls_tools(self) -> bool:
        """Whether the reply may be a tool call (tools given, and `tool_choice` is not "none")."""
        return bool(grammar.active_tools(self.tools, self.tool_choice))

    def grammar(self) -> str | None:
        """The llguidance grammar the reply follows, or None; a 400 naming the field when it is refused."""
        return grammar.build(self.response_format, self.tools, self.tool_choice)

    def check_limits(self, settings: Settings) -> None:
        """The gateway refuses at the door what a worker would refuse after a hop (or a queue)."""
        checked_keep_alive(self.keep_alive)
        if self.prompt_chars() > settings.max_prompt_chars:
            raise InvalidRequest(f"prompt is longer than {settings.max_prompt_chars} characters", param="prompt")
        if (self.max_tokens or settings.default_max_tokens) > settings.max_tokens_cap:
            raise InvalidRequest(f"max_tokens must be <= {settings.max_tokens_cap}", param="max_tokens")
        self.grammar()  # a schema llguidance refuses is a 400 here, before anything is queued

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return SamplingParams(
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(self.stop or ()),
            logprobs=self.logprobs,
        )

    def template_messages(self, chat_model: bool = False) -> list[dict[str, Any]] | None:
        """What goes through the model's chat template, or None to tokenize `prompt` as it is: on a
        `chat_model` (one with a template) a prompt is one user message unless `raw`, as Ollama does."""
        if self.messages is None:
            return [{"role": "user", "content": self.prompt}] if chat_model and not self.raw else None
        return [m.as_template_dict() for m in self.messages]

    def template_tools(self) -> list[Tool] | None:
        """The tools a template renders: none with `tool_choice: "none"` (the model cannot call them)."""
        return grammar.active_tools(self.tools, self.tool_choice) or None

    def prompt_chars(self) -> int:
        """Characters of the prompt, tool definitions included (they are rendered into it)."""
        if self.prompt is not None:
            return len(self.prompt)
        tools = sum(len(t.model_dump_json()) for t in self.template_tools() or [])
        return sum(m.chars() for m in self.messages or []) + tools
