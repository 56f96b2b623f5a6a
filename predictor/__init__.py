"""From latency records to estimates: `latency_predictor.LatencyPredictor` (a network's latency:
fit on a dataset, save, load, predict), the kernel-model zoo it holds (`models`), evaluation on
held-out networks, few-shot transfer and lookup tables. Importing the package imports nothing
heavy; import the module you need."""
