"""Depth & normal estimator node: the depth and normal priors without stage-1 weights (public-weights
mode), from Depth Anything V2 / DPT-MiDaS and Marigold normals or normals computed from the depth.

The estimators are cached between runs (loading costs seconds), kept on the offload device, and moved
to the compute device through the glue only while they run.
"""

from __future__ import annotations

from . import glue

CATEGORY = "DiffBody/Stage 0"
FOLDER = "diffbody_priors"
AUTO_DOWNLOAD_TOOLTIP = ("Off (default): a missing model folder stops the run with a message saying where to put it. "
                         "On: missing known folders are downloaded from Hugging Face into models/diffbody/priors.")


def _model_folders(kind: str) -> list[str]:
    """The folders of models/diffbody/priors for a dropdown of `kind` ("depth" or "normals"): every folder
    there (and every known one, present or not) except the known models of the other kind. A folder of
    the wrong kind stops the run with a message saying what it is and what was expected."""
    from ..models.depth_estimator import DEPTH_MODEL_NAMES
    from ..models.normal_estimator import NORMAL_MODEL_NAMES

    other_kind = NORMAL_MODEL_NAMES if kind == "depth" else DEPTH_MODEL_NAMES
    return [name for name in glue.list_model_dirs(FOLDER) if name not in other_kind]


class DepthNormalEstimator:
    DISPLAY_NAME = "DiffBody Depth & Normal Estimator"
    DESCRIPTION = ("Estimates a depth map and a surface-normal map of the image: the depth and normal priors of "
                   "DiffBody's stage 2 when no stage-1 weights are used (public-weights mode). Depth: Depth "
                   "Anything V2 (Small is Apache-2.0; Base and Large are non-commercial, CC-BY-NC-4.0) or "
                   "DPT-Hybrid MiDaS; near is bright. Normals: Marigold, or computed from the depth. Normal colours "
                   "follow ControlNet 1.1's convention (red = facing left, green = up, blue = towards the camera).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("depth", "normal")
    OUTPUT_TOOLTIPS = ("Relative depth, grey, near = bright, normalised per image to the full range; the input's size.",
                       "Surface normals as colours (red = left, green = up, blue = towards the camera); the input's size.")
    FUNCTION = "estimate"

    @classmethod
    def INPUT_TYPES(cls):
        from ..models.depth_estimator import DEFAULT_DEPTH_MODEL
        from ..pipelines.depth_normal import FROM_DEPTH

        return {"required": {
            "image": ("IMAGE", {"tooltip": "Usually the cleaned image from 'DiffBody SwinIR Cleanup'. Grey or RGBA "
                                           "inputs are converted to RGB."}),
            "depth_model": (_model_folders("depth"), {
                "default": DEFAULT_DEPTH_MODEL,
                "tooltip": "Depth model folder in models/diffbody/priors (or models/depthanything, models/diffusers; "
                           "transformers layout): Depth-Anything-V2-Large/Base/Small-hf or dpt-hybrid-midas (the "
                           "MiDaS model the paper annotated with)."}),
            "normal_source": ([FROM_DEPTH] + _model_folders("normals"), {
                "default": FROM_DEPTH,
                "tooltip": "'from depth': normals from the depth map's slopes (no extra model, coarse). Or a Marigold "
                           "normals folder in models/diffbody/priors or models/diffusers (marigold-normals-v1-1: "
                           "sharper, a few diffusion steps per image)."}),
            "marigold_steps": ("INT", {"default": 4, "min": 1, "max": 50,
                                       "tooltip": "Marigold only: denoising steps per image (4 is its default)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                             "tooltip": "Marigold only: seed of its starting noise."}),
            "auto_download": glue.auto_download_input(AUTO_DOWNLOAD_TOOLTIP),
        }}

    def estimate(self, image, depth_model: str, normal_source: str, marigold_steps: int, seed: int,
                 auto_download: bool):
        from ..pipelines.depth_normal import FROM_DEPTH

        images = glue.comfy_to_bchw(image)
        depth_dir = glue.model_path(depth_model, FOLDER, auto_download)
        normal_dir = None if normal_source == FROM_DEPTH else glue.model_path(normal_source, FOLDER, auto_download)
        estimator = _cached_estimator(depth_dir, normal_dir)
        estimator.normal_steps, estimator.seed = marigold_steps, seed
        with glue.on_compute_device(estimator, estimator.size_bytes()):
            depth, normal = estimator.estimate(images, progress=glue.progress(images.shape[0]))
        return (glue.bchw_to_comfy(depth), glue.bchw_to_comfy(normal))


_estimator_cache: dict = {}


def _cached_estimator(depth_dir: str, normal_dir: str | None):
    """Keep the last estimator pair (loaded on the CPU in the compute device's dtype)."""
    from ..pipelines.depth_normal import load_depth_normal_estimator

    dtype = glue.preferred_dtype("auto")
    key = (depth_dir, normal_dir, dtype)
    if key not in _estimator_cache:
        _estimator_cache.clear()
        _estimator_cache[key] = load_depth_normal_estimator(depth_dir, normal_dir, device="cpu", dtype=dtype)
    return _estimator_cache[key]


NODE_CLASS_MAPPINGS = {
    "DiffBodyDepthNormalEstimator": DepthNormalEstimator,
}
