"""Service settings: the only place the environment is read (variables ``CAUSEREC_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Refuses bad values at start-up, before any port is opened."""

    model_config = SettingsConfigDict(env_prefix="CAUSEREC_", extra="ignore")

    bundle: Path = Field(description="model bundle directory (from `causerec export`)")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (`causerec serve` without "
        "--redis-url starts an embedded server and sets this)",
    )
    redis_cluster: bool = Field(False, description="REDIS_URL names a node of a Redis Cluster")
    redis_timeout_s: float = Field(1.0, gt=0, le=30, description="bound on every Redis call; then 503")
    redis_max_connections: int = Field(64, ge=1, description="connection pool size per worker")
    key_prefix: str = Field("causerec", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Redis key namespace")
    dedup_retention_s: int = Field(86_400, ge=1, description="how long an event_id is remembered")
    user_ttl_s: int = Field(
        0, ge=0, description="a user idle this long is forgotten (state, history, tokens); 0: never"
    )
    derived_ttl_s: int = Field(
        7 * 86_400,
        ge=60,
        description="history tokens and query states of a model version expire after this long unused "
        "(those of a retired version disappear by themselves)",
    )
    max_categories: int | None = Field(
        None,
        ge=1,
        description="raw buckets kept per user, most recently active first (unset: every category "
        "the user touched, exact; a bound saves memory but changes some users' history tokens: "
        "docs/STORE.md)",
    )
    fold_after_events: int = Field(
        16,
        ge=1,
        le=4096,
        description="/events appends accepted events to the user's log; the log is folded into the "
        "state (buckets, tokens) by the next read of the user, or by the append that brings it to this "
        "many events. Larger: cheaper events, more for a read to fold (docs/STORE.md)",
    )
    max_history: int | None = Field(
        4096, ge=1, description="memory compressor: raw history events kept per user for refolds (null: all)"
    )
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="ONNX Runtime device")
    intra_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads per worker")
    retrieval: Literal["auto", "exact", "index"] = Field(
        "auto",
        description="top-k by scoring every item (exact) or from the bundle's approximate item index; "
        "auto: the index when the bundle has one and the engine runs on the CPU",
    )
    index_ef: int | None = Field(None, ge=1, description="index search breadth (default: the bundle's)")
    query_cache: bool = Field(
        True,
        description="keep each user's query state in Redis until their events change it; false: run "
        "the backbone on every read (for comparison)",
    )
    answers_ttl_s: int = Field(
        3_600,
        ge=0,
        description="keep each /recommend answer in Redis until the user's events change it (per request "
        "shape: k, include, exclude_seen), at most this long after it was last computed; a repeated read "
        "is then one round trip with no model call. 0: compute every answer",
    )
    max_batch_size: int = Field(64, ge=1, le=1024, description="most /recommend requests per engine call")
    max_wait_ms: float = Field(2.0, ge=0, le=100, description="longest a request waits for its batch to fill")
    max_queue: int = Field(2048, ge=1, description="waiting /recommend requests before answering 503")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_future_s: int = Field(
        86_400, ge=0, description="event timestamps further ahead than this are invalid"
    )
    read_keys: list[SecretStr] = Field(
        default_factory=list, description="API keys for /recommend (JSON list)"
    )
    write_keys: list[SecretStr] = Field(default_factory=list, description="keys for /events and /recommend")
    admin_keys: list[SecretStr] = Field(default_factory=list, description="keys for everything incl. reload")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="causerec log level")
    noop_route: bool = Field(False, description="expose POST /noop, the HTTP floor for load tests")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not (self.bundle / "manifest.json").is_file():
            raise ValueError(f"bundle {self.bundle} has no manifest.json (run `causerec export` first)")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.read_keys or self.write_keys or self.admin_keys)
