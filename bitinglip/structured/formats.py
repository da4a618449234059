"""The request and response shapes of structured output and tool calling, in OpenAI's words: one
definition for the OpenAI routes, the native route, async jobs and batch lines.

Sub-objects refuse fields they do not know (`extra="forbid"`): a misspelt `json_schema.schema` or an
unsupported kind of tool must be a 400, never silently generate unconstrained text."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's rule for function and schema names; it also keeps a name safe inside the grammar's literals.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    """`schema` is kept under that name on the wire (pydantic's own `schema` attribute is in the way)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=4096)
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the reply must match.")
    strict: bool | None = Field(default=None, description="Accepted either way: the schema is always enforced.")


class JsonSchemaFormat(_Strict):
    """A JSON value matching `json_schema.schema`."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
RESPONSE_FORMAT_HELP = (
    'Constrain the reply while it is generated: {"type": "json_object"} (any JSON object) or '
    '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}; {"type": "text"} is the default.'
)


class FunctionDefinition(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(default=None, description="Accepted either way: arguments always match.")


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
TOOLS_HELP = "Functions the model may call (OpenAI's shape); the reply's `tool_calls` hold the call, if any."
TOOL_CHOICE_HELP = (
    '"auto" (default with tools): text or one call; "required": one call; "none": no call; '
    '{"type": "function", "function": {"name": ...}}: a call of that function.'
)


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    """A call the model made (a reply) or made earlier (an assistant message of the history)."""

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall
