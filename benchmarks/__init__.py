"""Benchmarks, kept out of the library: ``python -m benchmarks.throughput`` (MADE vs an
unmasked MLP, side by side; console script ``made-bench``)."""
