"""AgentKit stand-in: a real HTTP server that plays AgentKit and its agents for Ops-Core's tests and demo.

Run it with `python -m agentkit_standin --help`; in tests, `StandIn(opscore_url=...).start()`.
It depends only on the standard library and httpx (it plays a separate product, not Ops-Core).
"""

from .config import Config, ConfigError
from .standin import StandIn

__all__ = ["Config", "ConfigError", "StandIn"]
