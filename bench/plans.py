"""Sampling plans: which kernels to measure, written as data (a preset name or a YAML/TOML file).

A plan combines
- `spaces`: the real kernels of search spaces (every layer shape any architecture can hold),
- `primitives`: also the primitive kernels fused blocks split into (what an ONNX graph shows),
- `around`: random variants near each real kernel (other sizes, channels, kernels, strides),
- `random`: free random kernels of a kind, with value lists (choices) or {min, max} ranges,
- `specs`: explicit spec keys,
- `networks`: whole networks to measure too, as `NAME:COUNT` network sets (e.g. random
  architectures of a space) or model file paths; a predictor uses them to learn how kernels
  compose into networks,
- `models`: a user's model files (.onnx, .tflite; a path, or {path, input_shape: [NAME=DIMS]}
  for symbolic input dims) whose kernels join the real kernels (so `around` applies to them).
A space name resolves through `bench.network_sets.space_kernels` (search spaces and
"family:NAME:COUNT[:SEED]" kernel sets); `plan_subjects` adds the plan's networks among its
kernels. `plan_from_model` is the plan of one model file (`latbench bench plan --from`) and
`plan_yaml` writes any plan as a file a user can edit.
A random entry may set its kind's key fields and optional fields (e.g. `dilation` and
`kernel_w` of a conv, `alpha` with a leakyrelu). The presets and their random entries
(TRANSFORMER_RANDOM and COMMON_OPS_RANDOM for the kinds added for transformers and the common
op set) are data in `bench.presets`, re-exported here.

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
    models: [my_model.onnx, {path: detector.onnx, input_shape: ["images=1x3x320x320"]}]
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
from latbench.bench.network_sets import (
    family_set_networks,
    file_network,
    model_suffixes,
    resolve_networks,
    space_kernels,
)
from latbench.bench.ops import (
    KEY_FIELDS,
    MODES,
    OPTIONAL_FIELDS,
    OpSpec,
    decompose,
    precision_forms,
)
from latbench.bench.presets import COMMON_OPS_RANDOM as COMMON_OPS_RANDOM
from latbench.bench.presets import PATCH_EMBED_RANDOM as PATCH_EMBED_RANDOM
from latbench.bench.presets import PRESET_FAMILY_SEED as PRESET_FAMILY_SEED
from latbench.bench.presets import PRESETS, preset_names
from latbench.bench.presets import TRANSFORMER_RANDOM as TRANSFORMER_RANDOM
from latbench.errors import ConfigError, SpecError

SpaceResolver = Callable[[str], list[OpSpec]]


@dataclass(frozen=True)
class RandomKernels:
    kind: str
    count: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """A user's model file whose kernels a plan measures: its path (a relative path in a plan
    file is relative to the file's folder) and `input_shape` texts ("NAME=1x3x224x224", as
    `--input-shape` takes them) for inputs with symbolic dimensions."""

    path: str
    input_shape: tuple[str, ...] = ()

    def to_json(self) -> str | dict[str, Any]:
        if not self.input_shape:
            return self.path
        return {"path": self.path, "input_shape": list(self.input_shape)}


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
    models: tuple[ModelEntry, ...] = ()
    # Where the plan came from ("plan file PATH", "plan preset 'quick'"), for messages.
    origin: str = field(default="", compare=False)
    # The folder relative model paths start from (a plan file's folder; else the working one).
    base: Path | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        return self.origin or f"plan {self.name!r}"

    def model_path(self, entry: ModelEntry) -> Path:
        path = Path(entry.path).expanduser()
        return path if path.is_absolute() or self.base is None else self.base / path

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "seed": self.seed, "spaces": list(self.spaces),
               "primitives": self.primitives, "around": self.around,
               "random": [{"kind": r.kind, "count": r.count, **r.fields} for r in self.random],
               "specs": list(self.specs), "networks": list(self.networks)}
        if self.models:  # only then, so the cards of plans without models stay as they were
            out["models"] = [m.to_json() for m in self.models]
        return out


def load_plan(source: str | Path) -> Plan:
    """A preset by name, or a plan file (.yaml/.yml/.toml)."""
    text = str(source)
    if text in PRESETS:
        return _plan_from_dict({"name": text, **PRESETS[text]}, origin=f"plan preset {text!r}")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"plan {text!r} is neither a preset ({preset_names()}) nor a file")
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
    return _plan_from_dict({"name": path.stem, **raw}, origin=f"plan file {path}",
                           base=path.resolve().parent)


_PLAN_KEYS = {"name", "seed", "spaces", "primitives", "around", "random", "specs", "networks",
              "models"}


def _plan_from_dict(raw: dict[str, Any], origin: str, base: Path | None = None) -> Plan:
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
                models=_models(raw.get("models", []) or [], origin), origin=origin, base=base)


def _models(value: Any, origin: str) -> tuple[ModelEntry, ...]:
    """A plan's `models`: paths, or {path, input_shape: [NAME=DIMS, ...]} mappings."""
    from latbench.bench.model_files import parse_input_shapes

    if not isinstance(value, list):
        raise ConfigError(f"{origin}: 'models' must be a list of model file paths, got "
                          f"{value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            out.append(ModelEntry(item))
            continue
        shapes = item.get("input_shape", []) if isinstance(item, dict) else None
        if isinstance(shapes, str):
            shapes = [shapes]
        if (not isinstance(item, dict) or set(item) - {"path", "input_shape"}
                or not isinstance(item.get("path"), str) or not item["path"]
                or not isinstance(shapes, list) or not all(isinstance(t, str) for t in shapes)):
            raise ConfigError(f"{origin}: models entry {i} must be a path or {{path: PATH, "
                              f"input_shape: [NAME=DIMS, ...]}}, got {item!r}")
        try:
            parse_input_shapes(shapes)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: models entry {i}: {exc}") from exc
        out.append(ModelEntry(item["path"], tuple(shapes)))
    return tuple(out)


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
    for i, entry in enumerate(plan.models):  # each distinct kernel once, as spaces give them
        kernels = model_entry_kernels(plan, entry, f"{plan.where}: models entry {i}")
        real.extend({k.key(): k for k in kernels}.values())
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


def model_entry_kernels(plan: Plan, entry: ModelEntry, label: str) -> list[OpSpec]:
    """The kernels of a plan's model file, fused blocks (MBConv) whole - a predictor prices a
    block whole when it was trained on it - and every other kernel as a runtime executes it;
    a model that cannot be read is a ConfigError starting with `label`."""
    from latbench.bench.model_files import model_kernels, parse_input_shapes
    from latbench.errors import LatbenchError

    path = plan.model_path(entry)
    if not path.is_file():
        raise ConfigError(f"{label}: model file {path} does not exist")
    try:
        return list(model_kernels(path, group=True,
                                  input_shapes=parse_input_shapes(entry.input_shape)).kernels)
    except LatbenchError as exc:
        raise ConfigError(f"{label}: {exc}") from exc


def _channels(c: int, rng: np.random.Generator) -> int:
    scaled = c * float(rng.choice([0.5, 0.75, 1.0, 1.25, 1.5, 2.0]))
    step = 8 if c >= 16 else 1
    return max(step, int(round(scaled / step)) * step)


def perturb(spec: OpSpec, rng: np.random.Generator, tries: int = 20) -> OpSpec:
    """A random valid neighbour of `spec`: other size, channels, kernel or stride, same kind;
    a patchifying conv (kernel = stride, no padding: a patch embedding, a ConvNeXt
    downsampling) keeps its patch, attention matmuls and softmaxes keep their token axes tied
    to the tokens."""
    for _ in range(tries):
        changes: dict[str, Any] = {}
        if spec.kind != "linear":
            # Images stay within 224 px; token tensors (h = tokens, w = 1) may be longer.
            cap = 4 * spec.h if spec.w == 1 < spec.h else 224
            size = int(max(1, min(cap, spec.h * float(rng.choice([0.5, 1.0, 1.0, 2.0])))))
            changes.update(h=size, w=size if spec.h == spec.w else spec.w)
        changes["cin"] = _channels(spec.cin, rng)
        if spec.kind in ("conv", "mbconv", "linear"):
            changes["cout"] = _channels(spec.cout, rng)
        if spec.kind in ("dwconv", "mbconv") or (spec.kind == "conv" and spec.kernel > 1):
            changes["kernel"] = int(rng.choice([3, 5, 7]))
            changes["pad"] = -1
        if spec.kind == "conv" and spec.groups > 1:
            changes.update(_perturb_groups(spec, changes["cin"], rng))
        if spec.kind in ("conv", "dwconv", "mbconv"):
            changes["stride"] = int(rng.choice([1, 1, 2]))
        if spec.kind == "mbconv":
            changes["expand"] = float(rng.choice([1, 3, 4, 6]))
            changes["residual"] = None
        if _patchifies(spec):
            changes.update(_perturb_patches(spec, rng))
        if spec.kind not in _PERTURBED_BEFORE:  # the later kinds: their own fields too
            changes.update(_perturb_new(spec, changes["cin"], rng))
        try:
            return spec.with_(**changes)
        except SpecError:
            continue
    return spec


# Kinds `perturb` knew first: what it draws for them stays as it was, so plans keep their specs
# (concat channels, token tensors and patchifying convs, which no earlier plan held, aside).
_PERTURBED_BEFORE = frozenset(("conv", "dwconv", "mbconv", "linear", "pool", "add", "mul",
                               "act", "se", "concat"))
# Input channels up to this are an image's (RGB, grey): a neighbour keeps them.
_IMAGE_CHANNELS = 4


def _perturb_groups(spec: OpSpec, cin: int, rng: np.random.Generator) -> dict[str, Any]:
    """A grouped conv's neighbour keeps what its time follows (ResNeXt / RegNet blocks): its
    kernel, a group width near its own (half, same or double), the ratio of output to input
    channels; `cin` (already drawn) sets how many groups."""
    own = spec.cin // spec.groups
    width = int(rng.choice([own, own, 2 * own] + ([own // 2] if own % 2 == 0 and own >= 8
                                                   else [])))
    groups = max(1, round(cin / width))
    per_group_out = max(1, round(spec.cout / spec.cin * width))
    return {"groups": groups, "cin": groups * width, "cout": groups * per_group_out,
            "kernel": spec.kernel, "pad": spec.pad}


def _patchifies(spec: OpSpec) -> bool:
    """A conv cutting its input into non-overlapping patches (kernel = stride >= 2, no pad)."""
    return (spec.kind == "conv" and spec.kernel == spec.stride >= 2 and spec.pad == 0
            and not spec.kernel_w and spec.dilation == 1)


def _perturb_patches(spec: OpSpec, rng: np.random.Generator) -> dict[str, Any]:
    """A patchifying conv's neighbour: same patch, another number of patches (a multiple of
    the patch as size) and width; an image's channels kept."""
    patch = spec.kernel
    side = max(1, int(round(spec.h / patch * float(rng.choice([0.5, 0.75, 1.0, 1.5, 2.0])))))
    changes: dict[str, Any] = {"h": side * patch, "w": side * patch, "kernel": patch,
                               "stride": patch, "pad": 0}
    if spec.cin <= _IMAGE_CHANNELS:
        changes["cin"] = spec.cin
    return changes


def _perturb_new(spec: OpSpec, cin: int, rng: np.random.Generator) -> dict[str, Any]:
    """Changes to the fields of the kinds added later (beyond size and input channels `cin`,
    already drawn): tokens, heads, and the output channels of the kinds that have them; the
    token axes of attention scores follow the tokens, a slice keeps its share of the
    channels."""
    changes: dict[str, Any] = {}
    tokens = spec.tokens
    if "tokens" in KEY_FIELDS[spec.kind]:
        tokens = max(1, int(round(spec.tokens * float(rng.choice([0.5, 1.0, 2.0])))))
        changes["tokens"] = tokens
    if "cout" in KEY_FIELDS[spec.kind]:
        changes["cout"] = _channels(spec.cout, rng)
    if spec.kind in ("bmm", "softmax"):
        changes["heads"] = max(1, int(round(spec.heads * float(rng.choice([0.5, 1.0, 2.0])))))
    if spec.kind == "bmm" and spec.cout == spec.tokens:  # Q K^T: [T, D] @ [D, T]
        changes["cout"] = tokens
    if spec.kind in ("bmm", "softmax") and spec.cin == spec.tokens:  # A V, softmax of scores
        changes["cin"] = tokens
    if spec.kind == "slice":
        changes["cout"] = max(1, min(cin - 1, round(spec.cout * cin / spec.cin)))
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


def plan_subjects(plan: Plan, precision: str = "float32") -> list[Subject]:
    """Everything a plan measures: its kernels with its calibration networks spread evenly
    among them, so networks and kernels share batches and so the device's state: the
    composition learns how kernels add up, not how the machine drifted between the two.
    `precision` (an OpSpec dtype) is the one the kernels and networks compute in."""
    forms = {f.key(): f for s in build_specs(plan) for f in precision_forms(s, precision)}
    kernels = [Subject.op(s) for s in forms.values()]
    networks = plan_networks(plan, precision)
    if not networks:
        return kernels
    step = len(kernels) / len(networks)
    subjects: list[Subject] = []
    for i, network in enumerate(networks):
        subjects += kernels[round(i * step):round((i + 1) * step)]
        subjects.append(network)
    return subjects


def plan_networks(plan: Plan, precision: str = "float32") -> list[Subject]:
    """A plan's calibration networks with their kernels: network sets in `precision`, then
    model files as they are (a relative path from the plan file's folder; split like the
    plan's `models`, and measured at the input shape a `models` entry of the same file
    gives)."""
    sets = [item for item in plan.networks if not _is_model_path(item)]
    out = resolve_networks(",".join(sets), seed=plan.seed, with_kernels=True,
                           precision=precision) if sets else []
    shapes = {plan.model_path(m).resolve(): m.input_shape for m in plan.models}
    for i, item in enumerate(plan.networks):
        if _is_model_path(item):
            path = plan.model_path(ModelEntry(item))
            entry = ModelEntry(str(path), shapes.get(path.resolve(), ()))
            kernels = model_entry_kernels(plan, entry, f"{plan.where}: networks entry {i}")
            out.append(file_network(path, kernels, input_shape=entry.input_shape))
    return out


def kernel_set_networks(plan: Plan) -> set[str]:
    """Network keys ("FAMILY:NAME") of the family networks whose kernels the plan measures:
    held-out evaluation should leave them out too (a small family can draw the same
    architecture under another seed)."""
    return {f"{net.family}:{net.name}" for space in plan.spaces if space.startswith("family:")
            for net in family_set_networks(space)}


def plan_from_model(model: str | Path, around: int = 2, input_shape: Sequence[str] = (),
                    seed: int = 0, calibrate: bool = True) -> Plan:
    """The plan of a user's model file: its own kernels (fused blocks whole, and their
    primitives), `around` neighbours of each, and - with `calibrate` - the model itself as
    the calibration network. Checked now: a model that cannot be read is refused before any
    plan is written."""
    path = Path(model)
    plan = Plan(name=path.stem, seed=seed, around=_integer(around, "--around", minimum=0),
                models=(ModelEntry(str(path), tuple(input_shape)),),
                networks=(str(path),) if calibrate else (), origin=f"plan of {path}")
    model_entry_kernels(plan, plan.models[0], plan.where)
    return plan


def plan_yaml(plan: Plan, relative_to: Path | None = None) -> str:
    """The plan as a YAML file a user can edit and pass to `bench ops --plan`; model paths
    relative to the folder `relative_to` (the file's) when they lie under it, else absolute."""
    import yaml

    def where(text: str) -> str:
        path = plan.model_path(ModelEntry(text)).resolve()
        if relative_to is not None and path.is_relative_to(relative_to.resolve()):
            return str(path.relative_to(relative_to.resolve()))
        return str(path)

    raw = plan.to_dict()
    raw["models"] = [m.to_json() for m in (ModelEntry(where(e.path), e.input_shape)
                                           for e in plan.models)]
    raw["networks"] = [where(n) if _is_model_path(n) else n for n in plan.networks]
    raw = {k: v for k, v in raw.items() if v not in ([], None)}
    head = (f"# latbench plan {plan.name!r}: `latbench bench plan FILE` shows its kernels,\n"
            "# `latbench bench ops --plan FILE` measures them (keys: docs/measurement.md, "
            "section 5).\n")
    return head + yaml.safe_dump(raw, sort_keys=False, width=100)


def _is_model_path(item: str) -> bool:
    """Whether a `networks` item is a model file path (not a NAME:COUNT network set)."""
    return Path(item).suffix.lower() in model_suffixes()

