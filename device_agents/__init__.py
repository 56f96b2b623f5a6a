"""How a device is reached (transports) and what runs on it (the agent script).

This package imports nothing of bench, predictor or search; `agent/` imports nothing of latbench.
"""

from __future__ import annotations

from device_agents.fleet import (
    AGENT_SCRIPT,
    RUNTIME_MODULES,
    Device,
    fetch_facts,
    local_device,
    local_runtimes,
)
from device_agents.local import LocalTransport
from device_agents.transport import (
    TRANSPORTS,
    CommandResult,
    Transport,
    get_transport_class,
    register_transport,
)

__all__ = [
    "AGENT_SCRIPT",
    "RUNTIME_MODULES",
    "TRANSPORTS",
    "CommandResult",
    "Device",
    "LocalTransport",
    "Transport",
    "fetch_facts",
    "get_transport_class",
    "local_device",
    "local_runtimes",
    "register_transport",
]
