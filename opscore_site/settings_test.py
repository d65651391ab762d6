"""Settings for the test suite: the production settings with test-only defaults.

Tests run against PostgreSQL (DATABASE_URL, default the local server); the values
set here are used only where the environment does not give its own.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/opscore")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-0123456789abcdef")
os.environ.setdefault("OPSCORE_WEBHOOK_SECRET", "test-webhook-secret")
os.environ.setdefault("AGENTKIT_API_URL", "http://127.0.0.1:9")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from opscore_site.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# No collectstatic in tests: serve from the app directories.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
