"""Benchmarks, run as `python -m benchmarks.<name>` from the repository root.

A regular package, so that it wins over the unrelated top-level `benchmarks` package
that google-jetstream (the `jetstream` extra) installs into site-packages.
"""
