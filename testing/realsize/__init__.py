"""The real-size fixture factory: every file the bundled workflows load, at its real public size and in its
real public format, name and key layout, with random weights (fp16), laid out as a ComfyUI models folder.
ComfyUI's stock loaders recognise models by their sizes, so only these files take the path users take.

- `build_realsize_models_dir(models_dir, comfyui_dir)` writes everything (about 24 GB, a few minutes):
  the public files (checkpoints.py, stage2_files.py, stage0.py; SwinIR at DiffBIR's config; DWPose's ONNX
  graphs with their real input and output shapes) and then DiffBody's own four files made from them by the
  pack's own init and save code (diffbody_files.py).
- `cached_realsize_models_dir(cache_root, comfyui_dir)` builds once under `cache_root`, in a folder named by
  a hash of everything that goes into the files (this factory's and the pack's model code, the library
  versions), and deletes older builds. Run it as `python -m comfyui_diffbody.testing.realsize CACHE_ROOT
  COMFYUI_DIR`: it prints the folder.
- weights.py makes the values and writes tensors one at a time; `materialise` builds a spec in memory on
  any device instead (the GPU suite).

Where the real size cannot run here: LLaVA-1.5-7B keeps its real widths and vocabulary but one decoder
layer (stage0.py); its full config is checked on the meta device.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

FACTORY_VERSION = 1  # bump to rebuild every cache when a change is not seen by the source hash
_HASHED_FOLDERS = ("testing/realsize", "testing/tiny", "models")
_COMPLETE = ".complete"


def build_realsize_models_dir(models_dir: str, comfyui_dir: str, *, log=print) -> dict[str, str]:
    """Write every real-size file under `models_dir` (laid out like ComfyUI/models); {file name: path}."""
    from ...models.files import FOLDERS
    from .diffbody_files import write_diffbody_files
    from .public_files import write_public_files

    def place(folder: str, name: str) -> str:
        directory = os.path.join(models_dir, FOLDERS[folder].relative_dir)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, name)

    written = write_public_files(place, comfyui_dir, log=log)
    written.update(write_diffbody_files(place, written, log=log))
    return written


def source_hash(repo: Path | None = None) -> str:
    """A hash of what makes the files: the factory's and the models' source, the library versions."""
    import diffusers
    import torch
    import transformers

    repo = repo or Path(__file__).resolve().parents[2]
    digest = hashlib.sha256(f"{FACTORY_VERSION} {torch.__version__} {diffusers.__version__} "
                            f"{transformers.__version__}".encode())
    for folder in _HASHED_FOLDERS:
        for path in sorted((repo / folder).rglob("*.py")):
            digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cached_realsize_models_dir(cache_root: str, comfyui_dir: str, *, log=print) -> Path:
    """The real-size models folder under `cache_root`, built on first use (see the module doc)."""
    root = Path(cache_root)
    target = root / f"realsize-{source_hash()}"
    if (target / _COMPLETE).is_file():
        return target
    for old in root.glob("realsize-*"):  # one build is 24 GB: keep only the current one
        log(f"[realsize] removing the outdated build {old}")
        shutil.rmtree(old, ignore_errors=True)
    started = time.monotonic()
    log(f"[realsize] building {target} (about 24 GB; a few minutes)")
    build_realsize_models_dir(str(target), comfyui_dir, log=log)
    (target / _COMPLETE).write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return target
