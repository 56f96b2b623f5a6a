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

from latbench.bench.export.graph import LayerGraph
from latbench.bench.export.reference import apply_layer
from latbench.errors import ExportError

EXTRA_FILE = "latbench.json"


def graph_module(graph: LayerGraph) -> Any:
    """A torch.nn.Module computing `graph` in float32 (weights as buffers)."""
    import torch

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
                w = {name: getattr(self, f"l{index}_{name}") for name in layer.weights}
                values[layer.output] = apply_layer(layer, [values[i] for i in layer.inputs], w,
                                                   "pt2 export")
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
