"""ProxylessNAS strategies: a supernet trained with a latency term, then the derived network.

`proxyless-g` trains architecture parameters by gradient (two-path binary gates; mode="full"
gives the DARTS-style weighted sum for comparison), `proxyless-r` by REINFORCE. The search data
(digits by default) trains the supernet; the result's accuracy is the derived network's test
accuracy on that data, and its module is the trained network.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from latbench.bench.spaces.base import SearchSpace
from latbench.errors import ConfigError
from latbench.search.latency import LatencyTable
from latbench.search.strategies.base import SearchResult, register_strategy


class ProxylessSearch:
    name = "proxyless"
    default_mode = "two_path"

    def __init__(self, data: Any = None, config: Any = None, progress: Any = None,
                 dist_info: Any = None, **options: Any) -> None:
        from latbench.search.supernet import SupernetConfig

        names = {f.name for f in fields(SupernetConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown supernet option {unknown[0]!r}; known: "
                              f"{', '.join(sorted(names))}")
        mode = options.pop("mode", None)
        config = config or SupernetConfig(mode=mode or self.default_mode)
        self.config = replace(config, **options, **({"mode": mode} if mode else {}))
        self.data, self.progress, self.dist_info = data, progress, dist_info
        self.run: Any = None

    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Any,
               budget_ms: float) -> SearchResult:
        from latbench.search.data import load_data
        from latbench.search.supernet import search_supernet

        data = load_data(self.data or "digits", space.input_shape[-1], self.config.seed)
        run = search_supernet(space, table, data, budget_ms, self.config, self.progress,
                              self.dist_info)
        self.run = run
        history = [{**h, "accuracy": h["val_accuracy"]} for h in run.history]
        return SearchResult(self.name, run.arch_text, run.test_accuracy, run.predicted_ms,
                            float(budget_ms), run.sampled_paths, run.sampled_paths, history, 0,
                            run.module,
                            info={"mode": run.mode, "expected_ms": run.expected_ms,
                                  "repaired_to_budget": run.repaired, "data": data.name,
                                  "seconds": run.seconds})


@register_strategy("proxyless-g")
class ProxylessGradient(ProxylessSearch):
    name = "proxyless-g"
    default_mode = "two_path"

    def __init__(self, **options: Any) -> None:
        if options.get("mode", "two_path") == "reinforce":
            raise ConfigError("proxyless-g trains alpha by gradient; use proxyless-r for "
                              "REINFORCE")
        super().__init__(**options)


@register_strategy("proxyless-r")
class ProxylessReinforce(ProxylessSearch):
    name = "proxyless-r"
    default_mode = "reinforce"

    def __init__(self, **options: Any) -> None:
        if options.get("mode", "reinforce") != "reinforce":
            raise ConfigError("proxyless-r is the REINFORCE mode; use proxyless-g for gradients")
        options["mode"] = "reinforce"
        super().__init__(**options)
