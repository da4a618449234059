"""Which installed model a request names: `NAME`, `NAME@REVISION`, or the Hugging Face id its weights
come from (`HuggingFaceTB/SmolLM2-135M-Instruct`), as people know models from the Hub, Ollama and vLLM.
When none fits, the error helps: a model of another task says which routes serve it, and an unknown
name gets the closest names the caller may use. Only what the caller may see is ever consulted, so
a withheld model is unknown here, its name never suggested."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from bitinglip.db.tables import ModelRecord
from bitinglip.errors import InvalidRequest, ModelNotFound
from bitinglip.models.catalog import load_catalog
from bitinglip.models.sources import parse_source
from bitinglip.validation_errors import quoted

TASK_NOUNS = {"text": "a text-generation", "embedding": "an embedding", "image": "an image"}
TASK_ROUTES = {
    "text": "/v1/chat/completions, /v1/completions or /api/v1/inference/text",
    "embedding": "/v1/embeddings or /api/v1/inference/embeddings",
    "image": "/v1/images/generations or /api/v1/inference/image",
}
SUGGESTIONS = 3
LISTED = 5


class WrongModelTask(InvalidRequest):
    """The model exists for the caller but does another task."""

    code = "model_task_mismatch"


def hub_ids(record: ModelRecord) -> set[str]:
    """The Hugging Face ids a model answers to: an `hf://ORG/NAME` source's, or the upstream repository
    the catalog names for the same source (`hf_id`: a GGUF shipped in a package, say)."""
    ids = set()
    if record.source.startswith("hf://"):
        ids.add(parse_source(record.source).location)
    entry = load_catalog().get(record.name)
    if entry is not None and entry.hf_id and entry.source == record.source:
        ids.add(entry.hf_id)
    return ids


def find(records: Iterable[ModelRecord], model_id: str, task: str) -> list[ModelRecord]:
    """Of `records` (ready, and the caller's to use), those `model_id` names for `task` (every
    revision: the caller picks one); none is an error that says what to do instead."""
    name, _, revision = model_id.partition("@")
    usable = list(records)
    named = [r for r in usable if r.name == name and revision in ("", r.revision)]
    if not named:
        wanted = name.lower()
        named = [r for r in usable if wanted in {i.lower() for i in hub_ids(r)} and revision in ("", r.revision)]
    fit = [r for r in named if r.task == task]
    if fit:
        return fit
    if named:
        other = named[0]
        raise WrongModelTask(
            f"`{other.name}` is {TASK_NOUNS.get(other.task, other.task)} model; "
            f"use {TASK_ROUTES.get(other.task, 'its own routes')}.",
            param="model",
        )
    raise ModelNotFound(
        f"The model `{quoted(model_id)}` does not exist or is not installed.{_suggest(usable, name, task)}",
        param="model",
    )


def _suggest(usable: list[ModelRecord], name: str, task: str) -> str:
    """Names of the task's models close to what was typed (by name or Hub id), else a few of them."""
    names: dict[str, str] = {}  # what may be typed (lower case) -> the model's name
    for r in usable:
        if r.task == task:
            names[r.name.lower()] = r.name
            names.update({i.lower(): r.name for i in hub_ids(r)})
            names.update({i.rsplit("/", 1)[-1].lower(): r.name for i in hub_ids(r)})
    if not names:
        return ""
    close = difflib.get_close_matches(name.lower(), names, n=SUGGESTIONS * 3, cutoff=0.6)
    picked = list(dict.fromkeys(names[c] for c in close))[:SUGGESTIONS]
    if picked:
        return " Did you mean " + " or ".join(f"`{n}`" for n in picked) + "?"
    listed = sorted(set(names.values()))
    more = f" and {len(listed) - LISTED} more (GET /v1/models)" if len(listed) > LISTED else ""
    return f" {task.capitalize()} models you may use: " + ", ".join(f"`{n}`" for n in listed[:LISTED]) + more + "."
