"""Evaluation of a finished run, split by concern.

- :mod:`.stream`: the manifest in bounded batches (any size), and the streaming accumulators.
- :mod:`.metrics`: counts, rates, distributions, per-group tables and throughput of a manifest.
- :mod:`.reference`: reference-set features (a transformers vision model) and FID / KID.
- :mod:`.plots`: the PNG plots; :mod:`.html`: ``report.html``.
- :mod:`.job`: :func:`evaluate_run` (what ``canvas-ray evaluate`` and ``jobs/evaluate.py`` run).

The in-generation guard (candidates, expansion retries) is :mod:`canvas_ray.quality.guard`.
"""
