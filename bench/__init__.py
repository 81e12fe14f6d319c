"""Benchmark harness: engine-vs-baseline ratios measured side by side in one run.

``python -m bench`` (or ``make bench``) prints a table and writes ``bench/out/bench-<date>.json``.
Every figure is a ratio of two things timed alternately in the same process, so machine noise
hits both; nothing here asserts an absolute time. See ``docs/benchmarks.md`` for the figures
and how to read them, and ``bench/gpu.sh`` for the GPU run.
"""
