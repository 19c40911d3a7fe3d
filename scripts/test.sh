#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (tiny random models, real local Ray, moto S3, no hub).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error RAY_DEDUP_LOGS=0
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
