"""The default catalog: short names for the models this platform knows how to install offline."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel

from bitinglip.models.backends import Backend

Task = Literal["text", "image", "embedding"]


class CatalogEntry(BaseModel):
    name: str
    task: Task
    source: str
    revision: str = "main"
    description: str = ""
    backend: Backend | None = None  # None: chosen at install from the files ("auto")
    hf_id: str | None = None  # the Hugging Face repository the weights come from: an alias of the model


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, CatalogEntry]:
    raw = json.loads(resources.files("bitinglip.models").joinpath("catalog.json").read_text())
    return {e["name"]: CatalogEntry.model_validate(e) for e in raw["models"]}
