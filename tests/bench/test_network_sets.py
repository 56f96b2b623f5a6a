"""Network sets: model files of every format (.onnx, .tflite, folders mixing them) measured by
the runtimes that run their format and refused cleanly by the others; family networks exported
with torch's default exporter (the legacy one on request), each exported once per process; and
the family kernel sets of plans, which use the legacy exporter because both give the same
kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.export.to_tflite import to_tflite
from latbench.bench.families import NetworkDef, list_families, sample_networks
from latbench.bench.network_sets import _EXPORTS, family_kernels, resolve_networks
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings, get_runner
from latbench.bench.store import LatencyDataset
from latbench.cli import main
from latbench.device_agents import local_device
from latbench.errors import ConfigError, RunnerError
from latbench.predictor.evaluate import network_kernels

SPECS = [OpSpec("conv", h=16, w=16, cin=3, cout=16, kernel=3, stride=2, act="relu"),
         OpSpec("dwconv", h=8, w=8, cin=16, kernel=3, act="relu"),
         OpSpec("pool", h=8, w=8, cin=16, pool="gavg"), OpSpec("linear", cin=16, cout=10)]
FAST = CampaignConfig(settings=RunSettings(warmup=1, runs=3, rounds=1), calibration_runs=0,
                      drift_tolerance=10.0)
# Families whose ops the ONNX split does not read yet: none (the transformers are read too).
WAITING_FOR_PARSER: set[str] = set()


def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    graph = chain_graph(SPECS)
    (folder / "a.onnx").write_bytes(to_onnx(graph))
    (folder / "b.tflite").write_bytes(to_tflite(graph))
    (folder / "notes.txt").write_text("not a model")
    return folder


def test_a_folder_mixing_formats_gives_one_network_per_model_file(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    networks = resolve_networks(str(folder))
    assert [(n.key, n.family, n.model_format) for n in networks] == [
        ("onnx:a.onnx", "onnx", ".onnx"), ("tflite:b.tflite", "tflite", ".tflite")]
    single = resolve_networks(f"{folder / 'b.tflite'},nasbench-macro:2")
    assert [n.key for n in single][0] == "tflite:b.tflite" and len(single) == 3
    # split as `latbench predict FILE` splits them: both formats give the chain's kernels
    for network in networks:
        assert [k.key() for k in network_kernels(network)] == [s.key() for s in SPECS]


def test_missing_files_and_empty_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="network file .*absent.tflite does not exist"):
        resolve_networks(str(tmp_path / "absent.tflite"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no model files \(.onnx, .tflite\) in .*empty"):
        resolve_networks(str(tmp_path / "empty"))


def test_a_model_file_runs_on_the_runtimes_of_its_format(tmp_path: Path) -> None:
    onnx_net, tflite_net = resolve_networks(str(model_folder(tmp_path)))
    ort, litert = get_runner("onnxruntime"), get_runner("litert")
    assert tflite_net.model_bytes(litert)[4:8] == b"TFL3"
    assert onnx_net.model_bytes(ort) == (tmp_path / "models" / "a.onnx").read_bytes()
    assert tflite_net.refusal(litert) is None and onnx_net.refusal(ort) is None
    with pytest.raises(RunnerError, match=r"tflite:b.tflite is a .tflite model; runtime "
                                          r"onnxruntime runs .onnx"):
        tflite_net.model_bytes(ort)
    with pytest.raises(RunnerError, match=r"onnx:a.onnx is a .onnx model; runtime litert runs "
                                          r".tflite"):
        onnx_net.model_bytes(litert)
    kernel = Subject.op(SPECS[0])  # a kernel is exported for whatever runtime measures it
    assert kernel.refusal(ort) is None and kernel.refusal(litert) is None


def test_a_tflite_network_is_measured_by_litert(tmp_path: Path) -> None:
    networks = resolve_networks(str(model_folder(tmp_path)))
    summary = measure_into_dataset(networks, local_device(), "litert", tmp_path / "data", FAST)
    records = LatencyDataset.open(tmp_path / "data").records().set_index("key")
    assert (summary.measured, summary.failed) == (1, 1)  # the .onnx model is not litert's
    assert records.loc["tflite:b.tflite", "status"] == "ok"
    assert records.loc["tflite:b.tflite", "min_ms"] > 0
    assert summary.failures == [("local", "onnx:a.onnx", "RunnerError: onnx:a.onnx is a .onnx "
                                 "model; runtime litert runs .tflite")]


def test_bench_networks_refuses_a_format_the_runtime_cannot_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = model_folder(tmp_path)
    out = tmp_path / "data"
    code = main(["bench", "networks", "--networks", str(folder), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "tflite:b.tflite is a .tflite model; runtime onnxruntime runs .onnx" in err
    assert not out.exists()  # refused before anything is measured


def test_family_networks_export_with_the_default_exporter_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    exports: list[tuple[str, bool]] = []
    real = NetworkDef.to_onnx

    def counted(self: NetworkDef, *, dynamo: bool = True, opset: int = 17) -> bytes:
        exports.append((self.name, dynamo))
        return real(self, dynamo=dynamo, opset=opset)

    monkeypatch.setattr(NetworkDef, "to_onnx", counted)
    (net,) = resolve_networks("resnet:1", seed=11, with_kernels=True)
    first = net.model()
    assert onnx.load_from_string(first).opset_import[0].version >= 18  # the dynamo exporter
    again = resolve_networks("resnet:1", seed=11, with_kernels=True)[0]
    assert again.model() == first and again.kernels == net.kernels
    assert exports == [(net.key.split(":", 1)[1], True)]  # exported once for the process
    (legacy,) = resolve_networks("resnet:1", seed=11, dynamo=False)
    assert onnx.load_from_string(legacy.model()).opset_import[0].version == 17
    assert len(exports) == 2


@pytest.mark.parametrize("family", list_families())
def test_both_exporters_give_a_family_the_same_kernels(family: str) -> None:
    """Why plans' family kernel sets may use the legacy (faster) exporter: the kernels of a
    family network are the same whichever exporter wrote it."""
    (net,) = sample_networks(family, 1, np.random.default_rng(3))
    legacy = [k.key() for k in _EXPORTS.kernels(net, False)]
    assert legacy == [k.key() for k in _EXPORTS.kernels(net, True)]
    assert {k.key() for k in family_kernels(f"family:{family}:1:3")} == set(legacy)


def test_bad_family_kernel_sets_are_named() -> None:
    with pytest.raises(ConfigError, match="bad family kernel set 'family:nope:2'"):
        family_kernels("family:nope:2")
    with pytest.raises(ConfigError, match="bad count or seed in 'family:resnet:x'"):
        family_kernels("family:resnet:x")


def test_a_family_set_draws_past_excluded_networks_to_its_count() -> None:
    """A held-out set drawn with the seed a plan drew its calibration networks with: the
    excluded ones are drawn past, not dropped (resnet:3 used to give no ResNet at all);
    precision-qualified keys exclude only at their precision."""
    calibration = sample_networks("resnet", 3, np.random.default_rng(0))
    excluded = [f"resnet:{net.name}" for net in calibration]
    held = resolve_networks("resnet:3", 0, exclude=excluded)
    assert len(held) == 3
    assert not {n.key for n in held} & set(excluded)
    assert [n.key for n in resolve_networks("resnet:3", 0)] == excluded  # the same draw
    int8_only = [f"{key}@int8" for key in excluded]
    assert [n.key for n in resolve_networks("resnet:3", 0, exclude=int8_only)] == excluded
