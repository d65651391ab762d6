"""django-q2 jobs of the alerts. Thin: ids in, one service call. Safe to run twice."""

from __future__ import annotations

from alerts.services import delivery_send


def deliver_alert_job(delivery_id: int) -> str:
    """Send one alert delivery attempt through its channel."""
    return delivery_send(delivery_id=delivery_id)
