"""How a device is reached (transports) and what runs on it (the agent script, native tools).

This package imports nothing of bench, predictor or search; `agent/` imports nothing of latbench.
Importing it registers the local, ssh and adb transports. It knows no runtime by name: the
runtime registry (`RUNTIMES`) is filled by registering runners (importing latbench.bench.runners).
"""

from __future__ import annotations

from latbench.device_agents.adb import ADBTransport
from latbench.device_agents.fleet import (
    AGENT_SCRIPT,
    CHECK_HEADER,
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
from latbench.device_agents.inventory import BadField, InventoryFields
from latbench.device_agents.local import LocalTransport
from latbench.device_agents.runtimes import RUNTIMES, RuntimeNeeds, register_runtime
from latbench.device_agents.ssh import SSHTransport
from latbench.device_agents.transport import (
    TRANSPORTS,
    CommandResult,
    LineCallback,
    Transport,
    get_transport_class,
    register_transport,
)

__all__ = [
    "ADBTransport",
    "AGENT_SCRIPT",
    "CHECK_HEADER",
    "RUNTIMES",
    "SSHTransport",
    "TRANSPORTS",
    "BadField",
    "CommandResult",
    "Device",
    "DeviceCheck",
    "InventoryFields",
    "LineCallback",
    "LocalTransport",
    "RuntimeNeeds",
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
    "register_runtime",
    "register_transport",
]
