"""Galley settings: everything comes from the environment through galley.env."""

import os
import secrets
from pathlib import Path

import dj_database_url

from galley.datafiles import private_dir, private_file
from galley.env import (
    ConfigError,
    env_bool,
    env_float,
    env_float_list,
    env_int,
    env_list,
    env_str,
    secret_file,
)
from harness.pricing import PriceTableError, parse_price_table
from providers.config import ProviderConfigError, providers_parse

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("GALLEY_DATA_DIR", str(BASE_DIR / "var")) or "").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
# Others (the sandboxes' users) may only pass through the data dir to their own workspace; every
# file Galley keeps here is its own (galley/datafiles.py).
private_dir(DATA_DIR, mode=0o711)

SECRET_KEY = env_str("SECRET_KEY") or secret_file(DATA_DIR / "secret_key", lambda: secrets.token_urlsafe(50))
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "accounts",
    "agents",
    "sessions.apps.AgentSessionsConfig",
    "vaults",
    "files",
    "webhooks",
    "deployments",
    "providers",
    "skills",
    "memory.apps.MemoryStoresConfig",
    "selfhosted",
    "galley",
    "costs",
    "console",
]

MIDDLEWARE = [
    "api.middleware.RequestIdMiddleware",
    "api.middleware.StorableTextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
APPEND_SLASH = False  # the SDK never sends a trailing slash; a redirect would break POSTs

ROOT_URLCONF = "galley.urls"
ASGI_APPLICATION = "galley.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.sandbox",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'galley.sqlite3'}") or ""
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
except Exception as exc:  # dj_database_url raises several types for a bad URL
    raise ConfigError(f"DATABASE_URL is not a valid database URL: {exc}") from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Many writers (web requests, harness threads) share one file: WAL, a busy timeout and
    # immediate transactions keep them from failing with "database is locked".
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Opening a connection (with the pragmas above) costs ~6 ms, more than most requests: each
    # thread keeps its own open (web requests run on one thread per process under ASGI).
    _db["CONN_MAX_AGE"] = None
    _db["CONN_HEALTH_CHECKS"] = True
    _db["TEST"] = {"NAME": str(DATA_DIR / f"test_{Path(_db['NAME']).stem}.sqlite3")}
    # SQLite gives its -wal and -shm files the database file's mode: create it 0600 first.
    private_file(Path(_db["NAME"]))
    # Django's backend plus one fair cross-process write lock (galley/sqlite/base.py).
    _db["ENGINE"] = "galley.sqlite"
# PostgreSQL: every process (web, worker, beat, commands) borrows connections from its own pool of at
# most GALLEY_DB_POOL_MAX_SIZE, so a worker's 256 threads or a burst of requests never open more than
# that; a thread that finds the pool empty waits up to GALLEY_DB_POOL_TIMEOUT seconds for one to come
# back. Size it with docs/deploy.md: the sum over all processes must stay under max_connections.
# 0 turns pooling off (one connection per thread, e.g. behind PgBouncer in transaction mode).
GALLEY_DB_POOL_MAX_SIZE = env_int("GALLEY_DB_POOL_MAX_SIZE", 16, minimum=0)
GALLEY_DB_POOL_MIN_SIZE = env_int("GALLEY_DB_POOL_MIN_SIZE", 1, minimum=0)
GALLEY_DB_POOL_TIMEOUT = env_float("GALLEY_DB_POOL_TIMEOUT", 60.0, minimum=0.1)
if _db["ENGINE"] == "django.db.backends.postgresql" and GALLEY_DB_POOL_MAX_SIZE:
    _db["CONN_MAX_AGE"] = 0  # Django requires it with a pool: closing a connection returns it
    # The pool checks a connection (one round trip) before lending it: after a PostgreSQL restart or a
    # dropped idle connection a thread gets a live one, not an error.
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(GALLEY_DB_POOL_MIN_SIZE, GALLEY_DB_POOL_MAX_SIZE),
        "max_size": GALLEY_DB_POOL_MAX_SIZE,
        "timeout": GALLEY_DB_POOL_TIMEOUT,
        "max_idle": 300.0,
    }
