"""LiteRT (TensorFlow Lite) runner: TFLite export + the agent's litert backend.

On the device the agent uses ai_edge_litert, or tflite_runtime where only that is installed;
delegate "xnnpack" is LiteRT's default CPU path, "builtin" its reference kernels without default
delegates.
"""

from __future__ import annotations

from dataclasses import dataclass

from latbench.bench.export.graph import LayerGraph
from latbench.bench.runners.base import AgentRunner, register_runner
from latbench.device_agents import RuntimeNeeds


@register_runner("litert")
class LiteRTRunner(AgentRunner):
    """Times TFLite models with the LiteRT interpreter on the device."""

    needs = RuntimeNeeds(modules=("ai_edge_litert", "tflite_runtime"))
    settings_fields = (("delegate", "delegate"),)
    formats = (".tflite",)
    split_pool_delegates = frozenset({"builtin"})  # XNNPACK runs everything in one pool

    def export(self, graph: LayerGraph) -> bytes:
        from latbench.bench.export.to_tflite import to_tflite

        return to_tflite(graph)


@dataclass(frozen=True)
class Delegation:
    """Which operators of a model the XNNPACK delegate took and which it left to the builtin
    kernels (names in execution order). LiteRT falls back silently when an operator fails one
    of the delegate's checks (an int8 operator it has no kernel for, a requantization scale out
    of its range), so a measurement labelled "xnnpack" may time builtin kernels."""

    delegated: tuple[str, ...]
    builtin: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.builtin


def xnnpack_delegation(model: bytes, threads: int = 1) -> Delegation:
    """The operators of TFLite `model` that LiteRT's default XNNPACK delegate runs, here.

    Each DELEGATE node of the interpreter's plan lists the tensors its partition reads and
    writes; the operators between them are the delegated ones."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    details = interpreter._get_ops_details()  # noqa: SLF001 - the plan's nodes, delegates too
    ops = [d for d in details if d["op_name"] != "DELEGATE"]
    producer = {int(t): d for d in ops for t in d["outputs"]}
    covered: set[int] = set()
    for node in details:
        if node["op_name"] != "DELEGATE":
            continue
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["index"] in covered:
                continue
            covered.add(op["index"])
            stack += [int(t) for t in op["inputs"] if t >= 0 and int(t) not in boundary]
    return Delegation(tuple(d["op_name"] for d in ops if d["index"] in covered),
                      tuple(d["op_name"] for d in ops if d["index"] not in covered))
