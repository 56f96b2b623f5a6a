"""LayerGraph evaluated with PyTorch in float64: the numerical reference exporters are tested on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from latbench.bench.export.graph import Layer, LayerGraph
from latbench.bench.ops import LEAKY_ALPHA
from latbench.errors import ExportError


def activation(x: Any, act: str, who: str = "reference", *, alpha: float = LEAKY_ALPHA,
               slope: Any = None, channel_axis: int = 1) -> Any:
    """`act` applied to the torch tensor `x` (`who` names the caller in the error); prelu's
    `slope` (one per channel) runs along `channel_axis`."""
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
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "tanh":
        return x.tanh()
    if act == "leakyrelu":
        return F.leaky_relu(x, alpha)
    if act == "mish":
        return F.mish(x)
    if act == "prelu":
        if slope is None:
            raise ExportError(f"{who}: prelu needs its slope weights")
        shape = [1] * x.dim()
        shape[channel_axis] = -1
        return x.where(x >= 0, x * slope.reshape(shape))
    raise ExportError(f"{who} has no activation {act!r}")


def _act(layer: Layer, y: Any, w: Mapping[str, Any], who: str) -> Any:
    a = layer.attrs
    return activation(y, a["act"], who, alpha=a.get("alpha", LEAKY_ALPHA), slope=w.get("slope"),
                      channel_axis=a.get("slope_axis", 1) % y.dim())


def apply_layer(layer: Layer, xs: list[Any], w: Mapping[str, Any], who: str = "reference"
                ) -> Any:
    """One layer on torch tensors `xs` with weights `w`, in their dtype: the one definition
    of what a LayerGraph layer computes, shared by the float64 reference and the .pt2 export
    (`who` names the caller in errors)."""
    import torch
    import torch.nn.functional as F

    a, op = layer.attrs, layer.op
    if op == "conv":
        kernel = (a["kernel"], a.get("kernel_w", a["kernel"]))
        padding = (a["pad"], a.get("pad_w", a["pad"]))
        y = F.conv2d(xs[0], w["weight"], w["bias"], a["stride"], padding, a.get("dilation", 1),
                     a["groups"])
        if tuple(w["weight"].shape[2:]) != kernel:
            raise ExportError(f"{who}: conv weight {tuple(w['weight'].shape)} is not {kernel}")
        return _act(layer, y, w, who)
    if op == "linear":
        return _act(layer, F.linear(xs[0].flatten(1), w["weight"], w["bias"]), w, who)
    if op == "tlinear":
        return _act(layer, F.linear(xs[0], w["weight"], w["bias"]), w, who)
    if op == "add":
        return _act(layer, xs[0] + xs[1], w, who)
    if op == "mul":
        return xs[0] * xs[1]
    if op == "act":
        return _act(layer, xs[0], w, who)
    if op == "pool":
        if a["pool"] == "avg":
            return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], count_include_pad=True)
        return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"])
    if op == "gpool":
        return xs[0].mean(dim=(2, 3), keepdim=True)
    if op == "concat":
        return torch.cat(xs, dim=a.get("axis", 1))
    if op == "bmm":
        return torch.matmul(xs[0], xs[1])
    if op == "softmax":
        return torch.softmax(xs[0], dim=-1)
    if op == "layernorm":
        return F.layer_norm(xs[0], xs[0].shape[-1:], w["scale"], w["bias"], a["eps"])
    if op == "transpose":
        return xs[0].permute(*a["perm"])
    if op == "cat_const":
        x = xs[0]
        token = w["value"].expand(x.shape[0], *w["value"].shape[1:])
        return torch.cat([token, x], dim=a["axis"])
    if op == "gather":
        return xs[0].select(a["axis"], a["index"])
    if op == "add_const":
        return xs[0] + w["value"]
    if op == "mul_const":
        return xs[0] * w["value"]
    if op == "convt":
        y = F.conv_transpose2d(xs[0], w["weight"], w["bias"], a["stride"], a["pad"],
                               a["out_pad"], a["groups"])
        return _act(layer, y, w, who)
    if op == "resize":
        if "size" in a:
            return F.interpolate(xs[0], size=a["size"], mode="nearest" if a["mode"] == "nearest"
                                 else "bilinear", **({} if a["mode"] == "nearest"
                                                     else {"align_corners": False}))
        if a["mode"] == "nearest":
            return F.interpolate(xs[0], scale_factor=a["scale"], mode="nearest")
        return F.interpolate(xs[0], scale_factor=a["scale"], mode="bilinear",
                             align_corners=False)
    if op == "pad":
        p = a["pad"]
        return F.pad(xs[0], (p, p, p, p), mode=a["mode"])
    if op == "slice":
        return xs[0].narrow(a["axis"], a["start"], a["end"] - a["start"])
    if op == "instnorm":
        return F.instance_norm(xs[0], weight=w["scale"], bias=w["bias"], eps=a["eps"])
    if op == "reduce":
        return xs[0].mean(dim=a["axes"], keepdim=True)
    if op == "reshape":
        return xs[0].reshape(a["shape"])
    if op == "shuffle":
        n, c, h, wd = xs[0].shape
        g = a["groups"]
        return xs[0].reshape(n, g, c // g, h, wd).transpose(1, 2).reshape(n, c, h, wd)
    raise ExportError(f"{who} has no layer op {op!r}")


def run_reference(graph: LayerGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    values = {name: torch.from_numpy(np.asarray(inputs[name], np.float64)) for name in graph.inputs}
    for layer in graph.layers:
        w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.weights.items()}
        values[layer.output] = apply_layer(layer, [values[i] for i in layer.inputs], w)
    return values[graph.output_name].numpy()
