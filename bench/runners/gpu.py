"""GPU runners: ONNX Runtime's CUDA execution provider and PyTorch on CUDA, through the agent.

`onnxruntime-cuda` times ONNX models with inputs and outputs bound on the GPU (IO binding; ORT
synchronises the stream at the end of each run, so the host clock sees finished work).
`torch-cuda` times PyTorch exported programs (torch.export, .pt2) with CUDA events recorded
around the forward pass: the GPU's own clock, without host-side launch jitter. Both declare that
they need CUDA, so they are used only where a CUDA device is present: `local_device()` lists
them only then, and on a device without one the agent answers "unavailable: no CUDA device",
raised as a RunnerError naming the runtime and the device (see `require_runtime`).
"""

from __future__ import annotations

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import AgentRunner, register_runner
from latbench.bench.runners.onnxruntime import OnnxRuntimeRunner
from latbench.device_agents import RuntimeNeeds


@register_runner("onnxruntime-cuda")
class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    """ONNX models on a CUDA GPU with onnxruntime(-gpu)'s CUDAExecutionProvider."""

    needs = RuntimeNeeds(modules=("onnxruntime",), cuda=True)
    blocked_layout = False  # the CUDA provider has no NCHWc conversions


@register_runner("torch-cuda")
class TorchCudaRunner(AgentRunner):
    """PyTorch exported programs on a CUDA GPU, timed with torch.cuda.Event."""

    needs = RuntimeNeeds(modules=("torch",), cuda=True)
    formats = (".pt2",)
    precisions = ("float32",)  # the exported program computes in float32 whatever the graph

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_pt2 import to_pt2

        return to_pt2(graph)
