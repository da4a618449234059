"""Where models come from. One small fetcher per URI scheme; add a scheme by registering a class.

Every fetcher copies into a staging folder it is given; it never touches the store itself.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest, NotFound

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class SourceRef:
    scheme: str
    location: str  # scheme-specific, e.g. "org/name", "bucket/prefix", "/abs/path", "pkg/sub/path"
    revision: str | None = None

    @property
    def uri(self) -> str:
        suffix = f"@{self.revision}" if self.revision and self.scheme == "hf" else ""
        return f"{self.scheme}://{self.location}{suffix}"


class Source:
    scheme: ClassVar[str]
    registry: ClassVar[dict[str, type[Source]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Source.registry[cls.scheme] = cls

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        raise NotImplementedError


def parse_source(uri: str) -> SourceRef:
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme not in Source.registry:
        known = ", ".join(f"{s}://" for s in sorted(Source.registry))
        raise InvalidRequest(f"unknown source scheme in {uri!r}; use one of {known}", param="source")
    location = unquote(parsed.netloc + parsed.path)
    if scheme == "file":
        location = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not location.startswith("/"):
            raise InvalidRequest(f"file:// sources need an absolute path, got {uri!r}", param="source")
    revision = None
    if scheme == "hf" and "@" in location:
        location, revision = location.rsplit("@", 1)
    parts = [p for p in location.split("/") if p]
    if not parts or any(p in ("..", ".") for p in parts):
        raise InvalidRequest(f"malformed source {uri!r}", param="source")
    return SourceRef(scheme, location if scheme == "file" else "/".join(parts), revision)


def make_source(ref: SourceRef, settings: Settings) -> Source:
    return Source.registry[ref.scheme](settings)


def _copy_into(src: Path, dest: Path, progress: Progress | None) -> None:
    files = [src] if src.is_file() else [p for p in sorted(src.rglob("*")) if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    done = 0
    for file in files:
        rel = Path(file.name) if src.is_file() else file.relative_to(src)
        if "__pycache__" in rel.parts:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        done += file.stat().st_size
        if progress:
            progress(done, total)


class FileSource(Source):
    scheme = "file"

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        path = Path(ref.location)
        if not path.exists():
            raise NotFound(f"source path {ref.location!r} does not exist", param="source")
        _copy_into(path, dest, progress)


class PackageSource(Source):
    """Weights shipped inside an installed Python package, located without importing it
    (importing such packages can fail without their runtime dependencies)."""

    scheme = "pkg"

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        package, _, sub = ref.location.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise NotFound(f"package {package!r} is not installed", param="source")
        base = Path(next(iter(spec.submodule_search_locations))).resolve()
        path = (base / sub).resolve()
        if not path.is_relative_to(base) or not path.exists():
            raise NotFound(f"{sub!r} not found in package {package!r}", param="source")
        _copy_into(path, dest, progress)


class HuggingFaceSource(Source):
    """huggingface_hub does the HTTP, auth (HF_TOKEN), endpoint (HF_ENDPOINT) and resume."""

    scheme = "hf"
    allow_patterns: ClassVar[list[str]] = [
        "*.json",
        "*.safetensors",
        "*.gguf",
        "*.txt",
        "*.model",
        "tokenizer*",
        "*.jinja",
        "**/*.json",
        "**/*.safetensors",
        "**/*.txt",
        "**/tokenizer*",
    ]

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            snapshot_download(
                repo_id=ref.location,
                revision=ref.revision,
                local_dir=dest,
                allow_patterns=self.allow_patterns,
                cache_dir=self.settings.home_dir / "hf-cache",
                endpoint=self.settings.hf_endpoint,
                token=self.settings.hf_token,
            )
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise NotFound(f"{ref.uri}: {exc}", param="source") from exc
        shutil.rmtree(dest / ".cache", ignore_errors=True)


class BuiltinSource(Source):
    """Models the code builds (see bitinglip/models/builtin.py)."""

    scheme = "builtin"

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        from bitinglip.models.builtin import BUILDERS

        builder = BUILDERS.get(ref.location)
        if builder is None:
            raise NotFound(f"no builtin model {ref.location!r}; known: {', '.join(sorted(BUILDERS))}", param="source")
        builder(dest)
        if progress:
            progress(1, 1)


class S3Source(Source):
    scheme = "s3"

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        from bitinglip.storage import s3_filesystem

        fs = s3_filesystem(self.settings)
        if not fs.exists(ref.location):
            raise NotFound(f"s3://{ref.location} does not exist", param="source")
        if fs.isfile(ref.location):
            files = {ref.location: Path(ref.location).name}
        else:
            root = ref.location.rstrip("/")
            files = {key: key[len(root) + 1 :] for key in fs.find(root)}
        sizes = {key: int(fs.info(key)["size"]) for key in files}
        total, done = sum(sizes.values()), 0
        for key, rel in sorted(files.items()):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)

            def report(n: int, base: int = done) -> None:
                if progress:
                    progress(base + n, total)

            done += self._resume(fs, key, target, sizes[key], report)
        if progress:
            progress(done, total)

    @staticmethod
    def _resume(fs: Any, key: str, target: Path, size: int, progress: Callable[[int], object]) -> int:
        """Download `key`, continuing a partial file left by an interrupted attempt; returns its size."""
        have = target.stat().st_size if target.exists() else 0
        if have > size:
            target.unlink()
            have = 0
        if have < size:
            with fs.open(key, "rb", block_size=4 << 20) as remote, target.open("ab") as local:
                remote.seek(have)
                while chunk := remote.read(4 << 20):
                    local.write(chunk)
                    have += len(chunk)
                    progress(have)
        return size
