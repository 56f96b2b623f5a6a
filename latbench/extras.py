"""Optional parts of latbench and the install extra that brings each.

The core (`pip install latbench`) reads datasets, fits predictors, predicts ONNX models and
measures with ONNX Runtime on the local CPU. PyTorch (families, search-space networks, supernet
search), LiteRT, SSH fleets and plots come with extras; code that needs one asks `require`,
which names the extra to install instead of failing with an ImportError traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from latbench.errors import ConfigError

# importable module -> the extra that installs it
EXTRA_OF = {
    "torch": "torch",
    "onnxscript": "torch",
    "ai_edge_litert": "litert",
    "flatbuffers": "litert",
    "paramiko": "fleet",
    "matplotlib": "plots",
}


def available(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, what: str) -> ModuleType:
    """Import `module` for `what` ("plots", "SSH devices", ...), or raise a ConfigError naming
    the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise
        extra = EXTRA_OF.get(module.split(".")[0], "all")
        raise ConfigError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                          f"pip install 'latbench[{extra}]'") from None
