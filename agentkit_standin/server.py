"""HTTP front of the stand-in: AgentKit's routes plus the `/_standin/...` control API."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import wire
from .config import OUTCOMES, ConfigError

if TYPE_CHECKING:
    from .standin import StandIn

logger = logging.getLogger("agentkit_standin")

MAX_BODY = 1024 * 1024
RUN = re.compile(r"^/v1/agents/([^/]+)/run$")
CONTROL_AGENT = re.compile(r"^/_standin/agents/([^/]+)$")
CONTROL_REPORT = re.compile(r"^/_standin/agents/([^/]+)/report$")
STATES = ("initializing", "idle", "active", "error", "finished")


class HttpError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that can close its keep-alive connections on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, standin: StandIn, address: tuple[str, int]) -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def make_server(standin: StandIn, host: str, port: int) -> Server:
    return Server(standin, (host, port))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn; Ops-Core pools its connections
    # TCP_NODELAY, like uvicorn (asyncio sets it on every TCP connection). Without it the body,
    # written after the headers, waits for the client's delayed ACK: ~40 ms added to every answer
    # on a kept-alive connection, which is most of a dispatch's time in the engine benchmark.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    timeout = 30  # idle keep-alive connections are closed after this

    server: Server

    # --- plumbing ----------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per event is logged by the stand-in itself

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = wire.json_response_bytes(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True  # the body's end is unknown: the connection cannot be reused
            raise HttpError(400, "Invalid Content-Length header")
        if length > MAX_BODY:
            self.close_connection = True
            raise HttpError(413, f"Request body larger than {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                self.close_connection = True
                raise HttpError(400, "Invalid chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                self.close_connection = True
                raise HttpError(413, f"Request body larger than {MAX_BODY} bytes")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"Body is not valid JSON: {exc}") from None

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        try:
            route = self._route(method, path)
            if route is None:
                stripped = path.rstrip("/")
                if stripped != path and stripped and self._route(method, stripped) is not None:
                    # FastAPI's redirect_slashes; Ops-Core does not follow redirects.
                    location = stripped + (f"?{parts.query}" if parts.query else "")
                    self._body()
                    self.send_response(307)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._body()
                raise HttpError(404, "Not Found")
            handler, args = route
            if handler is None:
                self._body()
                raise HttpError(405, "Method Not Allowed")
            status, body = handler(*args, query)
            self._send(status, body)
        except HttpError as exc:
            self._send(exc.status, {"detail": exc.detail})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # never let a bug look like a hang or a dropped connection
            logger.exception("error handling %s %s", method, path)
            self.close_connection = True
            self._send(500, {"detail": "Internal Server Error"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- routing -----------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[Any, tuple] | None:
        """(handler, path args) for a known path; handler None when the method is not allowed."""
        get = "HEAD" if method == "HEAD" else "GET"
        table: list[tuple[re.Pattern[str] | str, dict[str, Any]]] = [
            ("/", {get: self.root}),
            (RUN, {"POST": self.run}),
            ("/v1/agents/register", {"POST": self.register_v1}),
            ("/_standin/stats", {get: self.get_stats, "DELETE": self.reset_stats}),
            ("/_standin/stats/reset", {"POST": self.reset_stats}),
            ("/_standin/config", {get: self.get_config, "POST": self.set_config, "PATCH": self.set_config}),
            ("/_standin/agents", {get: self.list_agents, "POST": self.register_agents}),
            ("/_standin/alerts", {get: self.list_alerts, "POST": self.receive_alert}),
            (CONTROL_REPORT, {"POST": self.send_report}),
            (CONTROL_AGENT, {get: self.get_agent, "DELETE": self.deregister, "PATCH": self.set_agent}),
        ]
        for pattern, methods in table:
            if isinstance(pattern, str):
                if path != pattern:
                    continue
                args: tuple = ()
            else:
                match = pattern.match(path)
                if not match:
                    continue
                args = tuple(unquote(group) for group in match.groups())
            return methods.get(method), args
        return None

    @property
    def standin(self) -> StandIn:
        return self.server.standin

    # --- AgentKit's API ----------------------------------------------------------------------------

    def root(self, query: dict) -> tuple[int, Any]:
        self._body()
        return 200, {"message": "AgentKit API (Ops-Core stand-in) is running."}

    def run(self, agent_id: str, query: dict) -> tuple[int, Any]:
        return self.standin.accept_run(agent_id, self._body())

    def register_v1(self, query: dict) -> tuple[int, Any]:
        """AgentKit's own `POST /v1/agents/register` (agentName, version, contactEndpoint, ...)."""
        body = self._json_body()
        errors = _registration_errors(body)
        if errors:
            return 422, {"detail": errors}
        agent = self.standin.register(name=body["agentName"], version=body["version"],
                                      capabilities=body.get("capabilities") or [],
                                      contact_endpoint=body["contactEndpoint"], metadata=body.get("metadata"))
        return 201, wire.registered_body(agent.name, agent.agent_id)

    # --- control API -------------------------------------------------------------------------------

    def get_stats(self, query: dict) -> tuple[int, Any]:
        self._body()
        return 200, self.standin.stats()

    def reset_stats(self, query: dict) -> tuple[int, Any]:
        self._body()
        self.standin.reset_stats()
        return 200, self.standin.stats()

    def receive_alert(self, query: dict) -> tuple[int, Any]:
        """The demo's alert receiver: Ops-Core's webhook or Slack-format alerts, logged and kept."""
        self.standin.receive_alert(self._json_body(), dict(self.headers.items()))
        return 200, {"received": True}

    def list_alerts(self, query: dict) -> tuple[int, Any]:
        self._body()
        return 200, {"alerts": self.standin.alerts()}

    def get_config(self, query: dict) -> tuple[int, Any]:
        self._body()
        return 200, self.standin.config.public()

    def set_config(self, query: dict) -> tuple[int, Any]:
        body = self._json_body()
        if not isinstance(body, dict):
            raise HttpError(400, "Expected a JSON object of settings")
        try:
            return 200, self.standin.configure(**body)
        except ConfigError as exc:
            raise HttpError(400, str(exc)) from None

    def list_agents(self, query: dict) -> tuple[int, Any]:
        self._body()
        return 200, {"agents": self.standin.agents()}

    def get_agent(self, agent_id: str, query: dict) -> tuple[int, Any]:
        self._body()
        agent = self.standin.agent(agent_id)
        if agent is None:
            raise HttpError(404, wire.not_found_body(agent_id)["detail"])
        return 200, agent

    def set_agent(self, agent_id: str, query: dict) -> tuple[int, Any]:
        """`{"outcome": "complete"|"fail"|"lose"|null}`: fix (or free) the fate of the agent's next runs."""
        body = self._json_body()
        if not isinstance(body, dict) or set(body) != {"outcome"}:
            raise HttpError(400, 'expected {"outcome": "complete"|"fail"|"lose"|null}')
        if body["outcome"] is not None and body["outcome"] not in OUTCOMES:
            raise HttpError(400, f"outcome: expected one of {', '.join(OUTCOMES)} or null")
        if not self.standin.set_agent_outcome(agent_id, body["outcome"]):
            raise HttpError(404, wire.not_found_body(agent_id)["detail"])
        return 200, self.standin.agent(agent_id)

    def register_agents(self, query: dict) -> tuple[int, Any]:
        """`{"count": N}` or `{"agents": [{agentId?, agentName?, ...}]}`, plus optional webhook/initial_idle."""
        body = self._json_body()
        if not isinstance(body, dict):
            raise HttpError(400, "Expected a JSON object")
        specs = agent_specs(body)
        options = agent_options(body)
        taken = set(self.standin.agent_ids())
        for spec in specs:
            if spec.get("agent_id") in taken:
                raise HttpError(409, f"Agent with ID '{spec['agent_id']}' is already registered.")
        agents = []
        for spec in specs:
            try:
                agents.append(self.standin.register(**spec, **options).public())
            except ConfigError as exc:
                raise HttpError(409, str(exc)) from None
        return 201, {"agents": agents}

    def deregister(self, agent_id: str, query: dict) -> tuple[int, Any]:
        self._body()
        webhook = None
        if "webhook" in query:
            value = query["webhook"][-1].lower()
            if value not in ("0", "1", "true", "false"):
                raise HttpError(400, "webhook: expected 0/1 or true/false")
            webhook = value in ("1", "true")
        if not self.standin.deregister(agent_id, webhook=webhook):
            raise HttpError(404, wire.not_found_body(agent_id)["detail"])
        return 200, {"status": "success", "agentId": agent_id}

    def send_report(self, agent_id: str, query: dict) -> tuple[int, Any]:
        """Make an agent report a state now: `{"state": "idle", "details": {...}}`."""
        body = self._json_body()
        if not isinstance(body, dict) or body.get("state") not in STATES:
            raise HttpError(400, f"state: expected one of {', '.join(STATES)}")
        details = body.get("details")
        if details is not None and not isinstance(details, dict):
            raise HttpError(400, "details: expected an object or null")
        status = self.standin.report(agent_id, body["state"], details)
        return 200, {"agentId": agent_id, "state": body["state"], "opscore_status": status}


