"""Network sets for calibration and held-out evaluation, named by a short spec string.

`nasbench-macro:200,mobilenetv2:10,resnet:10` draws 200 random NAS-Bench-Macro architectures (a
search space: their kernels are known, the measured model is their chain of kernels) and 10
networks of each hand-built family (PyTorch modules exported to ONNX - with torch's default
exporter, as users export theirs, unless the legacy one is asked for - and split into kernels by
the ONNX parser; a runtime that does not run ONNX measures the same network, weights included,
converted by `bench.export.from_onnx` and written in its own format). A path to a model file
(.onnx, .tflite) or a folder holding any of them adds user models (family "onnx" or "tflite"):
a runtime measures those of the formats it runs.
Family exports are cached for the process (`_Exports`): a plan's kernel sets, its calibration
networks and held-out sets never export a network twice with the same exporter.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from latbench.bench.campaign import Subject
from latbench.bench.export.graph import LayerGraph
from latbench.bench.families import NetworkDef, list_families, sample_networks
from latbench.bench.ops import DTYPES, OpSpec
from latbench.bench.spaces import SPACES, Arch, SearchSpace, get_space
from latbench.errors import ConfigError, LatbenchError
from latbench.extras import available


def precision_key(key: str, precision: str) -> str:
    """A network's dataset key in a precision (an OpSpec dtype): a float32 key as it always
    was, others with "@int8" / "@float16" appended, so one dataset holds a network in several
    precisions (a kernel's key names its dtype already)."""
    return key if precision == "float32" else f"{key}@{precision}"


def split_precision_key(key: str) -> tuple[str, str]:
    """(key without its precision, precision) of a network key (`precision_key`)."""
    base, _, precision = key.rpartition("@")
    return (base, precision) if base and precision in DTYPES else (key, "float32")


def arch_subject(space: SearchSpace, arch: Arch, key: str | None = None,
                 precision: str = "float32") -> Subject:
    """A measurable network of a space in `precision`: a chain space's kernels as a chain
    graph (any runtime), a cell space's PyTorch model exported to ONNX and made that precision
    by `bench.export.quantize` (kernels kept for composition)."""
    key = key or precision_key(f"{space.name}:{space.encode(arch)}", precision)
    specs = [s.with_(dtype=precision) for s in space.ops(arch)]
    if space.is_chain:
        return Subject.chain(key, space.name, specs)
    export = functools.cache(lambda: space.to_onnx(arch))
    subject = Subject.onnx_model(key, space.name, functools.cache(
        lambda: _in_precision(export(), precision, key)), kernels=specs,
        convert=precision == "float32")
    if precision == "float32":
        return subject
    # other runtimes convert the float export, then make it that precision their own way
    return replace(subject, graph=lambda: replace(_converted_graph(export()), dtype=precision))


def _converted_graph(model: bytes) -> LayerGraph:
    from latbench.bench.export.from_onnx import onnx_to_graph

    return onnx_to_graph(model)


def _in_precision(model: bytes, precision: str, key: str) -> bytes:
    """A network's float32 ONNX export in `precision`, quantized as users quantize theirs:
    ops ONNX Runtime cannot quantize stay float (`strict=False`)."""
    from latbench.bench.export.quantize import in_precision

    return in_precision(model, precision, strict=False, what=f"network {key}")


def network_from_key(key: str, family: str = "") -> Subject | None:
    """A search-space network subject from its dataset key ("nasbench-macro:0123...", with
    its precision: "...@int8"), or None (hand-built families and user .onnx files cannot be
    rebuilt from a key)."""
    base, precision = split_precision_key(key)
    name, _, code = base.partition(":")
    if name not in SPACES or not code:
        return None
    try:
        space = get_space(name)
        return arch_subject(space, space.decode(code), key, precision)
    except (LatbenchError, ValueError, KeyError):
        return None


def _space_networks(name: str, count: int, rng: np.random.Generator,
                    exclude: Collection[str], precision: str = "float32") -> list[Subject]:
    space = get_space(name)
    available = space.size - sum(1 for key in exclude if key.startswith(f"{name}:")
                                 and split_precision_key(key)[1] == precision)
    if count > available:
        raise ConfigError(f"space {name} has only {available} architectures left to draw, "
                          f"asked for {count}")
    seen: dict[str, Subject] = {}
    while len(seen) < count:
        arch = space.sample(rng)
        key = precision_key(f"{name}:{space.encode(arch)}", precision)
        if key in seen or key in exclude:
            continue
        seen[key] = arch_subject(space, arch, key, precision)
    return list(seen.values())


class _Exports:
    """Family networks exported in this process, each once per exporter: the ONNX bytes of
    networks to be measured on disk in a temporary folder removed at exit (tens of MB per
    network - every calibration and held-out network of a run would not fit in memory), the
    kernel lists in memory. Plans, calibration networks and held-out sets built in one process
    share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._files: dict[tuple[NetworkDef, bool, str], Path] = {}
        self._kernels: dict[tuple[NetworkDef, bool, str], tuple[OpSpec, ...]] = {}

    def onnx(self, net: NetworkDef, dynamo: bool, precision: str = "float32") -> bytes:
        """The network's ONNX bytes in `precision` (the float32 export quantized or halved),
        exported on first use and kept on disk."""
        with self._lock:
            path = self._files.get((net, dynamo, precision))
            if path is None and precision == "float32":
                data = net.to_onnx(dynamo=dynamo)
                self._keep(net, dynamo, precision, data)
                return data
        if path is not None:
            return path.read_bytes()
        data = _in_precision(self.onnx(net, dynamo), precision, f"{net.family}:{net.name}")
        with self._lock:
            self._keep(net, dynamo, precision, data)
        return data

    def kernels(self, net: NetworkDef, dynamo: bool, keep: bool = False,
                precision: str = "float32") -> tuple[OpSpec, ...]:
        """The network's kernels as its export in `precision` splits; `keep` keeps the export
        for measuring too (a plan's kernel sets only need the kernels)."""
        from latbench.bench.kernels import onnx_to_kernels

        found = self._kernels.get((net, dynamo, precision))
        if found is None:
            with self._lock:
                path = self._files.get((net, dynamo, precision))
            if path is not None:
                data = path.read_bytes()
            elif precision == "float32":
                data = net.to_onnx(dynamo=dynamo)
            else:
                data = self.onnx(net, dynamo, precision)
            found = tuple(onnx_to_kernels(data))
            self._kernels[(net, dynamo, precision)] = found
            if keep and path is None and precision == "float32":
                with self._lock:
                    self._keep(net, dynamo, precision, data)
        return found

    def _keep(self, net: NetworkDef, dynamo: bool, precision: str, data: bytes) -> None:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="latbench-exports-")
        path = Path(self._folder.name) / f"{len(self._files)}.onnx"
        path.write_bytes(data)
        self._files[(net, dynamo, precision)] = path


_EXPORTS = _Exports()


def _family_networks(name: str, count: int, rng: np.random.Generator,
                     exclude: Collection[str], with_kernels: bool = False,
                     dynamo: bool = True, precision: str = "float32") -> list[Subject]:
    """`count` family networks none of which is in `exclude` (drawn past them: a held-out set
    asked for 3 ResNets, drawn with the seed the plan drew its 3 calibration ResNets with,
    had held none), exported with torch's default (dynamo) exporter as users export
    their models, or the legacy one (`dynamo=False`, several times faster); `with_kernels`
    exports and splits them now, so a dataset can keep their kernels for composition
    calibration. They are PyTorch modules: without torch this fails here, before anything is
    measured. In another `precision` the export is quantized (or halved) as a user's would
    be (`bench.export.quantize`) and split now whatever `with_kernels` says: a record's
    precision is its kernels' (`bench.platform.precision_of_kernels`)."""
    if not available("torch"):
        raise ConfigError(f"{name} networks are PyTorch modules and torch is not installed: "
                          "pip install 'latbench[torch]'")
    skip = {base.partition(":")[2] for base, at in map(split_precision_key, exclude)
            if at == precision and base.startswith(f"{name}:")}
    out = []
    for net in sample_networks(name, count, rng, skip):
        key = precision_key(f"{name}:{net.name}", precision)
        kernels = _EXPORTS.kernels(net, dynamo, keep=True, precision=precision) \
            if with_kernels or precision != "float32" else None
        subject = Subject.onnx_model(key, name, functools.partial(_EXPORTS.onnx, net,
                                                                  dynamo, precision),
                                     kernels, convert=precision == "float32")
        if precision != "float32":  # other runtimes convert the float export, then make
            # it that precision their own way (a quantized ONNX graph has no LayerGraph)
            subject = replace(subject, graph=functools.partial(_precision_graph, net,
                                                               dynamo, precision))
        out.append(subject)
    return out


def _precision_graph(net: NetworkDef, dynamo: bool, precision: str) -> LayerGraph:
    return replace(_converted_graph(_EXPORTS.onnx(net, dynamo)), dtype=precision)


def family_set_networks(spec: str) -> list[NetworkDef]:
    """The networks of a family kernel set "family:NAME:COUNT[:SEED]"."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] != "family" or parts[1] not in list_families():
        raise ConfigError(f"bad family kernel set {spec!r}: expected family:NAME:COUNT[:SEED] "
                          f"with NAME one of {', '.join(list_families())}")
    try:
        count, seed = int(parts[2]), int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        raise ConfigError(f"bad count or seed in {spec!r}") from None
    return sample_networks(parts[1], count, np.random.default_rng(seed))


def family_kernels(spec: str, dynamo: bool = False) -> list[OpSpec]:
    """Kernels of sampled family networks, for plans: "family:NAME:COUNT[:SEED]" (the ONNX
    export of each network split into kernels; duplicates once). The legacy exporter by
    default: it is several times faster, and both exporters' files split into the same kernels
    (tests/bench/test_network_sets.py checks it for every family)."""
    seen: dict[str, OpSpec] = {}
    for net in family_set_networks(spec):
        for kernel in _EXPORTS.kernels(net, dynamo):
            seen.setdefault(kernel.key(), kernel)
    return list(seen.values())


def space_kernels(name: str) -> list[OpSpec]:
    """A plan's `spaces` entry: a search space's layer kernels, or "family:NAME:COUNT"."""
    if name.startswith("family:"):
        return family_kernels(name)
    return get_space(name).layer_specs()


def model_suffixes() -> tuple[str, ...]:
    """File suffixes of every model format latbench reads (.onnx, .tflite)."""
    from latbench.bench.model_files import MODEL_FORMATS

    return tuple(s for fmt in MODEL_FORMATS.values() for s in fmt.suffixes)


def file_network(path: Path, kernels: Sequence[OpSpec] | None = None, key: str | None = None,
                 input_shape: Sequence[str] = ()) -> Subject:
    """A model file as a network subject: key "FORMAT:FILENAME" (family FORMAT, e.g.
    "onnx", "tflite"), measured by every runtime that runs its format; `input_shape`
    ("NAME=1x3x224x224" texts) gives inputs with symbolic dims the shape to measure at."""
    from latbench.bench.model_files import MODEL_FORMATS, model_format, parse_input_shapes

    fmt = model_format(path)
    make: Callable[[], bytes] = path.read_bytes
    shapes = parse_input_shapes(input_shape)
    if shapes and fmt != "onnx":
        raise ConfigError(f"{path}: latbench gives input shapes to ONNX models only; export "
                          f"the {fmt} model with fixed input dims to measure it")
    if shapes:
        make = functools.partial(_with_input_shapes, path, shapes)
    return Subject.model_file(key or f"{fmt}:{path.name}", fmt, make,
                              MODEL_FORMATS[fmt].suffixes[0], kernels)


def _with_input_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> bytes:
    """An ONNX model's bytes with the given inputs' dims written in (a shape without its batch
    dimension gets batch 1), so the runtime runs it at that shape."""
    import onnx

    model = onnx.load_from_string(path.read_bytes())
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            given = shapes[value.name]
            given = (1, *given) if len(given) == len(dims) - 1 else given
            if len(given) != len(dims):
                raise ConfigError(f"{path}: input {value.name!r} has {len(dims)} dims, the "
                                  f"shape given {len(given)}")
            for dim, size in zip(dims, given, strict=True):
                dim.Clear()
                dim.dim_value = size
    return model.SerializeToString()


def _file_networks(path: Path) -> list[Subject]:
    suffixes = model_suffixes()
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in suffixes) \
        if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"no model files ({', '.join(suffixes)}) in {path}")
    return [file_network(f) for f in files]


def resolve_networks(spec: str, seed: int = 0, exclude: Collection[str] = (),
                     with_kernels: bool = False, dynamo: bool = True,
                     precision: str = "float32") -> list[Subject]:
    """Network subjects for a spec string (see the module docstring), skipping `exclude` keys
    (e.g. the networks a predictor was calibrated on); `with_kernels` splits family networks
    into kernels now (for calibration networks); `dynamo=False` exports family networks with
    torch's legacy exporter instead of the default one. `precision` (an OpSpec dtype) is what
    space and family networks compute in (their keys name it: `precision_key`); model files
    are measured as they are."""
    rng = np.random.default_rng(seed)
    exclude = set(exclude)
    suffixes = model_suffixes()
    networks: list[Subject] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.suffix.lower() in suffixes or path.is_dir():
            if not path.exists():
                raise ConfigError(f"network file {item} does not exist")
            networks.extend(_file_networks(path))
            continue
        name, _, count_text = item.partition(":")
        try:
            count = int(count_text) if count_text else 10
        except ValueError:
            raise ConfigError(f"bad network count in {item!r}: expected NAME:COUNT") from None
        if count < 1:
            raise ConfigError(f"network count must be >= 1 in {item!r}")
        if name in SPACES:
            networks.extend(_space_networks(name, count, rng, exclude, precision))
        elif name in list_families():
            networks.extend(_family_networks(name, count, rng, exclude, with_kernels, dynamo,
                                             precision))
        else:
            raise ConfigError(f"unknown network set {name!r}; known: "
                              f"{', '.join(sorted(SPACES) + list_families())}, "
                              f"or a path to model files ({', '.join(suffixes)}) or a folder "
                              "of them")
    if not networks:
        raise ConfigError(f"network spec {spec!r} names no networks")
    return networks
