"""What every search space offers: sample, mutate, kernels, PyTorch model, string encoding.

A space is a torch-free description (bench measures and predicts from its kernels without
torch); the methods building PyTorch modules import their builder modules when called.

Spaces here are layer-wise: a fixed prefix and suffix of kernels around searchable layers, each
layer choosing one candidate (a list of kernels, empty for a skipped layer). That makes
latency additive per (layer, candidate), which is what LatencyTable relies on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from latbench.bench.ops import OpSpec
from latbench.errors import SearchError
from latbench.registry import Registry


@dataclass(frozen=True)
class Arch:
    """One architecture: the candidate index chosen at every searchable layer."""

    space: str
    choices: tuple[int, ...]


class SearchSpace(ABC):
    """A layer-wise space; subclasses define the layers, the encoding and the PyTorch model."""

    name: str = ""
    input_shape: tuple[int, int, int, int] = (1, 3, 32, 32)
    # A chain space's network is exactly its kernels one after another (measured from
    # `bench.export.graph.chain_graph`); a cell space (a DAG) is measured from its ONNX export.
    is_chain: bool = True
    # Options a search that trains networks uses when the user set none: small enough to train
    # on a CPU with the 8x8 digits (each is printed, and any can be overridden).
    training_defaults: ClassVar[Mapping[str, Any]] = {}

    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @abstractmethod
    def candidates(self, layer: int) -> list[list[OpSpec]]:
        """Kernels of each candidate of a searchable layer (an empty list skips the layer)."""

    @abstractmethod
    def candidate_names(self, layer: int) -> list[str]: ...

    @abstractmethod
    def fixed_ops(self) -> tuple[list[OpSpec], list[OpSpec]]:
        """Kernels before and after the searchable layers."""

    @abstractmethod
    def encode(self, arch: Arch) -> str: ...

    @abstractmethod
    def decode(self, text: str) -> Arch: ...

    @abstractmethod
    def to_torch(self, arch: Arch, num_classes: int = 10) -> Any:
        """A PyTorch module of the architecture (torch imported inside)."""

    def to_onnx(self, arch: Arch, module: Any = None) -> bytes:
        """ONNX bytes of the architecture (of `module`, e.g. trained weights, if given)."""
        from latbench.bench.export.from_torch import torch_to_onnx

        return torch_to_onnx(self.to_torch(arch) if module is None else module,
                             self.input_shape)

    def supernet_body(self, mixed: Callable[[int, list[Any]], Any]) -> Any:
        """The network with `mixed(layer, candidate_modules)` at every searchable layer (a
        chain space: prefix kernels, one mixed operation per layer, suffix kernels)."""
        from latbench.bench.spaces.chain_torch import chain_supernet_body

        prefix, suffix = self.fixed_ops()
        return chain_supernet_body(prefix, [self.candidates(i) for i in range(self.n_layers)],
                                   suffix, mixed)

    def extract(self, body: Any, arch: Arch) -> Any:
        """The architecture's network holding copies of the chosen candidates' weights, built
        like `to_torch(arch)` (same modules, same state_dict keys)."""
        from latbench.bench.spaces.chain_torch import extract_chain

        return extract_chain(body, self.check(arch).choices)

    def accuracy_table(self, data_dir: Path) -> dict[str, float] | None:
        """The benchmark accuracy of every architecture (keyed by `encode`) when the space is a
        benchmark with a table in the reference data folder `data_dir`; None otherwise."""
        return None

    def n_candidates(self, layer: int) -> int:
        return self.candidate_counts()[layer]

    def candidate_counts(self) -> tuple[int, ...]:
        """Candidates per layer, counted once and kept: `check` runs for every architecture a
        search encodes, and counting builds every candidate's kernels."""
        counts = self.__dict__.get("_candidate_counts")
        if counts is None:
            counts = tuple(len(self.candidates(i)) for i in range(self.n_layers))
            self._candidate_counts = counts
        return counts

    @property
    def size(self) -> int:
        return int(np.prod([self.n_candidates(i) for i in range(self.n_layers)]))

    def check(self, arch: Arch) -> Arch:
        if arch.space != self.name:
            raise SearchError(f"architecture of space {arch.space!r} given to space {self.name!r}")
        if len(arch.choices) != self.n_layers:
            raise SearchError(f"{self.name} architectures have {self.n_layers} layers, got "
                              f"{len(arch.choices)}")
        counts = self.candidate_counts()
        for layer, choice in enumerate(arch.choices):
            if not 0 <= choice < counts[layer]:
                raise SearchError(f"{self.name} layer {layer} has no candidate {choice}")
        return arch

    def sample(self, rng: np.random.Generator) -> Arch:
        return Arch(self.name, tuple(int(rng.integers(self.n_candidates(i)))
                                     for i in range(self.n_layers)))

    def mutate(self, arch: Arch, rng: np.random.Generator, rate: float | None = None) -> Arch:
        """Re-draw each layer with probability `rate` (default 1/n_layers), at least one layer."""
        self.check(arch)
        rate = 1.0 / self.n_layers if rate is None else rate
        choices = list(arch.choices)
        layers = [i for i in range(self.n_layers) if rng.random() < rate and
                  self.n_candidates(i) > 1]
        if not layers:
            movable = [i for i in range(self.n_layers) if self.n_candidates(i) > 1]
            layers = [int(rng.choice(movable))]
        for i in layers:
            others = [c for c in range(self.n_candidates(i)) if c != choices[i]]
            choices[i] = int(rng.choice(others))
        return Arch(self.name, tuple(choices))

    def ops(self, arch: Arch) -> list[OpSpec]:
        self.check(arch)
        prefix, suffix = self.fixed_ops()
        chosen = [spec for layer, c in enumerate(arch.choices) for spec in
                  self.candidates(layer)[c]]
        return [*prefix, *chosen, *suffix]

    def layer_specs(self) -> list[OpSpec]:
        """Every kernel any architecture of the space contains, without duplicates."""
        prefix, suffix = self.fixed_ops()
        seen: dict[str, OpSpec] = {}
        for spec in [*prefix, *suffix] + [s for i in range(self.n_layers)
                                          for cand in self.candidates(i) for s in cand]:
            seen.setdefault(spec.key(), spec)
        return list(seen.values())

    def all_archs(self) -> list[Arch]:
        grids = np.meshgrid(*[np.arange(self.n_candidates(i)) for i in range(self.n_layers)],
                            indexing="ij")
        flat = np.stack([g.ravel() for g in grids], axis=1)
        return [Arch(self.name, tuple(int(c) for c in row)) for row in flat]


SPACES: Registry[Callable[..., SearchSpace]] = Registry("search space")


def register_space(name: str) -> Callable[[Callable[..., SearchSpace]],
                                          Callable[..., SearchSpace]]:
    return SPACES.register(name)


def get_space(name: str, **options: Any) -> SearchSpace:
    return SPACES.lookup(name)(**options)
