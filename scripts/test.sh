#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (tiny random models, real local Ray, moto S3, no hub), then,
# in their own step, the tests of the real models that scripts/setup.sh fetched (marker `real_models`).
# Arguments go to both pytest runs (e.g. a test path).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error RAY_DEDUP_LOGS=0
.venv/bin/ruff check .
# mypy (one core, about 70 s from a cold cache) runs beside the main pytest run, whose second worker is idle
# for most of it; its report comes after that run, and a type error fails the script all the same.
# (The real-model step beside it too, with everything outside the Ray group at nice 10, was tried once, in
# a venv without bytecode (see the closing note of 2026-12-07): not measured cleanly, so not used.)
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
.venv/bin/mypy >"$LOGS/mypy" 2>&1 &
MYPY_PID=$!
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25)
# Two xdist workers: the tests that use a Ray cluster run one after another on one of them (one Ray at a
# time, started once; tests/conftest.py groups them), the others whole-module on whichever is free.
main=0
"${PYTEST[@]}" -n 2 --dist loadscope -m "not real_models" "$@" || main=$?
mypy=0
wait "$MYPY_PID" || mypy=$?
cat "$LOGS/mypy"
[ "$mypy" = 0 ] || { echo "mypy failed (above)" >&2; exit "$mypy"; }
[ "$main" = 0 ] || exit "$main"
# Real models: the IS-Net ONNX file must be there (never skipped; fetch it with the command below).
.venv/bin/python - <<'PY'
import sys

from canvas_ray.models.fetch import ISNET, models_dir

path = models_dir() / ISNET.filename
if not path.is_file():
    sys.exit(f"real-model tests: IS-Net is missing at {path}; run `canvas-ray models fetch isnet` (scripts/setup.sh)")
print(f"real-model tests: IS-Net at {path}")
PY
status=0
"${PYTEST[@]}" -m real_models "$@" || status=$?
if [ "$status" = 5 ] && [ "$#" -gt 0 ]; then
  echo "real-model tests: none among the selected tests"  # a narrowed run (arguments given) may hold none
elif [ "$status" != 0 ]; then
  exit "$status"  # 5 without arguments: the real-model tests went missing, which is a failure too
fi
