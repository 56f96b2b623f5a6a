"""ONNX Runtime (CPU execution provider) runner: ONNX export + the agent's onnxruntime backend."""

from __future__ import annotations

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import AgentRunner, register_runner
from latbench.device_agents import RuntimeNeeds


@register_runner("onnxruntime")
class OnnxRuntimeRunner(AgentRunner):
    """Times ONNX models with onnxruntime's CPUExecutionProvider on the device."""

    needs = RuntimeNeeds(modules=("onnxruntime",))
    settings_fields = (("graph_opt", "opt"),)
    formats = (".onnx",)
    blocked_layout = True  # MLAS's NCHWc convolutions and pooling

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_onnx import to_onnx

        return to_onnx(graph)
