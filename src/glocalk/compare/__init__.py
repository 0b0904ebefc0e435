"""Comparing models honestly: the benchmark harness, hyperparameter search, reports and cross-validation."""
