"""ONNX Runtime (CPU execution provider) runner: ONNX export + the agent's onnxruntime backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import AgentRunner, register_runner
from latbench.device_agents import RuntimeNeeds

# `uname -m` of the CPUs whose ONNX Runtime CPU provider computes float16 itself.
ARM64_MACHINES = frozenset({"aarch64", "arm64"})


@register_runner("onnxruntime")
class OnnxRuntimeRunner(AgentRunner):
    """Times ONNX models with onnxruntime's CPUExecutionProvider on the device."""

    needs = RuntimeNeeds(modules=("onnxruntime",))
    settings_fields = (("graph_opt", "opt"),)
    formats = (".onnx",)
    blocked_layout = True  # MLAS's NCHWc convolutions and pooling

    @classmethod
    def kernel_refusal(cls, precision: str, facts: Mapping[str, Any]) -> str | None:
        """float16 kernels only where the CPU provider computes in float16 (ARM64). Elsewhere it
        casts around every convolution and matrix product and picks from each node's neighbours
        which of the rest run in float16, so a kernel timed alone computes differently from the
        same kernel inside a network (docs/predictors.md, *Accuracy per platform*)."""
        machine = str(facts.get("machine") or "")
        if precision != "float16" or not machine or machine.lower() in ARM64_MACHINES:
            return None
        return (f"ONNX Runtime's CPU provider has no float16 convolutions or matrix products "
                f"on {machine}: it casts around them and chooses per node from its neighbours "
                "what runs in float16, so kernels timed alone do not add up to networks; "
                "measure fp32 or int8 kernels there, fp16 kernels on an ARM64 device (a "
                "network of your own can still be timed whole with `bench networks`)")

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_onnx import to_onnx

        return to_onnx(graph)
