#!/usr/bin/env bash
# Sets up the test environment (cached after the first run) and runs the test suite.
#   scripts/test.sh                 everything, including the real-ComfyUI server tests
#   scripts/test.sh -m "not server" the quick unit tests only
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(DIFFBODY_WITH_OLDEST_COMFYUI=1 "$repo/scripts/setup_env.sh" --exports)"
cd "$repo"
exec "$DIFFBODY_PYTHON" -m pytest "$@"
