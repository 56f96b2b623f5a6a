"""Platform: reading a record's platform (its threads, its precision, its delegate), the label,
JSON form and folder name, choosing among platforms with errors that name what exists, and a real
campaign measuring 1 and 2 threads into one dataset that resumes per thread count."""

from __future__ import annotations

from pathlib import Path

import pytest

from latbench.bench.campaign import CampaignConfig, Subject, run_campaign
from latbench.bench.ops import OpSpec
from latbench.bench.platform import (
    Platform,
    PlatformChoice,
    choose_platform,
    parse_precision,
    platforms_of,
    precision_of_kernels,
    record_platform,
)
from latbench.bench.runners import RunSettings
from latbench.bench.store import LatencyDataset, LatencyRecord
from latbench.device_agents import local_device
from latbench.errors import ConfigError, PlatformError

CONV = OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3)


def test_label_json_and_slug() -> None:
    two = Platform("local", "onnxruntime", threads=2)
    assert two.label() == str(two) == "local · onnxruntime · fp32 · 2 threads"
    assert two.slug() == "local-onnxruntime-fp32-2t"
    litert = Platform("pixel 7/a", "litert", "xnnpack", "int8", 4)
    assert litert.label() == "pixel 7/a · litert (xnnpack) · int8 · 4 threads"
    assert litert.slug() == "pixel_7_a-litert-xnnpack-int8-4t"
    assert Platform("d", "r").label() == "d · r · fp32 · 1 thread"
    for platform in (two, litert):
        assert Platform.from_json(platform.to_json()) == platform
        assert choose_platform([two, litert], platform.choice(), "x") == platform


