"""Service settings, read from ``NBA_*`` environment variables (or a ``.env`` file) once, then passed in."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, FilePath, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from feature_store.embedded import EmbeddedRedis


class Scope(StrEnum):
    """What an API key may do. Each scope includes the ones before it."""

    WEB = "web"
    SERVER = "server"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Scope).index(self)


class Settings(BaseSettings):
    # Errors name the setting, never echo its value: NBA_API_KEYS holds secrets, and `nba serve` prints
    # the error to stderr (logs).
    model_config = SettingsConfigDict(
        env_prefix="NBA_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    redis_url: str | None = Field(
        None, description="Redis to use, e.g. redis://host:6379/0. Unset: a private redis-server in data_dir."
    )
    data_dir: Path = Field(Path("nba-data"), description="Where the embedded Redis keeps its data.")
    embedded_fsync: Literal["everysec", "always"] = Field(
        "everysec",
        description="Embedded Redis: flush its append-only file every second (a power cut may lose the "
        "last second) or after every write (slower, loses nothing).",
    )
    embedded_redis_conf: FilePath | None = Field(
        None,
        description="Embedded Redis: a redis.conf it reads first (maxmemory, the append-only file's "
        "rewrite policy, CPU lists); the service's own choices (folder, socket or port, address, log, "
        "persistence) win.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    policies: Path | None = Field(
        None,
        description="The catalogue folder; unset: the shipped retail catalogue (policies/catalogue).",
    )
    api_keys: Annotated[dict[str, Scope], NoDecode] = Field(
        repr=False,
        default_factory=dict,
        description="Comma-separated key:scope pairs, e.g. 'k1:web,k2:admin'. Unset: open, loopback only.",
    )
    profile_ttl_days: int = Field(400, ge=1, le=3650)
    dedupe_window_hours: int = Field(24, ge=24, le=24 * 30)
    future_tolerance_s: int = Field(300, ge=0, le=86_400, description="How far ahead an event time may be.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    store_timeout_ms: int = Field(500, ge=10, le=10_000)
    store_max_connections: int = Field(64, ge=1, le=10_000)
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After on 503s.")
    decision_budget_ms: int = Field(50, ge=1, le=10_000, description="Beyond it, a decision falls back.")
    decision_ttl_hours: int = Field(
        168, ge=1, le=24 * 90, description="How long outcomes can be reported for a decision."
    )
    decision_log_max: int = Field(
        1_000_000, ge=1000, description="Entries kept in the decision and outcome logs (approximately)."
    )
    catalogue_watch_s: float = Field(
        1.0, gt=0, le=3600, description="How often a worker looks for a reload announced by another."
    )
    model_refresh_s: float = Field(0.5, gt=0, le=60, description="How often a worker looks for a new model.")
    learner_publish_s: float = Field(
        1.0, gt=0, le=60, description="How often the learner publishes, at most."
    )
    log_format: str = Field("auto", pattern="^(auto|json|console)$")
    # Observability (docs/metrics.md).
    log_salt: SecretStr | None = Field(
        None,
        min_length=16,
        description="The secret that keys the hashes logged in place of customer ids (HMAC-SHA256). Unset: a "
        "random one per run (nba serve) or per process, so hashes do not match across restarts.",
    )
    metrics_key: SecretStr | None = Field(
        None,
        min_length=1,
        description="Unset: GET /metrics is open. Set: it needs 'Authorization: Bearer <this key>' (or an "
        "admin API key).",
    )
    # Timed triggers (docs/triggers.md).
    trigger_poll_s: float = Field(1.0, gt=0, le=60, description="How often a worker looks for due triggers.")
    trigger_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="How long a claimed trigger stays with its worker; after that a worker that died while "
        "firing it is presumed dead and the trigger is claimed again.",
    )
    # Webhook deliveries (docs/deliveries.md).
    delivery_poll_s: float = Field(
        1.0, gt=0, le=60, description="How often an idle delivery worker looks for due deliveries."
    )
    delivery_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="How long past its destination's timeout a claimed delivery stays with its worker; "
        "after that a worker that died mid-delivery is presumed dead and the delivery is retried.",
    )
    delivery_backoff_s: float = Field(
        30.0, gt=0, le=86_400, description="The first retry's longest wait; it doubles at each attempt."
    )
    delivery_backoff_max_s: float = Field(
        21_600.0, gt=0, le=7 * 86_400, description="The longest wait between two attempts (backoff)."
    )
    delivery_retry_after_max_s: float = Field(
        3600.0, ge=0, le=7 * 86_400, description="The longest Retry-After of a receiver that is honoured."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        # Problems are told by the entry's position: any part of an entry may be (part of) a secret.
        keys: dict[str, Scope] = {}
        for number, pair in enumerate(filter(None, (part.strip() for part in value.split(","))), 1):
            key, sep, scope = pair.rpartition(":")
            if not sep or not key.strip():
                raise ValueError(f"NBA_API_KEYS entry {number} is not key:scope, e.g. 'a-long-secret:admin'")
            try:
                keys[key.strip()] = Scope(scope.strip())
            except ValueError:
                raise ValueError(
                    f"NBA_API_KEYS entry {number} has an unknown scope; scopes are {', '.join(Scope)}"
                ) from None
        return keys

    def listens_on_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def refuse_reason(self) -> str | None:
        """Why this configuration must not start, or ``None``."""
        if not self.api_keys and not self.listens_on_loopback():
            return (
                f"refusing to listen on {self.host} without API keys: anyone who can reach it could read "
                "and erase customer profiles. Set NBA_API_KEYS (e.g. 'a-long-secret:admin,"
                "a-public-key:web') or listen on 127.0.0.1."
            )
        return None

    def embedded_redis(self) -> EmbeddedRedis:
        """The private redis-server these settings describe, not yet started (used without a redis_url)."""
        from feature_store.embedded import EmbeddedRedis

        return EmbeddedRedis(self.data_dir, fsync=self.embedded_fsync, conf=self.embedded_redis_conf)
