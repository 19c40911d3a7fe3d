"""Entry point for `ray job submit --working-dir . -- python -m jobs.evaluate OUTPUT [--reference ...]`.

Same arguments as `canvas-ray evaluate`; reads the run's manifest and writes OUTPUT/eval/ (metrics.json,
plots, report.html), on any fsspec URI.
"""

from __future__ import annotations

import sys

from canvas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
