"""Stage 0 nodes: SwinIR cleanup, pose extraction, LLaVA captioning.

Thin adapters: each node resolves model files through the glue, converts IMAGE tensors, and hands
the work to `pipelines/`. Heavy modules are imported inside the functions that run the nodes.
"""

from __future__ import annotations

from . import glue

CATEGORY = "DiffBody/Stage 0"
AUTO_DOWNLOAD_TOOLTIP = ("Off (default): a missing model file stops the run with a message saying where to put it. "
                         "On: missing known files are downloaded from Hugging Face into the right ComfyUI models folder.")


def _auto_download_input() -> tuple:
    return ("BOOLEAN", {"default": False, "tooltip": AUTO_DOWNLOAD_TOOLTIP})


class SwinIRLoader:
    DISPLAY_NAME = "DiffBody SwinIR Loader"
    DESCRIPTION = ("Loads DiffBIR's SwinIR cleaner (general_swinir_v1.ckpt or realesrgan_s4_swinir_100k.pth) from "
                   "models/upscale_models. The output also works with ComfyUI's 'Upscale Image (using Model)'.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("UPSCALE_MODEL",)
    RETURN_NAMES = ("swinir",)
    OUTPUT_TOOLTIPS = ("The SwinIR cleaner (a spandrel model, x1: it cleans at the target size).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (glue.list_files("upscale_models"), {
                "default": "general_swinir_v1.ckpt",
                "tooltip": "SwinIR checkpoint in models/upscale_models (DiffBIR v1 general or v2 Real-ESRGAN)."}),
            "auto_download": _auto_download_input(),
        }}

    def load(self, model_name: str, auto_download: bool):
        from ..models.swinir import load_swinir

        return (load_swinir(glue.model_path(model_name, "upscale_models", auto_download)),)


class SwinIRCleanup:
    DISPLAY_NAME = "DiffBody SwinIR Cleanup"
    DESCRIPTION = ("Stage 0 of DiffBody: removes blur, noise and JPEG artefacts with DiffBIR's SwinIR, optionally "
                   "upscaling first for low-resolution inputs. Large images are processed in overlapping tiles "
                   "so memory stays bounded.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("cleaned",)
    OUTPUT_TOOLTIPS = ("The cleaned image (I_ir), input size times `upscale`.",)
    FUNCTION = "clean"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "swinir": ("UPSCALE_MODEL", {"tooltip": "From 'DiffBody SwinIR Loader' (or ComfyUI's upscale model loader "
                                                    "with a SwinIR cleaner file)."}),
            "image": ("IMAGE", {"tooltip": "The degraded photo (I_LQ). Grey or RGBA inputs are converted to RGB."}),
            "upscale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 8.0, "step": 0.5,
                                  "tooltip": "Super-resolution factor: the image is resized by this factor before "
                                             "cleaning (use 4 for a x4 low-resolution input)."}),
            "tile_size": ("INT", {"default": 512, "min": 256, "max": 4096, "step": 64,
                                  "tooltip": "Tile edge in pixels; images larger than this are processed tile by tile."}),
            "tile_stride": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 64,
                                    "tooltip": "Distance between tiles; smaller than the tile size so tiles overlap "
                                               "and are blended without seams."}),
        }}

    def clean(self, swinir, image, upscale: float, tile_size: int, tile_stride: int):
        from ..pipelines.cleanup import clean_images
        from ..pipelines.image import bchw_to_comfy, comfy_to_bchw

        if getattr(swinir, "scale", 1) != 1:
            raise ValueError(f"DiffBody SwinIR Cleanup expects a x1 cleaner such as DiffBIR's SwinIR, got a "
                             f"x{swinir.scale} upscaler; use ComfyUI's 'Upscale Image (using Model)' for upscalers.")
        images = comfy_to_bchw(image)
        device = glue.torch_device()
        cleaned = clean_images(swinir, images, upscale=upscale, tile_size=tile_size,
                               tile_stride=min(tile_stride, tile_size), device=device,
                               progress=glue.progress(images.shape[0]))
        return (bchw_to_comfy(cleaned),)


NODE_CLASS_MAPPINGS = {
    "DiffBodySwinIRLoader": SwinIRLoader,
    "DiffBodySwinIRCleanup": SwinIRCleanup,
}
