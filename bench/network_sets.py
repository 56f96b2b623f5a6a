"""Network sets for calibration and held-out evaluation, named by a short spec string.

`nasbench-macro:200,mobilenetv2:10,resnet:10` draws 200 random NAS-Bench-Macro architectures (a
search space: their kernels are known, the measured model is their chain of kernels) and 10
networks of each hand-built family (PyTorch modules exported to ONNX, split into kernels by the
ONNX parser). A path to an .onnx file or a folder of them adds user models (family "onnx").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from latbench.bench.campaign import Subject
from latbench.bench.families import NetworkDef, list_families, sample_networks
from latbench.bench.ops import OpSpec
from latbench.bench.spaces import SPACES, Arch, SearchSpace, get_space
from latbench.errors import ConfigError, LatbenchError
from latbench.extras import available


def arch_subject(space: SearchSpace, arch: Arch, key: str | None = None) -> Subject:
    """A measurable network of a space: a chain space's kernels as a chain graph (any runtime),
    a cell space's PyTorch model exported to ONNX (kernels kept for composition)."""
    key = key or f"{space.name}:{space.encode(arch)}"
    if space.is_chain:
        return Subject.chain(key, space.name, space.ops(arch))
    return Subject.onnx_model(key, space.name, functools.cache(lambda: space.to_onnx(arch)),
                              kernels=space.ops(arch))


def network_from_key(key: str, family: str = "") -> Subject | None:
    """A search-space network subject from its dataset key ("nasbench-macro:0123..."), or None
    (hand-built families and user .onnx files cannot be rebuilt from a key)."""
    name, _, code = key.partition(":")
    if name not in SPACES or not code:
        return None
    try:
        space = get_space(name)
        return arch_subject(space, space.decode(code), key)
    except (LatbenchError, ValueError, KeyError):
        return None


def _space_networks(name: str, count: int, rng: np.random.Generator,
                    exclude: Collection[str]) -> list[Subject]:
    space = get_space(name)
    available = space.size - sum(1 for key in exclude if key.startswith(f"{name}:"))
    if count > available:
        raise ConfigError(f"space {name} has only {available} architectures left to draw, "
                          f"asked for {count}")
    seen: dict[str, Subject] = {}
    while len(seen) < count:
        arch = space.sample(rng)
        key = f"{name}:{space.encode(arch)}"
        if key in seen or key in exclude:
            continue
        seen[key] = arch_subject(space, arch, key)
    return list(seen.values())


def _family_networks(name: str, count: int, rng: np.random.Generator,
                     exclude: Collection[str], with_kernels: bool = False) -> list[Subject]:
    """Family networks; `with_kernels` exports and splits them now, so a dataset can keep
    their kernels for composition calibration. They are PyTorch modules: without torch this
    fails here, before anything is measured."""
    from latbench.bench.kernels import onnx_to_kernels

    if not available("torch"):
        raise ConfigError(f"{name} networks are PyTorch modules and torch is not installed: "
                          "pip install 'latbench[torch]'")
    out = []
    for net in sample_networks(name, count, rng):
        key = f"{name}:{net.name}"
        if key not in exclude:
            make = _export_once(net)
            kernels = onnx_to_kernels(make()) if with_kernels else None
            out.append(Subject.onnx_model(key, name, make, kernels))
    return out


def family_kernels(spec: str) -> list[OpSpec]:
    """Kernels of sampled family networks, for plans: "family:NAME:COUNT[:SEED]" (the ONNX
    export of each network split into kernels; duplicates once)."""
    from latbench.bench.kernels import onnx_to_kernels

    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] != "family" or parts[1] not in list_families():
        raise ConfigError(f"bad family kernel set {spec!r}: expected family:NAME:COUNT[:SEED] "
                          f"with NAME one of {', '.join(list_families())}")
    try:
        count, seed = int(parts[2]), int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        raise ConfigError(f"bad count or seed in {spec!r}") from None
    seen: dict[str, OpSpec] = {}
    for net in sample_networks(parts[1], count, np.random.default_rng(seed)):
        for kernel in onnx_to_kernels(net.to_onnx()):
            seen.setdefault(kernel.key(), kernel)
    return list(seen.values())


def space_kernels(name: str) -> list[OpSpec]:
    """A plan's `spaces` entry: a search space's layer kernels, or "family:NAME:COUNT"."""
    if name.startswith("family:"):
        return family_kernels(name)
    return get_space(name).layer_specs()


def _export_once(net: NetworkDef) -> Callable[[], bytes]:
    """Export on first use (export is the slow part of preparing a family network)."""
    return functools.cache(net.to_onnx)


def _file_networks(path: Path) -> list[Subject]:
    files = sorted(path.glob("*.onnx")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"no .onnx files in {path}")
    return [Subject.onnx_model(f"onnx:{f.name}", "onnx", f.read_bytes) for f in files]


def resolve_networks(spec: str, seed: int = 0, exclude: Collection[str] = (),
                     with_kernels: bool = False) -> list[Subject]:
    """Network subjects for a spec string (see the module docstring), skipping `exclude` keys
    (e.g. the networks a predictor was calibrated on); `with_kernels` splits family networks
    into kernels now (for calibration networks)."""
    rng = np.random.default_rng(seed)
    exclude = set(exclude)
    networks: list[Subject] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if item.endswith(".onnx") or path.is_dir():
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
            networks.extend(_space_networks(name, count, rng, exclude))
        elif name in list_families():
            networks.extend(_family_networks(name, count, rng, exclude, with_kernels))
        else:
            raise ConfigError(f"unknown network set {name!r}; known: "
                              f"{', '.join(sorted(SPACES) + list_families())}, "
                              "or a path to .onnx files")
    if not networks:
        raise ConfigError(f"network spec {spec!r} names no networks")
    return networks
