"""Sampling plans: which kernels to measure, written as data (a preset name or a YAML/TOML file).

A plan combines
- `spaces`: the real kernels of search spaces (every layer shape any architecture can hold),
- `primitives`: also the primitive kernels fused blocks split into (what an ONNX graph shows),
- `around`: random variants near each real kernel (other sizes, channels, kernels, strides),
- `random`: free random kernels of a kind, with value lists (choices) or {min, max} ranges,
- `specs`: explicit spec keys,
- `networks`: whole networks to measure too, as `NAME:COUNT` network sets (e.g. random
  architectures of a space); a predictor uses them to learn how kernels compose into networks.
A space name resolves through `bench.network_sets.space_kernels` (search spaces and
"family:NAME:COUNT" kernel sets); `plan_subjects` adds the plan's networks among its kernels.
A random entry may set its kind's key fields and optional fields (e.g. `dilation` and
`kernel_w` of a conv, `alpha` with a leakyrelu); TRANSFORMER_RANDOM and COMMON_OPS_RANDOM are
the entries of the kinds added for transformers and the common op set.

A plan is checked before anything is measured: a wrong key or type when it is loaded, and
sizes no kernel can have when its kernels are built (a size, channel count, kernel or stride
below 1, a range with min > max, a kernel larger than every padded input of its entry, groups
dividing none of its channel counts, an explicit spec that is not a valid kernel). Every
refusal names the plan file (or preset) and the entry.

Example (YAML):
    name: my-phone
    seed: 0
    spaces: [nasbench-macro]
    primitives: true
    around: 2
    random:
      - {kind: conv, count: 40, h: [8, 16, 32], cin: {min: 8, max: 256}, cout: {min: 8, max: 256},
         kernel: [1, 3, 5], stride: [1, 2], act: [relu, none]}
    specs: ["pool:n=1,h=8,w=8,cin=256,pool=gavg,k=1,s=1,p=0,dtype=float32"]
    networks: ["nasbench-macro:30"]
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latbench.bench.campaign import Subject
from latbench.bench.network_sets import resolve_networks, space_kernels
from latbench.bench.ops import KEY_FIELDS, MODES, OPTIONAL_FIELDS, OpSpec, decompose
from latbench.errors import ConfigError, SpecError

SpaceResolver = Callable[[str], list[OpSpec]]


@dataclass(frozen=True)
class RandomKernels:
    kind: str
    count: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    name: str
    seed: int = 0
    spaces: tuple[str, ...] = ()
    primitives: bool = True
    around: int = 0
    random: tuple[RandomKernels, ...] = ()
    specs: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    # Where the plan came from ("plan file PATH", "plan preset 'quick'"), for messages.
    origin: str = field(default="", compare=False)

    @property
    def where(self) -> str:
        return self.origin or f"plan {self.name!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "spaces": list(self.spaces),
                "primitives": self.primitives, "around": self.around,
                "random": [{"kind": r.kind, "count": r.count, **r.fields} for r in self.random],
                "specs": list(self.specs), "networks": list(self.networks)}


_WIDE_RANDOM = (
    {"kind": "conv", "count": 60, "h": [4, 8, 16, 32, 56], "cin": {"min": 3, "max": 320},
     "cout": {"min": 8, "max": 320}, "kernel": [1, 3, 5], "stride": [1, 2],
     "act": ["none", "relu", "relu6"]},
    {"kind": "dwconv", "count": 40, "h": [4, 8, 16, 32, 56], "cin": {"min": 8, "max": 960},
     "kernel": [3, 5, 7], "stride": [1, 2], "act": ["none", "relu", "relu6"]},
    {"kind": "mbconv", "count": 40, "h": [4, 8, 16, 32], "cin": {"min": 16, "max": 256},
     "cout": {"min": 16, "max": 256}, "kernel": [3, 5, 7], "stride": [1, 2],
     "expand": [1, 3, 4, 6], "act": ["relu", "relu6"]},
    {"kind": "add", "count": 15, "h": [4, 8, 16, 32], "cin": {"min": 8, "max": 512}},
    {"kind": "pool", "count": 15, "h": [4, 8, 16, 32], "cin": {"min": 8, "max": 1280},
     "pool": ["gavg", "avg", "max"], "kernel": [2, 3], "stride": [1, 2]},
    {"kind": "linear", "count": 15, "cin": {"min": 16, "max": 2048},
     "cout": {"min": 10, "max": 1000}},
)

# ViT / DeiT-style transformer kernels: tokens 49-1024, width 64-768, heads 1-12, MLP ratio 2-4
# (hidden width up to 3072); attention matmuls at head sizes 16-96 (QK^T reduces over the head
# size, AV over the tokens); token tensors [N, T, C] for the elementwise kinds are h = T, w = 1.
_TOKENS = {"min": 49, "max": 1024}
_WIDTH = {"min": 64, "max": 768}
_HEADS = [1, 2, 3, 4, 6, 8, 12]
_HEAD_DIMS = [16, 24, 32, 48, 64, 96]
TRANSFORMER_RANDOM = (
    {"kind": "tlinear", "count": 60, "tokens": _TOKENS, "cin": {"min": 64, "max": 3072},
     "cout": {"min": 64, "max": 3072}, "act": ["none", "gelu"]},
    {"kind": "bmm", "count": 25, "heads": _HEADS, "tokens": _TOKENS, "cin": _HEAD_DIMS,
     "cout": _TOKENS},
    {"kind": "bmm", "count": 25, "heads": _HEADS, "tokens": _TOKENS, "cin": _TOKENS,
     "cout": _HEAD_DIMS},
    {"kind": "softmax", "count": 25, "heads": _HEADS, "tokens": _TOKENS, "cin": _TOKENS},
    {"kind": "layernorm", "count": 25, "tokens": _TOKENS, "cin": _WIDTH},
    {"kind": "transpose", "count": 25, "cin": _TOKENS, "h": _HEADS, "w": _HEAD_DIMS,
     "axes": ["0213", "0132"]},
    {"kind": "act", "count": 15, "h": _TOKENS, "w": [1], "cin": {"min": 128, "max": 3072},
     "act": ["gelu", "gelu_tanh"]},
    {"kind": "add", "count": 15, "h": _TOKENS, "w": [1], "cin": _WIDTH},
    {"kind": "clstoken", "count": 10, "tokens": _TOKENS, "cin": _WIDTH},
    {"kind": "gather", "count": 10, "tokens": _TOKENS, "cin": _WIDTH},
    {"kind": "posembed", "count": 10, "tokens": _TOKENS, "cin": _WIDTH},
)

# The rest of the common op set at CNN sizes (segmentation decoders, ShuffleNet, GAN-style
# blocks): dilated and non-square convolutions, upsampling, padding, slicing, normalization,
# reductions, shuffles, concatenation along any axis and the other activations.
_SIZES = [7, 14, 16, 28, 32, 56]
_CHANNELS = {"min": 8, "max": 512}
COMMON_OPS_RANDOM = (
    {"kind": "conv", "count": 20, "h": _SIZES, "cin": _CHANNELS, "cout": _CHANNELS,
     "kernel": [3], "dilation": [2, 4, 6, 12], "act": ["none", "relu"]},
    {"kind": "conv", "count": 10, "h": _SIZES, "cin": _CHANNELS, "cout": _CHANNELS,
     "kernel": [1], "kernel_w": [3, 5, 7], "act": ["none", "relu"]},
    {"kind": "conv", "count": 10, "h": _SIZES, "cin": _CHANNELS, "cout": _CHANNELS,
     "kernel": [3, 5, 7], "kernel_w": [1], "act": ["none", "relu"]},
    {"kind": "dwconv", "count": 15, "h": _SIZES, "cin": {"min": 8, "max": 960},
     "kernel": [3, 5], "dilation": [1, 2, 4], "act": ["none", "relu"]},
    {"kind": "convt", "count": 20, "h": [4, 7, 8, 14, 16, 28], "cin": _CHANNELS,
     "cout": _CHANNELS, "kernel": [2, 3, 4], "stride": [2], "pad": [0, 1], "out_pad": [0, 1],
     "act": ["none", "relu"]},
    {"kind": "resize", "count": 15, "h": _SIZES, "cin": _CHANNELS, "scale": [2, 4],
     "mode": ["nearest", "bilinear"]},
    {"kind": "pad", "count": 10, "h": _SIZES, "cin": _CHANNELS, "pad": [1, 2, 3],
     "mode": ["constant", "reflect"]},
    {"kind": "slice", "count": 10, "h": _SIZES, "cin": {"min": 16, "max": 512},
     "cout": {"min": 8, "max": 256}},
    {"kind": "instnorm", "count": 10, "h": _SIZES, "cin": _CHANNELS},
    {"kind": "reduce", "count": 10, "h": _SIZES, "cin": _CHANNELS, "axes": ["23", "1"]},
    {"kind": "shuffle", "count": 10, "h": _SIZES, "cin": {"min": 16, "max": 512},
     "groups": [2, 4]},
    {"kind": "concat", "count": 10, "h": [8, 14, 16, 28, 32], "cin": {"min": 16, "max": 512},
     "groups": [2], "axes": ["1", "2", "3"]},
    {"kind": "act", "count": 20, "h": _SIZES, "cin": _CHANNELS,
     "act": ["leakyrelu", "prelu", "tanh", "mish", "gelu"]},
)

PRESETS: dict[str, dict[str, Any]] = {
    # Real NAS-Bench-Macro kernels, their primitives and a few neighbours, and 30 networks to
    # calibrate how kernels compose: enough for the demo.
    "quick": {"spaces": ["nasbench-macro"], "primitives": True, "around": 2,
              "networks": ["nasbench-macro:30"]},
    # The same, denser around the space, plus wide random kernels for networks outside it.
    "nasbench-macro": {"spaces": ["nasbench-macro"], "primitives": True, "around": 6,
                       "random": list(_WIDE_RANDOM), "networks": ["nasbench-macro:60"]},
    # MobileNetV2 / ProxylessNAS-style layers at 224x224.
    "mobilenetv2": {"spaces": ["proxyless"], "primitives": True, "around": 2,
                    "networks": ["proxyless:20"]},
    # Kernels of every kind at random, for predictors that must generalise.
    "random": {"random": list(_WIDE_RANDOM)},
    # The kernels of ViT / DeiT-style transformers at random.
    "transformer": {"random": list(TRANSFORMER_RANDOM)},
    # CNN, transformer and the rest of the common op set: kernels of every kind at random.
    "vision": {"random": [*_WIDE_RANDOM, *TRANSFORMER_RANDOM, *COMMON_OPS_RANDOM]},
    # NAS-Bench-Macro plus the hand-built families (MobileNetV2, ResNet, EfficientNet): the
    # kernels of 30 sampled networks of each family as their ONNX export splits them
    # ("family:NAME:COUNT" spaces, resolved in bench/network_sets.py), a neighbour of each, and
    # calibration networks of every family.
    "families": {"spaces": ["nasbench-macro", "family:mobilenetv2:30", "family:resnet:30",
                            "family:efficientnet:30"],
                 "primitives": True, "around": 1,
                 "networks": ["nasbench-macro:30", "mobilenetv2:40", "resnet:40",
                              "efficientnet:40"]},
}


def load_plan(source: str | Path) -> Plan:
    """A preset by name, or a plan file (.yaml/.yml/.toml)."""
    text = str(source)
    if text in PRESETS:
        return _plan_from_dict({"name": text, **PRESETS[text]}, origin=f"plan preset {text!r}")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"plan {text!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())
            raw = raw.get("plan", raw)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(path.read_text())
        else:
            raise ConfigError(f"plan file {path} must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"plan file {path} is not valid: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError has no common base with the stdlib errors
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(f"plan file {path} is not valid YAML: {exc}") from exc
        raise
    if not isinstance(raw, dict):
        raise ConfigError(f"plan file {path} must hold a mapping")
    return _plan_from_dict({"name": path.stem, **raw}, origin=f"plan file {path}")


_PLAN_KEYS = {"name", "seed", "spaces", "primitives", "around", "random", "specs", "networks"}


def _plan_from_dict(raw: dict[str, Any], origin: str) -> Plan:
    unknown = set(raw) - _PLAN_KEYS
    if unknown:
        raise ConfigError(f"{origin}: unknown plan key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(_PLAN_KEYS))}")
    random_entries = raw.get("random", []) or []
    if not isinstance(random_entries, list):
        raise ConfigError(f"{origin}: 'random' must be a list of entries, "
                          f"got {type(random_entries).__name__}")
    randoms = []
    for i, entry in enumerate(random_entries):
        if not isinstance(entry, dict) or "kind" not in entry or "count" not in entry:
            raise ConfigError(f"{origin}: random entry {i} needs 'kind' and 'count'")
        rest = {k: v for k, v in entry.items() if k not in ("kind", "count")}
        allowed = (set(KEY_FIELDS.get(entry["kind"], ()))
                   | set(OPTIONAL_FIELDS.get(entry["kind"], ())) | {"w"})
        if entry["kind"] not in KEY_FIELDS:
            raise ConfigError(f"{origin}: random entry {i} has unknown kind {entry['kind']!r}")
        bad = set(rest) - allowed - {"kind"}
        if bad:
            raise ConfigError(f"{origin}: random entry {i}: a random {entry['kind']} entry "
                              f"cannot set {', '.join(sorted(bad))}")
        count = _integer(entry["count"], f"{origin}: random entry {i} count", minimum=0)
        randoms.append(RandomKernels(entry["kind"], count, rest))
    specs = _strings(raw, "specs", origin)
    for i, key in enumerate(specs):
        try:
            OpSpec.from_key(key)
        except SpecError as exc:
            raise ConfigError(f"{origin}: specs entry {i}: {exc}") from exc
    primitives = raw.get("primitives", True)
    if not isinstance(primitives, bool):
        raise ConfigError(f"{origin}: 'primitives' must be true or false, got {primitives!r}")
    return Plan(name=str(raw["name"]), seed=_integer(raw.get("seed", 0), f"{origin}: seed"),
                spaces=_strings(raw, "spaces", origin), primitives=primitives,
                around=_integer(raw.get("around", 0), f"{origin}: around", minimum=0),
                random=tuple(randoms), specs=specs, networks=_strings(raw, "networks", origin),
                origin=origin)


def _integer(value: Any, what: str, minimum: int | None = None) -> int:
    """An integer setting of a plan; a wrong type or range is a ConfigError naming it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def _strings(raw: dict[str, Any], name: str, origin: str) -> tuple[str, ...]:
    """A list-of-strings setting; a bare string would otherwise be split into characters."""
    value = raw.get(name, []) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{origin}: {name!r} must be a list of strings, got {value!r}")
    return tuple(value)


