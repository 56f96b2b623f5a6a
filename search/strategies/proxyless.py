"""ProxylessNAS strategies: a supernet trained with a latency term, then the derived network.

`proxyless-g` trains architecture parameters by gradient (two-path binary gates; mode="full"
gives the DARTS-style weighted sum for comparison), `proxyless-r` by REINFORCE. The search data
(`context.data`, digits by default) trains the supernet; the result's accuracy is the derived
network's test accuracy on that data, and its module is the trained network. Under torchrun
every rank trains its shard (`context.dist_info`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from latbench.bench.spaces.base import SearchSpace
from latbench.errors import ConfigError
from latbench.search.latency import LatencyTable
from latbench.search.strategies.base import (
    SearchContext,
    SearchResult,
    Strategy,
    register_strategy,
)


class ProxylessSearch(Strategy):
    """A supernet search; the options are `search.supernet.SupernetConfig` fields (its seed
    comes from the context)."""

    trains = True
    accuracy_sources = ()
    epochs_option = "epochs"
    distributed = True
    default_mode = "two_path"

    def __init__(self, **options: Any) -> None:
        from latbench.search.supernet import SupernetConfig

        self.config = SupernetConfig(**{"mode": self.default_mode, **options})

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        from latbench.search.supernet import SupernetConfig

        return tuple(f.name for f in fields(SupernetConfig) if f.name != "seed")

    def search(self, space: SearchSpace, table: LatencyTable, accuracy: Any,
               budget_ms: float, context: SearchContext | None = None) -> SearchResult:
        from dataclasses import replace

        from latbench.search.data import load_data
        from latbench.search.supernet import search_supernet

        context = context or SearchContext()
        config = replace(self.config, seed=context.seed)
        data = load_data(context.data, space.input_shape[-1], config.seed)
        run = search_supernet(space, table, data, budget_ms, config, context.progress,
                              context.dist_info)
        history = [{**h, "accuracy": h["val_accuracy"]} for h in run.history]
        return SearchResult(self.name, run.arch_text, run.test_accuracy, run.predicted_ms,
                            float(budget_ms), run.sampled_paths, run.sampled_paths, history, 0,
                            run.module,
                            info={"mode": run.mode, "expected_ms": run.expected_ms,
                                  "repaired_to_budget": run.repaired, "data": data.name,
                                  "seconds": run.seconds})


@register_strategy("proxyless-g")
class ProxylessGradient(ProxylessSearch):
    default_mode = "two_path"

    def __init__(self, **options: Any) -> None:
        if options.get("mode", "two_path") == "reinforce":
            raise ConfigError("proxyless-g trains alpha by gradient; use proxyless-r for "
                              "REINFORCE")
        super().__init__(**options)


@register_strategy("proxyless-r")
class ProxylessReinforce(ProxylessSearch):
    default_mode = "reinforce"

    def __init__(self, **options: Any) -> None:
        if options.get("mode", "reinforce") != "reinforce":
            raise ConfigError("proxyless-r is the REINFORCE mode; use proxyless-g for gradients")
        super().__init__(**options)
