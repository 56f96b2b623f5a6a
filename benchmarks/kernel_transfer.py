"""Issue 17 item 1: kernel-level transfer to a new platform - held-out accuracy against the
device time spent on the target, for pairs of the platform matrix's platforms.

Computation only: the full campaigns that `benchmarks/platform_matrix.py` measured (one folder
per platform under --matrix, with data/, eval/, predictor/ and campaign_seconds.txt, or its
runN/ folders: --run picks one) stand in for the target device; a pair whose platforms the
matrix did not measure is left out. A budget is simulated by running the sampler
(`sample_transfer`, with the costs it would estimate from the sources, repriced in rounds by
what the kernels chosen so far took on the target, as `predictor transfer` does) over the
target's measured kernels and calibration networks and reading the chosen ones' latencies from
the records instead of measuring anew; the minutes reported are what the chosen subjects took
in the full campaign (their timed calls plus the campaign's fixed cost per subject). Held-out
networks are scored with the latencies `predictor eval` measured on the target (eval/), each
priced as the full-campaign predictor splits it.

Rows per pair and budget: the transfer, the sample fitted alone (xgboost, the default kernel
model, with the same calibration networks), and the full-campaign predictor. A pair's source
may be several platforms joined by "+" (`predictor transfer --from P1 P2`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import HELD_OUT_SEED, MATRIX_OUT  # noqa: E402
from _report import publish  # noqa: E402

from latbench.bench.ops import OpSpec  # noqa: E402
from latbench.bench.runners import RunSettings  # noqa: E402
from latbench.bench.store import LatencyDataset  # noqa: E402
from latbench.errors import ConfigError  # noqa: E402
from latbench.predictor.evaluate import error_metrics  # noqa: E402
from latbench.predictor.features import training_pairs  # noqa: E402
from latbench.predictor.kernel_transfer import (  # noqa: E402
    MeasureCost,
    TransferSource,
    compose,
    network_ms,
    sample_transfer,
    transfer_predictor,
)
from latbench.predictor.latency_predictor import LatencyPredictor  # noqa: E402
from latbench.predictor.models import XGBoostKernelPredictor  # noqa: E402
from latbench.predictor.training import calibration_networks, select_records  # noqa: E402

HELD_OUT = "nasbench-macro:50,mobilenetv2:5,resnet:5,resnet50:5,vit:5"  # platform_matrix's
PAIRS = (("onnxruntime_fp32_1t", "litert-xnnpack_fp32_1t"),
         ("litert-xnnpack_fp32_1t", "onnxruntime_fp32_1t"),
         ("onnxruntime_fp32_1t", "litert-builtin_fp32_1t"),
         ("litert-builtin_fp32_1t", "onnxruntime_fp32_1t"),
         ("onnxruntime_fp32_1t", "onnxruntime_fp32_2t"),
         ("onnxruntime_fp32_2t", "onnxruntime_fp32_1t"),
         ("onnxruntime_int8_1t", "onnxruntime_int8_2t"),
         ("onnxruntime_int8_2t", "onnxruntime_int8_1t"),
         ("litert-xnnpack_fp32_1t", "litert-xnnpack_fp32_2t"),
         ("litert-xnnpack_fp32_2t", "litert-xnnpack_fp32_1t"),
         ("onnxruntime_fp32_1t", "onnxruntime_int8_1t"),
         ("litert-xnnpack_fp32_1t", "litert-xnnpack_int8_1t"),
         ("litert-xnnpack_int8_1t", "litert-xnnpack_int8_2t"),
         ("litert-xnnpack_int8_2t", "litert-xnnpack_int8_1t"),
         ("onnxruntime_int8_1t", "litert-xnnpack_int8_1t"),
         ("litert-xnnpack_fp32_1t+onnxruntime_int8_1t", "litert-xnnpack_int8_1t"))
SOURCES_JOIN = "+"  # several sources of one target: "a+b"
BUDGETS = (0.02, 0.05, 0.10, 0.20, 0.40)


class Target:
    """A measured platform of the matrix seen as a transfer target."""

    def __init__(self, label: str, folder: Path, cache: Path) -> None:
        self.label = label
        dataset = LatencyDataset.open(folder / "data")
        records, card = dataset.records(), dataset.card
        self.full = LatencyPredictor.load(folder / "predictor")
        statistic = self.full.statistic  # what the held-out networks were scored in
        self.ops = select_records(records, owner=str(folder))
        self.specs, self.kernel_ms, _ = training_pairs(self.ops, statistic)
        self.networks = calibration_networks(records, card, self.ops, statistic)
        self.info = {"platform": self.full.platform.to_json(), "statistic": statistic}
        self.seconds = float((folder / "campaign_seconds.txt").read_text())
        timed = (records["n_runs"] + card["run_settings"]["warmup"]) * records["mean_ms"] / 1000
        per_subject = (self.seconds - timed.sum()) / len(records)  # the fixed cost per subject
        cost = dict(zip(records["key"], timed + per_subject, strict=True))
        self.op_cost = np.array([cost[k] for k in self.ops["key"]])
        self.net_cost = np.array([cost[k] for k, _, _ in self.networks])
        self.overhead = self.ops["overhead_ms"].to_numpy(dtype=np.float64)
        self.settings = RunSettings(**card["run_settings"])
        self.eval = pd.read_csv(folder / "eval" / "predictions.csv")
        # the held-out set leaves out the plan's calibration networks: a cache per plan
        plan = hashlib.sha256("\n".join(sorted(self.full.calibration_keys)).encode())
        self.held_out = held_out_kernels(self.full,
                                         cache / f"{self.label}-{plan.hexdigest()[:12]}.json")
        self.keys = [k for k in self.eval["network"] if k in self.held_out]
        self.full_predicted = self.predicted(self.full)

    def predicted(self, predictor: LatencyPredictor) -> np.ndarray:
        """Predicted ms of the held-out networks (`keys` order)."""
        return np.array([predictor.predict(self.held_out[k]).predicted_ms for k in self.keys])

    def score(self, predictor: LatencyPredictor) -> dict[str, float]:
        """Error metrics against the held-out networks as measured, and `within10_at_speed`:
        within 10% of them at the dataset's speed (each measured time scaled by the target
        campaign's reference probe over the evaluation's, as `predictor eval` scores it;
        the transfer's sample is drawn from that campaign, so its speed is the one to
        match). NaN where the evaluation has no such column. `within10_of_full`: within 10%
        of the full-campaign predictor's prices of the same networks - how close the transfer
        comes to measuring everything, free of the evaluation's own noise."""
        predicted = self.predicted(predictor)
        table = self.eval.set_index("network").loc[self.keys]
        metrics = error_metrics(predicted, table["measured_ms"].to_numpy())
        metrics["within10_of_full"] = error_metrics(predicted, self.full_predicted)["within10"]
        column = "measured_at_dataset_speed_ms"
        metrics["within10_at_speed"] = (error_metrics(predicted, table[column].to_numpy())
                                        ["within10"] if column in table else float("nan"))
        return metrics


