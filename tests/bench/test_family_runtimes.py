"""Family networks on every runtime: ONNX runtimes run torch's export, LiteRT the same network
converted (`Subject.onnx_model(convert=True)`), and the kernels a dataset keeps for a network
are those of the model its runtime measured - the TFLite split of the converted model on
LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from latbench.bench.campaign import CampaignConfig, Subject, measure_into_dataset, network_kernels
from latbench.bench.export.graph import chain_graph
from latbench.bench.export.to_onnx import to_onnx
from latbench.bench.kernels import onnx_to_kernels
from latbench.bench.network_sets import resolve_networks
from latbench.bench.ops import OpSpec
from latbench.bench.runners import RunSettings, get_runner
from latbench.bench.store import LatencyDataset
from latbench.bench.tflite_kernels import tflite_to_kernels
from latbench.cli import main
from latbench.device_agents import local_device
from latbench.errors import ExportError, RunnerError

FAST = CampaignConfig(settings=RunSettings(warmup=1, runs=3, rounds=1), calibration_runs=0,
                      drift_tolerance=10.0)
SPECS = [OpSpec("conv", h=8, w=8, cin=3, cout=8, kernel=3, act="relu"),
         OpSpec("pool", h=8, w=8, cin=8, pool="gavg"), OpSpec("linear", cin=8, cout=4)]


def test_a_family_network_is_runnable_by_every_runtime_in_its_format() -> None:
    (net,) = resolve_networks("resnet:1", seed=3, dynamo=False)
    ort, litert = get_runner("onnxruntime"), get_runner("litert")
    assert net.refusal(ort) is None and net.refusal(litert) is None
    assert net.model_bytes(ort) == net.model()  # torch's export, as before
    tflite = net.model_bytes(litert)
    assert tflite[4:8] == b"TFL3"
    # the same network: the converted model splits into the kernels of torch's export
    assert [k.key() for k in tflite_to_kernels(tflite)] == \
        [k.key() for k in onnx_to_kernels(net.model())]


def test_only_converted_models_reach_other_runtimes() -> None:
    """An ONNX model without `convert` stays ONNX-only; with it, a conversion failure is an
    ExportError when the model is exported (the campaign records it as the job's failure)."""
    data = to_onnx(chain_graph(SPECS))
    plain = Subject.onnx_model("onnx:a", "onnx", lambda: data)
    with pytest.raises(RunnerError, match="onnx:a is a .onnx model; runtime litert runs"):
        plain.model_bytes(get_runner("litert"))
    lrn = helper.make_graph(
        [helper.make_node("LRN", ["x"], ["y"], name="norm", size=3)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 4, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 3, 4, 4))])
    model = helper.make_model(lrn, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    broken = Subject.onnx_model("onnx:b", "onnx", model.SerializeToString, convert=True)
    assert broken.refusal(get_runner("litert")) is None
    with pytest.raises(ExportError, match="LRN node 'norm': ONNX op LRN has no LayerGraph"):
        broken.model_bytes(get_runner("litert"))


def test_kept_kernels_are_those_of_the_measured_model() -> None:
    """ConvNeXt splits differently in the two formats (its channels-last permutes and layer
    scales have no TFLite operator): a LiteRT dataset keeps the TFLite split, an ONNX Runtime
    dataset the ONNX split."""
    (net,) = resolve_networks("convnext:1", seed=1, dynamo=False, with_kernels=True)
    litert, ort = get_runner("litert"), get_runner("onnxruntime")
    assert net.kernels_for(ort) == net.kernels
    on_litert = net.kernels_for(litert)
    assert on_litert == tuple(tflite_to_kernels(net.model_bytes(litert)))
    kinds = {k.kind for k in on_litert}
    assert "transpose" in {k.kind for k in net.kernels} and "transpose" not in kinds
    card = network_kernels([net], runner=litert)
    assert card == {net.key: [k.key() for k in on_litert]}
    assert network_kernels([net]) == {net.key: [k.key() for k in net.kernels]}
    chain = Subject.chain("toy:1", "toy", SPECS)  # a chain's kernels are its specs everywhere
    assert chain.kernels_for(litert) == chain.kernels == tuple(SPECS)


def test_family_networks_are_measured_by_litert(tmp_path: Path) -> None:
    networks = resolve_networks("resnet:2", seed=3, dynamo=False, with_kernels=True)
    summary = measure_into_dataset(networks, local_device(), "litert", tmp_path / "data", FAST)
    assert (summary.measured, summary.failed) == (2, 0)
    dataset = LatencyDataset.open(tmp_path / "data")
    records = dataset.records()
    assert set(records["key"]) == {n.key for n in networks}
    assert (records["status"] == "ok").all() and (records["min_ms"] > 0).all()
    litert = get_runner("litert")
    assert dataset.card["network_kernels"] == {
        n.key: [k.key() for k in tflite_to_kernels(n.model_bytes(litert))] for n in networks}


def test_bench_networks_cli_measures_a_family_on_litert(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    code = main(["bench", "networks", "--runtime", "litert", "--networks", "resnet:1",
                 "--legacy-export", "--out", str(out), "--runs", "3", "--fixed-runs",
                 "--calibration-runs", "0", "--json"])
    capsys.readouterr()
    assert code == 0
    records = LatencyDataset.open(out).records()
    assert list(records["runtime"]) == ["litert"] and list(records["status"]) == ["ok"]
    assert np.isfinite(records["min_ms"]).all()
