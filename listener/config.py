"""Settings: one validated object built from flags > environment > TOML file > defaults.

Invariants:
- Every setting has one name; its environment variable is ``PGWAKE_`` + the upper-case
  name, its TOML key is the name (in the ``[pgwake]`` table), its flag on ``pgwake run``
  is ``--`` + the name with dashes (listener/cli/options.py derives the flags from this
  model: type, help from the description, default). A field may add other spellings of
  its flag (``json_schema_extra={"flags": [...]}``) and say its default in words when it
  has no literal one (``{"shown_default": ...}``); the table of docs/configuration.md is
  held to the model by tests/test_docs.py, run's flags by tests/test_settings.py.
- Invalid settings raise :class:`ConfigError`: one line naming each setting, where it
  came from and the problem, before anything connects to a database.
- The DSN is a ``SecretStr``: printing settings never shows it.

The layering is written here, over a plain pydantic model: each source is a dict of
the values it gives (flags, then ``PGWAKE_`` variables, then the ``[pgwake]`` table of
the TOML file), merged in that order of precedence and validated once. pydantic-settings
did the same through its sources, and cost every command that reads settings about
30 ms of imports (its sources, dotenv, argparse, importlib.metadata) for three dicts;
``pgwake run`` reaches ready that much sooner without it. Error messages name the
source of each bad value (``concurrency (from command line): ...``), and the file is
reported in one line when it is unreadable or a setting sits outside its table. The
environment is read as pydantic-settings was configured to: lists comma-separated (not
JSON), only upper-case variable names (``PGWAKE_`` + the upper-case name), an empty
variable unset; ``Settings()`` alone reads no source (it is the defaults and the values
given; :func:`load_settings` layers the sources).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from listener.dsn import SCHEMES, parse_dsn
from listener.errors import ConfigError

ENV_PREFIX = "PGWAKE_"


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when no DSN is given."""
    base = os.environ.get("XDG_DATA_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "share")
        except RuntimeError:  # no $HOME, no passwd entry: a systemd DynamicUser, for one
            base = "/var/lib"
    return Path(base) / "pgwake" / "pgdata"


class Settings(BaseModel):
    """Everything the worker and the CLI can be configured with."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    dsn: SecretStr | None = Field(
        default=None,
        description="libpq URL of the central database; unset: an embedded PostgreSQL.",
        json_schema_extra={"shown_default": "unset: embedded server"},
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Data directory of the embedded PostgreSQL (used only without a DSN).",
        json_schema_extra={"shown_default": "$XDG_DATA_HOME/pgwake/pgdata"},
    )
    handlers: list[str] = Field(
        default_factory=list,
        description="Extra handler modules to import (repeatable).",
        json_schema_extra={"shown_default": "none"},
    )
    kinds: list[str] = Field(
        default_factory=list,
        description="Only claim these kinds (repeatable).",
        json_schema_extra={"shown_default": "every registered kind"},
    )
    concurrency: int = Field(default=32, ge=1, le=10_000, description="Jobs run at once.")
    tenant_concurrency: int = Field(
        default=8, ge=1, le=10_000, description="Jobs of one tenant run at once in this worker."
    )
    claim_batch: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Most jobs claimed in one statement (claims are sized by how long "
        "jobs and claims take, up to this).",
    )
    poll_interval: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between claims when no NOTIFY arrives."
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="On SIGTERM, seconds to let running jobs finish before putting them back.",
    )
    retry_base: float = Field(
        default=1.0, gt=0, le=86_400, description="Backoff before the first retry, seconds."
    )
    retry_cap: float = Field(
        default=3600.0, gt=0, le=30 * 86_400, description="Longest backoff, seconds."
    )
    heartbeat_interval: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="Seconds between worker heartbeats. A worker whose process died is "
        "recovered once its liveness lock is gone and its last heartbeat is 1.5 times this old. "
        "Also how often a running worker looks for migrations applied under it.",
    )
    heartbeat_timeout: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="Seconds without a heartbeat after which a worker that still holds "
        "its lock (hung, stopped, cut off) is declared lost and its jobs recovered.",
    )
    maintenance_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Seconds between rounds of recovery of lost workers' jobs.",
    )
    maintenance_lease: float = Field(
        default=5.0,
        ge=1,
        le=3600,
        description="Seconds a maintenance leader may stall inside a round (its event "
        "loop blocked, its process stopped) before the server ends that session and "
        "another worker leads (idle_in_transaction_session_timeout on its sessions).",
    )
    retention_succeeded: float = Field(
        default=86_400.0,
        gt=0,
        le=10 * 366 * 86_400,
        description="Seconds a succeeded job is kept after it finished.",
    )
    retention_failed: float = Field(
        default=14 * 86_400.0,
        gt=0,
        le=10 * 366 * 86_400,
        description="Seconds a failed job (a dead letter) is kept after it finished.",
    )
    retention_cancelled: float = Field(
        default=86_400.0,
        gt=0,
        le=10 * 366 * 86_400,
        description="Seconds a cancelled job is kept after it finished.",
    )
    retention_archive: bool = Field(
        default=False,
        description="Move finished jobs past their retention into pgwake.jobs_archive "
        "instead of deleting them.",
    )
    retention_archived: float = Field(
        default=30 * 86_400.0,
        gt=0,
        le=10 * 366 * 86_400,
        description="Seconds an archived job is kept in pgwake.jobs_archive.",
    )
    job_events: bool = Field(
        default=True,
        description="Send a NOTIFY on pgwake_events for each status change this worker "
        "makes (sets pgwake.job_events on its sessions).",
    )
    tenant_db_max_connections: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Most connections open to tenants' own databases, all tenants together.",
    )
    tenant_db_per_tenant: int = Field(
        default=5, ge=1, le=1000, description="Most connections open to one tenant's database."
    )
    tenant_db_idle_ttl: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Seconds an unused tenant database pool stays open.",
    )
    metrics_addr: str = Field(
        default="127.0.0.1:9464",
        description="host:port for /metrics, /healthz and /readyz (port 0: any free port).",
    )
    metrics_interval: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds between samples of queue depth and tenant backlogs.",
    )
    metrics_top_tenants: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Tenants with the largest backlog that get their own series.",
    )
    metrics_tenants: list[str] = Field(
        default_factory=list,
        description="Tenants that always get their own series (repeatable).",
        json_schema_extra={"shown_default": "none", "flags": ["--metrics-tenant"]},
    )
    claim_order: Literal["fair", "fifo"] = Field(
        default="fair",
        description="fair: round-robin across tenants (default). fifo: global priority and "
        "age order, without tenant caps or weights; only for comparison benchmarks.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error."
    )
    log_jobs: bool = Field(
        default=True,
        description="Log a line (info) when each job starts and one when it ends, with its "
        "duration and outcome. Failures (error) and retries (warning) are logged either way.",
    )
    log_jobs_per_second: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="At most this many of those info lines a second (0: no limit); the "
        "lines left out are counted in one line a second. Failures and retries are never "
        "left out.",
    )

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, dsn: SecretStr | None) -> SecretStr | None:
        """A DSN asyncpg would misread (an unencoded '#' or '/' in the password, a
        malformed IPv6 host...) is refused here, with a message that holds no part of
        it (listener/dsn.py)."""
        if dsn is not None and dsn.get_secret_value().startswith(SCHEMES):
            parse_dsn(dsn.get_secret_value())  # DsnError is a ValueError
        return dsn

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # Imported here: prometheus_client is slow to import and `pgwake version` reads
        # no settings.
        from listener.http import parse_addr  # noqa: PLC0415

        parse_addr(self.metrics_addr)  # raises ValueError naming the setting
        if self.tenant_concurrency > self.concurrency:
            raise ValueError(
                f"tenant_concurrency ({self.tenant_concurrency}) cannot exceed "
                f"concurrency ({self.concurrency})"
            )
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval})"
            )
        if self.retry_base > self.retry_cap:
            raise ValueError(
                f"retry_base ({self.retry_base}) cannot exceed retry_cap ({self.retry_cap})"
            )
        if self.dsn is not None and not self.dsn.get_secret_value().startswith(SCHEMES):
            raise ValueError("dsn must be a libpq URL starting with postgresql://")
        return self


def _extra(name: str) -> dict[str, Any]:
    extra = Settings.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_names(name: str) -> list[str]:
    """The flags of setting ``name`` on ``pgwake run``: ``--`` + the name with dashes,
    then any other spelling the field names."""
    return ["--" + name.replace("_", "-"), *_extra(name).get("flags", [])]


def flag_kind(name: str) -> type:
    """What the flag of setting ``name`` takes: ``bool`` (a ``--x/--no-x`` switch),
    ``list`` (repeatable, of text), ``int``, ``float`` or ``str`` (a choice is text: the
    model checks it, naming the setting)."""
    annotation = Settings.model_fields[name].annotation
    if annotation in (bool, int, float, str):
        return annotation  # type: ignore[return-value]
    if typing.get_origin(annotation) is list:
        return list
    if typing.get_origin(annotation) is Literal:
        return str
    raise TypeError(f"setting {name}: no flag for a {annotation}")


def shown_default(name: str) -> str:
    """The default of setting ``name`` as ``pgwake run --help`` and the docs show it."""
    if "shown_default" in _extra(name):
        return str(_extra(name)["shown_default"])
    default = Settings.model_fields[name].default
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def _environment(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``env`` gives: ``PGWAKE_`` + the upper-case name of each (other
    spellings are not read); a list is written with commas between its values
    (``PGWAKE_KINDS=email,sms``); an empty variable is unset."""
    found: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = env.get(ENV_PREFIX + name.upper())
        if value is None or value == "":
            continue
        if typing.get_origin(field.annotation) is list:
            found[name] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            found[name] = value
    return found


def _read_table(path: Path) -> dict[str, Any]:
    """The ``[pgwake]`` table of the TOML file at ``path``. Anything else at the top
    level is refused, so a setting put outside the table is not silently ignored (nor
    silently read)."""
    import tomllib  # noqa: PLC0415 - only with a config file

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}), as TOML must be"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    outside = sorted(key for key in data if key != "pgwake")
    if outside:
        raise ConfigError(
            f"config file {path}: {', '.join(map(repr, outside))} outside the [pgwake] "
            "table; settings go under [pgwake]"
        )
    section = data.get("pgwake", {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [pgwake] must be a table")
    return section


def _describe(exc: ValidationError, sources: list[tuple[str, Mapping[str, Any]]]) -> str:
    """One line: each bad setting, the source its value came from, and the problem."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        where = next(
            (origin for origin, values in sources if err["loc"][:1] and err["loc"][0] in values),
            None,
        )
        origin = f" (from {where})" if where else ""
        lines.append(f"{loc}{origin}: {err['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """The settings from the sources (flags win over env, env over the file; a flag of
    None is not given), validated. ``config_file`` defaults to ``$PGWAKE_CONFIG``."""
    env = os.environ if env is None else env
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    sources: list[tuple[str, Mapping[str, Any]]] = [
        ("command line", given),
        ("environment", _environment(env)),
    ]
    if config_file is not None:
        sources.append((str(config_file), _read_table(config_file)))
    merged: dict[str, Any] = {}
    for _, values in reversed(sources):
        merged.update(values)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