def build_specs(plan: Plan, resolve_space: SpaceResolver = space_kernels) -> list[OpSpec]:
    """The plan's kernels, deduplicated by key, in a deterministic order for a given seed.
    `resolve_space` turns a plan's `spaces` entry into kernels (tests pass toy spaces)."""
    rng = np.random.default_rng(plan.seed)
    chosen: dict[str, OpSpec] = {}

    def add(spec: OpSpec) -> None:
        chosen.setdefault(spec.key(), spec)

    for i, entry in enumerate(plan.random):  # every entry, before anything is drawn
        check_random_entry(entry, f"{plan.where}: random entry {i} ({entry.kind})")
    real: list[OpSpec] = []
    for i, space in enumerate(plan.spaces):
        try:
            real.extend(resolve_space(space))
        except ConfigError as exc:
            raise ConfigError(f"{plan.where}: spaces entry {i}: {exc}") from exc
    for spec in real:
        add(spec)
        if plan.primitives:
            for part in decompose(spec):
                add(part)
    for spec in real:
        for _ in range(plan.around):
            variant = perturb(spec, rng)
            add(variant)
            if plan.primitives:
                for part in decompose(variant):
                    add(part)
    for i, entry in enumerate(plan.random):
        for _ in range(entry.count):
            add(random_spec(entry, rng, label=f"{plan.where}: random entry {i} ({entry.kind})"))
    for i, key in enumerate(plan.specs):
        try:
            add(OpSpec.from_key(key))
        except SpecError as exc:
            raise ConfigError(f"{plan.where}: specs entry {i}: {exc}") from exc
    if not chosen:
        raise ConfigError(f"{plan.where} produces no kernels")
    return list(chosen.values())


