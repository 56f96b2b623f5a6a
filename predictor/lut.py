"""Lookup tables: the exact-table predictor, and the ProxylessNAS / Once-for-All YAML formats.

Many published spaces ship per-layer latency tables instead of a model: ProxylessNAS (mobile,
expansion *ratio* in the key, `var`) and Once-for-All (absolute *middle channels* in the key,
`se`/`hs` flags, `std`). Importing one gives a `LatencyPredictor` with a `LookupTablePredictor`
over latbench kernels inside, so a table measured elsewhere plugs into the same network sums,
searches and comparisons as a fitted predictor. Exporting goes the other way: any predictor
priced over a layout of table keys (a search space's layers, see `space_layout` below, or the
keys of an existing table).

Key formats (HxWxC, output after the layer's stride):
- `Conv-input:...-output:...` the stem 3x3 conv; `Conv_1` the 1x1 head conv; `Conv_2` (OFA) the
  1x1 conv on the pooled 1x1 map; `AvgPool2D` (OFA) the global average pool;
- `Logits-input:...-output:N` the classifier: in OFA a linear layer on the pooled vector, in
  ProxylessNAS global pool *and* linear (its time is assigned to the linear kernel and the pool
  kernel is priced 0 ms - recorded in the table's `merged` map, so the sum stays exact);
- `expanded_conv-input:...-output:...-expand:E-kernel:K-stride:S-idskip:0|1[-se:0|1-hs:0|1]`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.bench.ops import OpSpec, timed_alone
from latbench.bench.spaces.base import SearchSpace
from latbench.errors import ConfigError, PredictorError, SpecError, UnknownKernelError
from latbench.predictor.models import KernelPredictor, register_predictor

if TYPE_CHECKING:
    from latbench.predictor.latency_predictor import LatencyPredictor

FORMATS = ("proxyless", "ofa")
SPREAD_FIELD = {"proxyless": "var", "ofa": "std"}
# Activations the formats assume (the keys do not say): ProxylessNAS is MobileNetV2 (ReLU6);
# OFA's MobileNetV3 uses h-swish where `hs:1` and in its stem and head, ReLU elsewhere.
DEFAULT_ACT = {"proxyless": "relu6", "ofa": "hswish"}


@register_predictor("lut")
class LookupTablePredictor(KernelPredictor):
    """Exact lookup table: kernel key -> ms. A key not in the table raises UnknownKernelError
    naming it (never zero, never a nearest neighbour: that would be a model, not a table).

    Fitting on repeated keys keeps their geometric mean.
    """

    def __init__(self) -> None:
        pass

    def _fit_specs(self, specs: list[OpSpec], features: np.ndarray, ms: np.ndarray) -> Any:
        values: dict[str, list[float]] = {}
        for spec, value in zip(specs, ms, strict=True):
            values.setdefault(spec.key(), []).append(float(value))
        return {key: (v[0] if len(v) == 1 else math.exp(sum(map(math.log, v)) / len(v)))
                for key, v in values.items()}

    def _predict_ms(self, model: Any, specs: list[OpSpec], features: np.ndarray) -> np.ndarray:
        # a kernel keyed with its network context is priced as timed alone unless the table
        # holds it as it is
        keys = [k if (k := s.key()) in model else timed_alone(s).key() for s in specs]
        missing = sorted({k for k in keys if k not in model})
        if missing:
            shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)"
                                              if len(missing) > 5 else "")
            raise UnknownKernelError(f"lookup table has no entry for kernel(s) {shown}; it holds "
                                     f"{len(model)} {specs[0].kind} entries")
        return np.array([model[k] for k in keys], dtype=np.float64)

    def _save_kind(self, model: Any, path: Path) -> str:
        target = path.with_suffix(".json")
        target.write_text(json.dumps(model, indent=1, sort_keys=True) + "\n")
        return target.name

    def _load_kind(self, path: Path) -> Any:
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise PredictorError(f"{path} is not a saved lookup table: {exc}") from exc
        if not isinstance(table, dict):
            raise PredictorError(f"{path} is not a saved lookup table (not a JSON object)")
        return {str(k): float(v) for k, v in table.items()}

    @classmethod
    def from_entries(cls, entries: dict[str, float]) -> LookupTablePredictor:
        """A table from spec key -> ms as given (0 ms allowed: merged kernels)."""
        from latbench.predictor.features import FEATURE_VERSION

        models: dict[str, dict[str, float]] = {}
        for key, ms in entries.items():
            spec = OpSpec.from_key(key)
            if not math.isfinite(ms) or ms < 0:
                raise PredictorError(f"lookup entry {key} has latency {ms!r}")
            models.setdefault(spec.kind, {})[key] = float(ms)
        table = cls()
        table.models_ = models
        table.n_train_ = {kind: len(t) for kind, t in models.items()}
        table.feature_version_ = FEATURE_VERSION
        return table


# --- table files --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LutEntry:
    """One row of a layer table: its key, the latbench kernels it covers, and its statistics."""

    key: str
    specs: tuple[OpSpec, ...]
    mean_ms: float
    count: int | None = None
    spread: float | None = None  # var (ProxylessNAS) or std (OFA), as in the file


@dataclass
class LayerTable:
    format: str
    entries: list[LutEntry]
    source: str = ""
    merged: dict[str, str] = field(default_factory=dict)  # zero-priced kernel -> entry key

    def mean_by_key(self) -> dict[str, float]:
        return {e.key: e.mean_ms for e in self.entries}

    def predictor(self) -> LookupTablePredictor:
        """The table as an exact predictor over latbench kernel keys.

        A kernel listed under several table keys must carry the same time in each (else the
        table is ambiguous and this raises). A multi-kernel entry (ProxylessNAS Logits: pool +
        linear) puts its whole time on its last kernel and 0 ms on the others.
        """
        values: dict[str, float] = {}
        for entry in self.entries:
            shares = _shares(entry)
            for spec, ms in zip(entry.specs, shares, strict=True):
                key = spec.key()
                if key in values and values[key] != ms:
                    raise PredictorError(f"{self.source}: kernel {key} gets {values[key]} ms "
                                         f"and {ms} ms from different entries (e.g. {entry.key})")
                values[key] = ms
        return LookupTablePredictor.from_entries(values)


def _shares(entry: LutEntry) -> list[float]:
    """How an entry's time is split over its kernels: all of it on the last one (the linear of
    a merged pool + linear), 0 on the others."""
    return [0.0] * (len(entry.specs) - 1) + [entry.mean_ms]


_HWC = r"(\d+)x(\d+)x(\d+)"
_PLAIN = re.compile(rf"^(Conv|Conv_1|Conv_2|AvgPool2D)-input:{_HWC}-output:{_HWC}$")
_LOGITS = re.compile(rf"^Logits-input:{_HWC}-output:(\d+)$")
_MBCONV = re.compile(rf"^expanded_conv-input:{_HWC}-output:{_HWC}-expand:([0-9.]+)-kernel:(\d+)"
                     r"-stride:(\d+)-idskip:([01])(?:-se:([01])-hs:([01]))?$")


def detect_format(keys: Sequence[str], spread_names: set[str]) -> str:
    if any("-se:" in k for k in keys) or "std" in spread_names:
        return "ofa"
    return "proxyless"


def parse_key(key: str, fmt: str) -> tuple[OpSpec, ...]:
    """The latbench kernels one table key stands for."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown lookup table format {fmt!r}; known: {', '.join(FORMATS)}")
    try:
        return _parse_key(key, fmt)
    except SpecError as exc:
        raise ConfigError(f"lookup key {key!r} gives an invalid kernel: {exc}") from exc


