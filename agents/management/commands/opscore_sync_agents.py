"""Fill agents' identity (name, version, capabilities, endpoint, metadata) from AgentKit's agent listing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError
from django.utils import timezone
from pydantic import ValidationError
from rest_framework.exceptions import ParseError

from agents import agentkit
from agents.models import Agent, agent_id_problem
from agents.services import agent_register
from agents.webhook import AgentDetails
from opscore_site.commands import OpsCommand, atomic_or_dry_run
from opscore_site.parsers import check_json_document

IDENTITY = ("name", "version", "capabilities", "contact_endpoint", "metadata")

UNSUPPORTED = (
    "this AgentKit has no agent listing (GET /v1/agents answered 404); agents are learned from "
    "their state reports and the registration webhook. Nothing to sync."
)


def _fields(item: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The agent id and identity fields of one listing entry (webhook or snake_case spelling)."""
    agent_id = item.get("agentId") or item.get("agent_id") or item.get("id")
    if not isinstance(agent_id, str) or agent_id_problem(agent_id.strip()):
        return None
    fields: dict[str, Any] = {}
    for target, names, kind in (
        ("name", ("agentName", "agent_name", "name"), str),
        ("version", ("version",), str),
        ("capabilities", ("capabilities",), list),
        ("contact_endpoint", ("contactEndpoint", "contact_endpoint", "endpoint"), str),
        ("metadata", ("metadata",), dict),
    ):
        for name in names:
            if isinstance(item.get(name), kind):
                value = item[name]
                fields[target] = [str(c) for c in value] if kind is list else value
                break
    return agent_id.strip(), fields


def _problem(agent_id: str, fields: dict[str, Any]) -> str | None:
    """Why the entry cannot be stored as the webhook would store it (lengths, '/', NUL, nan), or None."""
    try:
        check_json_document(fields)
    except ParseError as exc:
        return str(exc.detail).removeprefix("JSON parse error - ")
    try:
        AgentDetails.model_validate({"agentId": agent_id, "agentName": fields.get("name"),
                                     "version": fields.get("version"), "capabilities": fields.get("capabilities"),
                                     "contactEndpoint": fields.get("contact_endpoint"),
                                     "metadata": fields.get("metadata")})
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors())
    return None


def _upsert(*, agent_id: str, fields: dict[str, Any]) -> str:
    """Register the agent from its listing entry, through the webhook's service, unless nothing changed."""
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is not None:
        # Fields the listing leaves out keep their value (agent_register writes every field).
        fields = {name: fields.get(name, getattr(agent, name)) for name in IDENTITY}
        if agent.deregistered_at is None and all(getattr(agent, n) == v for n, v in fields.items()):
            return "unchanged"
    agent_register(agent_id=agent_id, at=timezone.now(), **fields)
    return "created" if agent is None else "updated"


class Command(OpsCommand):
    help = (
        "Poll AgentKit's agent listing (GET {AGENTKIT_API_URL}/v1/agents) and upsert each agent's name, "
        "version, capabilities, contact endpoint and metadata (never its state; a listed agent counts as "
        "registered again). Today's AgentKit has "
        "no listing (404): the command says so and exits 0."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; write nothing.")

    def handle(self, *args, dry_run: bool, **options) -> None:
        try:
            items = agentkit.list_agents()
        except agentkit.AgentListingUnsupported:
            self.stdout.write(UNSUPPORTED)
            return
        except agentkit.AgentKitError as exc:
            raise CommandError(f"cannot read AgentKit's agent listing: {exc.message}") from None
        totals = {"created": 0, "updated": 0, "unchanged": 0, "skipped": 0}
        with atomic_or_dry_run(dry_run):
            for item in items:
                parsed = _fields(item)
                if parsed is None:
                    totals["skipped"] += 1
                    self.stderr.write("skipped an entry without an agent id Ops-Core can use (not blank, no '/' or NUL, "
                                      f"at most 255 characters): {str(item)[:200]}")
                    continue
                agent_id, fields = parsed
                if problem := _problem(agent_id, fields):
                    totals["skipped"] += 1
                    self.stderr.write(f"skipped agent '{agent_id[:100]}': {problem}")
                    continue
                outcome = _upsert(agent_id=agent_id, fields=fields)
                totals[outcome] += 1
                if outcome != "unchanged":
                    self.stdout.write(f"{agent_id}: {outcome}")
        summary = ", ".join(f"{n} {name}" for name, n in totals.items())
        self.stdout.write(f"{len(items)} agent(s) listed: " + ("dry run, nothing written: would be " if dry_run else "")
                          + summary)
