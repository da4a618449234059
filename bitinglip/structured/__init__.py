"""Structured output and tool calling, torch-free: the request shapes (`formats`), the grammar a reply
is held to (`grammar`, llguidance) and the text side of tool calls (`tools`). The engines enforce the
grammar token by token (bitinglip.engines.constraint); docs/architecture.md §3.18."""
