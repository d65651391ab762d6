"""The only module that sends alerts out: HTTP POSTs (signed webhook, Slack) and email.

Every HTTP call has an explicit timeout and follows no redirects. Failures raise AlertSendError
with `permanent` telling the delivery whether a retry can help: most 4xx and a refused address are
permanent; timeouts, connection errors, 5xx, 429 and a mail server that does not answer are transient.
"""

from __future__ import annotations

import smtplib
import socket
import time

import httpx
from django.conf import settings
from django.core.mail import send_mail

from agents.webhook import sign
from opscore_site.httpclient import pooled_client

TIMEOUT_SECONDS = 10.0
TIMESTAMP_HEADER = "X-Opscore-Timestamp"
SIGNATURE_HEADER = "X-Opscore-Signature"
USER_AGENT = "opscore-alerts/1"


class AlertSendError(Exception):
    """Sending an alert failed. `permanent` errors are not worth retrying."""

    def __init__(self, message: str, *, permanent: bool, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.http_status = http_status


def _client() -> httpx.Client:
    return pooled_client("alerts")


def signature_headers(*, secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The signed webhook's headers: Unix seconds, and hex HMAC-SHA256 over `timestamp + "." + body`
    (the scheme of AgentKit's webhook, agents/webhook.py, so one verifier serves both)."""
    timestamp = str(int(now if now is not None else time.time()))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body)}


def post(*, url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    """POST `body` (JSON) to `url`; the 2xx status, or AlertSendError."""
    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    try:
        response = _client().post(url, content=body, headers=all_headers, timeout=TIMEOUT_SECONDS)
    except httpx.TimeoutException as exc:
        raise AlertSendError(f"timed out after {TIMEOUT_SECONDS:g} s ({exc.__class__.__name__})",
                             permanent=False) from exc
    except httpx.InvalidURL as exc:
        raise AlertSendError(f"not a valid URL: {exc}", permanent=True) from exc
    except httpx.HTTPError as exc:
        raise AlertSendError(f"unreachable: {exc.__class__.__name__}: {exc}", permanent=False) from exc
    status = response.status_code
    if 200 <= status < 300:
        return status
    detail = response.text[:200].strip()
    message = f"the receiver answered {status}" + (f": {detail}" if detail else "")
    raise AlertSendError(message, permanent=not (status == 429 or status >= 500 or status == 408),
                         http_status=status)


def email(*, subject: str, text: str, recipients: list[str]) -> None:
    """Send `text` through Django's mail settings (EMAIL_HOST...), or AlertSendError."""
    try:
        send_mail(subject[:200], text, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise AlertSendError(f"the mail server refused the recipients: {exc}", permanent=True) from exc
    except (smtplib.SMTPException, OSError, socket.timeout) as exc:
        raise AlertSendError(f"mail not sent: {exc.__class__.__name__}: {exc}", permanent=False) from exc
