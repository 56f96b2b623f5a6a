"""The one registry shape every plug-in table uses (runners, transports, spaces, strategies,
proxies, predictors, network families).

A registry is a plain dict (iterate it, `in`, `get`, `sorted`) filled through `add` or the
`register(name)` decorator, which refuses a second entry under a name: a plug-in silently
replacing another would change what a measurement or a search means. `lookup` names the known
entries when a name is unknown. Imported by every layer, like latbench.errors (but not by
device_agents/agent, which must run alone on a device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from latbench.errors import ConfigError, LatbenchError

V = TypeVar("V")


class Registry(dict[str, V]):
    """name -> plug-in. `what` names an entry in messages ("runner", "search space"); `error`
    is the exception class raised for duplicates and unknown names."""

    def __init__(self, what: str, error: type[LatbenchError] = ConfigError) -> None:
        super().__init__()
        self.what = what
        self.error = error

    def add(self, name: str, value: V) -> V:
        """Add `value` under `name`; a name already taken is refused, naming its holder."""
        if name in self:
            held = self[name]
            holder = getattr(held, "__qualname__", type(held).__qualname__)
            raise self.error(f"{self.what} {name!r} is registered twice (already registered "
                             f"by {holder})")
        self[name] = value
        return value

    def register(self, name: str) -> Callable[[V], V]:
        """Decorator form of `add`; returns the decorated object unchanged."""
        return lambda value: self.add(name, value)

    def lookup(self, name: str) -> V:
        """The entry for `name`; unknown names raise `error` listing the known ones."""
        try:
            return self[name]
        except KeyError:
            raise self.error(f"unknown {self.what} {name!r}; known: {self.known()}") from None

    def known(self) -> str:
        """The registered names, sorted and comma-separated ("none" when empty)."""
        return ", ".join(sorted(self)) or "none"
