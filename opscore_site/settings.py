"""Django settings for Ops-Core, all driven by the environment (see opscore_site/env.py)."""

from __future__ import annotations

import math
import secrets
import sys
from datetime import timedelta

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from opscore_site import env as _env
from opscore_site.env import BASE_DIR, load_env

ENV = load_env()

DEBUG = ENV.DEBUG
SECRET_KEY = ENV.SECRET_KEY
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "insecure-development-only-key-do-not-use-in-production"
    elif _env.secretless_command:
        SECRET_KEY = secrets.token_urlsafe(50)  # signs nothing: the command only reads the code
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production mode (DEBUG unset or false) needs SECRET_KEY "
            "in the environment; for local development set DEBUG=1."
        )

OPSCORE_WEBHOOK_SECRET = ENV.OPSCORE_WEBHOOK_SECRET
OPSCORE_WEBHOOK_ALLOW_UNSIGNED = ENV.OPSCORE_WEBHOOK_ALLOW_UNSIGNED
if not DEBUG and not OPSCORE_WEBHOOK_SECRET and not _env.secretless_command:
    raise ImproperlyConfigured(
        "OPSCORE_WEBHOOK_SECRET is not set. Production mode needs the secret shared with "
        "AgentKit to verify its registration webhook."
    )
if not DEBUG and OPSCORE_WEBHOOK_ALLOW_UNSIGNED:
    raise ImproperlyConfigured(
        "OPSCORE_WEBHOOK_ALLOW_UNSIGNED is a development setting and needs DEBUG=1."
    )

ALLOWED_HOSTS = ENV.ALLOWED_HOSTS
CSRF_TRUSTED_ORIGINS = ENV.CSRF_TRUSTED_ORIGINS

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "agents",
    "workflows",
    "sessions.apps.SessionsConfig",
    "alerts",
    "ui",
]

MIDDLEWARE = [
    "opscore_site.metrics.MetricsMiddleware",  # outermost: times everything below it
    "opscore_site.middleware.RequestIdMiddleware",
    "opscore_site.api.ApiBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "opscore_site.middleware.MessageMiddleware",  # Django's, skipped under /v1/
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into the "locked out" page.
    "axes.middleware.AxesMiddleware",
    # Innermost: a view's database error is a 503 (opscore_site/dbdown.py), before anything else sees it.
    "opscore_site.dbdown.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "opscore_site.urls"
WSGI_APPLICATION = "opscore_site.wsgi.application"
ASGI_APPLICATION = "opscore_site.asgi.application"

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
                "django.template.context_processors.csp",
                "ui.permissions.context",
                "sessions.operator_views.operator_loop",  # the maintenance banner, the approvals count
            ],
        },
    },
]

