"""LayerGraph evaluated with PyTorch in float64: the numerical reference exporters are tested on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from latbench.bench.export.graph import Layer, LayerGraph
from latbench.errors import ExportError


def activation(x: Any, act: str, who: str = "reference") -> Any:
    """`act` applied to the torch tensor `x` (`who` names the caller in the error)."""
    import torch.nn.functional as F

    if act == "none":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    if act == "hswish":
        return F.hardswish(x)
    if act == "hsigmoid":
        return F.hardsigmoid(x)
    if act == "sigmoid":
        return x.sigmoid()
    if act == "swish":
        return F.silu(x)
    raise ExportError(f"{who} has no activation {act!r}")


def apply_layer(layer: Layer, xs: list[Any], w: Mapping[str, Any], who: str = "reference"
                ) -> Any:
    """One layer on torch tensors `xs` with weights `w`, in their dtype: the one definition
    of what a LayerGraph layer computes, shared by the float64 reference and the .pt2 export
    (`who` names the caller in errors)."""
    import torch
    import torch.nn.functional as F

    a = layer.attrs
    if layer.op == "conv":
        y = F.conv2d(xs[0], w["weight"], w["bias"], a["stride"], a["pad"], 1, a["groups"])
        return activation(y, a["act"], who)
    if layer.op == "linear":
        return activation(F.linear(xs[0].flatten(1), w["weight"], w["bias"]), a["act"], who)
    if layer.op == "add":
        return activation(xs[0] + xs[1], a["act"], who)
    if layer.op == "mul":
        return xs[0] * xs[1]
    if layer.op == "act":
        return activation(xs[0], a["act"], who)
    if layer.op == "pool":
        if a["pool"] == "avg":
            return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], count_include_pad=True)
        return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"])
    if layer.op == "gpool":
        return xs[0].mean(dim=(2, 3), keepdim=True)
    if layer.op == "concat":
        return torch.cat(xs, dim=1)
    raise ExportError(f"{who} has no layer op {layer.op!r}")


def run_reference(graph: LayerGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    values = {name: torch.from_numpy(np.asarray(inputs[name], np.float64)) for name in graph.inputs}
    for layer in graph.layers:
        w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.weights.items()}
        values[layer.output] = apply_layer(layer, [values[i] for i in layer.inputs], w)
    return values[graph.output_name].numpy()
