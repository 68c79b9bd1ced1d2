"""Stage 0 nodes: SwinIR cleanup, pose extraction, LLaVA captioning.

Thin adapters: each node resolves model files through the glue, converts IMAGE tensors, and hands
the work to `pipelines/`. Heavy modules are imported inside the functions that run the nodes.
"""

from __future__ import annotations

from ..pipelines.presets import MODE_DEFAULTS
from . import glue

CATEGORY = "DiffBody/Stage 0"
POSE_FILE_PLACES = ("models/diffbody/pose, or where comfyui_controlnet_aux or models/dwpose keep it; present files "
                    "listed first")


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
            "auto_download": glue.auto_download_input(),
        }}

    def load(self, model_name: str, auto_download: bool):
        from ..models.swinir import load_swinir

        path = glue.model_path(model_name, "upscale_models", auto_download)
        swinir = load_swinir(path)
        # what ComfyUI's own loader attaches, for newer "Upscale Image (using Model)" (load_models_gpu)
        swinir.patcher = glue.upscale_model_patcher(swinir.model, path)
        return (swinir,)


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

        if getattr(swinir, "scale", 1) != 1:
            raise ValueError(f"DiffBody SwinIR Cleanup expects a x1 cleaner such as DiffBIR's SwinIR, got a "
                             f"x{swinir.scale} upscaler; use ComfyUI's 'Upscale Image (using Model)' for upscalers.")
        images = glue.comfy_to_bchw(image)
        device = glue.torch_device()
        cleaned = clean_images(swinir, images, upscale=upscale, tile_size=tile_size,
                               tile_stride=min(tile_stride, tile_size), device=device,
                               progress=glue.progress(images.shape[0]))
        return (glue.bchw_to_comfy(cleaned),)


class PoseEstimator:
    DISPLAY_NAME = "DiffBody Pose (Skeleton + Keypoints)"
    DESCRIPTION = ("Finds every person's body pose and draws the skeleton in the OpenPose / HumanSD convention "
                   "(coloured limbs on black, same size as the input): the I_pose prior of DiffBody. Also outputs "
                   "the keypoints as POSE_KEYPOINT for other packs' pose nodes.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT")
    RETURN_NAMES = ("pose_image", "keypoints")
    OUTPUT_TOOLTIPS = ("The skeleton drawn on black, the input's size.",
                       "Keypoints per image (OpenPose JSON layout, pixel coordinates).")
    FUNCTION = "estimate"

    @classmethod
    def INPUT_TYPES(cls):
        from ..pipelines.pose.backends import BACKENDS

        return {"required": {
            "image": ("IMAGE", {"tooltip": "Usually the cleaned image from 'DiffBody SwinIR Cleanup'."}),
            "backend": (list(BACKENDS), {
                "default": "dwpose",
                "tooltip": "dwpose: DWPose on onnxruntime (recommended, GPU or CPU). openpose: OpenPose body "
                           "(needs controlnet_aux). mediapipe: no download, one model in the wheel (needs "
                           "mediapipe==0.10.21, which pins numpy 1.26). mmpose: only if mmpose is installed."}),
            "draw_hands": ("BOOLEAN", {"default": False, "tooltip": "Also draw hand keypoints (DWPose only)."}),
            "draw_face": ("BOOLEAN", {"default": False, "tooltip": "Also draw face keypoints (DWPose only)."}),
            "dwpose_detector": (glue.list_files("diffbody_pose"), {
                "default": "yolox_l.onnx", "tooltip": f"DWPose person detector ({POSE_FILE_PLACES})."}),
            "dwpose_estimator": (glue.list_files("diffbody_pose"), {
                "default": "dw-ll_ucoco_384.onnx", "tooltip": f"DWPose keypoint model ({POSE_FILE_PLACES})."}),
            "openpose_model": (glue.list_files("diffbody_pose"), {
                "default": "body_pose_model.pth", "tooltip": f"OpenPose body model ({POSE_FILE_PLACES})."}),
            "auto_download": glue.auto_download_input(),
        }, "optional": {
            "mmpose_config": ("STRING", {
                "default": "rtmpose-l_8xb32-270e_coco-wholebody-384x288.py",
                "tooltip": "mmpose backend only: model config file in models/diffbody/pose."}),
            "mmpose_checkpoint": ("STRING", {
                "default": "rtmpose-l_simcc-coco-wholebody_pt-aic-coco_270e-384x288-eaeb96c8_20230125.pth",
                "tooltip": "mmpose backend only: checkpoint file in models/diffbody/pose (from mmpose's model zoo)."}),
            # optional and last, so workflows saved before it existed keep their widget values in place
            "xinsir_sticks": ("BOOLEAN", {
                "default": MODE_DEFAULTS["diffbody"].xinsir_sticks,
                "tooltip": "On: draw the skeleton as xinsir's SDXL ControlNets (ControlNet-Union, openpose) were "
                           "trained, limbs wider on larger images (comfyui_controlnet_aux's "
                           "scale_stick_for_xinsr_cn): on in the public-weights workflow. Off: the pack's own "
                           "drawing, which DiffBody's ControlNets were trained on."}),
        }}

    def estimate(self, image, backend, draw_hands, draw_face, dwpose_detector, dwpose_estimator, openpose_model,
                 auto_download, mmpose_config="", mmpose_checkpoint="",
                 xinsir_sticks=MODE_DEFAULTS["diffbody"].xinsir_sticks):
        from ..pipelines.pose.backends import estimate_and_draw

        if backend == "mmpose":
            from ..pipelines.pose.mmpose_backend import import_mmpose

            import_mmpose()  # say how to install it before asking for its files
        files = {"dwpose": {"det": dwpose_detector, "pose": dwpose_estimator},
                 "openpose": {"body": openpose_model},
                 "mmpose": {"config": mmpose_config, "checkpoint": mmpose_checkpoint, "det": dwpose_detector},
                 }.get(backend, {})
        paths = {role: glue.model_path(name, "diffbody_pose", auto_download) for role, name in files.items()}
        images = glue.comfy_to_bchw(image)
        estimator = _cached_estimator(backend, paths, str(glue.torch_device()))
        pose_images, frames = estimate_and_draw(estimator, images, hands=draw_hands, face=draw_face,
                                                xinsir_sticks=xinsir_sticks, progress=glue.progress(images.shape[0]))
        return (glue.bchw_to_comfy(pose_images), frames)


