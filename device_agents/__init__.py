"""How a device is reached (transports) and what runs on it (the agent script, native tools).

This package imports nothing of bench, predictor or search; `agent/` imports nothing of latbench.
Importing it registers the local, ssh and adb transports.
"""

from __future__ import annotations

from latbench.device_agents.adb import ADBTransport
from latbench.device_agents.fleet import (
    AGENT_SCRIPT,
    CHECK_HEADER,
    RUNTIME_MODULES,
    Device,
    DeviceCheck,
    check_device,
    check_devices,
    check_row,
    describe_transport,
    device_facts,
    fetch_facts,
    load_fleet,
    local_device,
    local_runtimes,
    parse_fleet,
)
from latbench.device_agents.local import LocalTransport
from latbench.device_agents.ssh import SSHTransport
from latbench.device_agents.tools import TOOL_RUNTIMES
from latbench.device_agents.transport import (
    TRANSPORTS,
    CommandResult,
    Transport,
    get_transport_class,
    register_transport,
)

__all__ = [
    "ADBTransport",
    "AGENT_SCRIPT",
    "CHECK_HEADER",
    "RUNTIME_MODULES",
    "SSHTransport",
    "TOOL_RUNTIMES",
    "TRANSPORTS",
    "CommandResult",
    "Device",
    "DeviceCheck",
    "LocalTransport",
    "Transport",
    "check_device",
    "check_devices",
    "check_row",
    "describe_transport",
    "device_facts",
    "fetch_facts",
    "get_transport_class",
    "load_fleet",
    "local_device",
    "local_runtimes",
    "parse_fleet",
    "register_transport",
]
