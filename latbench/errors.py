"""One exception hierarchy for latbench.

Every error names the thing that failed (a spec key, a file, an op type, a device), so the CLI can
print it as one line and exit non-zero without a traceback.
"""

from __future__ import annotations


class LatbenchError(Exception):
    """Base of every error latbench raises on purpose."""


class ConfigError(LatbenchError):
    """A setting, flag, plan file or inventory entry is invalid."""


class SpecError(LatbenchError):
    """An OpSpec is malformed (unknown kind, impossible shape, bad key)."""


class ExportError(LatbenchError):
    """A model could not be generated for a spec or network."""


class TransportError(LatbenchError):
    """A device could not be reached, or a command or file transfer on it failed."""


class AgentError(LatbenchError):
    """The on-device agent failed or returned something that is not its JSON protocol."""


class RunnerError(LatbenchError):
    """A runtime could not load or run a model."""


class ParseError(LatbenchError):
    """Raw output of a tool or a file could not be parsed."""


class DatasetError(LatbenchError):
    """A latency dataset is missing, empty or inconsistent."""


class PredictorError(LatbenchError):
    """A predictor could not be fitted, saved or loaded."""


class PlatformError(LatbenchError):
    """A dataset or predictor was asked for a platform (device, runtime, delegate, precision,
    threads) it does not hold, or for one of several without saying which."""


class UnknownKernelError(PredictorError):
    """A predictor was asked about a kernel kind it has no model for."""


class UnsupportedModelError(LatbenchError):
    """An ONNX model holds operators latbench cannot map to kernels."""


class SearchError(LatbenchError):
    """A search space or strategy was misused, or no architecture meets the constraints."""
