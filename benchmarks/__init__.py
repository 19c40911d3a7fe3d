"""Benchmarks: one command each (``python -m benchmarks.<name>``), printing ratios and writing JSON figures.

- ``benchmarks.engine``: the Ray Data job against a single-process loop over the same stage classes.
- ``benchmarks.memory``: peak resident memory of a catalog of N and 10·N items (streaming check).
- ``benchmarks.serve``: HTTP latency overhead and ``@serve.batch`` throughput gain of the Serve app.
- ``benchmarks.gpu``: the full-size SD-1.5 inpainting fast path on a CUDA GPU (skips without one).

How to run them and the figures: docs/performance.md.
"""
