"""Every process is configured by one settings class, read from ``PINKSEA_*`` environment variables.

The defaults point at the local stack that ``make services`` starts on 127.0.0.1, so a fresh
checkout runs without any configuration. Production overrides them (see infra/terraform/).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PINKSEA_"

#: ``PINKSEA_*`` names that are not settings of a process: read by the local stack's scripts,
#: the test harness and the operator tools, so a process's environment may hold them.
NON_SETTING_NAMES = frozenset(
    {
        "PINKSEA_STACK_DIR",  # infra/local/*.sh: where the local stack keeps its data and logs
        "PINKSEA_PYTHON",  # infra/local/s3.sh: the interpreter that runs the S3 server
        "PINKSEA_START_TIMEOUT",  # infra/local/common.sh: how long a service may take to start
        "PINKSEA_CHECKOV_VENV",  # infra/terraform/check.sh: checkov's own virtualenv
        "PINKSEA_METRICS_PORT",  # `pinksea gpu-worker --metrics-port`
        "PINKSEA_QUEUE_METRICS_URL",  # `pinksea lag-metric --queue-metrics-url`
    }
)

Environment = Literal["local", "staging", "production"]
# The local stack's key-encryption key of the users' data keys (known to all: local use only).
LOCAL_PERSONAL_DATA_KEK = "cGlua3NlYS1sb2NhbC1kZXYta2VrLW5vdC1zZWNyZXQ="


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    environment: Environment = Field(
        "local",
        description="Where this process runs; staging and production require the settings "
        "listed in REQUIRED_IN_PRODUCTION and refuse dev tokens.",
    )

    # PostgreSQL: the event store (source of truth) and the read models.
    database_url: str = Field(
        "postgresql://pinksea:pinksea@127.0.0.1:5432/pinksea",
        description="PostgreSQL DSN of the event store and read models.",
    )
    read_database_url: str | None = Field(
        None,
        description="Read replica for queries and ledger tools (default: database_url).",
    )
    db_pool_size: int = Field(
        10, description="Connections per process (also bounds the API's command threads)."
    )
    db_connect_timeout_s: float = Field(
        5.0, ge=1, le=600, description="Longest wait for a new PostgreSQL connection."
    )
    db_tcp_user_timeout_s: float = Field(
        10.0,
        ge=1,
        le=600,
        description="A PostgreSQL connection whose sent data goes unacknowledged this long "
        "(a network partition) is dropped, on both ends; idle ones are probed within it.",
    )
    db_pool_timeout_s: float = Field(
        2.0,
        ge=1,
        le=600,
        description="Longest wait for a pooled event-store connection, per attempt (the "
        "event-store library makes up to 10).",
    )
    db_command_timeout_s: float = Field(
        30.0, ge=1, description="Longest wait for the answer to a read-side SQL statement."
    )

    # Kafka (MSK in production).
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_topic_prefix: str = Field(
        "", description="Prefix for every topic name (tests use a unique one)."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT locally; SASL_SSL on MSK (TLS + IAM)."
    )
    kafka_sasl_mechanism: Literal["OAUTHBEARER", "SCRAM-SHA-512"] | None = Field(
        None,
        description="OAUTHBEARER: MSK IAM tokens signed with the AWS credentials; "
        "SCRAM-SHA-512: user and password (the local production rehearsal).",
    )
    kafka_sasl_username: str | None = Field(None, description="SCRAM user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SCRAM password.")
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle that signs the brokers' certificates (default: system CAs)."
    )
    kafka_aws_region: str | None = Field(
        None,
        description="Region of the MSK cluster for IAM tokens (default: AWS_REGION, "
        "AWS_DEFAULT_REGION, then s3_region).",
    )
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of created topics (MSK: 3)."
    )
    kafka_min_insync_replicas: int = Field(
        1, ge=1, description="min.insync.replicas of created topics (MSK: 2)."
    )

    # Redis: rate limits, caches, live progress, cancel flags.
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL.")
    redis_key_prefix: str = Field("pinksea:", description="Prefix for every Redis key.")

    # S3-compatible object storage for images and model weights.
    s3_endpoint_url: str | None = Field(
        "http://127.0.0.1:9000", description="S3 endpoint; empty for AWS's own endpoints."
    )
    s3_region: str = Field("ap-northeast-2", description="S3 region.")
    s3_access_key_id: str = Field("pinksea", description="S3 access key id (local stack).")
    s3_secret_access_key: SecretStr = Field(
        SecretStr("pinksea-secret"), description="S3 secret key."
    )
    s3_bucket: str = Field("pinksea-images", description="Bucket for generated images.")
    cloudwatch_endpoint_url: str | None = Field(
        None, description="CloudWatch endpoint of `pinksea lag-metric`; empty for AWS's own."
    )

    # CloudFront: image URLs signed for the CDN (S3 presigned URLs only when no CDN is set).
    cdn_domain: str | None = Field(
        None, description="CloudFront domain that serves /users/* from the images bucket."
    )
    cloudfront_key_pair_id: str | None = Field(
        None, description="Id of the CloudFront public key whose private key signs image URLs."
    )
    cloudfront_private_key: SecretStr | None = Field(
        None, description="PEM private key that signs CloudFront image URLs."
    )

    # Stripe (stripe-mock locally).
    stripe_api_base: str | None = Field(
        "http://127.0.0.1:12111", description="Stripe API base; empty for api.stripe.com."
    )
    stripe_api_key: SecretStr = Field(SecretStr("sk_test_123"), description="Stripe secret key.")
    stripe_price_ids: dict[str, str] = Field(
        {"starter": "price_starter", "pro": "price_pro", "studio": "price_studio"},
        description="Stripe price id of each plan sold (JSON object plan -> price id).",
    )
    checkout_success_url: str = Field(
        "http://localhost:3000/billing/success", description="Where Checkout returns on success."
    )
    checkout_cancel_url: str = Field(
        "http://localhost:3000/billing", description="Where Checkout returns when abandoned."
    )
    stripe_webhook_secret: SecretStr = Field(
        SecretStr("whsec_local"), description="Stripe webhook signing secret."
    )

    # Observability.
    metrics_local_only: bool = Field(
        True, description="Serve /metrics of background processes on 127.0.0.1 only."
    )
    log_level: str = Field("INFO", description="Log level of the structured JSON logs.")
    log_json: bool = Field(True, description="JSON logs (false: human-readable console logs).")

    # REST API (api/): authentication, limits, caches, live events.
    jwt_issuer: str | None = Field(
        None,
        description="Issuer of accepted JWTs, e.g. https://cognito-idp.<region>.amazonaws.com/"
        "<user pool id> (none: only dev tokens and API keys).",
    )
    jwt_audience: str = Field(
        "pinksea-api", description="Accepted audience (Cognito: the app client id)."
    )
    jwks_url: str | None = Field(
        None, description="JWKS of the issuer (default: <jwt_issuer>/.well-known/jwks.json)."
    )
    jwks_cache_ttl_s: int = Field(3600, description="How long a fetched JWKS is trusted.")
    jwks_refresh_min_interval_s: float = Field(
        30.0, description="Least time between JWKS fetches caused by unknown key ids."
    )
    dev_jwt_enabled: bool = Field(
        False, description="Accept tokens from `pinksea dev-token` (local use only)."
    )
    dev_jwt_key_path: str = Field(
        "~/.pinksea/dev-jwt.pem", description="Private key of the dev issuer (made on first use)."
    )
    admin_group: str = Field("admin", description="cognito:groups entry that makes an admin.")
    api_max_body_bytes: int = Field(65_536, description="Largest request body the API reads.")
    rate_limit_enabled: bool = Field(True, description="Per-user rate limits (Redis).")
    rate_limit_multiplier: float = Field(
        1.0, description="Scales every plan's rate limits (load tests raise it)."
    )
    balance_cache_ttl_s: float = Field(
        5.0, description="Balance cache lifetime in Redis (0: no cache)."
    )
    job_cache_ttl_s: int = Field(86_400, description="Cache lifetime of finished jobs' views.")
    read_your_writes_timeout_s: float = Field(
        5.0, description="Longest wait of a query for its X-Min-Position before a 503."
    )
    sse_poll_interval_s: float = Field(
        0.25, description="How often live event streams look for job status changes."
    )
    sse_heartbeat_s: float = Field(15.0, description="Keep-alive comment interval on streams.")
    sse_max_duration_s: float = Field(3600.0, description="Longest life of one event stream.")

    # The ledger's seals and receipts (`pinksea ledger seal` / `receipt`, audit/seals.py).
    ledger_signing_key_path: str | None = Field(
        None,
        description="PEM file of the Ed25519 private key that signs ledger seals and receipts "
        "(`pinksea ledger keygen` makes one; publish its .pub for auditors).",
    )

    # Personal data (infra/personal_keys.py): the key that wraps every user's data key.
    personal_data_kek: SecretStr = Field(
        SecretStr(LOCAL_PERSONAL_DATA_KEK),
        description="Base64 of 32 random bytes: the key-encryption key of the users' data keys, "
        "which seal their prompts in the event store (`openssl rand -base64 32`; production: "
        "from the secret store, never the local default; losing it erases every prompt).",
    )

    # Notifier: low-balance e-mails
    # (`pinksea notify`, workflows/notifier/; the e-mails link to checkout_cancel_url, the
    # billing page).
    email_backend: Literal["smtp", "ses"] = Field(
        "smtp",
        description="How `pinksea notify` sends e-mail: smtp (the local stack's server) or ses "
        "(Amazon SES v2, with the process's AWS credentials).",
    )
    email_sender: str = Field(
        "Pinksea <no-reply@pinksea.local>",
        description="From address of notification e-mails (ses: of a verified identity).",
    )
    smtp_host: str = Field("127.0.0.1", description="SMTP server of the smtp e-mail backend.")
    smtp_port: int = Field(
        2525, ge=1, le=65535, description="Its port (the local stack's aiosmtpd)."
    )
    ses_endpoint_url: str | None = Field(
        None, description="SES endpoint; empty for AWS's own (tests: the moto server)."
    )
    ses_region: str = Field("ap-northeast-2", description="Region of SES.")
    low_balance_email_max_age_s: float = Field(
        86_400.0,
        gt=0,
        description="A LowBalanceReached older than this when the notifier reads it is recorded "
        "as skipped, not mailed (a new notifier reads the whole history).",
    )

    # Abuse limits behind a proxy (issue 17; api/edge.py, api/deps.py, api/live.py): who the
    # client is behind the load balancer, the slots of live event streams, and what the API
    # serves besides /v1 (the docs; /metrics apart from the API's port).
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-For and X-Forwarded-Proto the API trusts: "
        "comma-separated addresses or CIDR ranges (production: the load balancer's subnets); "
        "the client is the last address of X-Forwarded-For that is not one of them.",
    )
    sse_slot_ttl_s: float = Field(
        30.0,
        gt=0,
        description="Lifetime of a live event stream's slot in Redis, renewed every third of "
        "it while the stream runs: the slots of a crashed process free themselves after it.",
    )
    api_docs_enabled: bool = Field(
        True, description="Serve /docs and /openapi.json (production: false)."
    )
    api_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the API's /metrics, apart from the API's own port "
        "(`pinksea api --metrics-port`; 0: /metrics on the API's port, as locally).",
    )

    # Completion webhooks (`pinksea webhooks`, workflows/webhooks/; the API checks endpoint URLs
    # with the same rules).
    webhooks_allow_loopback: bool = Field(
        False,
        description="Let webhooks go to http:// URLs and loopback addresses (local use and "
        "tests: `pinksea up`); private, link-local and metadata addresses stay refused. "
        "Refused outside local.",
    )

    @field_validator("personal_data_kek")
    @classmethod
    def _kek_is_a_key(cls, value: SecretStr) -> SecretStr:
        from infra.personal_keys import parse_kek

        parse_kek(value.get_secret_value())  # ValueError: the setting names what is wrong
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        # uvicorn takes an entry it cannot parse as a host name, which never matches: a typo
        # would silently trust nobody (or the wrong network). Refuse it instead.
        import ipaddress

        entries = [e.strip() for e in value.split(",") if e.strip()]
        for entry in entries:
            if entry == "*":
                continue
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry, strict=True)
                else:
                    ipaddress.ip_address(entry)
            except ValueError as e:
                raise ValueError(f"{entry!r} is not an IP address or CIDR range ({e})") from None
        return ",".join(entries)

    @model_validator(mode="after")
    def _no_loopback_webhooks_when_deployed(self) -> Settings:
        # Every process refuses it, not only the API: the delivery process is the one calling.
        if self.environment != "local" and self.webhooks_allow_loopback:
            raise ValueError(
                "PINKSEA_WEBHOOKS_ALLOW_LOOPBACK would let users' webhooks reach this host's "
                "own services: it is for local use only"
            )
        return self

    @model_validator(mode="after")
    def _no_wildcard_proxy_when_deployed(self) -> Settings:
        if self.environment != "local" and "*" in self.forwarded_allow_ips.split(","):
            raise ValueError(
                "PINKSEA_FORWARDED_ALLOW_IPS=* trusts any client's X-Forwarded-For: name the "
                "load balancer's ranges"
            )
        return self

    # Terraform writes "" for "not set" (an ECS environment entry cannot be null).
    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_aws_region",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "cloudwatch_endpoint_url",
        "cdn_domain",
        "cloudfront_key_pair_id",
        "cloudfront_private_key",
        "jwt_issuer",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("cdn_domain")
    @classmethod
    def _bare_host(cls, value: str | None) -> str | None:
        # Image URLs are built as https://<cdn_domain>/<key>: a scheme or path here breaks them.
        if value is not None and ("/" in value or ":" in value or not value.strip()):
            raise ValueError("a host name only, e.g. pinksea.example.com (no scheme, no path)")
        return value

    @model_validator(mode="after")
    def _kafka_consistent(self) -> Settings:
        sasl = self.kafka_security_protocol == "SASL_SSL"
        if sasl != (self.kafka_sasl_mechanism is not None):
            raise ValueError(
                "PINKSEA_KAFKA_SECURITY_PROTOCOL=SASL_SSL and PINKSEA_KAFKA_SASL_MECHANISM "
                "go together"
            )
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError("kafka_min_insync_replicas exceeds kafka_replication_factor")
        if self.kafka_sasl_mechanism == "SCRAM-SHA-512" and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "PINKSEA_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs PINKSEA_KAFKA_SASL_USERNAME "
                "and PINKSEA_KAFKA_SASL_PASSWORD"
            )
        cdn = (self.cdn_domain, self.cloudfront_key_pair_id, self.cloudfront_private_key)
        if any(v is not None for v in cdn) and not all(v is not None for v in cdn):
            raise ValueError(
                "PINKSEA_CDN_DOMAIN, PINKSEA_CLOUDFRONT_KEY_PAIR_ID and "
                "PINKSEA_CLOUDFRONT_PRIVATE_KEY go together"
            )
        return self

    def deployment_problems(self) -> list[str]:
        """What stops this configuration from serving real users (empty: nothing).

        The API refuses to start on any of these outside ``local`` (api/app.py): a sale that
        cannot happen or a sign-in that cannot work must fail the deployment, not a user's
        first request. Processes that serve no user do not need these settings."""
        if self.environment == "local":
            return []
        defaults = {name: field.default for name, field in type(self).model_fields.items()}
        problems = [
            f"{env_name(name)} is required"
            for name in REQUIRED_IN_PRODUCTION
            if getattr(self, name) is None
        ]
        problems += [
            f"{env_name(name)} is still the local default"
            for name in MUST_DIFFER_FROM_LOCAL_DEFAULT
            if _plain(getattr(self, name)) == _plain(defaults[name])
        ]
        problems += [
            f"{env_name(name)} must be an https:// URL"
            for name in ("checkout_success_url", "checkout_cancel_url")
            if not getattr(self, name).startswith("https://")
        ]
        missing_prices = sorted(set(PAID_PLANS) - set(self.stripe_price_ids))
        if missing_prices:
            problems.append(f"PINKSEA_STRIPE_PRICE_IDS has no price for {missing_prices}")
        if self.dev_jwt_enabled:
            problems.append("PINKSEA_DEV_JWT_ENABLED must be false (dev tokens are for local use)")
        return problems

    @property
    def kafka_region(self) -> str:
        """Where MSK IAM tokens are signed for: the setting, else the process's AWS region."""
        return (
            self.kafka_aws_region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or self.s3_region
        )

    @property
    def effective_read_database_url(self) -> str:
        return self.read_database_url or self.database_url

    def topic(self, name: str) -> str:
        """The full Kafka topic name for ``name`` (e.g. ``pinksea.jobs.v1``)."""
        return f"{self.kafka_topic_prefix}{name}"


