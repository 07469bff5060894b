"""Prometheus metrics for leadflow workers: the `Metrics` API and a /metrics handler."""

from pipeline.metrics.registry import Metrics, bounded, metrics_handler

__all__ = ["Metrics", "bounded", "metrics_handler"]