def _registration_errors(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"type": "model_attributes_type", "loc": ["body"],
                 "msg": "Input should be a valid dictionary or object to extract fields from", "input": body}]
    errors = []
    for name in ("agentName", "version", "contactEndpoint"):
        if name not in body:
            errors.append({"type": "missing", "loc": ["body", name], "msg": "Field required", "input": body})
        elif not isinstance(body[name], str):
            errors.append({"type": "string_type", "loc": ["body", name], "msg": "Input should be a valid string",
                           "input": body[name]})
    endpoint = body.get("contactEndpoint")
    if isinstance(endpoint, str) and not endpoint.startswith(("http://", "https://")):
        errors.append({"type": "url_scheme", "loc": ["body", "contactEndpoint"],
                       "msg": "URL scheme should be 'http' or 'https'", "input": endpoint})
    capabilities = body.get("capabilities")
    if capabilities is not None and not (isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities)):
        errors.append({"type": "list_type", "loc": ["body", "capabilities"], "msg": "Input should be a valid list",
                       "input": capabilities})
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        errors.append({"type": "model_type", "loc": ["body", "metadata"],
                       "msg": "Input should be a valid dictionary or instance of AgentMetadata", "input": metadata})
    return errors


AGENT_FIELDS = {"agentId": ("agent_id", str), "agentName": ("name", str), "version": ("version", str),
                "capabilities": ("capabilities", list), "contactEndpoint": ("contact_endpoint", str),
                "metadata": ("metadata", dict), "outcome": ("outcome", str)}


