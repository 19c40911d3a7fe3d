"""Entry point for `ray job submit --working-dir . -- python -m jobs.curate --catalog ... --output ...`.

Same arguments as `canvas-ray curate`.
"""

from __future__ import annotations

import sys

from canvas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
