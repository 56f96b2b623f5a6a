"""latbench: on-device latency of neural networks - measure, predict, search."""

from __future__ import annotations

__version__ = "0.1.0"
