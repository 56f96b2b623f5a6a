"""`latbench bench repeat`: re-measure a tiny dataset end to end, and the comparison's exact
arithmetic on synthetic records."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from latbench.bench.ops import OpSpec
from latbench.bench.repeat import compare_records
from latbench.bench.store import LatencyDataset
from latbench.cli import main

SPECS = [OpSpec("conv", h=8, w=8, cin=4, cout=8, kernel=3),
         OpSpec("dwconv", h=8, w=8, cin=8, kernel=3),
         OpSpec("act", h=8, w=8, cin=8, act="relu"),
         OpSpec("pool", h=8, w=8, cin=8, pool="gavg")]


def frame(values: dict[str, float], stat: str = "min_ms") -> pd.DataFrame:
    return pd.DataFrame({"key": list(values), "device": "d", "runtime": "r", "settings": "s",
                         stat: list(values.values())})


def test_compare_records_exact() -> None:
    old = frame({"a": 1.0, "b": 2.0, "c": 4.0, "d": 1.0, "e": 5.0})
    new = frame({"a": 1.1, "b": 1.9, "c": 4.0, "d": 1.0, "x": 3.0})  # e and x are unmatched
    metrics, table = compare_records(old, new, ("min_ms", "median_ms"))
    assert set(metrics) == {"min_ms"}  # median_ms is in neither
    m = metrics["min_ms"]
    assert m["n"] == 4
    assert m["median"] == pytest.approx(0.025)  # |diffs| sorted: 0, 0, 0.05, 0.1
    assert m["max"] == pytest.approx(0.1) and m["mean"] == pytest.approx(0.0375)
    assert m["p90"] == pytest.approx(0.085)  # linear interpolation between 0.05 and 0.1
    assert m["signed_median"] == pytest.approx(0.0)  # -0.05, 0, 0, +0.1
    assert list(table["key"]) == ["a", "b", "c", "d"]
    assert list(table["min_ms_rel_diff"]) == pytest.approx([0.1, 0.05, 0.0, 0.0])


def test_bench_repeat_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "tiny.yaml"
    plan.write_text("name: tiny\nspecs:\n" + "".join(f"  - '{s.key()}'\n" for s in SPECS))
    data = tmp_path / "data"
    # the default protocol (stopping rule), kept small
    assert main(["bench", "ops", "--plan", str(plan), "--out", str(data), "--warmup", "2",
                 "--runs", "5", "--min-runs", "10", "--max-runs", "40", "--max-seconds", "1",
                 "--target-ci", "0.05", "--calibration-runs", "1"]) == 0
    records = LatencyDataset.open(data).records()
    assert len(records) == 4 and records["ci_rel_width"].notna().all()
    assert records["settings"].str.contains("target_ci=0.05").all()
    capsys.readouterr()

    out = tmp_path / "report"
    assert main(["bench", "repeat", "--data", str(data), "--sample", "3", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "repeatability of" in printed and "median_ms" in printed
    report = json.loads((out / "repeat.json").read_text())
    assert report["n_records"] == 3 and report["device"] == "local"
    assert report["settings"] == records["settings"].iloc[0]
    for stat in ("min_ms", "median_ms", "p90_ms"):
        m = report["metrics"][stat]
        assert m["n"] == 3 and 0 <= m["median"] <= m["p90"] <= m["max"]
    assert (out / "repeat.png").stat().st_size > 1000
    assert (out / "repeat.md").read_text().startswith("# Repeatability: local / onnxruntime")
    table = pd.read_csv(out / "repeat.csv")
    assert len(table) == 3 and set(table["key"]) <= set(records["key"])
    # measured again with the very same settings, into its own dataset
    again = LatencyDataset.open(out / "remeasured")
    assert set(again.records()["settings"]) == set(records["settings"])
    assert again.card["repeat_of"] == str(data.resolve())


def test_bench_repeat_refuses_another_device(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from latbench.bench.store import LatencyRecord

    data = tmp_path / "data"
    ds = LatencyDataset.create(data, {"run_settings": {"threads": 1}})
    ds.append([LatencyRecord.for_op(SPECS[0], device="pixel7", runtime="onnxruntime",
                                    settings="threads=1,warmup=10,runs=20,rounds=5,opt=all",
                                    min_ms=1.0, median_ms=1.0)])
    assert main(["bench", "repeat", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "no records with device 'local'" in err and "pixel7" in err
