#!/usr/bin/env bash
# Installs what the tests need into .venv (CPU torch first, so nothing pulls CUDA wheels) and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q -c requirements/test-constraints.txt -e '.[test]'
exec .venv/bin/python -m pytest "$@"
