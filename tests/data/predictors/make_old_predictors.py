"""Write the committed old-format predictors and what the old code predicted with them.

Run with an OLD checkout of latbench first on the path (its top-level `bench` and `predictor`
packages), e.g. for the feature-v1 fixtures (commit 3083e21, before feature version 2):

    git worktree add /tmp/latbench-old 3083e21
    PYTHONPATH=/tmp/latbench-old python tests/data/predictors/make_old_predictors.py \
        /tmp/latbench-old/datasets/xeon-2core-onnxruntime-1t-nasbench-macro \
        tests/data/predictors/v1 xgboost linear

and the same from commit da501da (feature version 2) into tests/data/predictors/v2 with
`xgboost rf linear lut`; tiny.onnx beside this script was exported by the current code.
tests/predictor/test_old_predictors.py loads each with the current code and checks that it
predicts the same kernels and networks identically.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.ops import OpSpec  # the old checkout's top-level packages
from bench.store import LatencyDataset
from predictor.features import FEATURE_VERSION
from predictor.io import load_predictor
from predictor.model_level import predict_network, predict_onnx
from predictor.training import fit_from_dataset

PARAMS = {"xgboost": {"n_estimators": 30, "max_depth": 3, "n_jobs": 1},
          "rf": {"n_estimators": 6, "max_depth": 6, "n_jobs": 1}}
UNSEEN = [OpSpec("conv", h=24, w=24, cin=40, cout=72, kernel=3, act="relu"),
          OpSpec("conv", h=17, w=17, cin=3, cout=24, kernel=3, stride=2),
          OpSpec("dwconv", h=20, w=20, cin=48, kernel=5, stride=2, act="relu"),
          OpSpec("mbconv", h=16, w=16, cin=24, cout=40, kernel=5, stride=2, expand=4,
                 act="relu"),
          OpSpec("pool", h=9, w=9, cin=200, pool="gavg"),
          OpSpec("linear", cin=300, cout=17),
          OpSpec("add", h=12, w=12, cin=56)]
ONNX = Path(__file__).with_name("tiny.onnx")


def main(data: Path, out: Path, names: list[str]) -> None:
    dataset = LatencyDataset.open(data)
    records = dataset.records()
    ops = records[records["subject"] == "op"]
    seen: dict[str, str] = {}
    for key in sorted(ops["key"]):
        seen.setdefault(OpSpec.from_key(key).kind, key)
    probes = [*(OpSpec.from_key(k) for k in seen.values()), *UNSEEN]
    nets = sorted(dataset.card["network_kernels"].items())[:6]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(sys.modules["bench"].__file__)
                            .parents[1], capture_output=True, text=True).stdout.strip()
    for name in names:
        fit_from_dataset(data, out / name, name, params=PARAMS.get(name))
        model, _ = load_predictor(out / name)
        kernels = [s for s in probes if name != "lut" or s.key() in set(ops["key"])]
        expected = {
            "commit": commit, "feature_version": FEATURE_VERSION,
            "kernels": [{"key": s.key(), "ms": float(ms)}
                        for s, ms in zip(kernels, model.predict(kernels), strict=True)],
            "networks": [{"key": key, "kernels": keys,
                          "predicted_ms": predict_network(
                              model, [OpSpec.from_key(k) for k in keys]).predicted_ms}
                         for key, keys in nets],
        }
        if name != "lut":
            onnx = predict_onnx(model, ONNX)
            expected["onnx"] = {"file": ONNX.name, "predicted_ms": onnx.predicted_ms,
                                "kernels": [s.key() for s, _ in onnx.kernels]}
        (out / name / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