def agent_options(body: dict[str, Any]) -> dict[str, bool]:
    """The optional `webhook` and `initial_idle` flags of a registration body; HttpError(400) if not booleans."""
    options = {}
    for flag in ("webhook", "initial_idle"):
        if flag in body:
            if not isinstance(body[flag], bool):
                raise HttpError(400, f"{flag}: expected true or false")
            options[flag] = body[flag]
    return options


def agent_specs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Keyword arguments for StandIn.register from a control request; HttpError(400) naming what is wrong."""
    if "agents" in body:
        items = body["agents"]
        if not isinstance(items, list) or not items:
            raise HttpError(400, "agents: expected a non-empty list of objects")
    else:
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise HttpError(400, "count: expected an integer from 1 to 1000")
        items = [{} for _ in range(count)]
    specs = []
    ids = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise HttpError(400, f"agents[{index}]: expected an object")
        unknown = sorted(set(item) - set(AGENT_FIELDS))
        if unknown:
            raise HttpError(400, f"agents[{index}]: unknown field(s) {', '.join(unknown)}; "
                                 f"allowed: {', '.join(AGENT_FIELDS)}")
        spec = {}
        for name, value in item.items():
            keyword, kind = AGENT_FIELDS[name]
            if name == "metadata" and value is None:
                continue
            if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
                expected = "a list of strings" if kind is list else "an object" if kind is dict else "a string"
                raise HttpError(400, f"agents[{index}].{name}: expected {expected}")
            if kind is str and not value.strip():
                raise HttpError(400, f"agents[{index}].{name}: must not be empty")
            if name == "outcome" and value not in OUTCOMES:
                raise HttpError(400, f"agents[{index}].outcome: expected one of {', '.join(OUTCOMES)}")
            spec[keyword] = value
        if "agent_id" in spec:
            if spec["agent_id"] in ids:
                raise HttpError(400, f"agents[{index}].agentId: {spec['agent_id']} appears twice")
            ids.add(spec["agent_id"])
        specs.append(spec)
    return specs
