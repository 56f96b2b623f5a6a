"""LayerGraph evaluated with PyTorch in float64: the numerical reference exporters are tested on."""

from __future__ import annotations

import numpy as np

from bench.export.graph import LayerGraph
from latbench.errors import ExportError


def _activation(x, act: str):
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
    raise ExportError(f"reference has no activation {act!r}")


def run_reference(graph: LayerGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    values = {name: torch.from_numpy(np.asarray(inputs[name], np.float64)) for name in graph.inputs}
    for layer in graph.layers:
        a = layer.attrs
        xs = [values[i] for i in layer.inputs]
        w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.weights.items()}
        if layer.op == "conv":
            y = F.conv2d(xs[0], w["weight"], w["bias"], a["stride"], a["pad"], 1, a["groups"])
            y = _activation(y, a["act"])
        elif layer.op == "linear":
            y = _activation(F.linear(xs[0].flatten(1), w["weight"], w["bias"]), a["act"])
        elif layer.op == "add":
            y = _activation(xs[0] + xs[1], a["act"])
        elif layer.op == "mul":
            y = xs[0] * xs[1]
        elif layer.op == "act":
            y = _activation(xs[0], a["act"])
        elif layer.op == "pool":
            if a["pool"] == "avg":
                y = F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], count_include_pad=True)
            else:
                y = F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"])
        elif layer.op == "gpool":
            y = xs[0].mean(dim=(2, 3), keepdim=True)
        elif layer.op == "concat":
            y = torch.cat(xs, dim=1)
        else:
            raise ExportError(f"reference has no layer op {layer.op!r}")
        values[layer.output] = y
    return values[graph.output_name].numpy()
