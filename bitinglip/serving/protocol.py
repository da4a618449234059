"""OpenAI-compatible request/response shapes. All derive from one base model (vLLM's layout);
unknown request fields are accepted and ignored (and logged), as vLLM does, except those whose silent
loss would change what a client gets back: those are refused by name (`REFUSED`)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bitinglip.keep_alive import KeepAlive
from bitinglip.outputs import PromptTokensDetails, TextUsage
from bitinglip.schemas import IGNORE_EOS_HELP, KEEP_ALIVE_HELP, MAX_SEED, MIN_TOKENS_HELP, ChatMessage, UnicodeRequest
from bitinglip.structured.formats import (
    RESPONSE_FORMAT_HELP,
    TOOL_CHOICE_HELP,
    TOOLS_HELP,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)

# Fields we do not support whose loss would change the reply's shape: a 400 naming them, not a log line.
REFUSED = {
    "functions": "functions are not supported; use tools",
    "function_call": "function_call is not supported; use tools and tool_choice",
}


class OpenAIBase(UnicodeRequest):
    model_config = ConfigDict(extra="allow")

    def ignored_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    @model_validator(mode="after")
    def _refused(self) -> OpenAIBase:
        for name in self.model_extra or {}:
            if name in REFUSED:
                raise ValueError(REFUSED[name])
        return self


class StreamOptions(OpenAIBase):
    include_usage: bool = False


class SamplingFields(OpenAIBase):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)  # before `seed`, which is checked against it
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    keep_alive: KeepAlive | None = Field(default=None, description=KEEP_ALIVE_HELP)  # extension
    min_tokens: int = Field(default=0, ge=0, description=MIN_TOKENS_HELP)  # vLLM's extension
    ignore_eos: bool = Field(default=False, description=IGNORE_EOS_HELP)  # vLLM's extension
    response_format: ResponseFormat | None = Field(default=None, description=RESPONSE_FORMAT_HELP)

    @field_validator("seed")
    @classmethod
    def _seed_leaves_room_for_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        """Choice i samples with seed + i (so choices differ): every one must still be a valid seed."""
        n = info.data.get("n", 1)
        if value is not None and value > MAX_SEED - (n - 1):
            raise ValueError(f"must be <= {MAX_SEED - (n - 1)} with n={n} (choice i samples with seed + i)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 8 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes up to 8 non-empty strings of up to 256 characters")
        return value


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, description=TOOLS_HELP)
    tool_choice: ToolChoice | None = Field(default=None, description=TOOL_CHOICE_HELP)
    parallel_tool_calls: bool | None = Field(
        default=None, description="Only false (or absent) is accepted: a reply makes at most one call."
    )

    @field_validator("parallel_tool_calls")
    @classmethod
    def _one_call(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("true is not supported: a reply makes at most one tool call; send false or leave it out")
        return value


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts or any(not p for p in prompts):
            raise ValueError("prompt must be a non-empty string or list of non-empty strings")
        if len(prompts) > 16:
            raise ValueError("at most 16 prompts per request")
        return value

    @model_validator(mode="after")
    def _choices(self) -> CompletionRequest:
        prompts = 1 if isinstance(self.prompt, str) else len(self.prompt)
        if prompts * self.n > 16:
            raise ValueError("at most 16 choices per request (prompts x n)")
        return self


class EmbeddingRequest(OpenAIBase):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    keep_alive: KeepAlive | None = Field(default=None, description=KEEP_ALIVE_HELP)  # extension


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ImageGenerationRequest(OpenAIBase):
    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str = Field(default="64x64", pattern=r"^\d{1,5}x\d{1,5}$")
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # extension: reproducible images
    num_inference_steps: int | None = Field(default=None, ge=1)  # extension
    negative_prompt: str | None = None  # extension
    user: str | None = None


class ImageObject(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageObject]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    def add(self, usage: TextUsage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        self.prompt_tokens_details.cached_tokens += usage.prompt_tokens_details.cached_tokens


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bitinglip"
    root: str | None = None


class ModelCardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None when the reply is a tool call
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