def _channels(c: int, rng: np.random.Generator) -> int:
    scaled = c * float(rng.choice([0.5, 0.75, 1.0, 1.25, 1.5, 2.0]))
    step = 8 if c >= 16 else 1
    return max(step, int(round(scaled / step)) * step)


def perturb(spec: OpSpec, rng: np.random.Generator, tries: int = 20) -> OpSpec:
    """A random valid neighbour of `spec`: other size, channels, kernel or stride, same kind."""
    for _ in range(tries):
        changes: dict[str, Any] = {}
        if spec.kind != "linear":
            size = int(max(1, min(224, spec.h * float(rng.choice([0.5, 1.0, 1.0, 2.0])))))
            changes.update(h=size, w=size if spec.h == spec.w else spec.w)
        if spec.kind not in ("concat",):
            changes["cin"] = _channels(spec.cin, rng)
        if spec.kind in ("conv", "mbconv", "linear"):
            changes["cout"] = _channels(spec.cout, rng)
        if spec.kind == "conv" and spec.groups > 1:
            changes["groups"] = spec.groups
        if spec.kind in ("dwconv", "mbconv") or (spec.kind == "conv" and spec.kernel > 1):
            changes["kernel"] = int(rng.choice([3, 5, 7]))
            changes["pad"] = -1
        if spec.kind in ("conv", "dwconv", "mbconv"):
            changes["stride"] = int(rng.choice([1, 1, 2]))
        if spec.kind == "mbconv":
            changes["expand"] = float(rng.choice([1, 3, 4, 6]))
            changes["residual"] = None
        if spec.kind not in _PERTURBED_BEFORE:  # the later kinds: their own fields too
            changes.update(_perturb_new(spec, rng))
        try:
            return spec.with_(**changes)
        except SpecError:
            continue
    return spec


