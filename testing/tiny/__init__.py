"""The tiny-weights factory: tiny versions of every network the pack loads, written in the same file
formats and key layouts as the real files, into a ComfyUI-style models folder.

Each network has its own module with a `write_tiny_<name>` function; `build_models_dir` lays them all
out where the nodes look for the real files.
"""

from __future__ import annotations

import contextlib
import os
import shutil

# The tiny stand-in for stabilityai/stable-diffusion-2-1-base, under models/diffusers/.
TINY_SD21_NAME = "tiny-sd21"
# Tiny SDXL stand-ins: ComfyUI's own loaders take only real-size files, so test-only nodes load these.
TINY_SDXL_NAME = "tiny-sdxl"
TINY_SDXL_UNET_FILE = "tiny_sdxl_unet.safetensors"
TINY_CLIP_VISION_FILE = "tiny_clip_vision.safetensors"
# Tiny depth and normal estimators, under models/diffbody/priors/.
TINY_DEPTH_NAME = "tiny-depth-anything"
TINY_NORMALS_NAME = "tiny-marigold-normals"
# ... also written under the estimator folder names of the public-weights mode.
PUBLIC_DEPTH_NAME = "Depth-Anything-V2-Small-hf"
PUBLIC_NORMALS_NAME = "marigold-normals-v1-1"


@contextlib.contextmanager
def seeded_init(seed: int, dtype=None):
    """Build modules inside this block with seeded random weights, in `dtype` (a torch dtype; None:
    torch's default) and without touching the caller's random state or default dtype."""
    import torch

    before = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype or before)
        try:
            yield
        finally:
            torch.set_default_dtype(before)


def build_models_dir(models_dir: str, *, seed: int = 0) -> dict[str, str]:
    """Write every tiny model under `models_dir` (laid out like ComfyUI/models) and return
    {file name: path}. File names are the real ones, so nodes find them without any test switch."""
    from ...models.files import FOLDERS
    from .dwpose import write_tiny_dwpose
    from .llava import write_tiny_llava
    from .openpose import write_tiny_openpose
    from .priors import write_tiny_depth_anything, write_tiny_marigold_normals
    from .sd21_components import write_tiny_sd21_components
    from .stage1 import write_tiny_sd21_diffusers, write_tiny_stage1
    from .stage2 import write_tiny_clip_vision, write_tiny_ip_adapter_plus_xl, write_tiny_multiprior, write_tiny_sdxl
    from .swinir import write_tiny_swinir
    from .union import write_tiny_union_controlnet

    def place(folder: str, name: str) -> str:
        directory = os.path.join(models_dir, FOLDERS[folder].relative_dir)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, name)

    written = {
        "general_swinir_v1.ckpt": write_tiny_swinir(place("upscale_models", "general_swinir_v1.ckpt"),
                                                    layout="diffbir_v1", seed=seed),
        "realesrgan_s4_swinir_100k.pth": write_tiny_swinir(place("upscale_models", "realesrgan_s4_swinir_100k.pth"),
                                                           layout="diffbir_v2", seed=seed + 1),
        "body_pose_model.pth": write_tiny_openpose(place("diffbody_pose", "body_pose_model.pth")),
        "llava-1.5-7b-hf": write_tiny_llava(place("LLM", "llava-1.5-7b-hf"), seed=seed),
    }
    det, pose = place("diffbody_pose", "yolox_l.onnx"), place("diffbody_pose", "dw-ll_ucoco_384.onnx")
    write_tiny_dwpose(det, pose, seed=seed)
    written.update({"yolox_l.onnx": det, "dw-ll_ucoco_384.onnx": pose})

    unet, controlnet = place("diffbody", "diffbody_stage1_unet.safetensors"), \
        place("diffbody", "diffbody_stage1_controlnet.safetensors")
    write_tiny_stage1(unet, controlnet, seed=seed)
    written.update({"diffbody_stage1_unet.safetensors": unet, "diffbody_stage1_controlnet.safetensors": controlnet})
    # A tiny SD 2.1-base in diffusers layout: unet/ and scheduler/ from one writer, vae/, text_encoder/
    # and tokenizer/ (context width matching the tiny stage-1 UNet) from the other.
    sd21 = place("diffusers", TINY_SD21_NAME)
    write_tiny_sd21_diffusers(sd21, seed=seed)
    write_tiny_sd21_components(sd21, seed=seed)
    written[TINY_SD21_NAME] = sd21

    # Stage 2: the tiny SDXL (diffusers folder + original-layout UNet file with the same weights), the
    # multi-prior ControlNet, the colour adapter in the public IP-Adapter Plus XL layout (under both the
    # public and DiffBody's file name) and the CLIP image encoder.
    sdxl = write_tiny_sdxl(place("diffusers", TINY_SDXL_NAME), place("checkpoints", TINY_SDXL_UNET_FILE), seed=seed)
    written[TINY_SDXL_NAME], written[TINY_SDXL_UNET_FILE] = sdxl["folder"], sdxl["single_file"]
    for name, folder, writer in (("diffbody_stage2_controlnet.safetensors", "diffbody", write_tiny_multiprior),
                                 ("ip-adapter-plus_sdxl_vit-h.safetensors", "ipadapter", write_tiny_ip_adapter_plus_xl),
                                 ("diffbody_colour_adapter.safetensors", "ipadapter", write_tiny_ip_adapter_plus_xl)):
        written[name] = writer(place(folder, name), seed=seed)
    clip = write_tiny_clip_vision(single_file=place("clip_vision", TINY_CLIP_VISION_FILE), seed=seed)
    written[TINY_CLIP_VISION_FILE] = clip["single_file"]
    # Public-weights mode: ControlNet-Union SDXL (xinsir's ProMax layout) under the catalogue's name.
    union = place("controlnet", "controlnet-union-sdxl-1.0.safetensors")
    written["controlnet-union-sdxl-1.0.safetensors"] = write_tiny_union_controlnet(union, seed=seed)

    written[TINY_DEPTH_NAME] = write_tiny_depth_anything(place("diffbody_priors", TINY_DEPTH_NAME), seed=seed)
    written[TINY_NORMALS_NAME] = write_tiny_marigold_normals(place("diffbody_priors", TINY_NORMALS_NAME), seed=seed)
    # The bundled public-weights workflow (and restore --mode public) name these real folders.
    for real, tiny in ((PUBLIC_DEPTH_NAME, TINY_DEPTH_NAME), (PUBLIC_NORMALS_NAME, TINY_NORMALS_NAME)):
        written[real] = shutil.copytree(written[tiny], place("diffbody_priors", real))
    return written
