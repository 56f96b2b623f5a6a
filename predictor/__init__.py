"""From latency records to estimates: features, kernels, predictors."""
