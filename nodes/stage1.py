"""Stage 1 nodes: the joint depth / normal / RGB diffusion model.

The VAE and the text conditioning come from ComfyUI's own SD 2.1 loaders (CheckpointLoaderSimple
with v2-1_512-ema-pruned.safetensors, or CLIPLoader + VAELoader), so no second copy of them is kept.
"""

from __future__ import annotations

from . import glue

CATEGORY = "DiffBody/Stage 1"
STAGE1_TYPE = "DIFFBODY_STAGE1"


class Stage1Loader:
    DISPLAY_NAME = "DiffBody Stage 1 Loader"
    DESCRIPTION = ("Loads DiffBody's stage-1 joint UNet (depth, normal and RGB expert branches on SD 2.1-base) and, "
                   "optionally, its ControlNet on the cleaned image, from models/diffbody. Use the SD 2.1-base VAE "
                   "and CLIP from ComfyUI's own loaders with it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (STAGE1_TYPE,)
    RETURN_NAMES = ("stage1",)
    OUTPUT_TOOLTIPS = ("The stage-1 networks, managed by ComfyUI's model memory management.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = glue.list_files("diffbody")
        return {"required": {
            "unet_name": (files, {"default": "diffbody_stage1_unet.safetensors",
                                  "tooltip": "DiffBody stage-1 joint UNet (models/diffbody, DiffBody safetensors layout)."}),
            "controlnet_name": (["none"] + files, {
                "default": "diffbody_stage1_controlnet.safetensors",
                "tooltip": "DiffBody stage-1 ControlNet on the SwinIR image latent; 'none' samples from pose and "
                           "caption alone (the network after the first training phase)."}),
            "dtype": glue.dtype_input(),
        }}

    def load(self, unet_name: str, controlnet_name: str, dtype: str):
        import torch

        from ..models.stage1_weights import load_stage1_controlnet, load_stage1_unet

        torch_dtype = glue.preferred_dtype(dtype)
        unet = load_stage1_unet(glue.model_path(unet_name, "diffbody"), dtype=torch_dtype)
        controlnet = None
        if controlnet_name != "none":
            controlnet = load_stage1_controlnet(glue.model_path(controlnet_name, "diffbody"), dtype=torch_dtype)
        modules = torch.nn.ModuleDict({"unet": unet} | ({"controlnet": controlnet} if controlnet else {}))
        return (glue.wrap_for_memory_management(modules),)


class Stage1Sampler:
    DISPLAY_NAME = "DiffBody Stage 1 Sampler"
    DESCRIPTION = ("Joint diffusion of DiffBody stage 1: from the cleaned image (I_ir), its pose skeleton and the "
                   "caption, samples the restored preview I_res together with its depth and normal maps. DDPM with "
                   "200 steps is the paper's setting; DDIM or DPM-Solver++ at 20-50 steps are much faster.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("restored", "depth", "normal")
    OUTPUT_TOOLTIPS = ("I_res: stage 1's restored image (feeds stage 2's colour adapter).",
                       "I_depth: depth map (feeds stage 2's ControlNet).",
                       "I_normal: normal map (feeds stage 2's ControlNet).")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "stage1": (STAGE1_TYPE, {"tooltip": "From 'DiffBody Stage 1 Loader'."}),
            "vae": ("VAE", {"tooltip": "The SD 2.1-base VAE (e.g. from Load Checkpoint with "
                                       "v2-1_512-ema-pruned.safetensors)."}),
            "positive": ("CONDITIONING", {"tooltip": "The caption encoded by SD 2.1's CLIP (CLIP Text Encode)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt for classifier-free guidance (often empty)."}),
            "image": ("IMAGE", {"tooltip": "The cleaned image I_ir from 'DiffBody SwinIR Cleanup'."}),
            "pose_image": ("IMAGE", {"tooltip": "The skeleton from 'DiffBody Pose', same size as the image."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Same seed, same result (on the same device)."}),
            "steps": ("INT", {"default": 200, "min": 1, "max": 1000,
                              "tooltip": "Sampling steps: 200 with DDPM as in the paper; 20-50 with ddim/dpmpp_2m."}),
            "scheduler": (["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras"], {
                "default": "ddpm", "tooltip": "Sampler/scheduler (dpmpp_2m_karras: DPM++ 2M on Karras sigmas)."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance on the caption; 1 disables it (twice as fast)."}),
            "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                           "tooltip": "How strongly the cleaned image steers the result "
                                                      "(stage-1 ControlNet); 0 ignores it."}),
            "size_mode": (["bucket", "native"], {
                "default": "bucket",
                "tooltip": "bucket: sample at the paper's training size nearest the image's aspect (512x512 ... "
                           "1024x512) and resize back. native: sample at the image's own size (padded to a "
                           "multiple of 64)."}),
        }}

    def sample(self, stage1, vae, positive, negative, image, pose_image, seed, steps, scheduler, cfg,
               control_strength, size_mode):
        from ..pipelines.stage1 import Stage1Pipeline

        images, poses = glue.comfy_to_bchw(image), glue.comfy_to_bchw(pose_image)
        glue.load_to_compute_device(stage1)
        networks = stage1.model
        text = glue.PrecomputedText(positive=glue.conditioning_tensor(positive),
                                    negative=glue.conditioning_tensor(negative))
        pipeline = Stage1Pipeline(networks["unet"], networks["controlnet"] if "controlnet" in networks else None,
                                  glue.ComfyVAECodec(vae), text)
        result = pipeline(images, poses, [text.POSITIVE] * images.shape[0], text.NEGATIVE, steps=steps,
                          scheduler=scheduler, cfg=cfg, seed=seed, control_scale=control_strength,
                          size_mode=size_mode, progress=glue.progress(steps))
        return (glue.bchw_to_comfy(result.rgb), glue.bchw_to_comfy(result.depth), glue.bchw_to_comfy(result.normal))


NODE_CLASS_MAPPINGS = {
    "DiffBodyStage1Loader": Stage1Loader,
    "DiffBodyStage1Sampler": Stage1Sampler,
}
