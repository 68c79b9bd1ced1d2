#!/usr/bin/env bash
# The main job: set up the environment (cached after the first run) and restore the bundled sample
# photo into ./diffbody-output. Extra arguments go to the command line, e.g. --tiny, --download,
# --models-dir PATH, --device cuda.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$repo/scripts/setup_env.sh" --exports)"
exec "$DIFFBODY_PYTHON" -m comfyui_diffbody restore "$repo/assets/sample_person_lq.jpg" --upscale 4 "$@"
