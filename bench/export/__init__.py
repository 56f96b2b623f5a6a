"""Model generation: specs and chains of specs -> ONNX and TFLite bytes."""

from __future__ import annotations

from latbench.bench.export.graph import GraphBuilder, LayerGraph, chain_graph, emit_spec, spec_graph

__all__ = ["GraphBuilder", "LayerGraph", "chain_graph", "emit_spec", "spec_graph"]