# Kinds `perturb` knew first: what it draws for them stays as it was, so plans keep their specs.
_PERTURBED_BEFORE = frozenset(("conv", "dwconv", "mbconv", "linear", "pool", "add", "mul",
                               "act", "se", "concat"))


def _perturb_new(spec: OpSpec, rng: np.random.Generator) -> dict[str, Any]:
    """Changes to the fields of the kinds added later (beyond size and input channels):
    tokens, and the output channels of the kinds that have them."""
    changes: dict[str, Any] = {}
    if "tokens" in KEY_FIELDS[spec.kind]:
        changes["tokens"] = max(1, int(round(spec.tokens * float(rng.choice([0.5, 1.0, 2.0])))))
    if "cout" in KEY_FIELDS[spec.kind]:
        changes["cout"] = _channels(spec.cout, rng)
    return changes


# Integer fields of a random entry, with the least value each can take (None: any; a negative
# pad means the kind's default padding, and cout 0 means "as cin"; kernel_w 0: square).
_INT_FIELDS: dict[str, int | None] = {"h": 1, "w": 1, "cin": 1, "cout": 0, "kernel": 1,
                                      "stride": 1, "groups": 1, "batch": 1, "pad": None,
                                      "tokens": 1, "heads": 1, "dilation": 1, "kernel_w": 0,
                                      "pad_w": None, "out_pad": 0, "scale": 1}