def _parse_key(key: str, fmt: str) -> tuple[OpSpec, ...]:
    act = DEFAULT_ACT[fmt]
    if m := _PLAIN.match(key):
        name = m.group(1)
        h, w, cin, oh, ow, cout = (int(g) for g in m.groups()[1:])
        if name == "AvgPool2D":
            if (oh, ow) != (1, 1) or cin != cout:
                raise ConfigError(f"lookup key {key!r}: AvgPool2D must pool to 1x1xC")
            return (OpSpec("pool", h=h, w=w, cin=cin, pool="gavg"),)
        if name == "Conv":
            stride = max(1, round(h / oh))
            return (OpSpec("conv", h=h, w=w, cin=cin, cout=cout, kernel=3, stride=stride,
                           act=act),)
        spec = OpSpec("conv", h=h, w=w, cin=cin, cout=cout, kernel=1, act=act)
        if (spec.out_h, spec.out_w) != (oh, ow):
            raise ConfigError(f"lookup key {key!r}: a 1x1 conv cannot map {h}x{w} to {oh}x{ow}")
        return (spec,)
    if m := _LOGITS.match(key):
        h, w, cin, classes = (int(g) for g in m.groups())
        linear = OpSpec("linear", cin=cin, cout=classes)
        if (h, w) == (1, 1):
            return (linear,)
        return (OpSpec("pool", h=h, w=w, cin=cin, pool="gavg"), linear)
    if m := _MBCONV.match(key):
        h, w, cin, oh, ow, cout = (int(g) for g in m.groups()[:6])
        expand_text, kernel, stride, idskip = m.group(7), int(m.group(8)), int(m.group(9)), \
            m.group(10) == "1"
        se, hs = m.group(11) == "1", m.group(12) == "1"
        if fmt == "ofa":
            expand = float(expand_text) / cin
            block_act = "hswish" if hs else "relu"
        else:
            expand = float(expand_text)
            block_act = act
            if m.group(11) is not None:
                raise ConfigError(f"lookup key {key!r} has se/hs flags: an OFA key, not "
                                  "ProxylessNAS")
        spec = OpSpec("mbconv", h=h, w=w, cin=cin, cout=cout, kernel=kernel, stride=stride,
                      expand=expand, act=block_act, se=se, residual=idskip)
        if (spec.out_h, spec.out_w) != (oh, ow):
            raise ConfigError(f"lookup key {key!r}: stride {stride} maps {h}x{w} to "
                              f"{spec.out_h}x{spec.out_w}, not {oh}x{ow}")
        if fmt == "ofa" and spec.mid != int(float(expand_text)):
            raise ConfigError(f"lookup key {key!r}: middle channels {expand_text} are not a "
                              f"ratio latbench can hold for {cin} input channels")
        return (spec,)
    raise ConfigError(f"lookup key {key!r} is not a {fmt} layer key")


