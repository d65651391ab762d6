import logging

from django.apps import AppConfig
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


def _bootstrap_api_key(sender, **kwargs) -> None:
    from agents.services import api_key_bootstrap

    try:
        api_key_bootstrap()
    except ValueError as exc:
        logger.error("OPSCORE_API_KEY not installed: %s", exc)


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents"

    def ready(self) -> None:
        # OPSCORE_API_KEY bootstraps a fleet-wide service key once the tables exist.
        post_migrate.connect(_bootstrap_api_key, sender=self)