#: Plans sold through Stripe Checkout (domain/plans.py): each needs a price id when deployed.
PAID_PLANS = ("starter", "pro", "studio")

#: Settings with no usable default that a deployment must set (None is "not set").
REQUIRED_IN_PRODUCTION = ("jwt_issuer", "cdn_domain", "cloudfront_key_pair_id")

#: Settings whose local default would run but serve nobody (a test key, a localhost URL).
MUST_DIFFER_FROM_LOCAL_DEFAULT = (
    "stripe_api_key",
    "stripe_webhook_secret",
    "stripe_price_ids",
    "checkout_success_url",
    "checkout_cancel_url",
    "personal_data_kek",
)


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def env_name(field_name: str) -> str:
    return f"{ENV_PREFIX}{field_name.upper()}"


def setting_names(*classes: type[BaseSettings]) -> frozenset[str]:
    """The environment names the settings classes read (``PINKSEA_<FIELD>``)."""
    return frozenset(env_name(name) for cls in classes for name in cls.model_fields)


def unknown_names(environ: Iterable[str], known: frozenset[str]) -> list[str]:
    """One message per ``PINKSEA_*`` name that nothing reads, with the closest valid name.

    pydantic-settings ignores unknown names, so a misspelled variable would silently leave its
    setting at the local default (a deployment that cannot sign anyone in): refuse it instead.
    """
    valid = sorted(known | NON_SETTING_NAMES)
    problems = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        if name in valid:
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name} is not a setting{hint}")
    return problems


def check_environment(*classes: type[BaseSettings]) -> list[str]:
    """Everything wrong with this process's environment: ``PINKSEA_*`` names nothing reads,
    then the invalid or missing values of each settings class (empty: the process may start)."""
    problems = unknown_names(os.environ, setting_names(Settings, *classes))
    every: tuple[type[BaseSettings], ...] = (Settings, *classes)
    for cls in every:
        try:
            cls()
        except ValidationError as exc:
            problems += [_describe(error) for error in exc.errors()]
    return problems


def _describe(error: ErrorDetails) -> str:
    field = ".".join(str(part) for part in error["loc"])
    return f"{env_name(field)}: {error['msg']}" if field else error["msg"]


@lru_cache
def get_settings() -> Settings:
    return Settings()
