#!/usr/bin/env bash
# Create .venv (if missing) and install canvas-ray with its dev tools. Idempotent; safe to re-run.
# CPU machines get the CPU torch wheel (pinned so pip never pulls a multi-GB CUDA build by accident);
# on a GPU machine install your CUDA torch first, or set CANVAS_RAY_TORCH to the spec you want.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# System packages (apt) install in the background while pip installs the Python ones; waited for below.
system_packages() {
  # Headless Debian chromium + chromedriver for the web-page test (never a downloaded browser).
  if ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
      echo "note: install chromium and chromium-driver (apt) to run the web-page test" >&2
    fi
  fi
  # exiftool (Debian libimage-exiftool-perl): the independent reader of the images' XMP provenance in the tests.
  if ! command -v exiftool >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >/dev/null
    else
      echo "note: install libimage-exiftool-perl (apt) to run the provenance tests" >&2
    fi
  fi
}
system_packages > .setup-apt.log 2>&1 &
APT_PID=$!
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
TORCH="${CANVAS_RAY_TORCH:-torch==2.13.0}"
# uv installs the ~180 pinned packages in parallel (the same `pip freeze` as pip, several times faster). uv
# reads no pip.conf, so pip's find-links (where a machine keeps local wheels, such as the CPU torch) are
# handed on. --compile-bytecode: pip compiles .pyc files at install time and uv does not by default; where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) nothing writes them later, so every Ray worker
# process would compile ray and torch from source again (a clean clone's suite ran twice as long without).
# Where uv cannot be had, pip does the same install.
if .venv/bin/python -m pip install -q -c constraints.txt uv >/dev/null 2>&1; then
  FIND_LINKS="${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}"
  LINKS=()
  for link in $FIND_LINKS; do LINKS+=(--find-links "$link"); done
  .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${LINKS[@]}" -c constraints.txt \
    "$TORCH" -e ".[dev,train]"
else
  echo "setup: uv is not installable here; installing with pip (slower)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,train]"
fi
# Bytecode for our own modules too (an editable install; see scripts/test.sh): every Ray worker imports them.
.venv/bin/python -m compileall -q -j 0 canvas_ray serve
# The neural segmenter of configs/local.yaml: IS-Net ONNX (AGPL-3.0, img.ly) reassembled from its npm package
# into ~/.cache/canvas-ray/models (CANVAS_RAY_MODELS). Idempotent. Needs npm, or CANVAS_RAY_ISNET_TARBALL=<tgz>.
# Machines that cannot fetch: CANVAS_RAY_SKIP_MODELS=1 and use configs/weightfree.yaml. Fetched while the
# apt step may still run.
if [ "${CANVAS_RAY_SKIP_MODELS:-0}" != "1" ]; then
  .venv/bin/canvas-ray models fetch isnet
fi
if ! wait "$APT_PID"; then
  cat .setup-apt.log >&2
  echo "setup: the apt step failed (above); install chromium, chromium-driver and libimage-exiftool-perl" >&2
  exit 1
fi
cat .setup-apt.log >&2
rm -f .setup-apt.log
echo "canvas-ray installed in $(pwd)/.venv"
