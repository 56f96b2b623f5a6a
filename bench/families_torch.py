"""The PyTorch side of the network families (bench.families samples their configs without
torch): the layers, the MobileNet-style and ResNet networks built from a config, and the
deterministic build of a `NetworkDef` with non-trivial BatchNorm statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from latbench.bench.families import (
    FAMILIES,
    BlockConfig,
    MobileNetConfig,
    NetworkDef,
    ResNetConfig,
)
from latbench.errors import ConfigError


def build(net: NetworkDef) -> nn.Module:
    """The torch module of `net` in eval mode; weights and BatchNorm statistics drawn from its
    seed (torch's global generator is left as it was)."""
    family = FAMILIES.lookup(net.family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(net.seed)
        module = family.build(net.config)
    randomise_batchnorm(module, net.seed)
    return module.eval()


def randomise_batchnorm(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics, so folding it changes the conv weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                c = layer.num_features
                layer.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                layer.weight.copy_(0.5 + torch.rand(c, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(c, generator=generator))


def activation(name: str) -> nn.Module:
    modules = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
               "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "swish": nn.SiLU}
    if name not in modules:
        raise ConfigError(f"network activation {name!r} unknown; known: {sorted(modules)}")
    return modules[name]()


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation; `act_name` says which, for tests."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str = "none") -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
        if act != "none":
            layers.append(activation(act))
        super().__init__(*layers)
        self.act_name = act


class SqueezeExcite(nn.Module):
    """x * gate(fc2(act(fc1(mean_hw(x))))), the FCs as 1x1 convs or Linear layers."""

    def __init__(self, channels: int, mid: int, act: str, gate: str, fc: bool) -> None:
        super().__init__()
        self.channels, self.mid, self.fc = channels, mid, fc
        if fc:
            self.reduce: nn.Module = nn.Linear(channels, mid)
            self.expand: nn.Module = nn.Linear(mid, channels)
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, mid, 1)
            self.expand = nn.Conv2d(mid, channels, 1)
        self.act = activation(act)
        self.gate = activation(gate)

    def forward(self, x):
        if self.fc:
            n, c = x.shape[0], x.shape[1]
            s = self.gate(self.expand(self.act(self.reduce(x.mean((2, 3))))))
            return x * s.view(n, c, 1, 1)
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, block: BlockConfig, se_act: str, se_gate: str, se_fc: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if block.mid != block.cin:
            layers.append(ConvBNAct(block.cin, block.mid, 1, act=block.act))
        layers.append(ConvBNAct(block.mid, block.mid, block.kernel, block.stride,
                                groups=block.mid, act=block.act))
        if block.se_mid:
            layers.append(SqueezeExcite(block.mid, block.se_mid, se_act, se_gate, se_fc))
        layers.append(ConvBNAct(block.mid, block.cout, 1))
        self.body = nn.Sequential(*layers)
        self.residual = block.stride == 1 and block.cin == block.cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNet(nn.Module):
    def __init__(self, config: MobileNetConfig) -> None:
        super().__init__()
        c = config
        layers: list[nn.Module] = [ConvBNAct(3, c.stem, 3, 2, act=c.stem_act)]
        layers += [InvertedResidual(b, c.se_act, c.se_gate, c.se_fc) for b in c.blocks]
        layers.append(ConvBNAct(c.blocks[-1].cout, c.head, 1, act=c.head_act))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Flatten()]
        features = c.head
        if c.hidden:
            head += [nn.Linear(features, c.hidden), activation(c.hidden_act)]
            features = c.hidden
        head += [nn.Dropout(0.2), nn.Linear(features, c.classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride, act="relu")
        self.conv2 = ConvBNAct(cout, cout, 3)
        self.shortcut: nn.Module = (ConvBNAct(cin, cout, 1, stride)
                                    if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        cin = config.widths[0]
        layers: list[nn.Module] = [ConvBNAct(3, cin, 7, 2, act="relu"),
                                   nn.MaxPool2d(3, 2, 1)]
        for stage, (width, depth) in enumerate(zip(config.widths, config.depths,
                                                   strict=True)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, width, stride))
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, config.classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
