"""Tool calling's text side, in one place: how tools and earlier calls reach a chat template, how the
model's reply is read back as a call, and how a streamed reply becomes OpenAI's `delta.tool_calls`.

The format is Hermes' (Qwen's templates and many others use it): a call is
`<tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>`, a tool's answer comes back as a
user turn holding `<tool_response>\\n...\\n</tool_response>`. A template that takes a `tools` variable
renders the tools itself; for one that does not (SmolLM2's), `TOOLS_PROMPT` lists them in the system
message and earlier calls and answers are written into the turns' text. Either way the grammar makes
the reply follow this format (bitinglip.structured.grammar), so reading it back cannot fail on a
complete reply."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bitinglip.structured.formats import FunctionCall, Tool, ToolCall
from bitinglip.structured.grammar import CALL_ARGUMENTS, CALL_CLOSE, CALL_OPEN

TOOLS_PROMPT = """# Tools

You may call one of the functions below to answer the user.

Function signatures, one JSON object a line, within <tools></tools> XML tags:
<tools>
{tools}
</tools>

To call a function, reply with only a JSON object holding its name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

_CALL = re.compile(
    re.escape(CALL_OPEN) + r"([A-Za-z0-9_-]{1,64})" + re.escape(CALL_ARGUMENTS) + r"(.*)" + re.escape(CALL_CLOSE),
    re.DOTALL,
)
_HEADER = re.compile(re.escape(CALL_OPEN) + r"([A-Za-z0-9_-]{1,64})" + re.escape(CALL_ARGUMENTS))


def template_takes_tools(source: str | None) -> bool:
    """Whether a chat template reads a `tools` variable (renders tool definitions itself)."""
    if not source:
        return False
    try:
        return "tools" in meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(source))
    except TemplateSyntaxError:
        return False


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    return f"{CALL_OPEN}{function.get('name', '')}{CALL_ARGUMENTS}{function.get('arguments') or '{}'}{CALL_CLOSE}"


def template_inputs(
    messages: list[dict[str, Any]], tools: Sequence[Tool] | None, takes_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and `tools` a chat template is given. `messages` are OpenAI-shaped dicts
    (`ChatMessage.as_template_dict`): assistant turns may hold `tool_calls`, `tool` turns answer them."""
    definitions = [t.model_dump(exclude_none=True) for t in tools or []]
    if takes_tools:
        converted = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):  # templates expect arguments as a mapping (transformers' convention)
                m["tool_calls"] = [_with_mapping_arguments(c) for c in m["tool_calls"]]
            converted.append(m)
        return converted, definitions or None
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(_call_text(c) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if definitions:
        lines = "\n".join(json.dumps(d["function"], ensure_ascii=False) for d in definitions)
        listing = TOOLS_PROMPT.format(tools=lines)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}"}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out, None


def _with_mapping_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = function.get("arguments")
    function["arguments"] = arguments
    return {**call, "function": function}


def parse_call(text: str) -> ToolCall | None:
    """The call a complete reply holds, or None (free text, or a call cut short by max_tokens or a stop
    string). The arguments are the reply's own JSON text, as a stream sent them."""
    match = _CALL.fullmatch(text)
    if match is None:
        return None
    try:
        json.loads(match.group(2))
    except ValueError:
        return None
    return ToolCall(id=new_call_id(), function=FunctionCall(name=match.group(1), arguments=match.group(2)))


@dataclass
class CallStream:
    """Turns one choice's streamed text into OpenAI's chunks: `content` deltas for free text, or a
    `tool_calls` delta with the id and name once the name is known, then argument fragments. A reply
    that starts with "<" is a call (the grammar keeps free text from starting so)."""

    text: str = ""
    is_call: bool | None = None
    call_id: str = field(default_factory=new_call_id)
    header: int = 0  # length of the call's text before its arguments, once known
    sent: int = 0  # how much of the text has gone out (as content or arguments)

    def feed(self, delta: str) -> list[dict[str, Any]]:
        """The chunk deltas (`{"content": ...}` or `{"tool_calls": [...]}`) for this piece of text."""
        self.text += delta
        if self.is_call is None and self.text:
            self.is_call = self.text.startswith("<")
        if not self.is_call:
            return self._content(len(self.text))
        return self._arguments(len(self.text) - len(CALL_CLOSE))

    def finish(self) -> list[dict[str, Any]]:
        """What is left when the reply ends: a complete call's last arguments (without the closing
        tag), or whatever a cut-short reply still holds back."""
        if not self.is_call:
            return self._content(len(self.text))
        if _CALL.fullmatch(self.text):
            return self._arguments(len(self.text) - len(CALL_CLOSE))
        if not self.header:  # cut short before the name was complete: it was never a call
            self.is_call = False
            return self._content(len(self.text))
        return self._arguments(len(self.text))

    def _content(self, end: int) -> list[dict[str, Any]]:
        if end <= self.sent:
            return []
        piece, self.sent = self.text[self.sent : end], end
        return [{"content": piece}]

    def _arguments(self, end: int) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if not self.header:
            match = _HEADER.match(self.text)
            if match is None:
                return []
            self.header = self.sent = match.end()
            call = {"index": 0, "id": self.call_id, "type": "function"}
            deltas.append({"tool_calls": [{**call, "function": {"name": match.group(1), "arguments": ""}}]})
        if end > self.sent:
            piece, self.sent = self.text[self.sent : end], end
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        return deltas
