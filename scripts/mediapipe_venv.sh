#!/usr/bin/env bash
# Builds (once) and prints the python of a small, separate venv holding mediapipe 0.10.21, the last
# release with the legacy `mp.solutions.pose` and its .tflite weights inside the wheel (pose offline,
# nothing to download). mediapipe pins numpy 1.26, protobuf 4.25 and opencv-contrib 4.11 and pulls jax:
# it must never share an environment with ComfyUI's numpy 2.x, hence a venv of its own. No torch here.
#
# The pack is not installed into it: tests/mediapipe_pose_check.py loads the checkout it is given as
# `comfyui_diffbody`, so one cached venv serves every checkout.
#
#   PY=$(scripts/mediapipe_venv.sh)    # cached under ${DIFFBODY_CACHE:-~/.cache/comfyui-diffbody}
set -euo pipefail

# numpy 1.26.4 is mediapipe's own pin; scikit-image 0.24 (the `astronaut` test photo) and scipy 1.13
# still build against numpy 1.x and have Python 3.9-3.12 wheels.
PACKAGES=(
  "mediapipe==0.10.21"
  "numpy==1.26.4"
  "scikit-image==0.24.0"
  "scipy==1.13.1"
)
cache=${DIFFBODY_CACHE:-$HOME/.cache/comfyui-diffbody}
venv=$cache/mediapipe-venv
log() { echo "[mediapipe_venv] $*" >&2; }

python=${DIFFBODY_MEDIAPIPE_PYTHON:-python3}  # mediapipe 0.10.21 has wheels for CPython 3.9-3.12 only
if ! "$python" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2] <= (3, 12))'; then
  log "mediapipe 0.10.21 needs Python 3.9-3.12, '$python' is $("$python" -V 2>&1); set DIFFBODY_MEDIAPIPE_PYTHON"
  exit 1
fi
# The completion marker holds what went in, so a change of pins or of interpreter rebuilds it.
stamp="$("$python" -V 2>&1) ${PACKAGES[*]}"
mkdir -p "$cache"
exec 9>"$cache/mediapipe-venv.lock" && flock 9  # two test runs at once must not build it twice
if [ "$(cat "$venv/.complete" 2>/dev/null)" != "$stamp" ]; then
  log "building $venv (mediapipe and jax wheels, about 300 MB; a few minutes)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}" >&2
  # Fail here, not in a test, if the resolver let anything move numpy or drop the legacy solution.
  "$venv/bin/python" -c "import numpy, mediapipe as mp; assert numpy.__version__ == '1.26.4', numpy.__version__; mp.solutions.pose.Pose" >&2
  echo "$stamp" >"$venv/.complete"
fi
echo "$venv/bin/python"
