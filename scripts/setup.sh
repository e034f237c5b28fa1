#!/usr/bin/env bash
# Creates .venv and installs bnexp with its dependencies (idempotent: a second run only checks).
# torch comes from pip (not uv/poetry): on the project's machines pip finds a local copy of the
# pinned build. Override the pin with TORCH_SPEC, e.g. TORCH_SPEC="torch torchvision".
#   --with-chromium  also install Debian's chromium (apt-get; sudo unless root) for the browser
#                    check of TensorBoard (scripts/tb_screenshots.py, tests/test_tb_browser.py)
set -euo pipefail
WITH_CHROMIUM=0
for arg in "$@"; do
  case "$arg" in
    --with-chromium) WITH_CHROMIUM=1 ;;
    *) echo "usage: scripts/setup.sh [--with-chromium]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
# shellcheck disable=SC2086
pip install $TORCH_SPEC
pip install -e ".[dev]"
echo "bnexp installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
if [ "$WITH_CHROMIUM" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
  echo "chromium installed ($(chromium --version 2>/dev/null | head -1))"
fi
