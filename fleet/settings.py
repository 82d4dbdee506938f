"""EdgeFleet settings: one file, every knob from the environment.

No variable set means the embedded default (SQLite in var/, filesystem broker,
local media, local-memory cache); see .env.example for every variable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from fleet.env import env_bool, env_int, env_list, env_str
from fleet.proxy import parse_networks

# onnxruntime looks up a vendor telemetry host unless told not to (docs/reliability.md N1);
# it must be set before the first import of onnxruntime in any process we start.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EDGEFLEET_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    # Embedded mode: a random key persisted once so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# Encrypts the server's Ed25519 signing keys at rest (their database rows hold only
# encrypted PKCS#8). Set it in production, apart from SECRET_KEY: rotating
# SECRET_KEY must not lose the signing key. Unset: SECRET_KEY.
SERVER_KEY_PASSPHRASE = env_str("SERVER_KEY_PASSPHRASE") or SECRET_KEY
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Addresses (CIDRs) of the reverse proxy: only requests from them may set the
# client address and scheme through X-Forwarded-For / -Proto (fleet/proxy.py).
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
try:
    parse_networks(TRUSTED_PROXIES)
except ValueError as exc:
    raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fleet",
    "devices",
    "compression",
    "ota",
]

MIDDLEWARE = [
    # Answers /api/v1/device/ itself, skipping the browser middleware below: a device
    # has no session, language, CSRF cookie or operator account.
    "fleet.device_api.routing.DeviceAPIMiddleware",
    "fleet.middleware.BodySizeLimitMiddleware",
    "fleet.middleware.QueryStringMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "fleet.audit.AuditMiddleware",
]
DEVICE_API_PREFIX = "/api/v1/device/"

ROOT_URLCONF = "fleet.urls"
WSGI_APPLICATION = "fleet.wsgi.application"
ASGI_APPLICATION = "fleet.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "fleet.roles.role_context",
                "fleet.health.worker_context",
            ],
        },
    },
]

# --- database -----------------------------------------------------------------
_sqlite_default = f"sqlite:///{VAR_DIR / 'edgefleet.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", _sqlite_default),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server read while the worker writes.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not :memory:, so worker and server processes started by tests see it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-edgefleet.sqlite3")}
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache --------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", ""),  # benchmarks: a namespace per run
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- celery -------------------------------------------------------------------
# Hard limit of the longest task; the Redis visibility timeout must exceed it
# or Redis redelivers a job that is still running (docs/reliability.md C6).
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 1800, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 1740, minimum=5)
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # broadcast/pidbox exchanges; kombu's default is ./control in the cwd
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    # Atomic message files (kombu's own can be read half-written: celery/kombu#1551).
    CELERY_BROKER_TRANSPORT = "fleet.broker:Transport"
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_TASK_TIME_LIMIT * 2,
        "socket_connect_timeout": 5,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Worker health (fleet.health): a beat task notes the worker every WORKER_HEARTBEAT_S;
# pages show a banner when none was seen for WORKER_STALE_S.
WORKER_HEARTBEAT_S = env_int("WORKER_HEARTBEAT_S", 15, minimum=1)
WORKER_STALE_S = env_int("WORKER_STALE_S", 60, minimum=2)
# Queue per task (names as in fleet.celery.Queue); unlisted tasks go to "default".
CELERY_TASK_ROUTES = {
    "compression.tasks.run_compression_job": {"queue": "compression"},
    # CPU-heavy like a job, and never on the web's request path
    "compression.tasks.validate_model_version": {"queue": "compression"},
}
# Periodic tasks, by app; each app adds its own entries here.
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "fleet-worker-heartbeat": {
        "task": "fleet.tasks.worker_heartbeat",
        "schedule": float(WORKER_HEARTBEAT_S),
    },
    # Re-enqueue jobs whose message was lost (broker down at enqueue, worker
    # machine gone with a filesystem broker); the claim makes a duplicate harmless.
    "compression-requeue-stale-jobs": {
        "task": "compression.tasks.requeue_stale_jobs",
        "schedule": 60.0,
    },
    "compression-requeue-stale-validations": {
        "task": "compression.tasks.requeue_stale_validations",
        "schedule": 300.0,
    },
    # Jobs choosing by device results: decide at the timeout (or when a report's
    # hook was lost); ask for jobs whose worker died between success and asking.
    "compression-device-choices": {
        "task": "compression.tasks.sweep_device_choices",
        "schedule": 60.0,
    },
}

# --- compression jobs -----------------------------------------------------------
EDGEFLEET_JOB_DIR = Path(env_str("EDGEFLEET_JOB_DIR", str(VAR_DIR / "jobs")))
# A crashed worker child (SIGKILL, segfault) redelivers its job; give up after this many.
EDGEFLEET_JOB_MAX_ATTEMPTS = env_int("EDGEFLEET_JOB_MAX_ATTEMPTS", 3, minimum=1)
# How long the job form waits for workers to say which queues they serve.
EDGEFLEET_WORKER_INSPECT_TIMEOUT_S = float(env_str("EDGEFLEET_WORKER_INSPECT_TIMEOUT_S", "1.0"))
# A running job whose claimant sent no heartbeat for this long may be taken over.
EDGEFLEET_JOB_STALE_S = env_int("EDGEFLEET_JOB_STALE_S", 600, minimum=10)
# tests only: "crash[@job]" | "slow:<s>[@job]" | "fail[@job]" (see compression/runner.py)
EDGEFLEET_JOB_TEST_HOOK = env_str("EDGEFLEET_JOB_TEST_HOOK", "")

# --- storage ------------------------------------------------------------------
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
if AWS_STORAGE_BUCKET_NAME:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "location": env_str("AWS_LOCATION", ""),  # key prefix inside the bucket
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL") or None,
            "access_key": env_str("AWS_ACCESS_KEY_ID") or None,
            "secret_key": env_str("AWS_SECRET_ACCESS_KEY") or None,
            "region_name": env_str("AWS_S3_REGION_NAME", "us-east-1"),
            "default_acl": None,
            "file_overwrite": True,  # names are content addresses: same name, same bytes
            "querystring_expire": env_int("AWS_QUERYSTRING_EXPIRE", 300, minimum=10),
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT)},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- uploads ------------------------------------------------------------------
EDGEFLEET_MAX_UPLOAD_BYTES = env_int("EDGEFLEET_MAX_UPLOAD_MB", 512, minimum=1) * 1024 * 1024
EDGEFLEET_VALIDATOR_TIMEOUT_S = env_int("EDGEFLEET_VALIDATOR_TIMEOUT_S", 60, minimum=1)
EDGEFLEET_VALIDATOR_MEMORY_MB = env_int("EDGEFLEET_VALIDATOR_MEMORY_MB", 2048, minimum=64)
EDGEFLEET_VALIDATOR_TEST_CRASH = None  # tests only: "segfault" | "hang" | "oom"
FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # every upload streams to a temp file, never RAM
FILE_UPLOAD_TEMP_DIR = str(VAR_DIR / "tmp")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
FILE_UPLOAD_HANDLERS = ["fleet.uploads.LimitedTemporaryFileUploadHandler"]
# Largest non-file request body (JSON, forms), and the device API's body limit:
# one setting, 413 with a JSON body past it (docs/security.md).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DEVICE_MAX_BATCH_BYTES", 4 * 1024 * 1024, minimum=1024)
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 32, minimum=4)  # deeper request JSON: 400

# --- auth, API ----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous API call then gets 401 + WWW-Authenticate, not 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fleet.roles.RolePermission"],
    "DEFAULT_PAGINATION_CLASS": "fleet.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "login": env_str("THROTTLE_LOGIN", "10/min"),
        "user": env_str("THROTTLE_USER", "6000/min"),
        "device": env_str("THROTTLE_DEVICE", "600/min"),
        "enroll": env_str("THROTTLE_ENROLL", "60/min"),
        # Unknown device tokens per client address before 429 (guessing costs a query).
        "device_auth_failure": env_str("THROTTLE_DEVICE_AUTH_FAILURES", "30/min"),
    },
    "EXCEPTION_HANDLER": "fleet.api.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "fleet.jsonbody.LimitedJSONParser",  # depth-limited (RecursionError was a 500)
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "EdgeFleet API",
    "DESCRIPTION": "Models, compression jobs, devices and rollouts.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fleet.device_api.schema.add_device_api",  # every device route, from its Doc
    ],
}

# --- devices ------------------------------------------------------------------
# A device is offline after this many seconds without a request (per-group override).
DEVICE_OFFLINE_AFTER_S = env_int("DEVICE_OFFLINE_AFTER_S", 300, minimum=10)
# last_seen is written at most this often per device: no DB write per request.
DEVICE_LAST_SEEN_WRITE_S = env_int("DEVICE_LAST_SEEN_WRITE_S", 30, minimum=1)
# Largest telemetry/log batch (items) and body (bytes); over either → 413.
DEVICE_MAX_BATCH_ITEMS = env_int("DEVICE_MAX_BATCH_ITEMS", 5000, minimum=1)
# How often devices upload their buffered telemetry and logs (seconds; X-Upload-Interval
# on the check-in answer, jittered by the agent). Points are still sampled every
# telemetry interval: fewer, fuller requests, the same resolution.
DEVICE_UPLOAD_INTERVAL_S = env_int("DEVICE_UPLOAD_INTERVAL_S", 60, minimum=1)
# Concurrent ingest requests per web process before answering 503 + Retry-After.
DEVICE_MAX_INFLIGHT_INGEST = env_int("DEVICE_MAX_INFLIGHT_INGEST", 8, minimum=1)
# Telemetry/log INSERTs as session-level prepared statements (PostgreSQL); turn off
# behind a transaction-pooling PgBouncer.
DEVICE_INGEST_PREPARED = env_bool("DEVICE_INGEST_PREPARED", True)
DEVICE_RETRY_AFTER_S = env_int("DEVICE_RETRY_AFTER_S", 5, minimum=1)
# With Redis: how long a confirmed device credential (or a revocation tombstone) is cached.
DEVICE_AUTH_CACHE_S = env_int("DEVICE_AUTH_CACHE_S", 900, minimum=1)
# How long a token that matched no live credential is remembered as unknown (no query).
DEVICE_AUTH_NEGATIVE_S = env_int("DEVICE_AUTH_NEGATIVE_S", 300, minimum=1)
# Raw points and logs older than this are deleted by a periodic task; rollups live longer.
TELEMETRY_RETENTION_DAYS = env_int("TELEMETRY_RETENTION_DAYS", 7, minimum=1)
LOG_RETENTION_DAYS = env_int("LOG_RETENTION_DAYS", 14, minimum=1)
ROLLUP_RETENTION_DAYS = env_int("ROLLUP_RETENTION_DAYS", 90, minimum=1)
# PostgreSQL: raw telemetry/logs are partitioned by day; partitions for this many
# days ahead are created by a beat task (devices/partitions.py).
TELEMETRY_PARTITIONS_AHEAD_DAYS = env_int("TELEMETRY_PARTITIONS_AHEAD_DAYS", 3, minimum=1)
# Alert when a device's p95 latency exceeds its version × profile estimate by this factor.
LATENCY_ALERT_FACTOR = float(env_str("LATENCY_ALERT_FACTOR", "1.5"))
# Alert when a device's input drift score (PSI against the calibration data) exceeds this.
DRIFT_ALERT_PSI = float(env_str("DRIFT_ALERT_PSI", "0.25"))
# MQTT bridge: empty = off. mqtt://user:pass@host:1883 (mqtts:// for TLS).
MQTT_URL = env_str("MQTT_URL")
MQTT_CLIENT_ID = env_str("MQTT_CLIENT_ID", "edgefleet-bridge")
# Non-empty: subscribe as $share/<group>/… so several bridges split the load.
MQTT_SHARED_GROUP = env_str("MQTT_SHARED_GROUP")
CELERY_BEAT_SCHEDULE.update(
    {
        "devices-rollup": {"task": "devices.tasks.rollup_telemetry", "schedule": 60.0},
        "devices-offline": {"task": "devices.tasks.detect_offline", "schedule": 60.0},
        "devices-sample": {"task": "devices.tasks.sample_fleet", "schedule": 300.0},
        "devices-presence": {"task": "devices.tasks.flush_presence", "schedule": 15.0},
        "devices-latency": {"task": "devices.tasks.check_latency", "schedule": 300.0},
        "devices-drift": {"task": "devices.tasks.check_drift", "schedule": 300.0},
        "devices-retention": {"task": "devices.tasks.apply_retention", "schedule": 3600.0},
        "devices-partitions": {"task": "devices.tasks.create_partitions", "schedule": 3600.0},
    }
)

# --- ota -------------------------------------------------------------------------
# A single-phase deployment to more than this % of the fleet needs the admin role.
OTA_MAX_UNPHASED_PERCENT = env_int("OTA_MAX_UNPHASED_PERCENT", 20, minimum=0)
# The CI role starts canaries only: a first phase of at most this many percent of the target.
OTA_CI_MAX_CANARY_PERCENT = env_int("OTA_CI_MAX_CANARY_PERCENT", 10, minimum=1)
# Check-in interval advised to devices (seconds, ±20 % jitter in X-Poll-Interval).
OTA_POLL_INTERVAL_S = env_int("OTA_POLL_INTERVAL_S", 60, minimum=5)
# Lifetime of a signed manifest (hours); devices refuse expired ones (U3).
OTA_MANIFEST_TTL_H = env_int("OTA_MANIFEST_TTL_H", 168, minimum=1)
# How long a device's check-in answer stays cached (dropped on any change). The
# embedded memory cache is per process: the worker that assigns an update cannot
# drop the web's copy, so there an answer lives only a few seconds.
OTA_CHECKIN_CACHE_S = env_int("OTA_CHECKIN_CACHE_S", 300 if REDIS_URL else 3, minimum=1)
# Lifetime of the signed timestamp on every check-in answer (seconds); a device
# that gets no fresh one for longer reports stale metadata (freeze attack).
OTA_TIMESTAMP_TTL_S = env_int("OTA_TIMESTAMP_TTL_S", 3600, minimum=2)
# Key rotation: how long a next key is announced before `rotate_server_key activate`
# may switch to it (hours; devices offline longer must be re-enrolled).
OTA_KEY_OVERLAP_H = env_int("OTA_KEY_OVERLAP_H", 168, minimum=0)
# How often the gate task judges running deployments (seconds).
OTA_GATE_INTERVAL_S = env_int("OTA_GATE_INTERVAL_S", 30, minimum=5)
CELERY_BEAT_SCHEDULE["ota-evaluate-deployments"] = {
    "task": "ota.tasks.evaluate_deployments",
    "schedule": float(OTA_GATE_INTERVAL_S),
}

# --- metrics (fleet/prometheus.py) ---------------------------------------------------
# Count device requests, ingested records, ... (off only to measure what counting costs).
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
# Bearer token that `/metrics` requires; unset, the web does not expose it (404).
METRICS_TOKEN = env_str("METRICS_TOKEN")
# Worker and MQTT bridge: serve their metrics on this port (0 = off), on METRICS_ADDR.
METRICS_PORT = env_int("METRICS_PORT", 0, minimum=0)
METRICS_ADDR = env_str("METRICS_ADDR", "127.0.0.1")

# --- i18n ---------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_TZ = True

# --- home dashboard: URL names of widgets served by the apps (fleet imports none)
EDGEFLEET_HOME_WIDGETS = [
    "devices:charts-widget",
    "compression:widget",
    "devices:widget",
    "ota:widget",
]

SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
