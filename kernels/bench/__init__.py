"""Kernel benchmarks (JSON output)."""