def held_out_kernels(predictor: LatencyPredictor, cache: Path) -> dict[str, list[OpSpec]]:
    """The held-out networks' kernels as `predictor eval` priced them (cached: splitting the
    families' exports takes a while)."""
    if not cache.exists():
        from latbench.bench.network_sets import resolve_networks
        from latbench.predictor.evaluate import priced_kernels

        nets = resolve_networks(HELD_OUT, HELD_OUT_SEED, exclude=predictor.calibration_keys,
                                precision=predictor.platform.precision)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({n.key: [s.key() for s in priced_kernels(n, predictor)]
                                     for n in nets}))
    return {k: [OpSpec.from_key(s) for s in v] for k, v in json.loads(cache.read_text()).items()}


def platform_folder(matrix: Path, label: str, run: int) -> Path:
    """A platform's folder in the matrix output: its runN/ folder, or itself (one run)."""
    folder = matrix / label
    return folder / f"run{run}" if (folder / f"run{run}").is_dir() else folder


def run_pair(sources: list[TransferSource], target: Target, fraction: float
             ) -> dict[str, object]:
    """Sample at `fraction` of the target's campaign, fit transfer and alone, score both."""
    cost = MeasureCost.from_settings(target.settings)
    logs = np.array([source.log_ms(target.specs) for source in sources])
    estimated = cost.seconds(np.exp(logs.mean(axis=0)))
    net_ms = network_ms(sources, [kernels for _, kernels, _ in target.networks])
    families = [key.split(":")[0] for key, _, _ in target.networks]
    sample = sample_transfer(target.specs, logs, estimated, fraction * target.seconds,
                             network_costs=cost.seconds(net_ms),
                             network_families=families, cost=cost,
                             measure=lambda ks, ns: (target.op_cost[ks],
                                                     target.net_cost[ns]))
    rows = list(sample.kernels)
    specs = [target.specs[i] for i in rows]
    ms = target.kernel_ms[rows]
    overhead = float(np.median(target.overhead[rows]))
    networks = [target.networks[j] for j in sample.networks]
    spent = target.op_cost[rows].sum() + target.net_cost[list(sample.networks)].sum()
    transfer = transfer_predictor(sources, specs, ms, overhead, networks,
                                  info=target.info, ranges_from=target.specs)
    alone = compose(XGBoostKernelPredictor(n_jobs=1).fit(specs, ms), networks, overhead,
                    info=target.info, ranges_from=target.specs)
    return {"kernels": len(rows), "networks": len(networks),
            "minutes": spent / 60, "share": spent / target.seconds,
            "cv": transfer.info_["transfer"]["cv"],
            "priced_by": transfer.info_["transfer"]["networks_priced_by"],
            "transfer": target.score(transfer), "alone": target.score(alone)}