def check_random_entry(entry: RandomKernels, label: str) -> None:
    """Refuse values no kernel of a random entry can have, before any is drawn: a ConfigError
    starting with `label` (the plan and entry) and naming the field and value."""
    domains: dict[str, tuple[list[Any], bool]] = {}  # field -> (values, is a {min, max} range)
    for name, value in entry.fields.items():
        if isinstance(value, dict):
            if set(value) != {"min", "max"}:
                raise ConfigError(f"{label}: bad {name} range {value}: a range is "
                                  "{min: M, max: N}")
            lo, hi = value["min"], value["max"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) \
                    or lo < 1 or hi < lo:
                why = f" (min {lo} > max {hi})" if isinstance(lo, int) and isinstance(
                    hi, int) and lo > hi else ""
                raise ConfigError(f"{label}: bad {name} range {value}: need 1 <= min <= max"
                                  f"{why}")
            domains[name] = ([lo, hi], True)
            continue
        choices = list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
            else [value]
        if not choices:
            raise ConfigError(f"{label}: an empty list of choices for {name}")
        for choice in choices:
            _check_choice(name, choice, label)
            _check_kind_choice(entry.kind, name, choice, label)
        domains[name] = (choices, False)
    if entry.kind in ("conv", "dwconv", "pool"):
        _check_kernel_fits(entry.kind, domains, label)
    if entry.kind in ("conv", "convt", "shuffle") and "groups" in domains:
        _check_groups(domains, label)
    _check_new_kind(entry.kind, domains, label)


