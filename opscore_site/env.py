"""Typed configuration read from the environment (12-factor).

Every setting Ops-Core reads from the environment is declared here once, with
its type and default; `settings.py` turns it into Django settings. A value of
the wrong type stops start-up with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated

BASE_DIR = Path(__file__).resolve().parent.parent

# manage.py commands that only read the code (models, migrations, static files): they
# sign, verify and serve nothing, so they run without the production secrets (CI's
# `makemigrations --check`, `collectstatic` in an image build that has no secrets).
SECRETLESS_COMMANDS = frozenset({"makemigrations", "showmigrations", "sqlmigrate", "collectstatic"})
secretless_command = False  # set by manage.py, for this process only; never from the environment


def mark_secretless_command(argv: list[str]) -> None:
    """Called by manage.py before Django reads the settings."""
    global secretless_command
    secretless_command = len(argv) > 1 and argv[1] in SECRETLESS_COMMANDS


class OpscoreEnv(BaseSettings):
    """All environment variables Ops-Core understands (see README "Configuration")."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    DEBUG: bool = False
    SECRET_KEY: str = ""
    ALLOWED_HOSTS: Annotated[list[str], NoDecode] = ["localhost", "127.0.0.1", "[::1]"]
    CSRF_TRUSTED_ORIGINS: Annotated[list[str], NoDecode] = []
    # An embedded SQLite file is the zero-setup default for the local demo only;
    # tests and production use PostgreSQL.
    DATABASE_URL: str = f"sqlite:///{BASE_DIR / 'var' / 'opscore.sqlite3'}"
    DB_CONN_MAX_AGE: int = Field(default=60, ge=0)
    SECURE_SSL_REDIRECT: bool = True
    SECURE_HSTS_SECONDS: int = Field(default=31536000, ge=0)
    LOG_LEVEL: str = "INFO"

    # Operator and admin login (django-axes): failures per account and address before a lockout
    OPSCORE_LOGIN_FAILURE_LIMIT: int = Field(default=5, ge=1)
    OPSCORE_LOGIN_COOLOFF_MINUTES: int = Field(default=15, ge=1)

    # Agent-facing API
    OPSCORE_API_KEY: str = ""
    OPSCORE_WEBHOOK_SECRET: str = ""
    OPSCORE_WEBHOOK_ALLOW_UNSIGNED: bool = False
    OPSCORE_WEBHOOK_TOLERANCE_SECONDS: int = Field(default=300, ge=1)
    OPSCORE_STATE_MAX_FUTURE_SECONDS: int = Field(default=300, ge=0)
    OPSCORE_MAX_BODY_BYTES: int = Field(default=1_048_576, ge=1024)
    OPSCORE_THROTTLE_RATE: str = "6000/min"
    # A verified API key is trusted this long per process without a query: the bound on
    # how late a key revoked in another process is still accepted. 0 checks every request.
    OPSCORE_API_KEY_CACHE_SECONDS: float = Field(default=5.0, ge=0, le=60)
    OPSCORE_STATE_THROTTLE_RATE: str = ""
    OPSCORE_NUM_PROXIES: int = Field(default=0, ge=0)
    OPSCORE_IDEMPOTENCY_TTL_HOURS: int = Field(default=24, ge=1)

    # Fleet and engine
    OPSCORE_AGENT_STALE_SECONDS: int = Field(default=300, ge=1)
    OPSCORE_RETENTION_DAYS: int = Field(default=30, ge=1)
    OPSCORE_SCHEDULER_INTERVAL_SECONDS: float = Field(default=1.0, gt=0)
    OPSCORE_LOST_JOB_SECONDS: int = Field(default=120, ge=1)
    # Routing and quarantine (DESIGN.md "Where a step goes, and when it waits")
    OPSCORE_QUEUE_TIMEOUT_SECONDS: int = Field(default=1800, ge=1)
    OPSCORE_QUARANTINE_THRESHOLD: int = Field(default=3, ge=0)
    OPSCORE_QUARANTINE_COOLDOWN_SECONDS: int = Field(default=30, ge=1)
    OPSCORE_QUARANTINE_BACKOFF_CAP_SECONDS: int = Field(default=600, ge=1)

    # AgentKit
    AGENTKIT_API_URL: str = ""
    AGENTKIT_API_KEY: str = ""
    AGENTKIT_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)

    # Prometheus metrics (GET /metrics): open while both are empty
    OPSCORE_METRICS_TOKEN: str = ""
    OPSCORE_METRICS_ALLOWED_IPS: Annotated[list[str], NoDecode] = []
    # Read by prometheus-client itself at import; declared here so start-up can check the directory.
    PROMETHEUS_MULTIPROC_DIR: str = ""

    # Outgoing mail: alert rules with the email channel
    EMAIL_HOST: str = "localhost"
    EMAIL_PORT: int = Field(default=25, ge=1, le=65535)
    EMAIL_HOST_USER: str = ""
    EMAIL_HOST_PASSWORD: str = ""
    EMAIL_USE_TLS: bool = False
    DEFAULT_FROM_EMAIL: str = "opscore@localhost"

    # django-q2
    Q_WORKERS: int = Field(default=4, ge=1)
    Q_TIMEOUT: int = Field(default=60, ge=1)
    Q_RETRY: int = Field(default=300, ge=2)
    Q_QUEUE_LIMIT: int = Field(default=4, ge=1)
    Q_POLL: float = Field(default=1.0, gt=0, le=60)
    Q_MAX_RSS_KB: int = Field(default=262_144, ge=1024)

    @field_validator("AGENTKIT_API_URL")
    @classmethod
    def _agentkit_url(cls, value: str) -> str:
        # Checked here, not at the first dispatch: a bad URL would fail every attempt of every task.
        value = value.strip()
        if not value:
            return value
        from opscore_site.httpurl import http_url_problem

        if problem := http_url_problem(value):
            raise ValueError(f"{problem}, e.g. http://agentkit:8000")
        return value

    @field_validator("AGENTKIT_API_KEY")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        if value and not (value.isascii() and value.isprintable()):
            raise ValueError("must be printable ASCII (it is sent in an HTTP header)")
        return value

    @field_validator("OPSCORE_METRICS_ALLOWED_IPS")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
        return value

    @field_validator("PROMETHEUS_MULTIPROC_DIR")
    @classmethod
    def _directory(cls, value: str) -> str:
        if value and not Path(value).is_dir():
            raise ValueError(f"{value!r} is not a directory (create it, empty, before the processes start)")
        return value

    @field_validator("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "OPSCORE_METRICS_ALLOWED_IPS", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


def load_env() -> OpscoreEnv:
    """Read the environment, or stop with one line per bad variable."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        return OpscoreEnv()
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()]
        raise ImproperlyConfigured(
            "Invalid environment configuration:\n  " + "\n  ".join(lines)
        ) from None
