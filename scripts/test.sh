#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (tiny random models, real local Ray, moto S3, no hub) with
# the tests of the real models that scripts/setup.sh fetched (marker `real_models`, never skipped: the
# model's file is checked first). Arguments go to pytest (e.g. a test path).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error RAY_DEDUP_LOGS=0
.venv/bin/ruff check .
# Real models: the IS-Net ONNX file must be there (fetch it with the command printed if not).
.venv/bin/python - <<'PY'
import sys

from canvas_ray.models.fetch import ISNET, models_dir

path = models_dir() / ISNET.filename
if not path.is_file():
    sys.exit(f"real-model tests: IS-Net is missing at {path}; run `canvas-ray models fetch isnet` (scripts/setup.sh)")
print(f"real-model tests: IS-Net at {path}")
PY
# A whole run must hold the real-model tests (tests/conftest.py fails the collection otherwise); a narrowed
# run (arguments given) may hold none.
if [ "$#" = 0 ]; then export CANVAS_RAY_REQUIRE_REAL_MODELS=1; fi
# Bytecode for our own modules (an editable install: pip and uv compile only site-packages). Where
# PYTHONDONTWRITEBYTECODE is set, as on our CI machines, nothing writes it later, so every Ray worker
# process would compile canvas_ray from source again: 20k catalog rows through two runs took 130 s without
# it and 63 s with it. Up-to-date files are skipped; an edited module is recompiled here (Python never runs
# a .pyc whose source changed).
.venv/bin/python -m compileall -q -j 0 canvas_ray serve tests benchmarks examples
# mypy (one core, about 70 s) runs beside the pytest run, whose second worker is idle for most of it; its
# report comes after the run, and a type error fails the script all the same.
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
.venv/bin/mypy >"$LOGS/mypy" 2>&1 &
MYPY_PID=$!
# Two xdist workers: the tests that use the session's Ray run one after another on one of them (that Ray
# started once), the modules with a cluster of their own one after another on the other once it is free,
# the others (the real-model ones among them) whole-module on whichever is free (tests/conftest.py).
main=0
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -n 2 --dist loadscope "$@" || main=$?
mypy=0
wait "$MYPY_PID" || mypy=$?
cat "$LOGS/mypy"
[ "$mypy" = 0 ] || { echo "mypy failed (above)" >&2; exit "$mypy"; }
exit "$main"