def _check_choice(name: str, value: Any, label: str) -> None:
    if name in _INT_FIELDS:
        least = _INT_FIELDS[name]
        if not isinstance(value, int) or isinstance(value, bool) or (
                least is not None and value < least):
            need = "an integer" if least is None else f"an integer >= {least}"
            raise ConfigError(f"{label}: {name} {value!r} is impossible: {name} must be {need}")
    elif name == "expand" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                               or not value > 0):
        raise ConfigError(f"{label}: expand {value!r} is impossible: it must be a number > 0")
    elif name == "alpha" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not math.isfinite(value)):
        raise ConfigError(f"{label}: alpha {value!r} is impossible: it must be a finite number")


def _check_kind_choice(kind: str, name: str, value: Any, label: str) -> None:
    """A mode or axes value the entry's kind cannot take (checked by OpSpec, named here)."""
    if name == "mode" and kind in MODES and value not in MODES[kind]:
        raise ConfigError(f"{label}: mode {value!r} is impossible for {kind}: one of "
                          f"{', '.join(MODES[kind])}")
    if name == "axes":
        try:
            OpSpec(kind, h=8, w=8, cin=8, groups=2, axes=_axes(value))
        except SpecError as exc:
            raise ConfigError(f"{label}: axes {value!r} is impossible: {exc}") from exc


