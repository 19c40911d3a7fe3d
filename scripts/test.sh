#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (tiny random models, real local Ray, moto S3, no hub), and,
# in their own step, the tests of the real models that scripts/setup.sh fetched (marker `real_models`).
# Arguments go to both pytest runs (e.g. a test path).
#
# The main run keeps the 2 cores about 80% busy: its Ray group runs one test after another and often waits
# (heads starting, Serve health checks, job polls), and its second worker is idle after its first few
# minutes. So mypy and the real-model step run beside it at a lower CPU priority (as the second worker's
# tests do, tests/conftest.py), each with its own report printed after the main run's, and each failing
# the script on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error RAY_DEDUP_LOGS=0
.venv/bin/ruff check .
# Real models: the IS-Net ONNX file must be there (never skipped; fetch it with the command below).
.venv/bin/python - <<'PY'
import sys

from canvas_ray.models.fetch import ISNET, models_dir

path = models_dir() / ISNET.filename
if not path.is_file():
    sys.exit(f"real-model tests: IS-Net is missing at {path}; run `canvas-ray models fetch isnet` (scripts/setup.sh)")
print(f"real-model tests: IS-Net at {path}")
PY
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25)
nice -n 10 .venv/bin/mypy >"$LOGS/mypy" 2>&1 &
MYPY_PID=$!
nice -n 10 "${PYTEST[@]}" -m real_models "$@" >"$LOGS/real" 2>&1 &
REAL_PID=$!
# Two xdist workers: the tests that use a Ray cluster run one after another on one of them (one Ray at a
# time, started once; tests/conftest.py groups them), the others whole-module on whichever is free.
main=0
"${PYTEST[@]}" -n 2 --dist loadscope -m "not real_models" "$@" || main=$?
mypy=0
wait "$MYPY_PID" || mypy=$?
echo "---- mypy"
cat "$LOGS/mypy"
real=0
wait "$REAL_PID" || real=$?
echo "---- real-model tests (-m real_models)"
cat "$LOGS/real"
status=0
[ "$main" = 0 ] || { echo "the main test run failed (above)" >&2; status=$main; }
[ "$mypy" = 0 ] || { echo "mypy failed (above)" >&2; status=$mypy; }
if [ "$real" = 5 ] && [ "$#" -gt 0 ]; then
  echo "real-model tests: none among the selected tests"  # a narrowed run (arguments given) may hold none
elif [ "$real" != 0 ]; then
  echo "the real-model tests failed (above)" >&2  # 5 without arguments: they went missing, a failure too
  status=$real
fi
exit "$status"
