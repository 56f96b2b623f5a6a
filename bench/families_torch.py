"""The PyTorch side of the network families (bench.families samples their configs without
torch): the layers, the networks built from a config (MobileNet-style, ResNet, RegNet, ConvNeXt,
vision transformers, MobileViT), and the deterministic build of a `NetworkDef` with non-trivial
normalisation statistics and affine parameters.

The layers are written as the models users export are (timm, torchvision, the reference code):
explicit attention (qkv Linear, reshape, permute, matmuls, softmax), `scaled_dot_product_attention`
and `nn.MultiheadAttention`; channels-first LayerNorm permuted or decomposed; MobileViT's unfold
and fold as reshapes and transposes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latbench.bench.families import (
    FAMILIES,
    BlockConfig,
    ConvNeXtConfig,
    MobileNetConfig,
    MobileViTConfig,
    NetworkDef,
    RegNetConfig,
    ResNetConfig,
    ViTConfig,
)
from latbench.errors import ConfigError


def build(net: NetworkDef) -> nn.Module:
    """The torch module of `net` in eval mode; weights and BatchNorm statistics drawn from its
    seed (torch's global generator is left as it was)."""
    family = FAMILIES.lookup(net.family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(net.seed)
        module = family.build(net.config)
    randomise_norms(module, net.seed)
    return module.eval()


def randomise_norms(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics and every BatchNorm and LayerNorm a
    non-trivial scale and shift, so an exporter or parser that drops or mis-folds one changes
    the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                c = layer.num_features
                layer.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                layer.weight.copy_(0.5 + torch.rand(c, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(c, generator=generator))
        # a second pass: the BatchNorm draws do not depend on whether a network has LayerNorms
        for layer in module.modules():
            if isinstance(layer, nn.LayerNorm):
                shape = layer.normalized_shape
                layer.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(shape, generator=generator))


def activation(name: str) -> nn.Module:
    modules = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
               "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "swish": nn.SiLU,
               "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}
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


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups) -> [SE] -> 1x1, projection shortcut when the shape changes,
    ReLU after the add: ResNet-50's block (groups 1) and RegNet's (groups of fixed width)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, groups: int = 1,
                 se_mid: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(cin, mid, 1, act="relu"),
                                   ConvBNAct(mid, mid, 3, stride, groups=groups, act="relu")]
        if se_mid:
            layers.append(SqueezeExcite(mid, se_mid, "relu", "sigmoid", fc=False))
        layers.append(ConvBNAct(mid, cout, 1))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = (ConvBNAct(cin, cout, 1, stride)
                                    if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        cin = config.widths[0]
        layers: list[nn.Module] = [ConvBNAct(3, cin, 7, 2, act="relu"),
                                   nn.MaxPool2d(3, 2, 1)]
        for stage, (width, depth) in enumerate(zip(config.widths, config.depths,
                                                   strict=True)):
            cout = width * config.expansion
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, width, stride) if config.expansion == 1
                              else Bottleneck(cin, width, cout, stride))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, config.classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class RegNet(nn.Module):
    def __init__(self, config: RegNetConfig) -> None:
        super().__init__()
        cin = config.stem
        layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act="relu")]
        for width, depth in zip(config.widths, config.depths, strict=True):
            for i in range(depth):
                se_mid = round(config.se_ratio * cin)
                layers.append(Bottleneck(cin, width, width, 2 if i == 0 else 1,
                                         groups=width // config.group_width, se_mid=se_mid))
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, config.classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


# --- ConvNeXt ---------------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, written as timm does (permute to
    channels-last, `layer_norm`, permute back) or as the reference ConvNeXt does (mean and
    variance over the channel axis, decomposed)."""

    def __init__(self, channels: int, decomposed: bool, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)
        self.decomposed = decomposed

    def forward(self, x):
        if self.decomposed:
            mean = x.mean(1, keepdim=True)
            var = (x - mean).pow(2).mean(1, keepdim=True)
            x = (x - mean) / torch.sqrt(var + self.eps)
            return self.weight[:, None, None] * x + self.bias[:, None, None]
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise -> channels-last LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale,
    plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # trained layer scales are spread out; a constant would let an exporter fold it away
        self.gamma = nn.Parameter(0.1 + 0.9 * torch.rand(dim))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, config: ConvNeXtConfig) -> None:
        super().__init__()
        decomposed = config.norm2d == "decomposed"
        dims = config.dims
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], decomposed)]
        for i, (dim, depth) in enumerate(zip(dims, config.depths, strict=True)):
            if i:
                layers += [LayerNorm2d(dims[i - 1], decomposed), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], config.classes)

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean((2, 3))))


# --- transformers -----------------------------------------------------------------------------
class Attention(nn.Module):
    """timm's multi-head self-attention: one qkv Linear, heads split by reshape and permute,
    then softmax(q k^T / sqrt(d)) v written out, or `scaled_dot_product_attention` (`fused`),
    heads merged, output Linear."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TorchAttention(nn.Module):
    """`nn.MultiheadAttention` used for self-attention, as torchvision's ViT does."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def attention(dim: int, heads: int, kind: str) -> nn.Module:
    if kind == "mha":
        return TorchAttention(dim, heads)
    if kind not in ("timm", "sdpa"):
        raise ConfigError(f"attention {kind!r} unknown; known: timm, sdpa, mha")
    return Attention(dim, heads, fused=kind == "sdpa")


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, act: str, kind: str,
                 eps: float = 1e-6) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attention(dim, heads, kind)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), activation(act),
                                 nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT / DeiT: patch embedding conv, class token (and DeiT's distillation token), position
    embedding, blocks, final LayerNorm, head on the class token (DeiT: the mean of the class
    head and the distillation head, as at inference)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = config
        self.patch_embed = nn.Conv2d(3, c.dim, c.patch, c.patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, c.dim))
        self.dist_token = (nn.Parameter(0.02 * torch.randn(1, 1, c.dim)) if c.distilled
                           else None)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, c.tokens, c.dim))
        self.blocks = nn.Sequential(*(TransformerBlock(c.dim, c.heads, c.mlp_ratio, c.act,
                                                       c.attention) for _ in range(c.depth)))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, c.classes)
        self.head_dist = nn.Linear(c.dim, c.classes) if c.distilled else None

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = [self.cls_token] + ([] if self.dist_token is None else [self.dist_token])
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        if self.head_dist is None:
            return self.head(x[:, 0])
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


class MobileViTBlock(nn.Module):
    """Local 3x3 conv and 1x1 to the transformer dim; unfold into patches (each of the P pixel
    positions of a patch becomes a sequence over the N patches); transformer blocks and a
    LayerNorm; fold back; 1x1 to the channels; 3x3 fusion of [input, result]. Feature maps that
    are not a multiple of the patch are resized bilinearly around the transformer."""

    def __init__(self, channels: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.conv_kxk = ConvBNAct(channels, channels, 3, act="swish")
        self.conv_1x1 = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio, "swish",
                                                            "timm", eps=1e-5)
                                           for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = ConvBNAct(dim, channels, 1, act="swish")
        self.conv_fusion = ConvBNAct(2 * channels, channels, 3, act="swish")

    def forward(self, x):
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        b, c, h, w = (int(d) for d in x.shape)
        p = self.patch
        new_h, new_w = math.ceil(h / p) * p, math.ceil(w / p) * p
        resize = (new_h, new_w) != (h, w)
        if resize:
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        nh, nw = new_h // p, new_w // p
        # [B, C, H, W] -> [B * P, N, C]
        x = x.reshape(b * c * nh, p, nw, p).transpose(1, 2)
        x = x.reshape(b, c, nh * nw, p * p).transpose(1, 3).reshape(b * p * p, nh * nw, c)
        x = self.norm(self.transformer(x))
        # [B * P, N, C] -> [B, C, H, W]
        x = x.reshape(b, p * p, nh * nw, c).transpose(1, 3).reshape(b * c * nh, nw, p, p)
        x = x.transpose(1, 2).reshape(b, c, new_h, new_w)
        if resize:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.conv_fusion(torch.cat([shortcut, self.conv_proj(x)], dim=1))


class MobileViT(nn.Module):
    def __init__(self, config: MobileViTConfig) -> None:
        super().__init__()
        c = config
        ch = c.channels
        layers: list[nn.Module] = [ConvBNAct(3, ch[0], 3, 2, act="swish")]

        def mv2(cin: int, cout: int, stride: int) -> nn.Module:
            block = BlockConfig(cin=cin, cout=cout, kernel=3, stride=stride,
                                mid=cin * c.expansion, act="swish")
            return InvertedResidual(block, "relu", "sigmoid", se_fc=False)

        layers += [mv2(ch[0], ch[1], 1), mv2(ch[1], ch[2], 2), mv2(ch[2], ch[2], 1),
                   mv2(ch[2], ch[2], 1)]
        for i, (dim, depth) in enumerate(zip(c.dims, c.depths, strict=True)):
            cin, cout = ch[i + 2], ch[i + 3]
            layers += [mv2(cin, cout, 2),
                       MobileViTBlock(cout, dim, depth, c.heads, c.mlp_ratio, c.patch)]
        layers.append(ConvBNAct(ch[-1], c.head, 1, act="swish"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c.head, c.classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