# Database: persistent connections with health checks. Never Django's pool option:
# it breaks the forked qcluster worker processes.
DATABASES = {
    "default": dj_database_url.parse(
        ENV.DATABASE_URL,
        conn_max_age=ENV.DB_CONN_MAX_AGE,
        conn_health_checks=True,
    )
}
_POSTGRESQL = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if _POSTGRESQL:
    # Django's backend, minus the health check's SELECT 1 for a connection used within the last second.
    DATABASES["default"]["ENGINE"] = "opscore_site.postgresql"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The demo runs web, qcluster, scheduler and stand-in against one file: WAL and
    # IMMEDIATE transactions keep concurrent writers from failing with "database is locked".
    (BASE_DIR / "var").mkdir(exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A shared cache, so qinfo and every process see the same numbers (the API throttle keeps its
# counters in a table of its own: opscore_site/throttle.py). Django's default of 300 entries
# would cull live django-q2 stats and the scheduler's heartbeat.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "opscore_cache",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out account and address before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login throttling for /accounts/login/ and /admin/login/ (opscore_site/logins.py).
AXES_FAILURE_LIMIT = ENV.OPSCORE_LOGIN_FAILURE_LIMIT
OPSCORE_LOGIN_COOLOFF_MINUTES = ENV.OPSCORE_LOGIN_COOLOFF_MINUTES
AXES_COOLOFF_TIME = timedelta(minutes=OPSCORE_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "opscore_site.logins.client_ip"
AXES_LOCKOUT_CALLABLE = "opscore_site.logins.lockout_response"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Request bodies: one limit for the whole API (a larger body is a 413).
DATA_UPLOAD_MAX_MEMORY_SIZE = ENV.OPSCORE_MAX_BODY_BYTES
OPSCORE_MAX_BODY_BYTES = ENV.OPSCORE_MAX_BODY_BYTES

# Security (production mode). `check --deploy` reads these.
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = ENV.SECURE_SSL_REDIRECT
    # The API is exempt: AgentKit and its SDK follow no redirects (an in-cluster http:// URL
    # would lose every report and webhook); operator pages still go to HTTPS.
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$", r"^v1/"]
    SECURE_HSTS_SECONDS = ENV.SECURE_HSTS_SECONDS
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy on every response, in development too (a violation shows in the
# browser's console at once). Our pages and the admin have no inline script, style or event
# handler: scripts and styles come from our own static files only.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],  # data: for the empty favicon in base.html and Swagger UI's icons
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
# The API docs have policies of their own (opscore_site/api_urls.py). drf-spectacular's
# templates (overridden in templates/drf_spectacular/) start each viewer with an inline script,
# allowed by a per-response nonce; everything else they load is ours (drf-spectacular-sidecar).
OPSCORE_SWAGGER_CSP = {
    **SECURE_CSP,
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
}
# Redoc's bundle injects <style> elements while it loads, before any nonce can be handed to it,
# so its page alone allows inline styles (never inline scripts); its search index runs in a
# Worker made from a blob: URL, and its sidebar always shows Redocly's logo from cdn.redoc.ly
# (without the network, the image is simply left out).
OPSCORE_REDOC_CSP = {
    **SECURE_CSP,
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:", "https://cdn.redoc.ly"],
    "worker-src": [CSP.SELF, "blob:"],
}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["opscore_site.parsers.JSONParser"],
    # Bearer keys first: its WWW-Authenticate header makes "no credentials" a 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "agents.api.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["agents.api.auth.OperatorOrServiceKey"],
    "DEFAULT_THROTTLE_CLASSES": ["opscore_site.api.ApiThrottle"],
    # Trusted reverse proxies in front of Ops-Core; 0 ignores X-Forwarded-For (it is spoofable).
    "NUM_PROXIES": ENV.OPSCORE_NUM_PROXIES,
    "DEFAULT_PAGINATION_CLASS": "opscore_site.api.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "opscore_site.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Ops-Core API",
    "DESCRIPTION": "Agent state, workflow sessions and operator actions for an AgentKit fleet.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "AgentStateEnum": "agents.models.Agent.State",
        "SessionStatusEnum": "sessions.models.Session.Status",
        "TaskStatusEnum": "sessions.models.Task.Status",
    },
}

# Ops-Core settings (DESIGN.md "Stack and layout").
OPSCORE_API_KEY = ENV.OPSCORE_API_KEY
# Seconds a verified key is trusted per process: a revoked key is refused by the process
# that revoked it at once and by every other process within this bound.
OPSCORE_API_KEY_CACHE_SECONDS = ENV.OPSCORE_API_KEY_CACHE_SECONDS
OPSCORE_WEBHOOK_TOLERANCE_SECONDS = ENV.OPSCORE_WEBHOOK_TOLERANCE_SECONDS
OPSCORE_STATE_MAX_FUTURE_SECONDS = ENV.OPSCORE_STATE_MAX_FUTURE_SECONDS
OPSCORE_THROTTLE_RATE = ENV.OPSCORE_THROTTLE_RATE
OPSCORE_STATE_THROTTLE_RATE = ENV.OPSCORE_STATE_THROTTLE_RATE
OPSCORE_IDEMPOTENCY_TTL_HOURS = ENV.OPSCORE_IDEMPOTENCY_TTL_HOURS
OPSCORE_AGENT_STALE_SECONDS = ENV.OPSCORE_AGENT_STALE_SECONDS
OPSCORE_RETENTION_DAYS = ENV.OPSCORE_RETENTION_DAYS
OPSCORE_SCHEDULER_INTERVAL_SECONDS = ENV.OPSCORE_SCHEDULER_INTERVAL_SECONDS
OPSCORE_LOST_JOB_SECONDS = ENV.OPSCORE_LOST_JOB_SECONDS
OPSCORE_QUEUE_TIMEOUT_SECONDS = ENV.OPSCORE_QUEUE_TIMEOUT_SECONDS
OPSCORE_QUARANTINE_THRESHOLD = ENV.OPSCORE_QUARANTINE_THRESHOLD
OPSCORE_QUARANTINE_COOLDOWN_SECONDS = ENV.OPSCORE_QUARANTINE_COOLDOWN_SECONDS
OPSCORE_QUARANTINE_BACKOFF_CAP_SECONDS = ENV.OPSCORE_QUARANTINE_BACKOFF_CAP_SECONDS
AGENTKIT_API_URL = ENV.AGENTKIT_API_URL.rstrip("/")
AGENTKIT_API_KEY = ENV.AGENTKIT_API_KEY
AGENTKIT_TIMEOUT_SECONDS = ENV.AGENTKIT_TIMEOUT_SECONDS
OPSCORE_METRICS_TOKEN = ENV.OPSCORE_METRICS_TOKEN
OPSCORE_METRICS_ALLOWED_IPS = ENV.OPSCORE_METRICS_ALLOWED_IPS

# Outgoing mail (alert rules with the email channel): Django's SMTP backend (tests swap in locmem).
MAILERS = {
    "default": {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": ENV.EMAIL_HOST, "port": ENV.EMAIL_PORT, "username": ENV.EMAIL_HOST_USER,
                    "password": ENV.EMAIL_HOST_PASSWORD, "use_tls": ENV.EMAIL_USE_TLS, "timeout": 10},
    },
}
DEFAULT_FROM_EMAIL = ENV.DEFAULT_FROM_EMAIL

# django-q2 on the ORM broker of the default database (on PostgreSQL its LISTEN/NOTIFY
# subclass, sessions/broker.py: an idle cluster wakes at a job's commit instead of
# sleeping `poll`; `poll` stays the longest wait between reads). django-q2 delivers at least
# once, so every job is safe to run twice. The lease (`retry`) must outlast a job's
# `timeout` plus the time it can wait in the prefetch queue:
#   retry > timeout * (1 + ceil((queue_limit + bulk) / workers))
_Q_BULK = 1
Q_CLUSTER = {
    "name": "opscore",
    "orm": "default",
    "workers": ENV.Q_WORKERS,
    "timeout": ENV.Q_TIMEOUT,
    "retry": ENV.Q_RETRY,
    "queue_limit": ENV.Q_QUEUE_LIMIT,
    "bulk": _Q_BULK,
    "max_attempts": 3,
    "ack_failures": True,
    # 0 keeps every success row; pruning under a lock inside the cluster costs up to
    # 10x throughput, so `opscore_prune` deletes old rows in batches instead.
    "save_limit": 0,
    "catch_up": False,
    # An idle cluster reads the queue at least this often. On PostgreSQL a committed job
    # wakes it at once (the broker LISTENs); on SQLite this is the floor of dispatch latency.
    "poll": ENV.Q_POLL,
    "cache": "default",
    "max_rss": ENV.Q_MAX_RSS_KB,
    "recycle": 500,
    "label": "Django Q2",
}
if _POSTGRESQL:
    Q_CLUSTER["broker_class"] = "sessions.broker.ListenNotifyBroker"
_lease_floor = ENV.Q_TIMEOUT * (1 + math.ceil((ENV.Q_QUEUE_LIMIT + _Q_BULK) / ENV.Q_WORKERS))
if ENV.Q_RETRY <= _lease_floor:
    raise ImproperlyConfigured(
        f"Q_RETRY ({ENV.Q_RETRY}s) must exceed Q_TIMEOUT * (1 + ceil((Q_QUEUE_LIMIT + bulk) / "
        f"Q_WORKERS)) = {_lease_floor}s, or a job waiting in the prefetch queue is delivered twice."
    )

# JSON logs to stdout, each line with the request id of the request that wrote it.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "opscore_site.middleware.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": sys.stdout,
            "formatter": "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["stdout"], "level": ENV.LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django_q": {"handlers": ["stdout"], "level": ENV.LOG_LEVEL, "propagate": False},
    },
}
