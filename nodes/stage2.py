"""Stage 2 nodes: the multi-prior ControlNet and the colour adapter on ComfyUI's own SDXL.

Sampling is ComfyUI's: these nodes return a CONTROL_NET / patched CONDITIONING and a patched MODEL
clone for the stock KSampler, so there is one SDXL in memory and every sampler, scheduler, LoRA and
other ControlNet keeps working.
"""

from __future__ import annotations

from ..models.union_controlnet import UNION_TYPES
from . import glue

CATEGORY = "DiffBody/Stage 2"
ADAPTER_TYPE = "DIFFBODY_COLOUR_ADAPTER"
PRIOR_INPUTS = (("image", "I_ir, the cleaned image from 'DiffBody SwinIR Cleanup' (not stage 1's I_res)."),
                ("pose", "I_pose, the skeleton from 'DiffBody Pose'."),
                ("depth", "I_depth, from 'DiffBody Stage 1 Sampler' (or a depth estimator)."),
                ("normal", "I_normal, from 'DiffBody Stage 1 Sampler' (or a normal estimator)."))
PAPER_STRENGTHS = {"image": 1.0, "pose": 1.0, "depth": 1.0, "normal": 1.0}
TOO_SMALL_ADVICE = ("Use a larger photo, or raise 'upscale' in DiffBody SwinIR Cleanup so I_ir reaches 64 px on its "
                    "shorter side.")


class MultiPriorControlNetLoader:
    DISPLAY_NAME = "DiffBody Multi-Prior ControlNet Loader"
    DESCRIPTION = ("Loads DiffBody's stage-2 SDXL ControlNet whose conditioning fuses four priors (cleaned image, "
                   "pose, depth, normal) with user-set strengths. Returns a CONTROL_NET for 'DiffBody Apply "
                   "Multi-Prior ControlNet' (ComfyUI's own Apply ControlNet also takes it, as the image prior only).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The multi-prior ControlNet, managed by ComfyUI's memory management.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "controlnet_name": (glue.list_files("diffbody"), {
                "default": "diffbody_stage2_controlnet.safetensors",
                "tooltip": "DiffBody stage-2 ControlNet (models/diffbody, DiffBody safetensors layout)."}),
            "dtype": glue.dtype_input(),
        }}

    def load(self, controlnet_name: str, dtype: str):
        from .multiprior_native import load_multiprior_control

        return (load_multiprior_control(glue.model_path(controlnet_name, "diffbody"), glue.preferred_dtype(dtype)),)


class ApplyMultiPriorControlNet:
    DISPLAY_NAME = "DiffBody Apply Multi-Prior ControlNet"
    DESCRIPTION = ("Conditions SDXL on DiffBody's priors: c_g = a1*F1(image) + a2*F2(pose) + a3*F3(depth) + "
                   "a4*F4(normal). With DiffBody's ControlNet the four priors are fused in one network; with "
                   "ControlNet-Union SDXL (public-weights mode) each prior is applied with its union type "
                   "(image as tile, pose as openpose, depth, normal) and its strength.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the ControlNet attached.",
                       "Negative conditioning with the ControlNet attached.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "positive": ("CONDITIONING", {"tooltip": "SDXL positive conditioning (e.g. the caption)."}),
            "negative": ("CONDITIONING", {"tooltip": "SDXL negative conditioning."}),
            "control_net": ("CONTROL_NET", {"tooltip": "DiffBody's multi-prior ControlNet, or ControlNet-Union "
                                                       "SDXL from ComfyUI's Load ControlNet Model."}),
        }
        for name, tip in PRIOR_INPUTS:
            required[name] = ("IMAGE", {"tooltip": tip})
        for name, _ in PRIOR_INPUTS:
            required[f"{name}_strength"] = ("FLOAT", {
                "default": PAPER_STRENGTHS[name], "min": 0.0, "max": 2.0, "step": 0.05,
                "tooltip": f"a_i for the {name} prior; 0 leaves it out."})
        required.update({
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                   "tooltip": "Overall ControlNet strength; 0 gives the unconditioned SDXL result."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Sampling progress at which the control starts."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Sampling progress at which the control stops."}),
        })
        return {"required": required, "optional": {
            "vae": ("VAE", {"tooltip": "Only for ControlNets that need one (not DiffBody's or Union SDXL)."})}}

    def apply(self, positive, negative, control_net, image, pose, depth, normal, image_strength, pose_strength,
              depth_strength, normal_strength, strength, start_percent, end_percent, vae=None):
        from ..pipelines.stage2_errors import check_stage2_size

        priors = {"image": image, "pose": pose, "depth": depth, "normal": normal}
        # The first stage-2 node to see I_ir: say here, not in the KSampler's ZeroDivisionError, that it is too small.
        check_stage2_size(priors, self.DISPLAY_NAME, TOO_SMALL_ADVICE)
        strengths = {"image": image_strength, "pose": pose_strength, "depth": depth_strength,
                     "normal": normal_strength}
        if strength == 0 or not any(strengths.values()):
            return (positive, negative)
        from .multiprior_native import MultiPriorControl
        percent_range = (start_percent, end_percent)

        def attach(previous):
            if isinstance(control_net, MultiPriorControl):
                return control_net.copy().set_priors(priors, strengths, strength, percent_range) \
                    .set_previous_controlnet(previous)
            return union_priors_control(control_net, priors, strengths, strength, percent_range, vae, previous)

        return _with_control(positive, negative, attach)


