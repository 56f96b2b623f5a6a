"""Measured fusion rules on the predictor side: rules -> the `attach` set of the kernel split.

`bench.fusion` measures which (producer, follower) pairs a runtime fuses and stores the rules in
the dataset card; here they become the set `predictor.kernels.onnx_to_kernels(attach=...)` uses,
are written into the predictor manifest, and are applied to kernel lists that did not come
from ONNX (search-space chains), so every network is split the way the runtime executes it.

Pairs the rules did not test keep their default (`DEFAULT_ATTACH`); BatchNorm folding is not a
runtime choice (exporters fold it) and always stays. A measured "add" follower (a conv with a
residual input) is kept as evidence but not used for splitting: no latbench kernel kind holds a
conv with a second input, so the add stays a kernel of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from latbench.bench.fusion import FusionRules
from latbench.bench.ops import ACTIVATIONS, OpSpec
from latbench.predictor.kernels import DEFAULT_ATTACH

from latbench.errors import PredictorError

Attach = frozenset[tuple[str, str]]


def attach_from_rules(rules: FusionRules, base: Collection[tuple[str, str]] = DEFAULT_ATTACH
                      ) -> Attach:
    """The split's attach set: measured pairs decide, untested pairs keep `base`."""
    acts = set(ACTIVATIONS) - {"none"}
    kept = {pair for pair in base if pair not in rules.tested}
    fused = {pair for pair in rules.fused if pair[1] in acts}
    return frozenset(kept | fused)


def rules_from_card(card: dict[str, Any]) -> FusionRules | None:
    raw = card.get("fusion")
    return None if not raw else FusionRules.from_json(raw)


def attach_to_json(attach: Iterable[tuple[str, str]]) -> list[list[str]]:
    return sorted([list(pair) for pair in attach])


def attach_from_json(raw: Any) -> Attach:
    try:
        return frozenset((str(p), str(f)) for p, f in raw)
    except (TypeError, ValueError) as exc:
        raise PredictorError(f"fusion attach list is malformed: {raw!r}") from exc


def manifest_entry(rules: FusionRules) -> dict[str, Any]:
    """What a predictor manifest keeps: the attach set used and the measured rules."""
    return {"attach": attach_to_json(attach_from_rules(rules)), "rules": rules.to_json()}


def predictor_attach(predictor: Any) -> Attach:
    """The attach set a predictor was trained with (the default when it has none)."""
    return getattr(predictor, "attach_", None) or DEFAULT_ATTACH


def apply_attach(specs: Sequence[OpSpec], attach: Collection[tuple[str, str]]) -> list[OpSpec]:
    """Split kernels whose activation the runtime does not fuse: `conv act=relu` becomes
    `conv act=none` + an "act" kernel when (conv, relu) is not in `attach`. Fused blocks
    (mbconv, se) are priced whole and pass through."""
    out: list[OpSpec] = []
    for spec in specs:
        if spec.kind in ("conv", "dwconv", "linear", "add") and spec.act != "none" \
                and (spec.kind, spec.act) not in attach:
            out.append(spec.with_(act="none"))
            h, w = (1, 1) if spec.kind == "linear" else (spec.out_h, spec.out_w)
            out.append(OpSpec("act", h=h, w=w, cin=spec.out_c, act=spec.act, batch=spec.batch))
        else:
            out.append(spec)
    return out