# Behind PgBouncer in transaction mode a cursor cannot outlive its transaction: no server-side cursors.
if env_bool("GALLEY_DB_BEHIND_PGBOUNCER", False):
    _db["DISABLE_SERVER_SIDE_CURSORS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
IS_SQLITE = _db["ENGINE"] == "galley.sqlite"

# --- Redis, Celery, Channels -----------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
# Keeps several Galley installs (or test servers) on one Redis apart.
GALLEY_REDIS_PREFIX = env_str("GALLEY_REDIS_PREFIX", "galley") or "galley"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "visibility_timeout": 3600,
        "global_keyprefix": GALLEY_REDIS_PREFIX + ":",
        # How long one BRPOP waits (kombu's default is 1 s): a task pushed meanwhile answers it at once; an
        # idle worker re-asks every 5 s instead of every second.
        "polling_interval": 5.0,
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    # Embedded default: a real broker with no external service. Messages are files in the data
    # dir, so the web process and the worker process (separate processes) share one queue.
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    private_dir(_broker_dir, mode=0o700)  # messages carry session ids: Galley's processes only
    CELERY_BROKER_URL = "galleyfs://"  # galley/broker.py: the filesystem transport, written atomically
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # kombu's default is ./control, in the checkout
        "store_processed": False,
        # A safety re-read only: consumers are woken by a datagram on every put (galley/broker.py).
        "polling_interval": env_float("GALLEY_BROKER_POLL_SECONDS", 1.0, minimum=0.001),
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if IS_SQLITE:
    # Celery's Django fixup closes the task thread's connection before and after every task, and
    # reopening a SQLite one with its pragmas was a tenth of a step's CPU: the fixup now closes one
    # only every 2 x this many tasks, and galley/celery.py drops a broken one before each task.
    # (PostgreSQL keeps the closes: they hand the pool's connections back.)
    CELERY_DB_REUSE_MAX = 1 << 62
GALLEY_WORKER_CONCURRENCY = env_int("GALLEY_WORKER_CONCURRENCY", 256, minimum=1)
# The harness sweeper re-enqueues sessions whose step lease expired (a crashed worker) or whose
# queued input was never picked up.
# A step's kick is sent when its input commits and a lease lasts GALLEY_LEASE_SECONDS: the sweep is a
# backstop, and each sweep costs an idle server a task (beat, the broker, the worker, its queries).
GALLEY_SWEEP_SECONDS = env_float("GALLEY_SWEEP_SECONDS", 15.0, minimum=0.1)
# --- Webhooks and deployments (webhooks/, deployments/) ---------------------------------------------
# Loopback, private and link-local receivers (and plain http:// URLs) are refused unless this is set.
GALLEY_WEBHOOK_ALLOW_PRIVATE = env_bool("GALLEY_WEBHOOK_ALLOW_PRIVATE", False)
# Seconds to wait before each retry of a failed delivery (Standard Webhooks' schedule), with jitter.
GALLEY_WEBHOOK_RETRY_SCHEDULE = env_float_list(
    "GALLEY_WEBHOOK_RETRY_SCHEDULE", [5, 300, 1800, 7200, 18000, 36000, 36000], minimum=0
)
GALLEY_WEBHOOK_TIMEOUT_SECONDS = env_float("GALLEY_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# An endpoint is disabled after this many failed attempts in a row.
GALLEY_WEBHOOK_DISABLE_AFTER_FAILURES = env_int("GALLEY_WEBHOOK_DISABLE_AFTER_FAILURES", 20, minimum=1)
# After regenerate_signing_secret the previous secret also signs deliveries for this long.
GALLEY_WEBHOOK_SECRET_GRACE_SECONDS = env_float("GALLEY_WEBHOOK_SECRET_GRACE_SECONDS", 86400.0, minimum=0)
# A worker's claim on a delivery; a worker that dies mid-delivery leaves it to be retried after it.
GALLEY_WEBHOOK_CLAIM_SECONDS = env_float("GALLEY_WEBHOOK_CLAIM_SECONDS", 60.0, minimum=0.5)
# The sweeper is a backstop: a retry due within 10 minutes is enqueued for its time (webhooks/services.py).
GALLEY_WEBHOOK_SWEEP_SECONDS = env_float("GALLEY_WEBHOOK_SWEEP_SECONDS", 30.0, minimum=0.1)
# Delivered and failed webhook events (and their delivery log) are deleted after this many days.
GALLEY_WEBHOOK_RETENTION_DAYS = env_float("GALLEY_WEBHOOK_RETENTION_DAYS", 30.0, minimum=0.01)
# Galley has no organizations; this is the organization_id webhook payloads carry.
GALLEY_ORGANIZATION_ID = env_str("GALLEY_ORGANIZATION_ID", "org_galley") or "org_galley"
GALLEY_DEPLOYMENT_TICK_SECONDS = env_float("GALLEY_DEPLOYMENT_TICK_SECONDS", 15.0, minimum=0.1)
CELERY_BEAT_SCHEDULER = "galley.beat:PrivateScheduler"  # its schedule file is 0600 like the other data files
CELERY_BEAT_SCHEDULE = {
    "harness-sweep": {"task": "harness.sweep", "schedule": GALLEY_SWEEP_SECONDS},
    # Each worker process also reaps its own idle shells every second; this is a backstop.
    "sandbox-reap-idle": {"task": "sandbox.reap_idle", "schedule": 60.0},
    "files-purge-expired": {"task": "files.purge_expired", "schedule": 3600.0},
    "webhooks-sweep": {"task": "webhooks.sweep", "schedule": GALLEY_WEBHOOK_SWEEP_SECONDS},
    "webhooks-purge": {"task": "webhooks.purge", "schedule": 3600.0},
    "deployments-fire-due": {"task": "deployments.fire_due", "schedule": GALLEY_DEPLOYMENT_TICK_SECONDS},
}

# --- API ------------------------------------------------------------------------------------------
GALLEY_MAX_BODY_BYTES = env_int("GALLEY_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GALLEY_MAX_BODY_BYTES
GALLEY_SSE_HEARTBEAT_SECONDS = env_float("GALLEY_SSE_HEARTBEAT_SECONDS", 15.0, minimum=0.05)
# Streams are woken by a push (Redis pub/sub, or the embedded local bus); this re-read of the log
# only covers a lost push.
GALLEY_SSE_POLL_SECONDS = env_float("GALLEY_SSE_POLL_SECONDS", 15.0, minimum=0.005)

# Rate limits (api/ratelimit.py), requests per minute; 0 is no limit. The defaults are the hosted
# service's: 300 on create routes and 600 on every other call, per API key and per workspace.
GALLEY_RATE_LIMIT_CREATE_PER_MINUTE = env_int("GALLEY_RATE_LIMIT_CREATE_PER_MINUTE", 300, minimum=0)
GALLEY_RATE_LIMIT_READ_PER_MINUTE = env_int("GALLEY_RATE_LIMIT_READ_PER_MINUTE", 600, minimum=0)
GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE = env_int(
    "GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE", GALLEY_RATE_LIMIT_CREATE_PER_MINUTE, minimum=0
)
GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE = env_int(
    "GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE", GALLEY_RATE_LIMIT_READ_PER_MINUTE, minimum=0
)
# Failed authentications (bad API keys, failed console sign-ins) per client address.
GALLEY_AUTH_FAILURES_PER_MINUTE = env_int("GALLEY_AUTH_FAILURES_PER_MINUTE", 20, minimum=0)

# --- Vault ----------------------------------------------------------------------------------------
# Comma-separated Fernet keys, newest first. The embedded default generates one in the data dir.
GALLEY_VAULT_KEYS = env_list("GALLEY_VAULT_KEYS", [])
GALLEY_VAULT_KEY_FILE = DATA_DIR / "vault.keys"

# --- Models ---------------------------------------------------------------------------------------
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL")
GALLEY_MODEL_MAX_TOKENS = env_int("GALLEY_MODEL_MAX_TOKENS", 8192, minimum=1)
GALLEY_MODEL_TIMEOUT_SECONDS = env_float("GALLEY_MODEL_TIMEOUT_SECONDS", 600.0, minimum=1)
# Retries of 429 / 529 / 5xx answers: attempts after the first, and the backoff (doubling, capped).
GALLEY_MODEL_MAX_RETRIES = env_int("GALLEY_MODEL_MAX_RETRIES", 5, minimum=0)
GALLEY_MODEL_RETRY_BASE_SECONDS = env_float("GALLEY_MODEL_RETRY_BASE_SECONDS", 1.0, minimum=0)
GALLEY_MODEL_RETRY_MAX_SECONDS = env_float("GALLEY_MODEL_RETRY_MAX_SECONDS", 30.0, minimum=0)
# While an outcome's grader runs, a `span.outcome_evaluation_ongoing` heartbeat this often.
GALLEY_OUTCOME_HEARTBEAT_SECONDS = env_float("GALLEY_OUTCOME_HEARTBEAT_SECONDS", 10.0, minimum=0.05)
# Compact the context when the last request's prompt passed this many tokens (0: 80% of the
# model's context window).
GALLEY_COMPACTION_THRESHOLD_TOKENS = env_int("GALLEY_COMPACTION_THRESHOLD_TOKENS", 0, minimum=0)
# A harness step holds its session's lease for this long and renews it every third of it.
GALLEY_LEASE_SECONDS = env_float("GALLEY_LEASE_SECONDS", 30.0, minimum=0.5)
# The lease a self-hosted worker's heartbeat extends (the SDK worker beats every half of it); an
# item whose worker stops beating for this long is handed to the next poll.
GALLEY_WORK_LEASE_SECONDS = env_int("GALLEY_WORK_LEASE_SECONDS", 60, minimum=2)
# A worker holding a session that has had no event at all for this long is told to stop (the
# session's first input then enqueues new work): the SDK's worker serves one session at a time.
GALLEY_WORK_UNUSED_SECONDS = env_float("GALLEY_WORK_UNUSED_SECONDS", 60.0, minimum=0)
# A healthcheck item (the console's "Check workers") that no worker stops within this long is
# stopped by the queue and shown as unanswered.
GALLEY_HEALTHCHECK_TIMEOUT_SECONDS = env_float("GALLEY_HEALTHCHECK_TIMEOUT_SECONDS", 30.0, minimum=1)
# A step of a self_hosted session waits this long for the worker's tool result before it ends
# (the result then schedules a new step); 0 ends it at once.
GALLEY_WORKER_ANSWER_WAIT_SECONDS = env_float("GALLEY_WORKER_ANSWER_WAIT_SECONDS", 5.0, minimum=0)
# Harness steps keep their PostgreSQL connection across model calls while at most this many run
# in the worker process; beyond it they close it before each wait (max_connections is finite).
GALLEY_HARNESS_KEEP_CONNECTIONS = env_int("GALLEY_HARNESS_KEEP_CONNECTIONS", 16, minimum=0)
# Each worker process keeps the session logs its steps read (the processed prefix), so the next step
# of a session reads only what came after (harness/logcache.py); bounded by payload bytes, 0: off.
GALLEY_HARNESS_LOG_CACHE_BYTES = env_int("GALLEY_HARNESS_LOG_CACHE_BYTES", 64 * 1024 * 1024, minimum=0)
# How often a running step looks for a user.interrupt (the spec asks for a stop within 2 s).
GALLEY_INTERRUPT_POLL_SECONDS = env_float("GALLEY_INTERRUPT_POLL_SECONDS", 0.2, minimum=0.01)
# Per-request timeout for calls to agents' MCP servers (discovery and tool calls, from the harness).
GALLEY_MCP_TIMEOUT_SECONDS = env_float("GALLEY_MCP_TIMEOUT_SECONDS", 30.0, minimum=0.1)
try:
    GALLEY_PRICES = parse_price_table(env_str("GALLEY_PRICES_JSON"))
except (PriceTableError, OSError) as exc:
    raise ConfigError(str(exc)) from None

# Model providers as code: a JSON list of {name, type, base_url, api_key_env, models, headers,
# region, project_id} (docs/providers.md); `<name>/<model>` ids route to them.
try:
    GALLEY_PROVIDERS = providers_parse(env_str("GALLEY_PROVIDERS"), dict(os.environ))
except ProviderConfigError as exc:
    raise ConfigError(str(exc)) from None

# --- Sandboxes ------------------------------------------------------------------------------------
GALLEY_SANDBOX_BACKEND = env_str("GALLEY_SANDBOX_BACKEND", "bwrap")
GALLEY_SANDBOX_ROOT = Path(env_str("GALLEY_SANDBOX_ROOT", str(DATA_DIR / "sandboxes")) or "").resolve()
# The plain-process backend has no isolation: it runs only when this is also set.
GALLEY_SANDBOX_ALLOW_UNSAFE = env_bool("GALLEY_SANDBOX_ALLOW_UNSAFE", False)
# `unrestricted` environments: "proxy" (the default) gives them the egress proxy of `limited` ones with
# every public host allowed and private and loopback addresses refused, so agent code cannot reach the
# database, Redis or the API on this host; "host" shares the host's network, loopback services included.
GALLEY_SANDBOX_UNRESTRICTED_NETWORK = env_str("GALLEY_SANDBOX_UNRESTRICTED_NETWORK", "proxy") or "proxy"
if GALLEY_SANDBOX_UNRESTRICTED_NETWORK not in ("proxy", "host"):
    raise ConfigError(
        "GALLEY_SANDBOX_UNRESTRICTED_NETWORK must be 'proxy' or 'host', "
        f"got {GALLEY_SANDBOX_UNRESTRICTED_NETWORK!r}"
    )
GALLEY_SANDBOX_IDLE_SECONDS = env_float("GALLEY_SANDBOX_IDLE_SECONDS", 600.0, minimum=1.0)
# Start a session's sandbox while the model is asked, when its agent has a sandbox tool, so that the first
# tool call finds its shell running; at most this many starts at once per worker process (0: never).
GALLEY_SANDBOX_PREWARM_AT_ONCE = env_int("GALLEY_SANDBOX_PREWARM_AT_ONCE", 2, minimum=0)
GALLEY_SANDBOX_TIMEOUT_SECONDS = env_float("GALLEY_SANDBOX_TIMEOUT_SECONDS", 120.0, minimum=0.1)
GALLEY_SANDBOX_OUTPUT_BYTES = env_int("GALLEY_SANDBOX_OUTPUT_BYTES", 100 * 1024, minimum=1024)
GALLEY_SANDBOX_MEMORY_BYTES = env_int("GALLEY_SANDBOX_MEMORY_BYTES", 4 * 1024**3, minimum=64 * 1024**2)
GALLEY_SANDBOX_CPU_SECONDS = env_int("GALLEY_SANDBOX_CPU_SECONDS", 3600, minimum=1)
GALLEY_SANDBOX_MAX_PROCESSES = env_int("GALLEY_SANDBOX_MAX_PROCESSES", 256, minimum=8)
GALLEY_SANDBOX_FILE_BYTES = env_int("GALLEY_SANDBOX_FILE_BYTES", 1024**3, minimum=1024**2)
GALLEY_SANDBOX_WORKSPACE_BYTES = env_int("GALLEY_SANDBOX_WORKSPACE_BYTES", 5 * 1024**3, minimum=1024**2)
# How the workspace quota is enforced: "auto" (a loop-mounted ext4 image per sandbox when the worker is root,
# else the walking watcher), "image" (require the image) or "watch" (always the watcher). docs/sandboxes.md.
GALLEY_SANDBOX_QUOTA = env_str("GALLEY_SANDBOX_QUOTA", "auto") or "auto"
if GALLEY_SANDBOX_QUOTA not in ("auto", "image", "watch"):
    raise ConfigError(
        f"GALLEY_SANDBOX_QUOTA must be 'auto', 'image' or 'watch', got {GALLEY_SANDBOX_QUOTA!r}"
    )
# Memory and process cgroups per sandbox: "auto" (v2 where delegated, else v1 where writable, else none) or
# "off" (sandboxes/cgroup.py, docs/sandboxes.md).
GALLEY_SANDBOX_CGROUPS = env_str("GALLEY_SANDBOX_CGROUPS", "auto") or "auto"
if GALLEY_SANDBOX_CGROUPS not in ("auto", "off"):
    raise ConfigError(f"GALLEY_SANDBOX_CGROUPS must be 'auto' or 'off', got {GALLEY_SANDBOX_CGROUPS!r}")
# /dev/shm is RAM: a sized tmpfs, never larger than the sandbox's memory limit.
GALLEY_SANDBOX_SHM_BYTES = min(
    env_int("GALLEY_SANDBOX_SHM_BYTES", 64 * 1024**2, minimum=1024**2), GALLEY_SANDBOX_MEMORY_BYTES
)
# Total bytes one session's event log may hold (the events' JSON, counted as they are appended):
# a send past it is refused with a 413, a harness step that reaches it ends the session.
GALLEY_SESSION_LOG_BYTES = env_int("GALLEY_SESSION_LOG_BYTES", 1024**3, minimum=1024)
# Total bytes of files captured from one session's /mnt/session/outputs (each distinct content stored once).
GALLEY_SESSION_OUTPUTS_BYTES = env_int("GALLEY_SESSION_OUTPUTS_BYTES", 1024**3, minimum=1024**2)
GALLEY_PACKAGES_ROOT = Path(env_str("GALLEY_PACKAGES_ROOT", str(DATA_DIR / "packages")) or "").resolve()
# What one package build may write: its prefix and its own /tmp and home together (past it the build fails).
GALLEY_PACKAGES_BUILD_BYTES = env_int("GALLEY_PACKAGES_BUILD_BYTES", 10 * 1024**3, minimum=1024**2)
GALLEY_PIP_INDEX_URL = env_str("GALLEY_PIP_INDEX_URL")
GALLEY_NPM_REGISTRY = env_str("GALLEY_NPM_REGISTRY")
# Mirrors for the other package managers (unset: their public registries).
GALLEY_GEM_SOURCE = env_str("GALLEY_GEM_SOURCE")  # a RubyGems source URL
GALLEY_GOPROXY = env_str("GALLEY_GOPROXY")  # a Go module proxy URL (GOPROXY)
GALLEY_GOSUMDB = env_str("GALLEY_GOSUMDB")  # GOSUMDB for that proxy ("off" for a private mirror)
GALLEY_CARGO_INDEX = env_str("GALLEY_CARGO_INDEX")  # a cargo registry index URL (sparse+https://...)
# Git hosts besides github.com that repository resources may name (`host[:port]`, comma-separated). Git
# traffic to a listed host passes the egress proxy even at a private or loopback address; http:// URLs are
# accepted only for listed hosts.
GALLEY_GIT_HOSTS = env_list("GALLEY_GIT_HOSTS", [])
# web_search provider: a SearXNG instance's base URL (JSON output enabled); unset = the tool returns an error.
GALLEY_SEARXNG_URL = env_str("GALLEY_SEARXNG_URL")
# Outbound connections to user-chosen URLs (web_fetch, MCP servers, OAuth token endpoints, webhooks) go
# through outbound/guard.py, which refuses loopback, private, link-local and metadata addresses unless this
# is set (tests and development with servers on loopback, or a deliberately internal deployment).
GALLEY_OUTBOUND_ALLOW_PRIVATE = env_bool(
    "GALLEY_OUTBOUND_ALLOW_PRIVATE", env_bool("GALLEY_WEB_ALLOW_PRIVATE", False)
)
# CA file the egress proxy trusts for upstream TLS when it injects credentials (default: the system's).
GALLEY_EGRESS_UPSTREAM_CA_FILE = env_str("GALLEY_EGRESS_UPSTREAM_CA_FILE")

# --- Skills ---------------------------------------------------------------------------------------
# Limits on one skill version, checked before anything is stored (unpacked sizes).
GALLEY_SKILL_MAX_BYTES = env_int("GALLEY_SKILL_MAX_BYTES", 30 * 1024 * 1024, minimum=1024)
GALLEY_SKILL_MAX_FILES = env_int("GALLEY_SKILL_MAX_FILES", 500, minimum=1)
GALLEY_SKILL_MAX_FILE_BYTES = env_int("GALLEY_SKILL_MAX_FILE_BYTES", 10 * 1024 * 1024, minimum=1024)
GALLEY_SKILL_MAX_ZIP_RATIO = env_int("GALLEY_SKILL_MAX_ZIP_RATIO", 100, minimum=2)
# Django refuses more file parts than this before a view runs; a skill may have more files.
DATA_UPLOAD_MAX_NUMBER_FILES = max(100, GALLEY_SKILL_MAX_FILES + 1)

# --- Auth, static, i18n ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login"
LOGIN_REDIRECT_URL = "/"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