def _axes(value: Any) -> Any:
    """Axes as OpSpec takes them: a plan may write 23 or "23"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_new_kind(kind: str, domains: dict[str, tuple[list[Any], bool]], label: str) -> None:
    """Values of the later kinds no combination of the entry can use: out_pad never below a
    stride, a slice keeping no fewer channels than every cin, a reflect pad not below every
    size (ranges stand for their most permissive end)."""
    def values(name: str, default: Any) -> list[Any]:
        found, is_range = domains.get(name, ([default], False))
        return [found[0], found[1]] if is_range else found

    if kind == "convt":
        for out_pad in values("out_pad", 0):
            if not any(out_pad < stride for stride in values("stride", 1)):
                raise ConfigError(f"{label}: out_pad {out_pad} is not smaller than any stride of "
                                  f"the entry ({values('stride', 1)})")
    if kind == "slice":
        for cout in values("cout", 0):
            if not any(0 < cout < cin for cin in values("cin", 1)):
                raise ConfigError(f"{label}: a slice keeps 1 <= cout < cin channels: cout {cout} "
                                  f"fits no cin of the entry ({values('cin', 1)})")
    if kind == "pad" and set(values("mode", "constant")) == {"reflect"}:
        sizes = values("h", 1) + (values("w", 1) if "w" in domains else [])
        for pad in values("pad", 1):
            if not any(pad < size for size in sizes):
                raise ConfigError(f"{label}: reflect pad {pad} is not smaller than any size of "
                                  f"the entry ({sizes})")


def _check_kernel_fits(kind: str, domains: dict[str, tuple[list[Any], bool]],
                       label: str) -> None:
    """Every size and every kernel listed must fit some padded input of the entry: out =
    (size + 2 pad - kernel) // stride + 1 >= 1, i.e. size + 2 pad >= kernel. Ranges stand for
    their most permissive end (fits only improves with a larger size or pad)."""
    pools = domains.get("pool", (["avg"], False))[0]
    if kind == "pool" and "gavg" in pools:  # a global pool has no kernel
        return

    # A dilated window spans dilation * (kernel - 1) + 1 and pads dilation * (kernel // 2) by
    # default; the least dilation is the most permissive with explicit padding.
    dilation = min(domains.get("dilation", ([1], False))[0])

    def pad_of(kernel: int, pad: int) -> int:
        if pad >= 0:
            return pad
        return dilation * (kernel // 2) if kind != "pool" else (kernel - 1) // 2

    def extent(kernel: int) -> int:
        return dilation * (kernel - 1) + 1

    for side in ("h", "w"):
        kernels, kernel_range = domains.get("kernel", ([1], False))
        pads, _ = domains.get("pad", ([-1], False))
        if side == "w":
            if not {"w", "kernel_w", "pad_w"} & set(domains):
                continue  # w follows h
            if "kernel_w" in domains:  # 0 stands for "as kernel"
                widths, kernel_range = domains["kernel_w"]
                kernels = [k for k in widths if k] + (kernels if 0 in widths else [])
            pads = domains.get("pad_w", (pads, False))[0]
        shown_pads = ["default" if p < 0 else p for p in pads]
        sizes, size_range = domains.get(side) or domains.get("h") or ([1], False)
        for k in (kernels[:1] if kernel_range else kernels):
            if not any(s + 2 * pad_of(k, p) >= extent(k) for s in sizes for p in pads):
                raise ConfigError(f"{label}: kernel {k} is larger than every padded input of "
                                  f"the entry ({side} at most {max(sizes)}, pad {shown_pads})")
        for size in (sizes[-1:] if size_range else sizes):
            if not any(size + 2 * pad_of(k, p) >= extent(k) for k in kernels for p in pads):
                raise ConfigError(f"{label}: {side} {size} is smaller than every kernel of the "
                                  f"entry with its padding (kernel {kernels}, pad "
                                  f"{shown_pads})")


def _check_groups(domains: dict[str, tuple[list[Any], bool]], label: str) -> None:
    """Every groups value listed must divide some cin and some cout of the entry (cout 0 or
    absent: as cin)."""
    groups, groups_range = domains["groups"]
    if groups_range:
        return

    def divisible(name: str, g: int) -> bool:
        values, is_range = domains.get(name, ([1], False))
        if is_range:
            return values[1] // g * g >= values[0]
        return any(v % g == 0 for v in values)

    couts = domains.get("cout", ([0], False))[0]
    for g in groups:
        if not divisible("cin", g):
            raise ConfigError(f"{label}: groups {g} divides none of the cin values "
                              f"({domains.get('cin', ([1], False))[0]})")
        if 0 not in couts and not divisible("cout", g):
            raise ConfigError(f"{label}: groups {g} divides none of the cout values ({couts})")


def _draw(value: Any, rng: np.random.Generator) -> Any:
    """One value of a random entry's field: a {min, max} range (log-uniform), a choice from a
    list, or the value itself (see `check_random_entry` for what is valid)."""
    if isinstance(value, dict):
        lo, hi = value["min"], value["max"]
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.999)) - 1e-9)))
    if isinstance(value, Sequence) and not isinstance(value, str):
        item = value[int(rng.integers(len(value)))]
        return item.item() if hasattr(item, "item") else item
    return value


def random_spec(entry: RandomKernels, rng: np.random.Generator, tries: int = 50,
                label: str | None = None) -> OpSpec:
    """Draw from an entry (checked by `check_random_entry`) until a combination is a valid
    kernel; a ConfigError starting with `label` after `tries` invalid ones."""
    last_error: Exception | None = None
    for _ in range(tries):
        values = {name: _draw(v, rng) for name, v in entry.fields.items()}
        if "h" in values and "w" not in values:
            values["w"] = values["h"]
        if "axes" in values:
            values["axes"] = _axes(values["axes"])
        try:
            return OpSpec(entry.kind, **values)
        except (SpecError, TypeError) as exc:
            last_error = exc
    raise ConfigError(f"{label or f'random {entry.kind} entry'} produced no valid kernel in "
                      f"{tries} tries: {last_error}")


def plan_subjects(plan: Plan) -> list[Subject]:
    """Everything a plan measures: its kernels with its calibration networks spread evenly
    among them, so networks and kernels share batches and so the device's state: the
    composition learns how kernels add up, not how the machine drifted between the two."""
    kernels = [Subject.op(s) for s in build_specs(plan)]
    if not plan.networks:
        return kernels
    networks = resolve_networks(",".join(plan.networks), seed=plan.seed, with_kernels=True)
    step = len(kernels) / len(networks)
    subjects: list[Subject] = []
    for i, network in enumerate(networks):
        subjects += kernels[round(i * step):round((i + 1) * step)]
        subjects.append(network)
    return subjects