def union_priors_control(union_control, priors: dict, strengths: dict, strength: float,
                         percent_range: tuple[float, float], vae=None, previous=None):
    """Public-weights mode: ControlNet-Union SDXL applied once per prior (its own control type and
    strength a_i * strength), chained so their residuals add up like c_g's weighted sum."""
    chained = previous
    for name, image in priors.items():
        weight = float(strengths.get(name, 0.0)) * strength
        if image is None or weight == 0.0:
            continue
        c = union_control.copy()
        c.set_extra_arg("control_type", [UNION_TYPES[name]])
        c.set_cond_hint(glue.control_hint(image), weight, percent_range, vae=vae)
        c.set_previous_controlnet(chained)
        chained = c
    return chained


def _with_control(positive, negative, attach):
    """Attach a control to every conditioning entry, sharing one copy per previous control (stacking),
    as ComfyUI's Apply ControlNet does; never mutates the inputs."""
    attached = {}
    out = []
    for conditioning in (positive, negative):
        entries = []
        for tensor, options in conditioning:
            options = options.copy()
            previous = options.get("control")
            if previous not in attached:
                attached[previous] = attach(previous)
            options["control"] = attached[previous]
            options["control_apply_to_uncond"] = False
            entries.append([tensor, options])
        out.append(entries)
    return (out[0], out[1])


class ColourAdapterLoader:
    DISPLAY_NAME = "DiffBody Colour Adapter Loader"
    DESCRIPTION = ("Loads the colour adapter (IP-Adapter Plus XL layout) from models/ipadapter: DiffBody's "
                   "fine-tuned diffbody_colour_adapter.safetensors, or the public ip-adapter-plus_sdxl_vit-h."
                   "safetensors (the paper's initialisation, public-weights mode).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (ADAPTER_TYPE,)
    RETURN_NAMES = ("colour_adapter",)
    OUTPUT_TOOLTIPS = ("The colour adapter for 'DiffBody Apply Colour Adapter'.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": (glue.list_files("ipadapter"), {
                "default": "diffbody_colour_adapter.safetensors",
                "tooltip": "diffbody_colour_adapter.safetensors, or ip-adapter-plus_sdxl_vit-h.safetensors "
                           "for the public-weights mode."}),
            "auto_download": glue.auto_download_input("Download the public IP-Adapter Plus XL file if it is missing "
                                                      "(off by default)."),
        }}

    def load(self, adapter_name: str, auto_download: bool):
        from ..models.colour_adapter import check_ip_adapter_layout

        path = glue.model_path(adapter_name, "ipadapter", auto_download)
        check_ip_adapter_layout(path)  # refuse a wrong file here; the weights load against the MODEL
        return (ColourAdapterFile(path),)


class ColourAdapterFile:
    """A checked adapter file, loaded (strictly) for the UNet it is applied to, once per UNet layout:
    the layer count and widths come from the MODEL, so a file made for another base model is refused."""

    def __init__(self, path: str):
        self.path = path
        self._loaded: tuple[str, object, object] | None = None

    def for_unet(self, unet_config: dict):
        """(adapter, its ModelPatcher). The patcher is kept with the adapter: ComfyUI takes weights that
        outlive their patcher for a leak, and runs a full garbage collection on every later load."""
        import json

        from ..models.colour_adapter import load_colour_adapter

        key = json.dumps(unet_config, sort_keys=True, default=str)
        if self._loaded is None or self._loaded[0] != key:
            adapter = load_colour_adapter(self.path, unet_config)
            self._loaded = (key, adapter, glue.wrap_for_memory_management(adapter))
        return self._loaded[1], self._loaded[2]


class ApplyColourAdapter:
    DISPLAY_NAME = "DiffBody Apply Colour Adapter"
    DESCRIPTION = ("Steers SDXL's colours towards stage 1's restored image I_res: its CLIP image features go "
                   "through the colour adapter into every cross-attention layer of a clone of the MODEL "
                   "(IP-Adapter style attention patches). Use the result with the stock KSampler.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A patched clone of the SDXL model; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SDXL model (after any LoRAs)."}),
            "colour_adapter": (ADAPTER_TYPE, {"tooltip": "From 'DiffBody Colour Adapter Loader'."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "OpenCLIP ViT-H-14 (CLIP-ViT-H-14-laion2B-s32B-b79K) from "
                                                       "ComfyUI's Load CLIP Vision."}),
            "image": ("IMAGE", {"tooltip": "I_res, the restored image from 'DiffBody Stage 1 Sampler'."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                 "tooltip": "Adapter weight; 0 gives the unpatched model's result."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Sampling progress at which the adapter starts."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Sampling progress at which the adapter stops."}),
        }}

    def apply(self, model, colour_adapter, clip_vision, image, weight, start_percent, end_percent):
        import torch

        from .stage2_native import patch_colour_adapter

        if weight == 0:
            return (model,)
        colour_adapter, adapter_patcher = colour_adapter.for_unet(model.model.model_config.unet_config)
        image = glue.bchw_to_comfy(glue.comfy_to_bchw(image))  # grey, grey+alpha, RGBA: RGB, as every node takes
        with torch.no_grad():
            cond = colour_adapter.project(clip_vision.encode_image(image).penultimate_hidden_states)
            uncond = colour_adapter.project(glue.clip_vision_zero_input_features(clip_vision))
        return (patch_colour_adapter(model, colour_adapter, adapter_patcher, cond, uncond, weight, start_percent,
                                     end_percent),)


NODE_CLASS_MAPPINGS = {
    "DiffBodyMultiPriorControlNetLoader": MultiPriorControlNetLoader,
    "DiffBodyApplyMultiPriorControlNet": ApplyMultiPriorControlNet,
    "DiffBodyColourAdapterLoader": ColourAdapterLoader,
    "DiffBodyApplyColourAdapter": ApplyColourAdapter,
}