class DrawPose:
    DISPLAY_NAME = "DiffBody Draw Pose"
    DESCRIPTION = ("Draws POSE_KEYPOINT keypoints as a skeleton on black at an image's size, in the same drawing as "
                   "'DiffBody Pose': for each crop of 'DiffBody Crop People', that person's own skeleton.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pose_image",)
    OUTPUT_TOOLTIPS = ("The skeleton drawn on black, the image's size, one per keypoint frame.",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "keypoints": ("POSE_KEYPOINT", {"tooltip": "One frame per image (OpenPose JSON layout; pixel or 0..1 "
                                                       "coordinates of its own canvas, mapped onto the image)."}),
            "image": ("IMAGE", {"tooltip": "Only its size is used: the skeleton is drawn at this size."}),
            "draw_hands": ("BOOLEAN", {"default": False, "tooltip": "Also draw hand keypoints."}),
            "draw_face": ("BOOLEAN", {"default": False, "tooltip": "Also draw face keypoints."}),
            "xinsir_sticks": ("BOOLEAN", {
                "default": MODE_DEFAULTS["diffbody"].xinsir_sticks,
                "tooltip": "As on 'DiffBody Pose': on for xinsir's SDXL ControlNets (ControlNet-Union), off for "
                           "DiffBody's own ControlNets."}),
        }}

    def draw(self, keypoints, image, draw_hands, draw_face, xinsir_sticks):
        import torch

        from ..pipelines.image import uint8_to_chw
        from ..pipelines.pose.draw import draw_pose
        from ..pipelines.pose.keypoints import BadPoseKeypoints, check_frame

        count, height, width = image.shape[0], image.shape[1], image.shape[2]
        frames = glue.frames_per_image(keypoints, count)
        if not frames:
            given = 0 if frames == [] else len(keypoints)
            raise BadPoseKeypoints(f"DiffBody Draw Pose: {given} keypoint frames for {count} images; give one "
                                   "frame per image, or one for all")
        drawn = [uint8_to_chw(draw_pose(check_frame(frame), height, width, hands=draw_hands, face=draw_face,
                                        xinsir_sticks=xinsir_sticks)) for frame in frames]
        return (glue.bchw_to_comfy(torch.stack(drawn)),)


_estimator_cache: dict = {}


def _cached_estimator(backend: str, paths: dict, device: str):
    """Keep the last pose estimator: building ONNX sessions costs seconds, and graphs re-run often."""
    from ..pipelines.pose.backends import make_estimator

    key = (backend, tuple(sorted(paths.items())), device)
    if key not in _estimator_cache:
        _estimator_cache.clear()
        _estimator_cache[key] = make_estimator(backend, paths, device=device)
    return _estimator_cache[key]


