"""Lookup tables: the shared ProxylessNAS and Once-for-All examples import as exact predictors,
export back bit for bit, and a space exports in both formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from latbench.bench.ops import CONV_SHARED_S8, OpSpec
from latbench.bench.spaces import get_space
from latbench.cli import main
from latbench.errors import ConfigError, UnknownKernelError
from latbench.predictor.io import read_manifest
from latbench.predictor.latency_predictor import LatencyPredictor
from latbench.predictor.lut import (
    export_space_table,
    export_table,
    import_table,
    layout_keys,
    parse_key,
    read_table,
    space_layout,
    table_layout,
    write_table,
)
from latbench.predictor.models import get_predictor_class

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "luts"
PROXYLESS = DATA / "proxylessnas-pixel" / "pixel_trim.yaml"
OFA = sorted((DATA / "ofa-note10").glob("*_lookup_table.yaml"))


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [PROXYLESS, OFA[0], OFA[-1]], ids=lambda p: p.name)
def test_import_export_round_trip_is_exact(path: Path, tmp_path: Path) -> None:
    raw = _raw(path)
    table = read_table(path)
    assert table.format == ("proxyless" if "proxyless" in str(path) else "ofa")
    assert [e.key for e in table.entries] == list(raw)
    predictor = LatencyPredictor.from_kernels(table.predictor())
    exported = export_table(predictor, table_layout(path), table.format)
    assert list(exported) == list(raw)
    for key, row in raw.items():
        assert exported[key]["mean"] == row["mean"], key
    # Through a YAML file and back, and through the predictor's own save/load.
    written = write_table(exported, tmp_path / "t.yaml")
    again = read_table(written)
    assert again.mean_by_key() == table.mean_by_key()
    predictor.save(tmp_path / "p")
    loaded = LatencyPredictor.load(tmp_path / "p")
    assert export_table(loaded, table_layout(path), table.format) == exported


def test_every_shared_ofa_table_imports() -> None:
    assert len(OFA) == 17
    for path in OFA:
        predictor = import_table(path)
        assert set(predictor.kinds) == {"conv", "linear", "mbconv", "pool"}
        assert sum(predictor.n_train.values()) == len(_raw(path))
        assert predictor.info_["lut"]["entries"] == len(_raw(path))


def test_key_meanings() -> None:
    (mb,) = parse_key("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5"
                      "-stride:2-idskip:0", "proxyless")
    assert (mb.kind, mb.h, mb.cin, mb.cout, mb.kernel, mb.stride, mb.expand, mb.act,
            mb.residual) == ("mbconv", 112, 16, 24, 5, 2, 3.0, "relu6", False)
    (ofa,) = parse_key("expanded_conv-input:14x14x96-output:14x14x136-expand:288-kernel:3"
                       "-stride:1-idskip:0-se:1-hs:1", "ofa")
    assert (ofa.mid, ofa.se, ofa.act, ofa.residual) == (288, True, "hswish", False)
    pool, linear = parse_key("Logits-input:7x7x1280-output:1000", "proxyless")
    assert (pool.kind, pool.pool, linear.kind, linear.cin, linear.cout) == \
        ("pool", "gavg", "linear", 1280, 1000)
    (head,) = parse_key("Logits-input:1x1x1536-output:1000", "ofa")
    assert head.kind == "linear"
    (stem,) = parse_key("Conv-input:224x224x3-output:112x112x32", "proxyless")
    assert (stem.kernel, stem.stride, stem.act) == (3, 2, "relu6")
    with pytest.raises(ConfigError, match="not a proxyless layer key"):
        parse_key("Dense-input:1x1x2-output:3", "proxyless")
    with pytest.raises(ConfigError, match="stride"):
        parse_key("expanded_conv-input:8x8x16-output:8x8x16-expand:3-kernel:3-stride:2"
                  "-idskip:0", "proxyless")


def test_merged_logits_keeps_the_sum_exact() -> None:
    table = read_table(PROXYLESS)
    predictor = table.predictor()
    pool, linear = parse_key("Logits-input:7x7x1280-output:1000", "proxyless")
    assert table.merged == {pool.key(): "Logits-input:7x7x1280-output:1000"}
    total = predictor.predict([pool, linear]).sum()
    assert total == _raw(PROXYLESS)["Logits-input:7x7x1280-output:1000"]["mean"]


def test_unknown_kernel_names_it() -> None:
    predictor = import_table(PROXYLESS)
    odd = OpSpec("mbconv", h=56, w=56, cin=24, cout=24, kernel=3, expand=4, act="relu6")
    with pytest.raises(UnknownKernelError, match=odd.key().replace("=", "=")):
        predictor.predict([odd])
    with pytest.raises(UnknownKernelError, match="dwconv"):
        predictor.predict([OpSpec("dwconv", h=8, w=8, cin=8)])


def test_a_conv_marked_by_its_network_is_priced_as_timed_alone() -> None:
    """A lookup table of kernels timed alone prices a QDQ network's conv that ONNX Runtime runs
    in float (`CONV_SHARED_S8`) by the conv's own entry - the composition adds the rest - and
    an entry of the marked key, where a table has one, wins."""
    conv = OpSpec("conv", h=8, w=8, cin=16, cout=16, kernel=3, dtype="int8")
    marked = conv.with_(mode=CONV_SHARED_S8)
    table = get_predictor_class("lut")().fit([conv], [0.25])
    assert table.predict([marked, conv]).tolist() == [0.25, 0.25]
    both = get_predictor_class("lut")().fit([conv, marked], [0.25, 0.5])
    assert both.predict([marked]).tolist() == [0.5]


def test_proxyless_space_exports_the_pixel_layout() -> None:
    predictor = import_table(PROXYLESS)
    raw = _raw(PROXYLESS)
    space = get_space("proxyless")
    exported = export_space_table(predictor, space, "proxyless")
    assert set(exported) <= set(raw)
    # The space fixes the first block to kernel 3; the table also lists kernels 5 and 7.
    assert len(set(raw) - set(exported)) == 2
    for key, row in exported.items():
        assert row["mean"] == raw[key]["mean"]


def test_any_predictor_exports_in_both_formats(tmp_path: Path) -> None:
    space = get_space("proxyless", resolution=96, width_mult=0.5)
    specs = [s for _, group in space_layout(space, "ofa") for s in group]
    rng = np.random.default_rng(0)
    model = get_predictor_class("linear")().fit(specs, rng.uniform(0.1, 2.0, len(specs)))
    for fmt, spread in (("proxyless", "var"), ("ofa", "std")):
        table = export_space_table(LatencyPredictor.from_kernels(model), space, fmt)
        assert all(set(row) == {"count", "mean", spread} for row in table.values())
        path = write_table(table, tmp_path / f"{fmt}.yaml")
        back = read_table(path)
        assert back.format == fmt
        assert back.mean_by_key() == {k: v["mean"] for k, v in table.items()}
        flat = [s for e in back.entries for s in e.specs]
        np.testing.assert_allclose(
            [e.mean_ms for e in back.entries],
            [sum(model.predict(list(e.specs))) for e in back.entries])
        assert {s.kind for s in flat} == {"conv", "mbconv", "pool", "linear"}


def test_layout_refuses_kernels_outside_the_format() -> None:
    with pytest.raises(ConfigError, match="no place"):
        layout_keys([OpSpec("dwconv", h=8, w=8, cin=8)], "ofa")


def test_cli_import_and_export(tmp_path: Path, capsys) -> None:
    assert main(["predictor", "lut", "import", "--table", str(PROXYLESS),
                 "--out", str(tmp_path / "pixel")]) == 0
    manifest = read_manifest(tmp_path / "pixel")
    assert manifest["predictor"] == "lut" and manifest["lut"]["format"] == "proxyless"
    out = tmp_path / "again.yaml"
    assert main(["predictor", "lut", "export", "--predictor", str(tmp_path / "pixel"),
                 "--like", str(PROXYLESS), "--out", str(out)]) == 0
    assert read_table(out).mean_by_key() == read_table(PROXYLESS).mean_by_key()
    out_ofa = tmp_path / "space.yaml"
    assert main(["predictor", "lut", "export", "--predictor", str(tmp_path / "pixel"),
                 "--space", "proxyless", "--format", "ofa", "--out", str(out_ofa)]) == 0
    assert read_table(out_ofa).format == "ofa"
    assert main(["predictor", "lut", "export", "--predictor", str(tmp_path / "pixel"),
                 "--space", "proxyless", "--resolution", "160", "--out",
                 str(tmp_path / "x.yaml")]) == 1
    assert "lookup table has no entry" in capsys.readouterr().err


def test_cli_import_json(tmp_path: Path, capsys) -> None:
    import json

    capsys.readouterr()
    assert main(["predictor", "lut", "import", "--table", str(PROXYLESS), "--out",
                 str(tmp_path / "pixel"), "--device-name", "pixel1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "proxyless" and printed["entries"] == len(_raw(PROXYLESS))
    assert sum(printed["kinds"].values()) == sum(
        LatencyPredictor.load(tmp_path / "pixel").n_train.values())
    assert read_manifest(tmp_path / "pixel")["device"] == "pixel1"