def priced_by(choice: dict[str, object]) -> str:
    """What priced the networks (`kernel map`, `sample alone`, `ratio x0.59`), with each
    candidate's cross-validated error over the calibration networks (map / alone / ratio)."""
    errors = dict(choice.get("errors_pct") or {})
    ratios = dict(choice.get("ratios") or {})
    chosen = str(choice["chosen"])
    what = f"ratio x{ratios[chosen]:.3g}" if chosen in ratios else chosen
    if not errors:
        return f"{what} ({choice['networks']} networks)"
    ratio = min((errors[name] for name in ratios), default=None)
    shown = (errors.get("kernel map"), errors.get("sample alone"), ratio)
    return f"{what} (CV {' / '.join('-' if e is None else f'{e:.1f}' for e in shown)}%)"


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", default=str(MATRIX_OUT),
                        help="output folder of benchmarks/platform_matrix.py (its default --out)")
    parser.add_argument("--cache", default="/tmp/latbench-kernel-transfer",
                        help="folder for the held-out networks' split kernels")
    parser.add_argument("--run", type=int, default=1,
                        help="which of the matrix's fresh runs (runN/ folders) to use")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                        help="fractions of the target's full-campaign device time")
    parser.add_argument("--pairs", default="",
                        help="comma-separated SOURCE->TARGET pairs of the built-in list to run "
                             "(default: every pair the matrix measured)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    names = {f"{src}->{tgt}": (src, tgt) for src, tgt in PAIRS}
    wanted = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in names]
    if unknown:
        parser.error(f"unknown pair(s) {', '.join(unknown)}; known: {', '.join(names)}")
    pairs = [names[p] for p in wanted] or list(PAIRS)
    matrix, cache = Path(args.matrix), Path(args.cache)
    budgets = [float(b) for b in args.budgets.split(",")]
    targets: dict[str, Target] = {}
    lines = ["| source -> target | budget | measured min (share) | kernels + networks | "
             "transfer within 10% / RMSPE % | at the dataset's speed | alone within 10% / "
             "RMSPE % | kernel LOO map / alone % | networks priced by | full campaign within "
             "10% / RMSPE % (min) | full at the dataset's speed | transfer within 10% of "
             "the full campaign's prediction |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary: list[dict[str, float]] = []
    for src_label, tgt_label in pairs:
        labels = src_label.split(SOURCES_JOIN)
        folders = [platform_folder(matrix, label, args.run) for label in (*labels, tgt_label)]
        if not all((f / "eval" / "predictions.csv").exists() for f in folders):
            continue
        sources = []
        for label, folder in zip(labels, folders[:-1], strict=True):
            full_source = LatencyPredictor.load(folder / "predictor")
            sources.append(TransferSource(label, full_source.platform, full_source.kernels_,
                                          full_source))
        if tgt_label not in targets:
            targets[tgt_label] = Target(tgt_label, folders[-1], cache)
        target = targets[tgt_label]
        full = target.score(target.full)
        for fraction in budgets:
            try:
                r = run_pair(sources, target, fraction)
            except ConfigError as exc:  # below the least budget that covers every kind
                lines.append(f"| {src_label} -> {tgt_label} | {pct(fraction)} | {exc} "
                             "| | | | | | | | | |")
                print(lines[-1], flush=True)
                continue
            t, a, cv = r["transfer"], r["alone"], r["cv"]
            summary.append({"fraction": fraction, "transfer": t["within10"],
                            "at_speed": t["within10_at_speed"], "alone": a["within10"],
                            "full": full["within10"], "of_full": t["within10_of_full"]})
            lines.append(
                f"| {src_label} -> {tgt_label} | {pct(fraction)} | {r['minutes']:.2f} "
                f"({pct(r['share'])}) | {r['kernels']} + {r['networks']} | "
                f"{pct(t['within10'])} / {t['rmspe_pct']:.1f} | "
                f"{pct(t['within10_at_speed'])} | "
                f"{pct(a['within10'])} / {a['rmspe_pct']:.1f} | "
                f"{cv['map_loo_pct'] or 0:.1f} / {cv['alone_loo_pct'] or 0:.1f} | "
                f"{priced_by(r['priced_by'])} | "
                f"{pct(full['within10'])} / {full['rmspe_pct']:.1f} "
                f"({target.seconds / 60:.1f}) | {pct(full['within10_at_speed'])} | "
                f"{pct(t['within10_of_full'])} |")
            print(lines[-1], flush=True)
    at10 = [row for row in summary if row["fraction"] == 0.10]
    met = sum(row["transfer"] >= 0.95 for row in at10)
    met_at_speed = sum(row["at_speed"] >= 0.95 for row in at10)
    bound = sum(row["full"] < 0.95 for row in at10)
    like_full = sum(row["of_full"] >= 0.95 for row in at10)
    wins = sum(row["transfer"] > row["alone"] for row in summary)
    body = [
        "Sources and targets are the campaigns of the platform matrix "
        f"(`benchmarks/platform_matrix.py`, folders under `{args.matrix}`, run {args.run}). "
        "A budget is "
        "simulated: the sampler chooses among the target's measured kernels and calibration "
        "networks with the costs it estimates from the source, and their latencies and "
        "device time are read from the target's records (timed calls plus the campaign's "
        "fixed cost per subject), not measured anew. Held-out networks "
        f"`{HELD_OUT}` (seed {HELD_OUT_SEED}), measured on the target by `predictor eval`. "
        "Alone: the sample fitted with the default kernel model (xgboost) and the same "
        "calibration networks. Kernel LOO: the median leave-one-out error of the map and of "
        "the sample alone (log-linear) on the measured kernels. Networks priced by: the "
        "kernel map with its composition, the sample alone (the Alone column), or a "
        "source's whole predictor times one ratio, whichever has the lowest error over the "
        "sampled calibration networks, cross-validated with kernels refitted without the "
        "held-out networks' kernels (CV kernel map / alone / ratio; 3 networks or more). At "
        "the dataset's speed: within 10% of the held-out networks' times scaled by the target "
        "campaign's reference probe over the evaluation's, as `predictor eval` scores it. "
        "Within 10% of the full campaign's prediction: the transfer's price of each held-out "
        "network against the full-campaign predictor's (no measured truth involved).", "",
        *lines, "",
        f"Target (within 10% >= 95% with at most 10% of the campaign): met by {met} of "
        f"{len(at10)} pairs at the 10% budget as measured, by {met_at_speed} at the dataset's "
        f"speed; in {bound} of them the target's own full campaign is under 95% as measured. "
        f"In {like_full} the transfer prices 95% of the networks or more within 10% of the full "
        "campaign's predictor. "
        f"The transfer beats the sample alone in {wins} of {len(summary)} rows."]
    publish("kernel_transfer", "Kernel transfer to a new platform (issue 17 item 1)", body,
            write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
