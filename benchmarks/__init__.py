"""Benchmarks: detection quality on real data and latency reports (benchmarks issue)."""
