"""LiteRT (TensorFlow Lite) runner: TFLite export + the agent's litert backend.

On the device the agent uses ai_edge_litert, or tflite_runtime where only that is installed;
delegate "xnnpack" is LiteRT's default CPU path, "builtin" its reference kernels without default
delegates.
"""

from __future__ import annotations

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import AgentRunner, register_runner
from latbench.device_agents import RuntimeNeeds


@register_runner("litert")
class LiteRTRunner(AgentRunner):
    """Times TFLite models with the LiteRT interpreter on the device."""

    needs = RuntimeNeeds(modules=("ai_edge_litert", "tflite_runtime"))
    settings_fields = (("delegate", "delegate"),)
    formats = (".tflite",)

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_tflite import to_tflite

        return to_tflite(graph)
