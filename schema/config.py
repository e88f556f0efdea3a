"""The one configuration class of Accute FL; every setting comes from an ``ACCUTE_`` variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_DATABASE_FILE = "accute.db"

#: ``wal``: commits append to ``FILE-wal`` (one fsync each; readers do not block the writer);
#: ``delete``: the rollback journal (several fsyncs a commit). Both commit durably (``synchronous=FULL``).
SqliteJournalMode = Literal["wal", "delete"]


class Settings(BaseSettings):
    """Read once per process entry point (CLI command, server start) and passed down.

    Nothing below reads the environment itself, so tests build a ``Settings`` explicitly.
    """

    model_config = SettingsConfigDict(env_prefix="ACCUTE_", env_file=None, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then ``ACCUTE_`` variables: the only sources. There is no ``.env`` file
        (``env_file=None``) and no secrets folder, yet pydantic-settings' default dotenv source still
        scans every field on each ``Settings()`` (about 40 % of an instance, on every command)."""
        return (init_settings, env_settings)

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATABASE_FILE}",
        description=(
            "SQLAlchemy URL. Default: an SQLite file 'accute.db' in the working directory. "
            "Use postgresql+psycopg://user@host:5432/db for PostgreSQL."
        ),
    )
    database_connect_timeout_s: int = Field(
        default=5, ge=1, le=120, description="Seconds to wait for a PostgreSQL connection before failing."
    )
    sqlite_journal_mode: SqliteJournalMode = Field(
        default="wal",
        description=(
            "Journal mode an SQLite database file is put in (it persists in the file): 'wal' "
            "(one fsync a commit; needs a local filesystem, all processes on one host) or "
            "'delete' (the rollback journal). Every commit is durable in both. Ignored for PostgreSQL."
        ),
    )
    weights_dir: Path = Field(
        default=Path("weights"),
        description="Content-addressed store of published model weights (files named by SHA-256).",
    )
    debug: bool = Field(default=False, description="Show full tracebacks for unexpected errors.")
    simulation_narrow_sweep: bool = Field(
        default=True,
        description=(
            "In simulations, Flower's engine looks for messages only for nodes that have one waiting "
            "(simulations/flower_delivery.py); false runs Flower 1.42's sweep over every node."
        ),
    )

    # Privacy (privacy/): the platform default cap for a tenant and model type without its own.
    default_epsilon_cap: float = Field(
        default=8.0,
        gt=0,
        description="Platform default privacy budget cap (epsilon) per tenant and model type.",
    )
    default_delta: float = Field(
        default=1e-5, gt=0, lt=1, description="Platform default delta for the privacy budget."
    )
    accountant: str = Field(
        default="rdp", pattern="^(rdp|prv)$", description="Privacy accountant for the ledger: rdp or prv."
    )

    # Publishing (fl_server/publish.py): when a run's model may become the active version of its head.
    publish_min_metric: dict[str, float] = Field(
        default_factory=dict,
        description='Held-out metric a model type must reach to be activated, e.g. {"digits": 0.85}.',
    )
    publish_max_regression: float = Field(
        default=0.0,
        ge=0,
        description="How far (in metric units) a new version may fall short of the active one and still activate.",
    )

    # Consent gate (consent_gate/): a tenant joins a round only with at least this many consenting users.
    min_consenting_users: int = Field(
        default=1, ge=1, description="Minimum users with every required consent for a tenant to be eligible."
    )

    # Inference cascade (orchestrator/): platform fallback, prices, keys, auth, cache, resilience.
    fallback_provider: str = Field(
        default="openai",
        description="Provider wire format of the billed platform fallback (any tenant provider name).",
    )
    fallback_api_endpoint: str | None = Field(
        default=None, description="Base URL of the fallback provider; the provider's public URL when unset."
    )
    fallback_api_key: SecretStr | None = Field(
        default=None, description="API key of the fallback provider; never logged or returned."
    )
    fallback_model: str = Field(default="gpt-4o-mini", description="Model the fallback provider serves.")
    price_table: dict[str, dict[str, float]] = Field(
        default={
            "gpt-4o-mini": {"input": 0.15, "output": 0.6},
            "gpt-4o": {"input": 2.5, "output": 10.0},
            "gpt-4-turbo": {"input": 10.0, "output": 30.0},
            "gpt-4": {"input": 30.0, "output": 60.0},
            "claude-3-opus": {"input": 15.0, "output": 75.0},
            "claude-3-sonnet": {"input": 3.0, "output": 15.0},
            "default": {"input": 5.0, "output": 15.0},
        },
        description="USD per 1M input/output tokens by model (JSON); 'default' prices unlisted models.",
    )
    token_bundle_tokens: int = Field(
        default=1_000_000,
        ge=0,
        description="Tokens per billing month included for token_bundle/hybrid organizations.",
    )
    key_provider: str = Field(
        default="local",
        pattern="^(local|pkcs11)$",
        description="Key-encryption key provider: local or pkcs11.",
    )
    kek_file: Path = Field(
        default=Path("state/kek.json"),
        description="Local KEK file (created 0600 on first use, with its folder 0700).",
    )
    pkcs11_module: str = Field(
        default="/usr/lib/softhsm/libsofthsm2.so", description="PKCS#11 module (shared library) path."
    )
    pkcs11_token_label: str = Field(
        default="accute", description="Label of the PKCS#11 token holding the KEK."
    )
    pkcs11_pin: SecretStr | None = Field(default=None, description="User PIN of the PKCS#11 token.")
    pkcs11_key_label: str = Field(
        default="accute-kek", description="Label prefix of the KEK objects (versions: <label>-v<N>)."
    )
    jwt_issuer: str = Field(default="accute-fl", description="JWT 'iss' claim issued and required.")
    jwt_audience: str = Field(default="accute-api", description="JWT 'aud' claim issued and required.")
    jwt_ttl_s: int = Field(default=900, ge=30, description="Default lifetime of an issued token (seconds).")
    jwt_max_ttl_s: int = Field(
        default=86_400, ge=60, description="Longest lifetime a token may be issued with (seconds)."
    )
    admin_cookie_secure: bool = Field(
        default=False,
        description="Always mark the admin console's session cookie Secure (set it behind a proxy that "
        "terminates TLS; requests that arrive over https get Secure anyway).",
    )
    forwarded_allow_ips: str = Field(
        default="",
        max_length=2000,
        description=(
            "Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto the service believes "
            "(comma-separated addresses or CIDRs, as uvicorn's --forwarded-allow-ips). Empty (default): "
            "the client address is the TCP peer's, so a client cannot claim another address to slip past "
            "threat intelligence, blocks or per-address rate limits."
        ),
    )
    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis URL for the response cache and the shared rate limits; in-process memory when unset."
        ),
    )
    cache_enabled: bool = Field(default=False, description="Cache responses per organization.")
    cache_max_entries: int = Field(default=10_000, ge=1, description="Entries of the in-memory LRU cache.")
    cache_ttl_s: int = Field(default=3600, ge=1, description="Lifetime of a cached response (seconds).")
    provider_timeout_s: float = Field(
        default=30.0, gt=0, description="Timeout of one provider HTTP attempt (seconds)."
    )
    upstream_client: Literal["builtin", "httpx"] = Field(
        default="builtin",
        description=(
            "HTTP client for provider calls: the built-in keep-alive client (fast) or httpx "
            "(honours HTTPS_PROXY and friends; about 1 ms more CPU per call)."
        ),
    )
    provider_max_response_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest provider reply accepted, after decompression (bytes); larger is an error.",
    )
    egress_allow: str = Field(
        default="",
        description=(
            "Comma-separated CIDRs or host names that tenant provider endpoints may reach although "
            "private, loopback or otherwise internal (e.g. '10.0.0.0/8,ollama.internal'). "
            "The platform fallback is not subject to the egress policy."
        ),
    )
    max_request_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest HTTP request body accepted (bytes); 413 above."
    )
    max_request_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Largest request line + headers accepted (bytes); 431 above."
    )
    upstream_max_connections: int = Field(
        default=500, ge=1, description="Provider requests in flight at once, all tenant providers together."
    )
    upstream_max_per_origin: int = Field(
        default=100,
        ge=1,
        description="Provider requests in flight at once to one origin (scheme, host, port).",
    )
    upstream_reserved_fallback: int = Field(
        default=100,
        ge=1,
        description="Connections reserved for the platform fallback (not shared with tenants).",
    )
    org_max_concurrency: int = Field(
        default=64,
        ge=1,
        description="Provider calls one organization may have in flight at once (per process).",
    )
    retry_max_attempts: int = Field(
        default=3, ge=1, le=10, description="Attempts per provider on 429, 5xx and timeouts."
    )
    retry_backoff_s: float = Field(
        default=0.25, ge=0, description="First backoff (seconds), doubled per retry, with jitter."
    )
    retry_backoff_max_s: float = Field(
        default=8.0, ge=0, description="Longest wait between attempts, Retry-After included (seconds)."
    )
    circuit_failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failed requests that open a provider's circuit."
    )
    circuit_cooldown_s: float = Field(
        default=30.0, gt=0, description="Seconds an open circuit waits before one trial request."
    )
    cascade_deadline_s: float = Field(
        default=60.0, gt=0, description="Overall deadline of one chat request across all tiers (seconds)."
    )
    dms_watch_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds between the dead man's switch watcher's checks inside `serve` (each "
        "worker runs one; firing is idempotent). 0 runs no watcher there (run `accute-fl dms watch`).",
    )
    config_cache_ttl_s: float = Field(
        default=5.0, ge=0, description="Seconds a server reuses an organization's provider configs."
    )
    max_message_chars: int = Field(
        default=32_000, ge=1, description="Longest chat message accepted (characters)."
    )

    # Fin(Ai)d hub (schema/events.py, orchestrator/hub): with neither the broker nor the hub set,
    # events stay pending in the outbox and nothing fails.
    hub_amqp_url: SecretStr | None = Field(
        default=None,
        description=(
            "AMQP URL of the hub's RabbitMQ (amqp://user:password@host:5672/vhost); may hold a password, "
            "so it is never logged. Unset: nothing is published to a broker."
        ),
    )
    hub_exchange: str = Field(
        default="finaid.events",
        min_length=1,
        max_length=255,
        description="Topic exchange the relay publishes to; the routing key is the event type.",
    )
    hub_url: str | None = Field(
        default=None,
        description="Base URL of the Fin(Ai)d hub's HTTP API (POST {hub_url}/events). Unset: no HTTP publishing.",
    )
    hub_token: SecretStr | None = Field(
        default=None, description="Service token sent as 'Authorization: Bearer' to the hub; never logged."
    )
    hub_max_attempts: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Publish attempts of one event before it goes to the dead letters (admin can replay).",
    )
    hub_backoff_base_s: float = Field(
        default=1.0, gt=0, description="First retry delay of a failed event (seconds); doubles each attempt."
    )
    hub_backoff_max_s: float = Field(
        default=300.0, gt=0, description="Longest retry delay of a failed event (seconds), before jitter."
    )
    # The relay (orchestrator/hub/relay.py).
    hub_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Outbox rows one relay claims and publishes per batch."
    )
    hub_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a relay holds the rows it claimed; a dead relay's rows are claimed again after it.",
    )
    hub_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of one broker connect, confirm wait or hub HTTP request (seconds).",
    )
    hub_poll_s: float = Field(
        default=0.2, gt=0, le=60, description="How often an idle relay looks for new outbox rows (seconds)."
    )
    hub_workflows_file: Path | None = Field(
        default=None,
        description=(
            "YAML of cross-product workflows (trigger event → hub workflow). Unset: the spec's examples "
            "in orchestrator/hub/workflows.yaml."
        ),
    )
    hub_fallback_billed_interval_s: float = Field(
        default=300.0,
        ge=0,
        description=(
            "At most one accute.llm.fallback.billed event per organization and billing period per this "
            "many seconds (0: one per billing flush that changed the period)."
        ),
    )
    # Admin console (orchestrator/api/): Prometheus metrics.
    metrics_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token Prometheus sends to scrape GET /metrics (Authorization: Bearer <token>). "
            "Unset: /metrics answers 404 (metrics are off); a wrong or missing token answers 401. "
            "Labels are bounded (organization, model type, route template, never user or request ids)."
        ),
    )
    # Security layers (orchestrator/security/): zero trust, threat intelligence, rate limits.
    zero_trust_enabled: bool = Field(
        default=True,
        description=(
            "Run every authenticated request (and node admission to a round) through the zero-trust "
            "policy, threat intelligence and the rate limits; off: tokens and roles only."
        ),
    )
    zero_trust_policy_path: Path | None = Field(
        default=None,
        description="TOML file of the zero-trust policy; the documented orchestrator/security/policy.toml when unset.",
    )
    zero_trust_log_allowed: bool = Field(
        default=True,
        description="Write allowed requests to zero_trust_access_log too (denials and challenges always are).",
    )
    zero_trust_log_flush_ms: int = Field(
        default=1000, ge=1, description="Longest time a decision waits before its batch is written (ms)."
    )
    zero_trust_log_batch: int = Field(
        default=500, ge=1, description="Decisions written at once when that many are waiting."
    )
    zero_trust_log_queue: int = Field(
        default=50_000,
        ge=1,
        description="Decisions that may wait to be written; beyond, new ones are dropped and counted.",
    )
    security_context_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between reloads of anomalies, behaviour scores and trusted devices into memory.",
    )
    security_change_poll_s: float = Field(
        default=0.5,
        gt=0,
        description=(
            "Seconds between checks of the security_generation row: a block raised or an anomaly "
            "resolved anywhere reaches this worker's blocks within this (at once with ACCUTE_REDIS_URL)."
        ),
    )
    mfa_step_up_s: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description=(
            "Seconds a token that passed the mfa challenge is not challenged again (0: every "
            "challenged request needs its own TOTP code)."
        ),
    )
    security_change_channel: str = Field(
        default="accute:security-changes",
        min_length=1,
        max_length=200,
        description="Redis pub/sub channel on which workers and the CLI announce block/resolve changes.",
    )
    threat_intel_refresh_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between checks whether threat_intelligence changed (reloaded only if it did).",
    )
    threat_intel_max_age_days: int = Field(
        default=90, ge=1, description="`accute-fl threat expire` deactivates indicators last seen longer ago."
    )
    rate_limit_org_per_minute: int = Field(
        default=12_000,
        ge=0,
        description="Authenticated requests per organization per sliding minute (0: no limit); 429 above.",
    )
    rate_limit_address_per_minute: int = Field(
        default=30_000,
        ge=0,
        description="Authenticated requests per client address per sliding minute (0: no limit); 429 above.",
    )
    rate_limit_key_prefix: str = Field(
        default="accute:ratelimit",
        min_length=1,
        description="Prefix of the rate-limit keys in Redis (shared by every worker using ACCUTE_REDIS_URL).",
    )
    # Anomaly detection (orchestrator/security/anomalies.py, fl_server/anomalies.py).
    anomaly_detection: bool = Field(
        default=True,
        description="Run the anomaly detectors on every authenticated request and in FL rounds.",
    )
    anomaly_policy_file: Path | None = Field(
        default=None,
        description=(
            "TOML file overriding the anomaly rules (thresholds, windows, severities, auto_block, "
            "block_s); the defaults and keys are documented in schema/anomaly_policy.py."
        ),
    )
    anomaly_dedup_window_s: int = Field(
        default=3600,
        ge=1,
        description="One open security_anomalies row per (type, subject) within this many seconds; "
        "repeats increment its count.",
    )
    anomaly_tracked_keys: int = Field(
        default=65_536,
        ge=16,
        description="Addresses, tokens or organizations each detector remembers at most (LRU), "
        "so a flood of strangers cannot grow memory.",
    )

    # Behavioural biometrics (orchestrator/security/biometrics.py).
    biometrics_min_sessions: int = Field(
        default=5,
        ge=1,
        description="Sessions a user's behavioural baseline needs before a session can be judged anomalous.",
    )
    biometrics_hash_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for the behavioural pattern hashes (behavioral_biometrics.*_hash); "
        "without it a random key per process is used (hashes then compare only within a process).",
    )
