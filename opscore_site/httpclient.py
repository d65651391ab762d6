"""One pooled httpx client per process for each outbound module (AgentKit calls, alert deliveries)."""

from __future__ import annotations

import os

import httpx

_clients: dict[tuple[str, int], httpx.Client] = {}


def pooled_client(name: str) -> httpx.Client:
    """The client of `name` in this process. qcluster workers are forked, and a client (with its
    sockets) must not be shared across a fork, so a new process gets new clients."""
    pid = os.getpid()
    client = _clients.get((name, pid))
    if client is None:
        for key in [key for key in _clients if key[1] != pid]:
            del _clients[key]
        client = _clients[(name, pid)] = httpx.Client(follow_redirects=False)
    return client
