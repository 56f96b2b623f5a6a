"""Trainable PyTorch modules for kernel specs: conv + BatchNorm + activation, MBConv, heads, and
the chain networks (and supernet bodies) of chain spaces built from them.

A chain space's network is the chain of its kernels, so one builder serves every space and the
model trained is exactly the one whose kernels the predictor sums. This module imports torch;
the torch-free space descriptions import it inside the methods that build networks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from latbench.bench.ops import OpSpec, se_gate
from latbench.errors import SearchError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "swish": nn.SiLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: str = "none") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), activation(act))


class SqueezeExcite(nn.Module):
    """x * gate(expand(relu(reduce(mean_hw(x))))) with 1x1 convs."""

    def __init__(self, channels: int, mid: int, gate: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(mid, channels, 1)
        self.gate = activation(gate)

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Inverted residual of an "mbconv" kernel spec: [1x1 expand] -> kxk depthwise -> [SE] ->
    1x1 project, with the residual when the spec has one."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        mid = spec.mid
        layers: list[nn.Module] = []
        if mid != spec.cin or spec.expand != 1.0:
            layers.append(conv_bn_act(spec.cin, mid, 1, act=spec.act))
        layers.append(conv_bn_act(mid, mid, spec.kernel, spec.stride, mid, spec.act))
        if spec.se:
            layers.append(SqueezeExcite(mid, max(1, round(mid * 0.25)), se_gate(spec.act)))
        layers.append(conv_bn_act(mid, spec.cout, 1))
        self.body = nn.Sequential(*layers)
        self.residual = spec.residual

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def kernel_module(spec: OpSpec) -> nn.Module:
    """A trainable module computing the kernel `spec` (BatchNorm after every convolution)."""
    if spec.kind == "conv":
        return conv_bn_act(spec.cin, spec.cout, spec.kernel, spec.stride, spec.groups, spec.act)
    if spec.kind == "dwconv":
        return conv_bn_act(spec.cin, spec.cin, spec.kernel, spec.stride, spec.cin, spec.act)
    if spec.kind == "mbconv":
        return MBConv(spec)
    if spec.kind == "pool" and spec.pool == "gavg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if spec.kind == "linear":
        return nn.Linear(spec.cin, spec.cout)
    if spec.kind == "se":
        return SqueezeExcite(spec.cin, spec.mid, spec.act)
    raise SearchError(f"no trainable module for kernel {spec.key()}")


def chain_module(specs: Sequence[OpSpec]) -> nn.Sequential:
    return nn.Sequential(*[kernel_module(s) for s in specs])


def chain_supernet_body(prefix: Sequence[OpSpec], layers: Sequence[Sequence[Sequence[OpSpec]]],
                        suffix: Sequence[OpSpec],
                        mixed: Callable[[int, list[Any]], Any]) -> nn.Sequential:
    """Prefix kernels, `mixed(layer, candidate_modules)` per searchable layer (`layers` holds
    each layer's candidates' kernels), suffix kernels."""
    return nn.Sequential(*[kernel_module(s) for s in prefix],
                         *[mixed(i, [chain_module(c) for c in candidates])
                           for i, candidates in enumerate(layers)],
                         *[kernel_module(s) for s in suffix])


def extract_chain(body: nn.Sequential, choices: Sequence[int]) -> nn.Sequential:
    """The chain network of `choices` holding copies of a supernet body's chosen candidates
    (a mixed operation is recognised by its `candidates` and `layer`)."""
    modules: list[nn.Module] = []
    for child in body:
        if hasattr(child, "candidates"):
            modules.extend(child.candidates[choices[child.layer]])
        else:
            modules.append(child)
    return copy.deepcopy(nn.Sequential(*modules))