class LlavaCaption:
    DISPLAY_NAME = "DiffBody LLaVA Caption"
    DESCRIPTION = ("Describes the person in the image with LLaVA 1.5 (models/LLM/llava-1.5-7b-hf): the caption p "
                   "that conditions DiffBody's diffusion stages. Your own text can be appended, prepended or used "
                   "instead.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("caption",)
    OUTPUT_TOOLTIPS = ("The caption (one line per image for a batch).",)
    FUNCTION = "caption"

    @classmethod
    def INPUT_TYPES(cls):
        from ..pipelines.prompts import DEFAULT_CAPTION_PROMPT

        return {"required": {
            "image": ("IMAGE", {"tooltip": "Usually the cleaned image from 'DiffBody SwinIR Cleanup'."}),
            "model": (glue.list_model_dirs("LLM"), {
                "default": "llava-1.5-7b-hf",
                "tooltip": "A LLaVA model folder in models/LLM (transformers layout, e.g. llava-hf/llava-1.5-7b-hf)."}),
            "prompt": ("STRING", {"default": DEFAULT_CAPTION_PROMPT, "multiline": True,
                                  "tooltip": "What LLaVA is asked about the image."}),
            "user_text": ("STRING", {"default": "", "multiline": True,
                                     "tooltip": "Your own words, combined with the caption as 'text_mode' says."}),
            "text_mode": (["append", "prepend", "override"], {
                "default": "append", "tooltip": "append/prepend: add your text after/before LLaVA's caption. "
                                                "override: use only your text (LLaVA is not run)."}),
            "max_new_tokens": ("INT", {"default": 77, "min": 8, "max": 512,
                                       "tooltip": "Longest caption, in tokens (CLIP reads 77 at most)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Seed for sampling the caption."}),
            "dtype": glue.dtype_input("auto: fp16 on GPU, float32 on CPU."),
            "quantization": (["none", "8bit", "4bit"], {
                "default": "none", "tooltip": "8/4-bit weights to save VRAM (needs bitsandbytes and an NVIDIA GPU)."}),
            "keep_loaded": ("BOOLEAN", {"default": False,
                                        "tooltip": "Keep LLaVA in memory for the next run (faster re-runs, costs RAM)."}),
            "auto_download": glue.auto_download_input(),
        }}

    def caption(self, image, model, prompt, user_text, text_mode, max_new_tokens, seed, dtype, quantization,
                keep_loaded, auto_download):
        from ..pipelines.caption import combine_caption

        images = glue.comfy_to_bchw(image)
        if text_mode == "override":
            return ("\n".join(combine_caption("", user_text, "override") for _ in range(images.shape[0])),)
        captioner = _cached_captioner(glue.model_path(model, "LLM", auto_download), dtype, quantization)
        try:
            with glue.on_compute_device(captioner, captioner.size_bytes(), movable=not captioner.quantized) as device:
                captions = captioner.caption(images, prompt=prompt, max_new_tokens=max_new_tokens, seed=seed,
                                             device=device, progress=glue.progress(images.shape[0]))
        finally:
            if not keep_loaded:
                _captioner_cache.clear()
        return ("\n".join(combine_caption(c, user_text, text_mode) for c in captions),)


_captioner_cache: dict = {}


def _cached_captioner(path: str, dtype: str, quantization: str):
    from ..models.devices import concrete_dtype
    from ..pipelines.caption import LlavaCaptioner

    # Resolve "auto" for the device it will run on (fp16 on a GPU), not the CPU it is loaded on.
    dtype = concrete_dtype(dtype, glue.torch_device())
    key = (path, dtype, quantization)
    if key not in _captioner_cache:
        _captioner_cache.clear()
        device = str(glue.torch_device()) if quantization != "none" else "cpu"
        _captioner_cache[key] = LlavaCaptioner.load(path, dtype=dtype, quantization=quantization, device=device)
    return _captioner_cache[key]


NODE_CLASS_MAPPINGS = {
    "DiffBodySwinIRLoader": SwinIRLoader,
    "DiffBodySwinIRCleanup": SwinIRCleanup,
    "DiffBodyPoseEstimator": PoseEstimator,
    "DiffBodyDrawPose": DrawPose,
    "DiffBodyLlavaCaption": LlavaCaption,
}
