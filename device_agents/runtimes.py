"""What a runtime needs on a device, and the registry of runtimes the fleet checks against.

device_agents knows no runtime by name: registering a runner (bench.runners.register_runner)
adds its `RuntimeNeeds` here, so fleet validation, `local_runtimes()`, the health checks and
the native-tool fields of an inventory all follow from that one registration.
"""

from __future__ import annotations

from dataclasses import dataclass

from latbench.errors import ConfigError
from latbench.registry import Registry


@dataclass(frozen=True)
class RuntimeNeeds:
    """What a device must offer for a runtime to run there.

    - `modules`: Python modules any one of which provides the runtime; the runtime then runs
      through the agent (the device needs a `python`);
    - `cuda`: it also needs a CUDA device;
    - `tool`: the runtime drives a native binary instead: the inventory field naming the local
      path of that binary (pushed with each batch), with `{tool}_args` for extra flags.
    """

    modules: tuple[str, ...] = ()
    cuda: bool = False
    tool: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        if bool(self.modules) == bool(self.tool):
            raise ConfigError("a runtime runs either through the agent (modules) or a native "
                              f"tool (tool), not both or neither: {self!r}")
        for module in self.modules:
            # Top-level names only: the agent looks them up without importing a parent package.
            if not isinstance(module, str) or not module.isidentifier():
                raise ConfigError(f"runtime module {module!r} is not a top-level module name")
        if self.tool is not None and (not isinstance(self.tool, str)
                                      or not self.tool.isidentifier()):
            raise ConfigError(f"runtime tool field {self.tool!r} is not a valid field name")

    @property
    def agent(self) -> bool:
        """True when the runtime runs through the Python agent."""
        return bool(self.modules)

    @property
    def args_field(self) -> str | None:
        """The inventory field holding extra flags for the tool, if there is a tool."""
        return f"{self.tool}_args" if self.tool else None


# runtime name -> what it needs; filled by bench.runners.register_runner.
RUNTIMES: Registry[RuntimeNeeds] = Registry("runtime")


def register_runtime(name: str, needs: RuntimeNeeds) -> RuntimeNeeds:
    """Add a runtime's needs under `name` (a taken name is refused)."""
    if not isinstance(needs, RuntimeNeeds):
        raise ConfigError(f"runtime {name!r}: needs must be a RuntimeNeeds, got {needs!r}")
    return RUNTIMES.add(name, needs)


def tool_fields() -> tuple[str, ...]:
    """The inventory fields naming native tool binaries, one per tool, in registration order."""
    return tuple(dict.fromkeys(n.tool for n in RUNTIMES.values() if n.tool is not None))
