"""Evaluation: held-out loss per cluster, lm-evaluation-harness tasks, and the results table and chart."""
