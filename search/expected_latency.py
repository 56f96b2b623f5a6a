"""ExpectedLatency: the latency table as a differentiable torch module for supernet training.

E[lat] = fixed + sum_l softmax(alpha_l) . T_l in ms, where T_l is layer l's row of a
`LatencyTable`; its gradient in alpha is what pulls a supernet's architecture parameters
towards faster candidates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latbench.errors import SearchError
from latbench.search.latency import LatencyTable, masked_softmax, padded_table


class ExpectedLatency(nn.Module):
    """E[lat] = fixed + sum_l softmax(alpha_l) . T_l in ms, differentiable in alpha.

    `alpha` is (n_layers, max candidates); entries past a layer's candidate count are masked
    out (layers may have different numbers of candidates).
    """

    def __init__(self, table: LatencyTable) -> None:
        super().__init__()
        ms, mask = padded_table(table)
        self.space = table.space
        self.register_buffer("fixed_ms", torch.tensor(float(table.fixed_ms),
                                                      dtype=torch.float64))
        self.register_buffer("layer_ms", torch.from_numpy(ms))
        self.register_buffer("mask", torch.from_numpy(mask))

    def forward(self, alpha: Any) -> Any:
        if alpha.shape != self.layer_ms.shape:
            raise SearchError(f"alpha of shape {tuple(alpha.shape)} given to a latency table of "
                              f"shape {tuple(self.layer_ms.shape)} ({self.space})")
        probs = masked_softmax(alpha, self.mask)
        return self.fixed_ms.to(alpha.dtype) + (probs * self.layer_ms.to(alpha.dtype)).sum()
