"""Where models come from. One small fetcher per URI scheme; add a scheme by registering a class.

Every fetcher copies into a staging folder it is given; it never touches the store itself. Sources
that read this machine's disk are allow-listed where they read, so no caller (API, CLI, a flow run
started by hand) can install `/etc/passwd` or the home's secrets as a "model": `file://` reads only
home/import and the folders in `model_source_roots`, `pkg://` only the catalog's packages and those in
`model_source_packages`. Paths are checked after symlinks and `..` are resolved, file by file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple
from urllib.parse import unquote, urlparse

from bitinglip.config import Settings
from bitinglip.errors import InvalidRequest, NotFound
from bitinglip.models.catalog import load_catalog


class Transfer(NamedTuple):
    """How far a fetch is; a total of 0 is not known (yet)."""

    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int


Progress = Callable[[Transfer], None]
CHUNK = 1 << 20  # bytes copied between two progress reports


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

    def check(self, ref: SourceRef) -> None:
        """Refuse a source this platform may not read (before anything is fetched); default: any."""

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        raise NotImplementedError


class SourceNotAllowed(InvalidRequest):
    code = "source_not_allowed"


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


def check_allowed(ref: SourceRef, settings: Settings) -> None:
    """Refuse early (the API, before a job exists); fetching checks again where it reads."""
    make_source(ref, settings).check(ref)


Files = list[tuple[Path, Path]]  # (path inside the source, the real file it is, symlinks resolved)


def _walk(src: Path) -> Files:
    """Every file of `src` (itself, when a file) with its real path; symlinked folders are not
    followed, symlinked files are listed with their target so the caller can judge it."""
    if not src.is_dir():
        return [(Path(src.name), src.resolve())]
    return [
        (p.relative_to(src), p.resolve())
        for p in sorted(src.rglob("*"))
        if p.is_file() and "__pycache__" not in p.relative_to(src).parts
    ]


def _copy_files(files: Files, dest: Path, progress: Progress | None) -> None:
    """Copies the checked real paths, refusing to follow a symlink swapped in since the check; reports
    every CHUNK, so one large file (a GGUF) shows progress too."""
    total = sum(real.stat().st_size for _, real in files)
    done = 0
    for count, (rel, real) in enumerate(files):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(real, os.O_RDONLY | os.O_NOFOLLOW), "rb") as src, target.open("wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(Transfer(done, total, count, len(files)))
        if progress:
            progress(Transfer(done, total, count + 1, len(files)))


def _all_of(folder: Path) -> Transfer:
    """A finished fetch's figures, for sources that fetch without reporting as they go."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return Transfer(sum(sizes), sum(sizes), len(sizes), len(sizes))


def file_roots(settings: Settings) -> list[Path]:
    """Folders `file://` sources may read: the platform's import folder and the configured roots."""
    return [p.expanduser().resolve() for p in (settings.home_dir / "import", *settings.model_source_roots)]


def allowed_packages(settings: Settings) -> set[str]:
    """Packages `pkg://` sources may read: the catalog's and the configured ones."""
    catalog = {
        e.source[len("pkg://") :].split("/", 1)[0] for e in load_catalog().values() if e.source.startswith("pkg://")
    }
    return catalog | set(settings.model_source_packages)


class FileSource(Source):
    scheme = "file"

    def _allow(self, real: Path, shown: str) -> None:
        """The home (secrets, databases, the store) is never a source, whatever the roots say, but
        for its import folder."""
        home = self.settings.home_dir.resolve()
        imports = (home / "import").resolve()
        in_roots = any(real.is_relative_to(root) for root in file_roots(self.settings))
        in_home = real.is_relative_to(home) and not (imports != home and real.is_relative_to(imports))
        if not in_roots or in_home:
            roots = ", ".join(str(r) for r in file_roots(self.settings))
            raise SourceNotAllowed(
                f"file:// sources may only read files under {roots} (BITINGLIP_MODEL_SOURCE_ROOTS); "
                f"{shown!r} is not under them",
                param="source",
            )

    def _files(self, ref: SourceRef) -> Files | None:
        """The checked files of the source; None when nothing is there (said only after the check,
        so a refused path does not reveal whether it exists)."""
        path = Path(ref.location).resolve()
        self._allow(path, ref.location)
        if not path.exists():
            return None
        files = _walk(path)
        for rel, real in files:
            self._allow(real, f"{ref.location.rstrip('/')}/{rel}" if path.is_dir() else ref.location)
        return files

    def check(self, ref: SourceRef) -> None:
        self._files(ref)

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        files = self._files(ref)
        if files is None:
            raise NotFound(f"source path {ref.location!r} does not exist", param="source")
        _copy_files(files, dest, progress)


class PackageSource(Source):
    """Weights shipped inside an installed Python package, located without importing it
    (importing such packages can fail without their runtime dependencies)."""

    scheme = "pkg"

    def check(self, ref: SourceRef) -> None:
        package = ref.location.partition("/")[0]
        if package not in allowed_packages(self.settings):
            raise SourceNotAllowed(
                f"pkg:// sources may only read the catalog's packages and those in "
                f"BITINGLIP_MODEL_SOURCE_PACKAGES; {package!r} is not one of them",
                param="source",
            )

    def fetch(self, ref: SourceRef, dest: Path, progress: Progress | None = None) -> None:
        self.check(ref)
        package, _, sub = ref.location.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise NotFound(f"package {package!r} is not installed", param="source")
        base = Path(next(iter(spec.submodule_search_locations))).resolve()
        path = (base / sub).resolve()
        if not path.is_relative_to(base) or not path.exists():
            raise NotFound(f"{sub!r} not found in package {package!r}", param="source")
        files = _walk(path)
        if escaped := [str(rel) for rel, real in files if not real.is_relative_to(base)]:
            raise SourceNotAllowed(f"{', '.join(escaped)} in package {package!r} link outside it", param="source")
        _copy_files(files, dest, progress)


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
        if progress:  # huggingface_hub moves the bytes itself: the figures come once it is done
            progress(_all_of(dest))


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
            progress(_all_of(dest))


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
        for count, (key, rel) in enumerate(sorted(files.items())):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)

            def report(n: int, base: int = done, count: int = count) -> None:
                if progress:
                    progress(Transfer(base + n, total, count, len(files)))

            done += self._resume(fs, key, target, sizes[key], report)
        if progress:
            progress(Transfer(done, total, len(files), len(files)))

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
