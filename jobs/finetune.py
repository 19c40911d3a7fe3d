"""Entry point for `ray job submit --working-dir . -- python -m jobs.finetune --config ... --catalog ...
--output ...`.

Same arguments as `canvas-ray finetune`; inside a Ray job it attaches to the job's cluster.
"""

from __future__ import annotations

import sys

from canvas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
