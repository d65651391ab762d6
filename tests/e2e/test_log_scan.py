"""The secrets scan the e2e `stack` fixture runs over every log at teardown (tests/e2e/conftest.py)."""

from __future__ import annotations

from tests.e2e.harness import API_KEY, WEBHOOK_SECRET, secrets_in

SECRETS = {"API key": API_KEY, "webhook secret": WEBHOOK_SECRET, "password": "", "SECRET_KEY": "s3cr3t-key"}


def test_it_names_the_file_line_and_secret_of_every_leak():
    logs = {
        "web.log": f'{{"message": "ok"}}\n{{"message": "auth header Bearer {API_KEY}"}}\n',
        "agentkit.log": "report agent=a1 state=idle -> 202\n",
        "qcluster.log": f"signing with s3cr3t-key and {WEBHOOK_SECRET}\n",
    }
    assert secrets_in(logs, SECRETS) == ["web.log:2: API key", "qcluster.log:1: webhook secret",
                                         "qcluster.log:1: SECRET_KEY"]


def test_clean_logs_and_empty_secrets_find_nothing():
    assert secrets_in({"web.log": f"key prefix {API_KEY[:12]} used\n\n"}, SECRETS) == []