@pytest.mark.parametrize(("data", "needle"), [
    ({"device": "d", "runtime": "r", "threads": 0}, "threads must be an integer >= 1"),
    ({"device": "d", "runtime": "r", "precision": "fp32"}, "unknown platform precision 'fp32'"),
    ({"device": "", "runtime": "r"}, "needs a device and a runtime"),
    ({"device": "d", "runtime": "r", "cores": 2}, "unknown field 'cores'"),
    (["d", "r"], "must be an object"),
])
def test_a_malformed_platform_is_refused_naming_where(data, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as error:
        Platform.from_json(data, "manifest.json: field 'platform'")
    assert str(error.value).startswith("manifest.json: field 'platform'")


def test_precision_names() -> None:
    assert [parse_precision(t) for t in ("fp32", "FLOAT32", "fp16", "int8", " Int8 ")] == \
        ["float32", "float32", "float16", "int8", "int8"]
    with pytest.raises(ConfigError, match="unknown precision 'bf16'; known: fp32, fp16, int8"):
        parse_precision("bf16")


def test_the_platform_of_a_record() -> None:
    op = LatencyRecord.for_op(CONV, device="pi", runtime="litert", threads=2,
                              settings="threads=2,warmup=10,runs=20,rounds=5,delegate=xnnpack")
    assert record_platform(op.__dict__) == Platform("pi", "litert", "xnnpack", "float32", 2)
    # a network record measured before networks carried a precision: fp32
    net = LatencyRecord.for_network("net:1", "f", device="pi", runtime="onnxruntime",
                                    threads=4, settings="threads=4,opt=all")
    assert net.dtype is None
    assert record_platform(net.__dict__) == Platform("pi", "onnxruntime", threads=4)
    quantized = LatencyRecord.for_network("net:2", "f", device="pi", runtime="onnxruntime",
                                          dtype="int8", settings="threads=1")
    assert record_platform(quantized.__dict__).precision == "int8"
    # a row without a threads value takes the settings key's
    assert record_platform({"device": "d", "runtime": "r", "settings": "threads=3,opt=all",
                            "threads": None, "dtype": None}).threads == 3


def test_precision_of_a_networks_kernels() -> None:
    half = OpSpec("conv", h=8, w=8, cin=8, cout=8, kernel=3, dtype="float16")
    int8 = OpSpec("linear", cin=8, cout=8, dtype="int8")
    assert precision_of_kernels([CONV, CONV]) == "float32"
    assert precision_of_kernels([int8, CONV]) == "int8"  # quantized, some kernels kept float
    assert precision_of_kernels([half, int8]) is None
    assert precision_of_kernels([]) is None


def test_choosing_names_what_exists_and_the_flags_that_choose() -> None:
    platforms = [Platform("pi", "onnxruntime", threads=n) for n in (1, 2, 4)]
    platforms.append(Platform("pi", "onnxruntime", precision="int8", threads=4))
    assert choose_platform(platforms, PlatformChoice(threads=2), "p").threads == 2
    with pytest.raises(PlatformError) as error:
        choose_platform(platforms, None, "predictor p")
    assert str(error.value) == (
        "predictor p holds 4 platforms (pi · onnxruntime · fp32 · 1 thread; pi · onnxruntime · "
        "fp32 · 2 threads; pi · onnxruntime · fp32 · 4 threads; pi · onnxruntime · int8 · 4 "
        "threads); choose one with --precision fp32|int8 and --threads 1|2|4")
    with pytest.raises(PlatformError, match=r"holds 2 platforms for --threads 4 .*; choose one "
                                            r"with --precision fp32\|int8$"):
        choose_platform(platforms, PlatformChoice(threads=4), "predictor p")
    with pytest.raises(PlatformError, match=r"^predictor p has no platform for --precision "
                                            r"fp16 --threads 4; it has: pi · onnxruntime"):
        choose_platform(platforms, PlatformChoice(precision="float16", threads=4),
                        "predictor p")


def test_a_campaign_measures_each_thread_count_as_a_platform(tmp_path: Path) -> None:
    """Two thread counts: every subject stored once per count under its own settings key; a
    rerun skips both; adding a count later measures only the new one."""
    settings = RunSettings(threads=1, warmup=1, runs=3, rounds=2)
    subjects = [Subject.op(CONV), Subject.op(OpSpec("linear", cin=32, cout=10)),
                Subject.chain("chain:1", "chain", [CONV, CONV])]
    dataset = LatencyDataset.create(tmp_path / "ds", {})
    device = local_device(str(tmp_path / "work"))

    def campaign(counts: tuple[int, ...]):
        return run_campaign(subjects, [device], ["onnxruntime"], dataset, CampaignConfig(
            settings=settings, thread_counts=counts, calibration_runs=0, max_load=None,
            drift_pause_s=0.01))

    summary = campaign((1, 2))
    assert (summary.total, summary.measured, summary.failed) == (6, 6, 0)
    assert sorted({d.threads for d in summary.drift}) == [1, 2]
    assert any(line.startswith("local/onnxruntime/2t: ") for line in summary.drift_report())
    records = dataset.records()
    assert sorted(records["threads"]) == [1, 1, 1, 2, 2, 2]
    assert {s.split(",")[0] for s in records["settings"]} == {"threads=1", "threads=2"}
    assert sorted(set(platforms_of(records))) == [Platform("local", "onnxruntime", threads=n)
                                                  for n in (1, 2)]
    network = records[records["subject"] == "network"]
    assert set(network["dtype"]) == {"float32"}  # the network names its kernels' precision
    again = campaign((2, 1))
    assert (again.skipped, again.measured) == (6, 0)
    more = campaign((1, 3))
    assert (more.skipped, more.measured) == (3, 3)
    assert sorted(dataset.records()["threads"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(("counts", "needle"), [
    ((1, 1), "lists a thread count twice"), ((0, 2), "integers >= 1")])
def test_bad_thread_counts(counts: tuple[int, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        CampaignConfig(thread_counts=counts)


def test_bench_ops_takes_several_thread_counts(tmp_path: Path, capsys) -> None:
    from latbench.cli import main

    plan = tmp_path / "tiny.yaml"
    plan.write_text(f"name: tiny\nspecs:\n  - '{CONV.key()}'\n")
    argv = ["bench", "ops", "--plan", str(plan), "--out", str(tmp_path / "ds"), "--runs", "3",
            "--rounds", "2", "--warmup", "1", "--fixed-runs", "--calibration-runs", "0",
            "--threads"]
    assert main([*argv, "1", "2"]) == 0
    data = LatencyDataset.open(tmp_path / "ds")
    assert sorted(data.records()["threads"]) == [1, 2]
    assert data.card["run_settings"]["threads"] == 1  # the first count's; records name theirs
    capsys.readouterr()
    assert main([*argv, "2", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["latbench: error: --threads lists a thread count twice: [2, 2]"]
