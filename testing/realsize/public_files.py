"""The public files of both workflows at real size, each under its real name in its ComfyUI models folder."""

from __future__ import annotations

import time

from .checkpoints import SD21_CHECKPOINT, SDXL_CHECKPOINT, sd21_checkpoint_spec, sdxl_checkpoint_spec
from .stage2_files import CLIP_VISION_FILE, clip_vit_h_spec, ip_adapter_plus_xl_spec, union_promax_spec
from .weights import write_safetensors

UNION_FILE = "controlnet-union-sdxl-1.0.safetensors"
IP_ADAPTER_FILE = "ip-adapter-plus_sdxl_vit-h.safetensors"
SWINIR_FILE = "general_swinir_v1.ckpt"
LLAVA_FOLDER = "llava-1.5-7b-hf"
DEPTH_FOLDER = "Depth-Anything-V2-Small-hf"
NORMALS_FOLDER = "marigold-normals-v1-1"


def write_public_files(place, comfyui_dir: str, *, log=print) -> dict[str, str]:
    """{name: path} of every public file; `place(folder, name)` gives a file's path in the models folder."""
    from ..tiny.dwpose import write_tiny_dwpose
    from ..tiny.swinir import write_real_config_swinir
    from .stage0 import write_realsize_depth_anything_small, write_realsize_llava, write_realsize_marigold_normals

    jobs = (  # (name, models folder, writer of the file or folder at a path)
        (SDXL_CHECKPOINT, "checkpoints", lambda path: write_safetensors(path, sdxl_checkpoint_spec(comfyui_dir))),
        (SD21_CHECKPOINT, "checkpoints", lambda path: write_safetensors(path, sd21_checkpoint_spec(comfyui_dir))),
        (UNION_FILE, "controlnet", lambda path: write_safetensors(path, union_promax_spec())),
        (CLIP_VISION_FILE, "clip_vision", lambda path: write_safetensors(path, clip_vit_h_spec())),
        (IP_ADAPTER_FILE, "ipadapter", lambda path: write_safetensors(path, ip_adapter_plus_xl_spec())),
        (SWINIR_FILE, "upscale_models", write_real_config_swinir),
        (LLAVA_FOLDER, "LLM", write_realsize_llava),
        (DEPTH_FOLDER, "diffbody_priors", write_realsize_depth_anything_small),
        (NORMALS_FOLDER, "diffbody_priors",
         lambda path: write_realsize_marigold_normals(path, comfyui_dir=comfyui_dir)),
    )
    written = {}
    for name, folder, write in jobs:
        started = time.monotonic()
        written[name] = write(place(folder, name))
        log(f"[realsize] {name}: {time.monotonic() - started:.1f} s")
    # DWPose: the test graphs already take and give the real tensors (1x3x640x640 -> 1x8400x85, 1x3x384x288
    # -> SimCC 1x133x576 / 1x133x768); random real-size YOLOX/RTMPose graphs would draw no person at all.
    det, pose = place("diffbody_pose", "yolox_l.onnx"), place("diffbody_pose", "dw-ll_ucoco_384.onnx")
    write_tiny_dwpose(det, pose)
    written.update({"yolox_l.onnx": det, "dw-ll_ucoco_384.onnx": pose})
    return written
