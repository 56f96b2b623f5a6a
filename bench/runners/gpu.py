"""GPU runners: ONNX Runtime's CUDA execution provider and PyTorch on CUDA, through the agent.

`onnxruntime-cuda` times ONNX models with inputs and outputs bound on the GPU (IO binding; ORT
synchronises the stream at the end of each run, so the host clock sees finished work).
`torch-cuda` times PyTorch exported programs (torch.export, .pt2) with CUDA events recorded
around the forward pass: the GPU's own clock, without host-side launch jitter. Both are used
only where a CUDA device is present: `local_device()` lists them only then, and on a device
without one the agent answers "unavailable: no CUDA device", raised here as a RunnerError naming
the runtime and the device.
"""

from __future__ import annotations

from collections.abc import Sequence

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import (
    AgentRunner,
    BatchResult,
    ModelFile,
    RunSettings,
    register_runner,
)
from latbench.device_agents import Device, LocalTransport
from latbench.device_agents.agent.latbench_agent import cuda_unavailable
from latbench.errors import RunnerError

GPU_RUNTIMES = ("onnxruntime-cuda", "torch-cuda")


def require_runtime(device: Device, runtime: str) -> None:
    """RunnerError when a GPU `runtime` is not usable on `device`, saying why (on this machine:
    no CUDA device node, or the runtime's module missing)."""
    if runtime not in GPU_RUNTIMES or runtime in device.runtimes:
        return
    reason = cuda_unavailable(runtime) if isinstance(device.transport, LocalTransport) else None
    raise RunnerError(f"{reason or f'runtime {runtime} unavailable'} on device {device.name} "
                      f"(it has: {', '.join(device.runtimes) or 'none'})")


class _GpuRunner(AgentRunner):
    delegates = ("xnnpack", "builtin")

    def measure(self, device: Device, models: Sequence[ModelFile],
                settings: RunSettings | None = None, timeout_s: float = 600.0) -> BatchResult:
        require_runtime(device, self.name)
        return super().measure(device, models, settings, timeout_s)


@register_runner("onnxruntime-cuda")
class OnnxRuntimeCudaRunner(_GpuRunner):
    """ONNX models on a CUDA GPU with onnxruntime(-gpu)'s CUDAExecutionProvider."""

    suffix = ".onnx"

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_onnx import to_onnx

        return to_onnx(graph)


@register_runner("torch-cuda")
class TorchCudaRunner(_GpuRunner):
    """PyTorch exported programs on a CUDA GPU, timed with torch.cuda.Event."""

    suffix = ".pt2"

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_pt2 import to_pt2

        return to_pt2(graph)
