"""Optional parts of latbench and the install extra that brings each.

The core (`pip install latbench`) reads datasets, fits predictors, predicts ONNX models and
measures with ONNX Runtime on the local CPU. PyTorch (families, search-space networks, supernet
search), LiteRT, SSH fleets and plots come with extras. The command line turns an ImportError of
one of them into one line naming the extra to install; reports are written without their plots
when matplotlib is missing, rather than failing after the measurements.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

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


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The one-line advice for an ImportError of an optional package (None for any other)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_OF:
        return None
    return (f"this needs {top}, which is not installed: pip install "
            f"'latbench[{EXTRA_OF[top]}]'")


def can_plot(path: Path) -> bool:
    """True when plots can be drawn; else False and a warning naming the file that is not
    written: a report keeps its numbers rather than failing after the measurements."""
    if available("matplotlib"):
        return True
    log.warning("%s not drawn: plots need matplotlib (pip install 'latbench[plots]')", path)
    return False
