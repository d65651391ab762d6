"""`python -m agentkit_standin`: run the AgentKit stand-in until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .config import DEFAULT_CAPABILITIES, Config, ConfigError
from .standin import StandIn


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m agentkit_standin",
        description="AgentKit stand-in: answers POST /v1/agents/{id}/run like AgentKit and plays the agents, "
                    "which report state to Ops-Core over HTTP. Control API under /_standin/ (see README).",
    )
    parser.add_argument("--host", default=env("AGENTKIT_STANDIN_HOST", "127.0.0.1"),
                        help="bind address (env AGENTKIT_STANDIN_HOST; default %(default)s)")
    parser.add_argument("--port", type=int, default=env("AGENTKIT_STANDIN_PORT", "8001"),
                        help="port; 0 picks a free one (env AGENTKIT_STANDIN_PORT; default %(default)s)")
    parser.add_argument("--opscore-url", default=env("OPSCORE_URL", "http://127.0.0.1:8000"),
                        help="Ops-Core's base URL (env OPSCORE_URL; default %(default)s)")
    parser.add_argument("--api-key", default=env("OPSCORE_API_KEY", ""),
                        help="Bearer key the agents send with state reports (env OPSCORE_API_KEY)")
    parser.add_argument("--webhook-secret", default=env("OPSCORE_WEBHOOK_SECRET", ""),
                        help="HMAC secret for the registration webhook (env OPSCORE_WEBHOOK_SECRET); "
                             "without it no webhook is sent, like AgentKit")
    parser.add_argument("--webhook-url", default=env("OPSCORE_WEBHOOK_URL", ""),
                        help="webhook URL (env OPSCORE_WEBHOOK_URL; default "
                             "{opscore-url}/v1/opscore/internal/agent/notify)")
    parser.add_argument("--agents", type=int, default=0, metavar="N", help="register N simulated agents at start")
    parser.add_argument("--known-agents", type=Path, default=None, metavar="FILE",
                        help="a JSON file of agents (as for POST /_standin/agents: "
                             '{"agents": [{"agentId": ..., "agentName": ..., "capabilities": [...]}]}) '
                             "registered before the first request is served, as AgentKit back from a restart")
    parser.add_argument("--capabilities", default=",".join(DEFAULT_CAPABILITIES),
                        help="comma-separated capabilities of the agents (default %(default)s)")
    parser.add_argument("--capability-sets", default="", metavar="A,B;C",
                        help="give the agents registered at start these capability sets in turn, separated by ';' "
                             "(e.g. 'fetch,summarise;publish'); default: --capabilities for every agent")
    parser.add_argument("--forgotten-agents", type=int, default=0, metavar="N",
                        help="also register N agents that report and announce themselves, then are forgotten "
                             "without a DEREGISTER webhook: Ops-Core knows them, /run answers 404 (AgentKit lost them)")
    parser.add_argument("--work-time", default="0", metavar="SECONDS",
                        help="work time per task: '0.2' or a range '0.1-0.5' (default 0 = instant)")
    parser.add_argument("--answer-delay", default="0", metavar="SECONDS",
                        help="a slow AgentKit: wait this long before answering /run, e.g. '1' or '0.5-2' (default 0)")
    parser.add_argument("--failure-rate", default="0", metavar="P",
                        help="probability that a task fails (active then error) (default 0)")
    parser.add_argument("--lost-rate", default="0", metavar="P",
                        help="probability that an accepted task is never forwarded: no reports (default 0)")
    parser.add_argument("--error-recovery", default="0.02-0.05", metavar="SECONDS",
                        help="delay before the idle that follows an error, or 'off' (default %(default)s)")
    parser.add_argument("--no-webhook", action="store_true", help="never send registration webhooks")
    parser.add_argument("--initial-idle", action=argparse.BooleanOptionalAction, default=True,
                        help="agents report idle on registration (default on)")
    parser.add_argument("--with-result", action="store_true",
                        help="put details.result on the completion idle (the real SDK sends none; default off)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible runs")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"port: expected 0-65535, got {args.port}")
    if args.agents < 0:
        raise ConfigError(f"agents: expected 0 or more, got {args.agents}")
    if args.forgotten_agents < 0:
        raise ConfigError(f"forgotten-agents: expected 0 or more, got {args.forgotten_agents}")
    capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    return Config(
        opscore_url=args.opscore_url, api_key=args.api_key, webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url, host=args.host, port=args.port, work_time=args.work_time, answer_delay=args.answer_delay,
        failure_rate=args.failure_rate, lost_rate=args.lost_rate, error_recovery=args.error_recovery,
        webhook=not args.no_webhook, initial_idle=args.initial_idle, with_result=args.with_result,
        capabilities=capabilities, seed=args.seed,
    )


def capability_sets_from(text: str) -> list[list[str]]:
    """'fetch,summarise;publish' -> [['fetch', 'summarise'], ['publish']] (empty sets are dropped)."""
    sets = [[c.strip() for c in part.split(",") if c.strip()] for part in text.split(";")]
    return [capabilities for capabilities in sets if capabilities]


def known_agents(path: Path) -> list[dict]:
    """The --known-agents file as keyword arguments for StandIn.register; ConfigError naming the problem."""
    from .server import HttpError, agent_options, agent_specs

    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"known-agents: cannot read {path}: {exc}") from None
    if not isinstance(body, dict) or "agents" not in body:
        raise ConfigError('known-agents: expected {"agents": [...]}')
    try:
        options = agent_options(body)
        return [{**spec, **options} for spec in agent_specs(body)]
    except HttpError as exc:
        raise ConfigError(f"known-agents: {exc.detail}") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s standin %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        known = known_agents(args.known_agents) if args.known_agents else []
    except ConfigError as exc:
        parser.error(str(exc))
    standin = StandIn(config)
    try:
        standin.start(known_agents=known)
    except OSError as exc:
        print(f"agentkit_standin: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    if not config.api_key:
        logging.getLogger("agentkit_standin").warning("no OPSCORE_API_KEY: Ops-Core will refuse the reports (401)")
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    capability_sets = capability_sets_from(args.capability_sets)
    for number in range(args.agents):
        standin.register(capabilities=capability_sets[number % len(capability_sets)] if capability_sets else None)
    forgotten = [standin.register(name=f"forgotten-agent-{n + 1}").agent_id for n in range(args.forgotten_agents)]
    if forgotten and not done.wait(1.0):  # time for their reports and webhooks to arrive
        for agent_id in forgotten:
            standin.deregister(agent_id, webhook=False)
    done.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
