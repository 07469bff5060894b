"""All runtime settings in one class, read from the environment (prefix LEADFLOW_) once at start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The Kafka the local development broker and test clusters run unless told otherwise.
KAFKA_VERSION = "3.9.1"


class Topics(BaseSettings):
    """Topic names; every name is a setting (LEADFLOW_TOPIC_<NAME>)."""

    model_config = SettingsConfigDict(env_prefix="LEADFLOW_TOPIC_", frozen=True)

    web: str = "events.web"
    email: str = "events.email"
    product: str = "events.product"
    crm: str = "events.crm"
    stage_changes: str = "leads.stage-changes"
    assignments: str = "leads.assignments"
    routing_prefix: str = "routing."
    nurture: str = "routing.nurture"
    recycle: str = "routing.recycle"
    review: str = "routing.review"
    escalations: str = "routing.escalations"
    attribution: str = "leads.attribution"
    nurture_changes: str = "leads.nurture"
    score_changes: str = "leads.score-changes"
    deadletter: str = "events.deadletter"
    #: Published rules (`leadflow rules publish`), compacted; every worker follows it.
    rules: str = "leadflow.rules"

    def inputs(self) -> dict[str, str]:
        """Input topic name -> source name (web, email, product, crm)."""
        return {self.web: "web", self.email: "email", self.product: "product", self.crm: "crm"}

    def routing(self, team: str) -> str:
        """The routing topic of one team."""
        return f"{self.routing_prefix}{team}"


class Settings(BaseSettings):
    """leadflow settings. Environment variables are LEADFLOW_<FIELD> (upper case)."""

    model_config = SettingsConfigDict(env_prefix="LEADFLOW_", frozen=True, extra="ignore")

    # None means: no cluster configured. The worker then refuses to start on its own; the
    # CLI commands use the local development broker (the demo and bench start one).
    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka brokers, host:port, comma separated (several for a cluster); "
        "also read: ';' separators, spaces, and Faust's 'kafka://' prefix.",
    )
    app_id: str = "leadflow"
    home: Path = Field(
        default=Path(".leadflow"),
        description="Folder for the local broker's jars and data and the worker's state.",
    )
    state_dir: Path | None = Field(
        default=None,
        description="Folder for the worker's tables (RocksDB); default <home>/worker/<app id>. "
        "Each worker process needs its own.",
    )
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    standby_replicas: int = Field(default=1, ge=0)
    rules_file: Path | None = Field(
        default=None, description="Rules YAML; None uses the shipped default rules."
    )
    store: str = "rocksdb://"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    score_ledger: bool = Field(
        default=True, description="Publish every score change on the score-changes topic "
        "and keep a lead's latest ones for GET /leads/{id}/history; false builds none.")
    # Loopback by default: the lead API answers with personal data. Any other address
    # needs api_token (pipeline/stream/access.py), or the worker refuses to start.
    web_host: str = Field(
        default="127.0.0.1",
        description="Address the worker's web server binds to (and, without "
        "LEADFLOW_WEB_ADVERTISED_HOST, advertises to other workers); not loopback requires "
        "LEADFLOW_API_TOKEN.",
    )
    web_advertised_host: str | None = Field(
        default=None,
        description="The address other workers reach this one's lead API at, when it "
        "differs from the bind address (a worker bound to 0.0.0.0 must advertise its pod "
        "IP or hostname, or lookups of another worker's leads are not forwarded).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the lead API (/leads/..., /teams/.../queue) requires; "
        "health, readiness and metrics stay open. Empty means unset.",
    )
    web_port: int = Field(default=6066, ge=0, le=65535)
    # -- the console (leadflow console): web pages for revenue teams ----------------------
    console_host: str = Field(
        default="127.0.0.1",
        description="Address the console binds to; not loopback requires LEADFLOW_CONSOLE_TOKEN.",
    )
    console_port: int = Field(default=6070, ge=0, le=65535)
    console_token: SecretStr | None = Field(
        default=None,
        description="The console's secret: sent as 'Authorization: Bearer <token>' or as the "
        "password of HTTP basic auth (any user name), so a browser shows its own login box. "
        "Empty means unset.",
    )
    console_prometheus_url: str | None = Field(
        default=None,
        description="Prometheus (with deploy/prometheus/recording_rules.yml loaded) the funnel "
        "page reads the recorded KPIs from; unset: computed from the workers' /metrics.",
    )
    console_workers: list[str] = Field(
        default=[],
        description="Worker web addresses the console reads (lead API, search, queues, "
        "/metrics); search asks each. JSON in the environment: "
        '\'["http://w1:6066", "http://w2:6066"]\'. Empty: this machine\'s worker on '
        "LEADFLOW_WEB_PORT.",
    )
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    dedup_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    sla_check_interval_s: float = Field(default=1.0, gt=0)
    clock_start: AwareDatetime | None = Field(
        default=None,
        description="Run the worker's clock (SLA, routing and decay timers) from this instant "
        "instead of wall time; for tests and demos. ISO 8601 with a zone.",
    )
    clock_rate: float = Field(
        default=1.0, gt=0, description="Speed of that clock: 3600 lives an hour per second."
    )
    decay_check_interval_s: float = Field(
        default=300.0, gt=0, description="How often quiet leads are checked for decay moves."
    )
    # RocksDB memory per partition database (each table has one per partition it holds).
    # Faust's defaults (64 MB write buffers x3, a 2 GB block cache each) are sized for a
    # big dedicated host; these keep a worker with a million leads well under 1 GiB.
    rocksdb_write_buffer_mb: int = Field(default=16, ge=1)
    rocksdb_block_cache_mb: int = Field(default=16, ge=1)
    #: Decoded lead records kept between batches (`stream.cache`), estimated MB; 0: none.
    #: Off by default: with 64 a million leads were not shown to stay under 1 GiB (README).
    lead_cache_mb: int = Field(default=0, ge=0)
    kafka_version: str = KAFKA_VERSION
    kafka_heap_mb: int = Field(default=512, ge=128)
    topics: Topics = Field(default_factory=Topics)
    # -- HTTP collector (leadflow collector) ---------------------------------------------
    write_keys: dict[str, Literal["web", "email", "product", "crm"]] = Field(
        default={"dev-web-key": "web"},
        description="Collector write key -> source (picks the input topic). JSON in the "
        'environment: LEADFLOW_WRITE_KEYS=\'{"k1": "web", "k2": "crm"}\'. Replace the dev key.',
    )
    collector_host: str = "127.0.0.1"
    collector_port: int = Field(default=8088, ge=0, le=65535)
    collector_cors_origins: list[str] = Field(
        default=["*"], description='Origins allowed to post from browsers; ["*"] allows any.'
    )
    # Two token buckets (pipeline/collector/limits.py). A browser write key is public and
    # shared by every visitor, so the per-key bucket is only a ceiling against a key flooded
    # from many hosts: 20,000/s is ~15x a site with a million page views an hour at five
    # events each. The per-IP bucket stops one client: a visitor sends a few events per page,
    # an office NAT a few hundred people's; 300/s with a 3,000 burst (six full 500-message
    # batches) also lets a server SDK's backlog through, and SDKs retry a 429 with backoff.
    collector_rate_per_s: float = Field(
        default=20_000.0, gt=0, description="Messages per second per write key (token bucket)."
    )
    collector_burst: int = Field(
        default=100_000, ge=1, description="Token bucket size per write key (messages)."
    )
    collector_ip_rate_per_s: float = Field(
        default=300.0, gt=0, description="Messages per second per client IP (token bucket)."
    )
    collector_ip_burst: int = Field(
        default=3_000, ge=1, description="Token bucket size per client IP (messages)."
    )
    collector_trusted_proxies: list[str] = Field(
        default=[], description="Addresses or CIDRs of the load balancers in front of the "
        "collector; X-Forwarded-For is honoured only from them. JSON in the environment: "
        'LEADFLOW_COLLECTOR_TRUSTED_PROXIES=\'["10.0.0.0/8"]\'.',
    )
    collector_max_message_bytes: int = Field(default=32 * 1024, ge=1024)  # Segment's limit
    collector_max_batch_bytes: int = Field(default=500 * 1024, ge=1024)  # Segment's limit
    collector_ack_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for Kafka's acks before answering 503."
    )

    # -- Kafka client security (every client: worker, collector, CLI, forwarder) ----------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(
        default=None, description="PEM CA bundle for the brokers' certificates; None: system CAs."
    )
    ssl_certfile: Path | None = Field(default=None, description="PEM client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="PEM key of ssl_certfile.")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _security_complete(self) -> Settings:
        # Say which environment variable is missing, not a handshake failure minutes later.
        proto = self.security_protocol
        if proto.startswith("SASL_"):
            missing = [
                f"LEADFLOW_{name.upper()}"
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) in (None, "")
            ]
            if missing:
                raise ValueError(
                    f"LEADFLOW_SECURITY_PROTOCOL={proto} needs {', '.join(missing)}"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(
                "LEADFLOW_SASL_* is set but LEADFLOW_SECURITY_PROTOCOL is "
                f"{proto}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        if tls_files and not proto.endswith("SSL"):
            raise ValueError(
                f"LEADFLOW_SSL_* files are set but LEADFLOW_SECURITY_PROTOCOL is {proto}: "
                "use SSL or SASL_SSL"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("LEADFLOW_SSL_KEYFILE is set without LEADFLOW_SSL_CERTFILE")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"LEADFLOW_{name.upper()}={path}: no such file")
        return self

    @field_validator("api_token", "console_token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # `LEADFLOW_API_TOKEN=` (an unset compose variable) must not mean "the empty token".
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("collector_trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        # Refuse a typo at start rather than silently trusting nobody (or everybody).
        from pipeline.collector.limits import parse_networks

        try:
            parse_networks(value)
        except ValueError as exc:
            raise ValueError(f"LEADFLOW_COLLECTOR_TRUSTED_PROXIES: {exc}") from None
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _one_bootstrap_form(cls, value: str | None) -> str | None:
        # Every client (aiokafka directly, Faust through its kafka:// URL) gets the same
        # "h1:p1,h2:p2". Faust's own form ("kafka://h1:p1;h2:p2") works for the worker only:
        # aiokafka (topics, collector, alerts) splits on ',' alone and would look up
        # "h1:p1;h2" as one host name.
        if value is None:
            return None
        hosts = [h.strip() for h in re.split(r"[,;]", value)]
        hosts = [h.removeprefix("kafka://") for h in hosts if h]
        return ",".join(hosts) or None

    @property
    def worker_state_dir(self) -> Path:
        """The worker's tables: ``state_dir``, else ``<home>/worker/<app id>``."""
        return self.state_dir or self.home / "worker" / self.app_id

    @property
    def kafka_dir(self) -> Path:
        """Where the local broker keeps its jars, config, data and pid file."""
        return self.home / "kafka"
