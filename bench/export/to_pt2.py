"""LayerGraph -> a PyTorch exported program (`torch.export`, a .pt2 file) for torch-cuda.

The graph is walked once by a small PyTorch module holding its float32 weights as buffers and
captured with `torch.export.export` into a static graph (TorchScript, the older format, is
deprecated), so the device needs only `torch.export.load`. The input shapes travel inside the
file (extra file `latbench.json`), so the agent builds inputs without knowing latbench's graphs.
The exported program is captured on the CPU; the agent moves it to the GPU. Serialised exported
programs are versioned: the device's torch should be the host's version.
"""

from __future__ import annotations

import io
import json
from typing import Any

from bench.export.graph import LayerGraph
from latbench.errors import ExportError

EXTRA_FILE = "latbench.json"


def _activation(x: Any, act: str) -> Any:
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
    raise ExportError(f"pt2 export has no activation {act!r}")


def graph_module(graph: LayerGraph) -> Any:
    """A torch.nn.Module computing `graph` in float32 (weights as buffers)."""
    import torch
    import torch.nn.functional as F

    class GraphModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for index, layer in enumerate(graph.layers):
                for name, value in layer.weights.items():
                    self.register_buffer(f"l{index}_{name}",
                                         torch.from_numpy(value.astype("float32")))

        def forward(self, *inputs: Any) -> Any:
            values = dict(zip(graph.inputs, inputs, strict=True))
            for index, layer in enumerate(graph.layers):
                a = layer.attrs
                xs = [values[i] for i in layer.inputs]

                def w(name: str, index: int = index) -> Any:
                    return getattr(self, f"l{index}_{name}")

                if layer.op == "conv":
                    y = _activation(F.conv2d(xs[0], w("weight"), w("bias"), a["stride"],
                                             a["pad"], 1, a["groups"]), a["act"])
                elif layer.op == "linear":
                    y = _activation(F.linear(xs[0].flatten(1), w("weight"), w("bias")),
                                    a["act"])
                elif layer.op == "add":
                    y = _activation(xs[0] + xs[1], a["act"])
                elif layer.op == "mul":
                    y = xs[0] * xs[1]
                elif layer.op == "act":
                    y = _activation(xs[0], a["act"])
                elif layer.op == "pool":
                    if a["pool"] == "avg":
                        y = F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"],
                                         count_include_pad=True)
                    else:
                        y = F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"])
                elif layer.op == "gpool":
                    y = xs[0].mean(dim=(2, 3), keepdim=True)
                elif layer.op == "concat":
                    y = torch.cat(xs, dim=1)
                else:
                    raise ExportError(f"pt2 export has no layer op {layer.op!r}")
                values[layer.output] = y
            return values[graph.output_name]

    return GraphModule().eval()


def to_pt2(graph: LayerGraph) -> bytes:
    """Exported program of `graph` with its input shapes in the extra file latbench.json."""
    import torch

    module = graph_module(graph)
    example = tuple(torch.from_numpy(x) for x in graph.random_inputs(0).values())
    try:
        program = torch.export.export(module, example)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"torch.export cannot capture the graph: {exc}") from exc
    meta = {"input_shapes": [list(graph.shapes[name]) for name in graph.inputs],
            "input_names": list(graph.inputs), "torch": torch.__version__}
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={EXTRA_FILE: json.dumps(meta)})
    return buffer.getvalue()
