"""The one settings object. Every process derives its configuration (and Prefect's) from it."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bitinglip import keep_alive
from bitinglip.home_secrets import HomeSecretsSource


class BatchingOverride(BaseModel):
    """Per-model batching knobs; unset fields fall back to the global ones."""

    max_batch_size: int | None = Field(default=None, ge=1, le=256)
    max_wait_ms: float | None = Field(default=None, ge=0, le=10_000)
    max_queue: int | None = Field(default=None, ge=1)


class LogRotation(BaseModel):
    """Per-component log caps (`bitinglip up`); unset fields fall back to the global ones."""

    max_bytes: int | None = Field(default=None, ge=10_000)
    backup_count: int | None = Field(default=None, ge=1)  # 0 would mean no rotation at all


_URL = r"^(https?://[^\s/]+(/\S*)?)?$"  # empty: derived from the host and port settings
_EVERY_INTERFACE = ("0.0.0.0", "::", "")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BITINGLIP_", env_nested_delimiter="__", extra="ignore")
    _gateway_url_given: bool = PrivateAttr(default=False)

    # -- where things live
    home: Path = Field(default=Path("~/.bitinglip"), description="Root of the store, databases and logs.")
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    # -- gateway
    gateway_host: str = "127.0.0.1"
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses whose X-Forwarded-For is believed (a reverse proxy); none by default, so a "
        "client cannot pick the address its login attempts are counted under.",
    )
    gateway_port: int = 8001
    gateway_url: str = Field(
        default="",
        pattern=_URL,
        description="The gateway as clients reach it: the CLI talks to it (a remote gateway) and result links "
        "carry it; default http://GATEWAY_HOST:GATEWAY_PORT.",
    )
    database_url: str | None = Field(default=None, description="Gateway DB; default SQLite under home.")
    max_request_bytes: int = Field(default=1_000_000, description="Larger request bodies get 413.")
    console_dir: Path | None = Field(
        default=None, description="The built web console served at /ui; default: the project's web/dist."
    )
    console_events_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often event streams (the console's, a job's) look for changes."
    )

    # -- security
    environment: Literal["development", "production"] = Field(
        default="development", description="production refuses placeholder secrets and open access."
    )
    open_access: bool = Field(
        default=False, description="Development only: no credentials needed, every caller is an admin."
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="Signs login tokens (HS256); default: generated into home/secrets.json."
    )
    jwt_ttl_s: int = Field(default=900, ge=30, description="Lifetime of a login token.")
    result_link_ttl_s: int = Field(
        default=3600,
        ge=10,
        le=7 * 86400,
        description="How long the signed image links in API answers open without credentials "
        "(response_format=url, image jobs' results); reading the job again gives fresh ones.",
    )
    artifact_link_ttl_s: int = Field(
        default=7 * 86400,
        ge=60,
        le=90 * 86400,
        description="How long the signed image links in Prefect artifacts open without credentials.",
    )
    admin_username: str = Field(default="admin", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    admin_password: SecretStr | None = Field(
        default=None, description="The first admin's password; default: generated into home/secrets.json."
    )
    prefect_auth_string: SecretStr | None = Field(
        default=None,
        description="Prefect server basic auth (`user:password`), sent by every Prefect client; default: generated.",
    )
    worker_token: SecretStr | None = Field(
        default=None, description="Shared token on every gateway -> model worker call; default: generated."
    )
    max_keys_per_user: int = Field(default=20, ge=1, description="Most live API keys one user may hold.")
    credential_recheck_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Each gateway keeps verified API keys and login tokens in memory and checks this often "
        "(while requests come) whether any credential changed anywhere: the most time a key revoked, a user "
        "disabled or limits changed on another replica can still take to hold there (on the replica that "
        "made the change it holds at once). 0: read the database on every request.",
    )
    login_attempts_per_minute: int = Field(
        default=10, ge=1, description="Login attempts per client address, and per address + user name."
    )
    results_encryption_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Fernet keys (JSON list, newest first) encrypting stored results and job payloads; "
        "older keys still decrypt (rotation).",
    )
    admin_api_key: SecretStr | None = Field(
        default=None, description="A key registered for the first admin at start (bl-...; `bitinglip up` makes one)."
    )
    api_key: SecretStr | None = Field(default=None, description="The key the CLI sends (default: home/admin.key).")
    rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per minute per user (a key may narrow it)."
    )
    tokens_per_day: int | None = Field(
        default=None, ge=1, description="Default daily token quota per user (admins set others); unset: none."
    )
    images_per_day: int | None = Field(
        default=None, ge=1, description="Default daily image quota per user (admins set others); unset: none."
    )
    redis_url: str | None = Field(
        default=None, description="Rate limits and quotas in Redis (replicated gateways); default in memory."
    )
    redis_prefix: str = Field(default="bitinglip", description="Prefix of every Redis key we write.")
    result_cache_ttl_s: float = Field(
        default=600,
        ge=0,
        description="How long a deterministic answer (greedy or seeded text, embeddings) is replayed to the same "
        "user for the same request; 0 turns the result cache off. In Redis when `BITINGLIP_REDIS_URL` is set.",
    )
    result_cache_max_bytes: int = Field(
        default=64 << 20, ge=0, description="Size of the in-memory result cache per gateway (least recent go first)."
    )
    result_cache_entry_max_bytes: int = Field(
        default=1 << 20, ge=0, description="Larger answers are not stored in the result cache."
    )

    # -- Prefect
    prefect_host: str = "127.0.0.1"
    prefect_port: int = 4200
    prefect_api_url: str | None = Field(default=None, description="External Prefect API; default local.")
    prefect_database_url: str | None = Field(
        default=None, description="Prefect server DB, e.g. postgresql+asyncpg://...; default SQLite."
    )
    pool_poll_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the pool workers ask Prefect for flow runs to start (batches, downloads, purges): "
        "lower starts them sooner at an idle cost to Prefect's server (docs/architecture.md §3.23).",
    )
    prefect_lean: bool = Field(
        default=True,
        description="Prefect's server runs only the services the platform uses, at relaxed intervals (its idle "
        "cost: docs/architecture.md §3.23) and, without Redis, records task runs and events in batches (§3.3); "
        "false: Prefect's defaults, automations included.",
    )
    prefect_redis_url: str | None = Field(
        default=None, description="Prefect messaging, cache and leases on Redis (prefect-redis), e.g. redis://h:6379/1."
    )

    # -- model worker
    worker_host: str = "127.0.0.1"
    worker_port: int = 8002
    worker_url: str = Field(
        default="",
        pattern=_URL,
        description="Where gateways reach this model worker (sent with its heartbeat); default "
        "http://WORKER_HOST:WORKER_PORT, or this host's address when it binds every interface (0.0.0.0, a container).",
    )
    worker_id: str | None = Field(default=None, description="Default: host:port of BITINGLIP_WORKER_URL.")
    worker_models: list[str] = Field(
        default_factory=lambda: ["smollm2-135m-instruct", "all-minilm-l6-v2", "tiny-sd-test"]
    )
    worker_heartbeat_s: float = 2.0
    worker_stale_after_s: float = 10.0
    worker_request_timeout_s: float = 600.0
    worker_jobs_in_flight: int = Field(
        default=64, ge=1, description="Async jobs one model worker runs at once (each its own Prefect task run)."
    )
    worker_memory_budget_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Bytes of models one worker may hold loaded; least recently used idle, unpinned models "
        "are unloaded to make room, and a load that cannot fit is refused (503). Unset: no byte limit.",
    )
    max_loaded_models: int = Field(
        default=4, ge=1, description="Most models one worker holds loaded, whatever their size (LRU out first)."
    )
    model_keep_alive: str | None = Field(
        default="30m",
        description="How long a model stays loaded after its last request when the request gives no "
        "keep_alive (30s, 5m, 1h; 0: unload right after; -1: forever). A request may lengthen a loaded "
        "model's keep-alive, never shorten it; the worker's own BITINGLIP_WORKER_MODELS stay loaded.",
    )

    # -- engines
    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device_map: str | None = Field(default=None, description="accelerate device_map, e.g. auto, balanced.")
    torch_threads: int | None = None
    omp_spin_count: int = Field(
        default=10_000,
        ge=0,
        description="How long torch's OpenMP threads spin before they sleep at a barrier (GOMP_SPINCOUNT) in "
        "model workers; a GOMP_SPINCOUNT already in the environment wins. OpenMP's own default spins 30x longer, "
        "which burns the CPU that Prefect and the gateway need beside the model (docs/architecture.md §3.8).",
    )
    llama_kv_tokens: int = Field(
        default=4096,
        ge=256,
        description="KV cache cells of each llama.cpp model, shared by its running requests; "
        "also the longest context (prompt + max_tokens) one request may use there.",
    )
    llama_kv_type: Literal["q8_0", "f16"] = Field(
        default="q8_0",
        description="How llama.cpp stores keys and values: q8_0 (with flash attention) holds half the bytes "
        "of f16 at no measured loss, and batches faster on CPUs.",
    )
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_wait_ms: float = Field(default=10.0, ge=0)
    max_queue: int = Field(default=64, ge=1)
    batching: dict[str, BatchingOverride] = Field(default_factory=dict)
    text_batching: Literal["continuous", "static"] = Field(
        default="continuous", description="continuous: requests join a running batch between tokens."
    )
    priority_aging_s: float = Field(
        default=30.0,
        gt=0,
        description="Background work (async jobs, batch lines) gains one priority level per this many "
        "seconds waited, so low-priority work is late but never starved; interactive requests still go first.",
    )
    background_rows_beside_interactive: int | None = Field(
        default=None,
        ge=0,
        description="Background rows (async jobs, batch lines) a text model runs while interactive requests run; "
        "more are set aside until they finish. Default: 0 on CPUs, where each row slows every other, no "
        "limit on GPUs, where rows are nearly free.",
    )
    default_max_tokens: int = 128
    max_tokens_cap: int = 4096
    max_prompt_chars: int = 100_000

    # -- models
    default_text_model: str = "smollm2-135m-instruct"
    default_embedding_model: str = "all-minilm-l6-v2"
    default_image_model: str = "tiny-sd-test"
    max_embedding_inputs: int = Field(default=256, ge=1, description="Most texts in one embeddings request.")

    store_budget_bytes: int | None = Field(
        default=None, description="Disk budget of the model store; LRU unpinned, unloaded models are evicted."
    )

    model_source_roots: list[Path] = Field(
        default_factory=list, description="Folders file:// model sources may read, besides home/import (JSON list)."
    )
    model_source_packages: list[str] = Field(
        default_factory=list, description="Python packages pkg:// sources may read, besides the catalog's."
    )

    hf_endpoint: str | None = Field(default=None, description="Hub mirror for hf:// sources (else HF_ENDPOINT).")
    hf_token: str | None = Field(default=None, description="Hub token for hf:// sources (else HF_TOKEN).")

    results_url: str | None = Field(
        default=None, description="Where results (images) go: a folder URL or s3://bucket/prefix; default home/results."
    )
    max_image_side: int = Field(default=1024, ge=64, description="Largest width or height accepted.")
    max_image_steps: int = Field(default=50, ge=1, description="Most denoising steps accepted.")
    max_images_per_request: int = Field(default=4, ge=1)

    # -- S3 (model sources, results)
    s3_endpoint_url: str | None = None
    s3_key: str | None = None
    s3_secret: str | None = None

    # -- async jobs
    dispatch_interval_s: float = 0.05
    job_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often an idle model worker looks for queued jobs (a gateway also pokes it when it "
        "queues one, so this bounds only a lost poke's delay).",
    )
    job_flow_idle_s: float = Field(
        default=5.0,
        ge=0,
        description="A worker's `inference-jobs` flow run ends after this long without jobs; jobs arriving "
        "meanwhile join it as task runs.",
    )
    job_claim_cold_after_s: float = Field(
        default=2.0,
        ge=0,
        description="A queued job for a model no worker has loaded is claimed (and loaded) by any worker after "
        "this long; workers with the model warm claim it at once.",
    )
    job_max_attempts: int = 3
    job_orphan_after_s: float = Field(
        default=30.0, gt=0, description="Running jobs of a worker silent this long are re-queued."
    )
    job_redispatch_after_s: float = Field(
        default=120.0,
        gt=0,
        description="Queued batch or download jobs whose Prefect flow run has not started this long get a new "
        "run (the claim keeps a job from running twice).",
    )
    reaper_interval_s: float = Field(default=5.0, gt=0, description="How often gateways look for orphaned jobs.")

    # -- webhooks (bitinglip/webhooks) and idempotency keys
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Webhook targets allowed although private, loopback or link-local (JSON list): hosts as "
        "written in the URL (a name or an address) and networks (10.0.0.0/8). Empty: only public addresses.",
    )
    webhook_attempts: int = Field(
        default=8, ge=1, le=20, description="Tries per webhook event (the first and its retries) before it is given up."
    )
    webhook_backoff_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="Wait before a webhook's first retry; each later retry waits twice the one before (with jitter).",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="How long one webhook attempt may take, connection included."
    )
    webhook_max_payload_bytes: int = Field(
        default=64_000,
        ge=2_000,
        le=10_000_000,
        description="Largest webhook body; a job whose result would pass it is sent without the result "
        "(`result_omitted: true`: GET the job for it).",
    )
    idempotency_ttl_s: int = Field(
        default=86400,
        ge=60,
        le=30 * 86400,
        description="How long an Idempotency-Key is remembered: a create request repeated with it within this "
        "returns the object the first one made.",
    )

    # -- retention (a scheduled Prefect deployment purges what is older)
    retention_jobs_days: float | None = Field(
        default=30, gt=0, description="Finished async jobs and their results are purged after this; unset: kept."
    )
    retention_files_days: float | None = Field(
        default=30, gt=0, description="Uploaded files are purged after this; unset: kept."
    )
    retention_batches_days: float | None = Field(
        default=30, gt=0, description="Finished batches, their outputs and error files are purged after this."
    )

    # -- supervision (`bitinglip up`)
    restart_attempts: int = Field(
        default=5, ge=0, description="Restarts of a crashed child within restart_window_s before `up` gives up."
    )
    restart_window_s: float = Field(default=300.0, gt=0, description="Window over which restarts are counted.")
    stop_grace_s: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="On stop, children get SIGTERM and this long to exit before SIGKILL (their whole process group).",
    )
    log_max_bytes: int = Field(
        default=20_000_000, ge=10_000, description="A component's log file is rotated when it would grow past this."
    )
    log_backup_count: int = Field(
        default=5, ge=1, description="Rotated files kept per component (NAME.log.1 ... .N); older ones are deleted."
    )
    log_rotation: dict[str, LogRotation] = Field(
        default_factory=dict,
        description='Per-component overrides, JSON: {"gateway": {"max_bytes": 50000000, "backup_count": 10}}.',
    )

    # -- batch jobs (OpenAI Batch API)
    batch_chunk_size: int = Field(
        default=64, ge=1, description="Lines per cached chunk task: a resumed batch redoes at most one chunk."
    )
    batch_text_batching: Literal["continuous", "static"] = Field(
        default="static",
        description="Text batching in batch flow runs: with the queue always full, static batches stay full "
        "and skip the KV-cache merges of joining (measured ~7% faster than continuous here).",
    )
    max_file_bytes: int = Field(default=100_000_000, ge=1, description="Largest upload to /v1/files.")
    max_batch_lines: int = Field(default=50_000, ge=1, description="Most requests in one batch input file.")

    @field_validator("model_keep_alive")
    @classmethod
    def _keep_alive_is_a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            keep_alive.parse(value)  # refused at start, not at the first request
        return value

    @model_validator(mode="after")
    def _urls(self) -> Settings:
        """URLs left empty follow the host and port settings; a worker bound to every interface
        advertises this host's address, so each replica (container, pod) registers where it is."""
        self._gateway_url_given = bool(self.gateway_url)
        self.gateway_url = (self.gateway_url or self.default_gateway_url).rstrip("/")
        if not self.worker_url:
            host = self.worker_host
            if host in _EVERY_INTERFACE:
                try:
                    host = socket.gethostbyname(socket.gethostname())
                except OSError as exc:
                    raise ValueError("this host's name does not resolve: set BITINGLIP_WORKER_URL") from exc
            self.worker_url = f"http://{host}:{self.worker_port}"
        self.worker_url = self.worker_url.rstrip("/")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the secrets generated into home/secrets.json."""
        return init_settings, env_settings, HomeSecretsSource(settings_cls), dotenv_settings, file_secret_settings

    def insecure_settings(self) -> list[str]:
        """What no environment starts with: missing, placeholder or short secrets; production also
        refuses open access."""
        from bitinglip.home_secrets import weak_secrets

        problems = weak_secrets(self)
        if self.open_access and self.environment == "production":
            problems.append("BITINGLIP_OPEN_ACCESS is on")
        return problems

    def secret(self, name: str) -> str:
        """A secret's value; a secret that was never made is a start-up bug, not a silent default."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"BITINGLIP_{name.upper()} is not set and home/secrets.json has none")
        return str(value.get_secret_value())

    @property
    def secrets_file(self) -> Path:
        return self.home_dir / "secrets.json"

    @property
    def admin_key_file(self) -> Path:
        return self.home_dir / "admin.key"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def store_dir(self) -> Path:
        return self.home_dir / "models"

    @property
    def results_dir(self) -> Path:
        return self.home_dir / "results"

    @property
    def prefect_home(self) -> Path:
        return self.home_dir / "prefect"

    @property
    def gateway_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'gateway.db'}"

    @property
    def default_gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def remote_gateway(self) -> bool:
        """Whether BITINGLIP_GATEWAY_URL is set: the CLI then works through that gateway alone, whatever
        this machine's home holds (a model pull goes to the platform behind it)."""
        return self._gateway_url_given

    @property
    def worker_name(self) -> str:
        return self.worker_id or urlsplit(self.worker_url).netloc

    @property
    def prefect_api(self) -> str:
        return self.prefect_api_url or f"http://{self.prefect_host}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return self.prefect_api.removesuffix("/api")

    def default_model(self, task: str) -> str:
        """The model a request of `task` gets when it names none."""
        defaults = {
            "text": self.default_text_model,
            "embedding": self.default_embedding_model,
            "image": self.default_image_model,
        }
        return defaults[task]

    def keep_alive_for(self, name: str, model_id: str) -> float:
        """Seconds a model stays loaded after a request that gives no keep_alive (keep_alive.FOREVER:
        until evicted). The worker's own models stay warm: the operator asked this worker to serve them."""
        if self.model_keep_alive is None or name in self.worker_models or model_id in self.worker_models:
            return keep_alive.FOREVER
        return keep_alive.parse(self.model_keep_alive)

    def log_rotation_for(self, component: str) -> tuple[int, int]:
        """(max_bytes, backup_count) of one component's log (`gateway`, `model-worker`, ...), overrides
        applied; replicas (`gateway-2`) share their component's override."""
        override = self.log_rotation.get(component) or self.log_rotation.get(component.rsplit("-", 1)[0])
        override = override or LogRotation()
        return (
            override.max_bytes or self.log_max_bytes,
            self.log_backup_count if override.backup_count is None else override.backup_count,
        )

    @property
    def pid_file(self) -> Path:
        return self.home_dir / "up.pid"

    def batching_for(self, model: str) -> tuple[int, float, int]:
        """(max_batch_size, max_wait_ms, max_queue) for one model, overrides applied."""
        override = self.batching.get(model, BatchingOverride())
        return (
            override.max_batch_size or self.max_batch_size,
            self.max_wait_ms if override.max_wait_ms is None else override.max_wait_ms,
            override.max_queue or self.max_queue,
        )

    def prefect_env(self) -> dict[str, str]:
        """Prefect settings for every process we start: clients, server and model workers must agree
        on API and result storage, or background-task parameters go missing (docs/architecture.md §3.12)."""
        env = {
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_UI_API_URL": self.prefect_api,
            "PREFECT_SERVER_API_HOST": self.prefect_host,
            "PREFECT_SERVER_API_PORT": str(self.prefect_port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Prefect runs commands for whoever reaches its API: CSRF tokens for browsers, CORS for the
            # UI's own origin only, and basic auth below (docs/security.md).
            "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": self.prefect_ui_url,
            "PREFECT_LOCAL_STORAGE_PATH": str(self.results_dir / "prefect"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_WORKER_QUERY_SECONDS": f"{self.pool_poll_s:g}",
            "PREFECT_LOGGING_LEVEL": "INFO",  # run logs at INFO are what the Prefect UI shows per run
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TQDM_DISABLE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.prefect_database_url or (
            f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}"
        )
        if self.prefect_lean:
            env.update(LEAN_PREFECT)
            if self.prefect_redis_url is None:
                env.update(BATCHED_RECORDING)
        if self.prefect_auth_string is not None:
            auth = self.prefect_auth_string.get_secret_value()
            env["PREFECT_API_AUTH_STRING"] = auth
            env["PREFECT_SERVER_API_AUTH_STRING"] = auth
        if self.prefect_redis_url:  # Prefect's own scale-out stack (docs/architecture.md §6)
            env.update(
                {
                    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
                    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
                    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
                    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
                    "PREFECT_REDIS_MESSAGING_URL": self.prefect_redis_url,
                }
            )
        return env


# What an idle Prefect server does, cut to what the platform needs (docs/architecture.md §3.23): no automations
# (the platform defines none) and no pause expirations (its flows never pause); the housekeeping loops that
# poll the database every 5-20 s by default run once a minute.
LEAN_PREFECT = {
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "60",
}

# Task runs and events recorded in batches (Prefect's defaults: a database write per task-run event, events 20
# at a time): an async job's task run costs Prefect's server about half the CPU (docs/architecture.md §3.3); a
# task run's state reaches the UI within a second, events within Prefect's 5 s as before. Embedded default
# only: its in-memory broker loses whatever is queued in a crash anyway, where on Redis a batch would be
# acknowledged before it is written.
BATCHED_RECORDING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
