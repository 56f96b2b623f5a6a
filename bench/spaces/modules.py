"""Trainable PyTorch modules for kernel specs: conv + BatchNorm + activation, MBConv, heads.

A chain space's network is the chain of its kernels, so one builder serves every space and the
model trained is exactly the one whose kernels the predictor sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from latbench.bench.ops import OpSpec, se_gate
from latbench.errors import SearchError


def activation(name: str) -> Any:
    import torch.nn as nn

    table = {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
             "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "swish": nn.SiLU}
    return table[name]()


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: str = "none") -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), activation(act))


def _modules() -> dict[str, type]:
    import torch.nn as nn

    class SqueezeExcite(nn.Module):
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

    return {"SqueezeExcite": SqueezeExcite, "MBConv": MBConv}


def kernel_module(spec: OpSpec) -> Any:
    """A trainable module computing the kernel `spec` (BatchNorm after every convolution)."""
    import torch.nn as nn

    if spec.kind == "conv":
        return conv_bn_act(spec.cin, spec.cout, spec.kernel, spec.stride, spec.groups, spec.act)
    if spec.kind == "dwconv":
        return conv_bn_act(spec.cin, spec.cin, spec.kernel, spec.stride, spec.cin, spec.act)
    if spec.kind == "mbconv":
        return _modules()["MBConv"](spec)
    if spec.kind == "pool" and spec.pool == "gavg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if spec.kind == "linear":
        return nn.Linear(spec.cin, spec.cout)
    if spec.kind == "se":
        return _modules()["SqueezeExcite"](spec.cin, spec.mid, spec.act)
    raise SearchError(f"no trainable module for kernel {spec.key()}")


def chain_module(specs: Sequence[OpSpec]) -> Any:
    import torch.nn as nn

    return nn.Sequential(*[kernel_module(s) for s in specs])