def read_table(path: str | Path, fmt: str | None = None) -> LayerTable:
    """Read a ProxylessNAS or OFA YAML table (format detected from its keys when not given)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        raise ConfigError(f"cannot read lookup table {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"lookup table {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"lookup table {path} must be a non-empty mapping of layer keys")
    spread_names = {name for v in raw.values() if isinstance(v, dict)
                    for name in v if name in ("var", "std")}
    fmt = fmt or detect_format(list(raw), spread_names)
    entries = []
    merged: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, dict) or "mean" not in value:
            raise ConfigError(f"{path}: entry {key!r} has no mean")
        mean = float(value["mean"])
        if not math.isfinite(mean) or mean < 0:
            raise ConfigError(f"{path}: entry {key!r} has mean {value['mean']!r}")
        specs = parse_key(str(key), fmt)
        for spec in specs[:-1]:
            merged[spec.key()] = str(key)
        spread = value.get(SPREAD_FIELD[fmt])
        entries.append(LutEntry(str(key), specs, mean,
                                None if value.get("count") is None else int(value["count"]),
                                None if spread is None else float(spread)))
    return LayerTable(fmt, entries, str(path), merged)


def import_table(path: str | Path, fmt: str | None = None, device: str = "",
                 runtime: str = "") -> LatencyPredictor:
    """A YAML layer table as an exact network-level predictor (a lookup table inside, no
    composition, no call overhead: the table's entries are what a network sums); the manifest
    records the table's source, format, entries and merged kernels, and the `device` and
    `runtime` it was measured on when given."""
    from latbench.predictor.latency_predictor import LatencyPredictor

    table = read_table(path, fmt)
    specs = [spec for entry in table.entries for spec in entry.specs]
    return LatencyPredictor.from_kernels(
        table.predictor(), ranges_from=specs,
        info={"device": device, "runtime": runtime,
              "lut": {"source": str(Path(path).resolve()), "format": table.format,
                      "entries": len(table.entries), "merged": table.merged}})


# --- export ------------------------------------------------------------------------------------
def _hwc(h: int, w: int, c: int) -> str:
    return f"{h}x{w}x{c}"


def _expand_text(spec: OpSpec, fmt: str) -> str:
    if fmt == "ofa":
        return str(spec.mid)
    return f"{spec.expand:g}"


def layout_keys(specs: Sequence[OpSpec], fmt: str) -> list[tuple[str, tuple[OpSpec, ...]]]:
    """Name a network's kernels (in order) with table keys: convs before the first block are
    `Conv`, 1x1 convs after the blocks `Conv_1` (then `Conv_2` on a 1x1 map), a global pool
    followed by a linear layer is `Logits` (ProxylessNAS) or `AvgPool2D` + `Logits` (OFA)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown lookup table format {fmt!r}; known: {', '.join(FORMATS)}")
    out: list[tuple[str, tuple[OpSpec, ...]]] = []
    specs = list(specs)
    seen_block = False
    i = 0
    while i < len(specs):
        spec = specs[i]
        io = f"input:{_hwc(spec.h, spec.w, spec.cin)}-output:" \
             f"{_hwc(spec.out_h, spec.out_w, spec.out_c)}"
        if spec.kind == "mbconv":
            seen_block = True
            key = (f"expanded_conv-{io}-expand:{_expand_text(spec, fmt)}-kernel:{spec.kernel}"
                   f"-stride:{spec.stride}-idskip:{int(spec.residual)}")
            if fmt == "ofa":
                key += f"-se:{int(spec.se)}-hs:{int(spec.act == 'hswish')}"
            out.append((key, (spec,)))
        elif spec.kind == "conv" and not seen_block:
            out.append((f"Conv-{io}", (spec,)))
        elif spec.kind == "conv" and spec.kernel == 1:
            name = "Conv_2" if (spec.h, spec.w) == (1, 1) else "Conv_1"
            out.append((f"{name}-{io}", (spec,)))
        elif spec.kind == "pool" and spec.pool == "gavg":
            nxt = specs[i + 1] if i + 1 < len(specs) else None
            if fmt == "proxyless" and nxt is not None and nxt.kind == "linear":
                out.append((f"Logits-input:{_hwc(spec.h, spec.w, spec.cin)}-output:{nxt.cout}",
                            (spec, nxt)))
                i += 2
                continue
            out.append((f"AvgPool2D-{io}", (spec,)))
        elif spec.kind == "linear":
            out.append((f"Logits-input:{_hwc(1, 1, spec.cin)}-output:{spec.cout}", (spec,)))
        else:
            raise ConfigError(f"kernel {spec.key()} has no place in a {fmt} layer table")
        i += 1
    return out


def export_table(predictor: LatencyPredictor, layout: Sequence[tuple[str, Sequence[OpSpec]]],
                 fmt: str) -> dict[str, dict[str, float | int]]:
    """Price every entry of `layout` with `predictor` (sum over an entry's kernels, with the
    predictor's composition) as a table in `fmt`: {key: {count, mean, var|std}}."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown lookup table format {fmt!r}; known: {', '.join(FORMATS)}")
    keys = [key for key, _ in layout]
    prices = predictor.group_ms([specs for _, specs in layout])
    table: dict[str, dict[str, float | int]] = {}
    for key, price in zip(keys, prices, strict=True):
        table[key] = {"count": 1, "mean": float(price), SPREAD_FIELD[fmt]: 0.0}
    if len(table) != len(keys):
        raise ConfigError("layout lists a table key twice")
    return table


def table_layout(path: str | Path, fmt: str | None = None
                 ) -> list[tuple[str, tuple[OpSpec, ...]]]:
    """The keys of an existing table (and their kernels), to export another predictor like it."""
    table = read_table(path, fmt)
    return [(e.key, e.specs) for e in table.entries]


def write_table(table: dict[str, dict[str, float | int]], path: str | Path) -> Path:
    """Write a table as YAML (keys in the given order, floats exact)."""
    import yaml

    from latbench.bench.store import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(table, sort_keys=False, default_flow_style=False))
    return path


# --- a search space's table ---------------------------------------------------------------


def space_layout(space: SearchSpace, fmt: str) -> list[tuple[str, tuple[OpSpec, ...]]]:
    """Every table entry any architecture of `space` needs: stem, every candidate of every
    searchable layer, head; each key once, in network order."""
    prefix, suffix = space.fixed_ops()
    middle = [spec for layer in range(space.n_layers) for cand in space.candidates(layer)
              for spec in cand]
    entries: dict[str, tuple[OpSpec, ...]] = {}
    for key, specs in layout_keys([*prefix, *middle, *suffix], fmt):
        known = entries.setdefault(key, specs)
        if known != specs:
            raise ConfigError(f"space {space.name}: table key {key} stands for two different "
                              f"kernels ({known[0].key()} and {specs[0].key()}); the {fmt} "
                              "format cannot tell them apart")
    return list(entries.items())


def export_space_table(predictor: LatencyPredictor, space: SearchSpace, fmt: str
                       ) -> dict[str, dict[str, float | int]]:
    """The predictor's estimate of every entry of the space's table, in `fmt`."""
    return export_table(predictor, space_layout(space, fmt), fmt)
