"""The drift figure: drawn from what a card keeps of the last run, positioned in time (or by
batch number for cards kept before batches had times), redrawn by `latbench bench drift`, and
skipped with a warning when matplotlib is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import latbench.extras
from latbench.bench.drift_plot import DRIFT_PLOT, drift_axes, plot_dataset_drift, plot_drift
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


def batch(i: int, device: str = "rpi4", **changes) -> dict:
    return {"device": device, "runtime": "onnxruntime", "batch_id": f"b{i}",
            "reference_ms": 0.03 * (1 + 0.02 * i), "best_ms": 0.03, "ratio": 1 + 0.02 * i,
            "flagged": i > 5, "redone": 0, "temp_before_c": 50.0 + i, "temp_after_c": 52.0 + i,
            "freq_before_khz": 1_800_000.0 - 50_000 * i, "freq_after_khz": 1_750_000.0,
            "steal_share": None, "time_unix": 1_700_000_000.0 + 60 * i, "seconds": 30.0,
            "temp_source": "thermal_zone:thermal_zone0", **changes}


def drift(batches: list[dict]) -> dict:
    return {"tolerance": 0.1, "flagged_batches": 0, "report": ["rpi4/onnxruntime: 8 batches"],
            "control": {}, "batches": batches}


def test_figure_drawn_from_card_batches(tmp_path: Path) -> None:
    path = plot_drift(drift([batch(i) for i in range(8)] +
                            [batch(i, "pixel", steal_share=0.01 * i) for i in range(3)]),
                      tmp_path / "out" / "drift.png", "test")
    assert path == tmp_path / "out" / "drift.png"
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000
    assert [p.name for p in path.parent.iterdir()] == ["drift.png"]  # no temp file left


def test_axis_in_minutes_or_batch_numbers() -> None:
    starts, ends, label = drift_axes([batch(0), batch(2)])
    assert (starts, ends, label) == ([0.0, 2.0], [0.5, 2.5], "minutes since the first batch")
    old_card = [{k: v for k, v in batch(i).items() if k not in ("time_unix", "seconds")}
                for i in range(3)]
    starts, ends, label = drift_axes(old_card)
    assert (starts, label) == ([0.0, 1.0, 2.0], "batch") and ends[0] == pytest.approx(0.8)


def test_nothing_to_draw(tmp_path: Path) -> None:
    assert plot_drift(drift([]), tmp_path / "drift.png") is None
    assert not (tmp_path / "drift.png").exists()


def test_missing_matplotlib_skips_the_figure_with_a_warning(tmp_path: Path, monkeypatch,
                                                             caplog) -> None:
    monkeypatch.setattr(latbench.extras, "available", lambda module: False)
    assert plot_drift(drift([batch(0)]), tmp_path / "drift.png") is None
    assert "plots need matplotlib" in caplog.text and not (tmp_path / "drift.png").exists()


def test_redrawn_from_a_dataset_card_by_the_cli(tmp_path: Path, capsys) -> None:
    data = tmp_path / "ds"
    LatencyDataset.create(data, {"drift_last_run": drift([batch(i) for i in range(4)])})
    assert plot_dataset_drift(data) == data / DRIFT_PLOT
    (data / DRIFT_PLOT).unlink()
    assert main(["bench", "drift", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plot"] == str(data / DRIFT_PLOT) and report["batches"] == 4
    assert (data / DRIFT_PLOT).read_bytes()[:8] == PNG
    assert main(["bench", "drift", str(data), "--out", str(tmp_path / "x.png")]) == 0
    out = capsys.readouterr().out
    assert "drift: rpi4/onnxruntime: 8 batches" in out and f"drift plot: {tmp_path / 'x.png'}" \
        in out


def test_card_without_batches_is_a_clear_error(tmp_path: Path, capsys) -> None:
    data = tmp_path / "ds"
    LatencyDataset.create(data, {})
    with pytest.raises(ConfigError, match="keeps no per-batch drift"):
        plot_dataset_drift(data)
    assert main(["bench", "drift", str(data)]) != 0
    err = capsys.readouterr().err.strip()
    assert "keeps no per-batch drift" in err and len(err.splitlines()) == 1
