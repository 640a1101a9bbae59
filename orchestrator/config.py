"""Settings: every ``LETHE_*`` environment variable, in one place (SPEC "Configuration")."""

from __future__ import annotations

import secrets
from contextlib import suppress
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """The environment is not usable as configured; the message says what to change."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    broker_url: str | None = Field(
        None,
        description="Celery broker (redis://… or amqp://…). Unset: commands that dispatch work run an "
        "in-process broker and worker for the life of the command (embedded mode).",
    )
    database_url: str = Field(
        "sqlite:///./lethe.db",
        description="Ledger database, an SQLAlchemy URL. postgresql:// works as given (psycopg 3 is used).",
    )
    data_map: Path = Field(Path("./datamap.yaml"), description="Path of the data map YAML.")
    subject_key: SecretStr | None = Field(
        None,
        description="Hex secret (>= 32 bytes) for keyed hashes of identifiers, shared by every host. "
        "Unset with an SQLite ledger: generated once into a 0600 file beside the database. "
        "Unset with PostgreSQL: commands refuse to start.",
    )
    signing_key: Path | None = Field(
        None, description="Path of the Ed25519 private key (PEM) that signs certificates."
    )
    api_tokens: Path | None = Field(
        None, description="Path of the API token file: 'token role [name]' per line. Unset: API refuses all."
    )
    event_key: SecretStr | None = Field(
        None, description="HMAC secret platform events are signed with. Unset: events are refused."
    )
    event_max_age_days: int = Field(
        7,
        ge=1,
        le=29,
        description="A platform event whose `time` is older than this many days (or more than 5 minutes ahead) "
        "is dead-lettered `stale`. At most 29: event dedupe keys are kept 30 days, so an older captured "
        "event could otherwise be filed twice.",
    )
    task_lease_seconds: int = Field(
        600,
        ge=5,
        description="How long a dispatched task may go without finishing or renewing its lease before "
        "`lethe reconcile` re-dispatches it.",
    )
    task_slice_seconds: int = Field(
        300,
        ge=0,
        description="A resumable purge (S3) hands its task back to the queue after this long, between pages, "
        "so no broker message runs for hours and a dead worker loses at most one slice.",
    )
    task_max_retries: int = Field(
        6, ge=0, description="Retries of a task after a retryable error before it fails for good."
    )
    tombstone_days: int = Field(90, ge=1, description="How long erased subjects' tombstones are kept.")
    record_retention_days: int = Field(
        730, ge=1, description="How long completed request records are kept (CCPA asks 24 months)."
    )
    watch_items: int = Field(
        1000, ge=0, description="Resurrection watch: store entries (object versions, rows) each `lethe reconcile` "
        "pass reads per scannable target, rolling through the store; 0 turns the watch off.",
    )
    log_level: str = Field("INFO", description="Log level of lethe's structlog JSON logs.")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, url: str | None) -> str | None:
        # Kombu takes any string and fails only when a message is sent: refuse what it cannot use at start.
        from kombu.transport import TRANSPORT_ALIASES

        if not url:
            return None  # embedded mode
        for one in url.split(";"):  # Celery's failover list: url;url
            scheme, sep, _ = one.strip().partition("://")
            if not sep or scheme.split("+")[0] not in TRANSPORT_ALIASES:
                raise ValueError("is not a broker URL: give redis://host:6379/0, rediss://… or amqp://user@host//")
        return url

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        # SQLAlchemy maps a bare postgresql:// to psycopg2; lethe ships psycopg 3, so the URL works as given.
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                url = "postgresql+psycopg://" + url[len(plain) :]
        # Refused here, not at the first connection: a URL SQLAlchemy cannot read or has no dialect for.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url).get_dialect()
        except ArgumentError:  # NoSuchModuleError (no such dialect) is one too
            raise ValueError("is not a database URL lethe can use: give postgresql://user@host:5432/lethe or "
                             "sqlite:///path/to/lethe.db") from None
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    def sqlite_path(self) -> Path | None:
        """The ledger file of an SQLite URL (None for in-memory or another database)."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split("///", 1)[1] if "///" in self.database_url else ""
        return Path(path) if path and path != ":memory:" else None

    def _beside_ledger(self, suffix: str, variable: str, how: str) -> Path:
        """Where a key generated for an SQLite ledger lives; any other database needs ``variable`` set."""
        db_file = self.sqlite_path()
        if db_file is None:
            raise ConfigError(f"{variable} is required with this ledger database: {how}")
        return db_file.with_name(db_file.name + suffix)

    @cached_property
    def subject_key_bytes(self) -> bytes:
        """The secret behind every keyed hash (HMAC-SHA256) of a subject identifier."""
        from orchestrator.certificates import write_secret_file

        if self.subject_key is not None:
            return _parse_hex_key(self.subject_key.get_secret_value())
        key_file = self._beside_ledger(".subject-key", "LETHE_SUBJECT_KEY", "set it to the same hex secret "
                                       "(>= 32 bytes, e.g. `openssl rand -hex 32`) on every host")
        if not key_file.exists():
            with suppress(FileExistsError):  # another process made it first
                write_secret_file(key_file, (secrets.token_hex(32) + "\n").encode())
        return _parse_hex_key(key_file.read_text().strip())

    @cached_property
    def signing_private_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs certificates: LETHE_SIGNING_KEY, or generated beside an SQLite ledger."""
        from orchestrator.certificates import create_private_key, load_private_key

        if self.signing_key is not None:
            try:
                return load_private_key(self.signing_key)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"LETHE_SIGNING_KEY: cannot load an Ed25519 PEM private key: {exc}") from None
        key_file = self._beside_ledger(
            ".signing-key.pem", "LETHE_SIGNING_KEY", "the path of an Ed25519 private key (PEM) shared by every "
            "host, e.g. `openssl genpkey -algorithm ed25519 -out lethe-signing.pem`")
        if key_file.exists():
            return load_private_key(key_file)
        try:
            return create_private_key(key_file)
        except FileExistsError:  # another process made it first
            return load_private_key(key_file)


def _parse_hex_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError("LETHE_SUBJECT_KEY must be hex") from None
    if len(key) < 32:
        raise ConfigError("LETHE_SUBJECT_KEY must be at least 32 bytes (64 hex characters)")
    return key


def get_settings() -> Settings:
    return Settings()
