"""Stage 2 in ComfyUI's own KSampler path, built from in-memory weights, for timing (bench/gpu_suite.py; the
lead's interleaved A/B overhead measurement). Build each setup once, then sample it as often as needed:

    comfy = import_comfy(COMFYUI_DIR, "cuda")               # before anything imports comfy
    model = sdxl_model(ldm_state_dict, dtype)               # MODEL, as ComfyUI's UNet loaders build it
    positive, negative = sdxl_conditioning(context, pooled, negative_context, negative_pooled)
    setups = {"sdxl": (model, positive, negative),
              "stock": (model, *attach_stock_controlnet(positive, negative, stock_controlnet(sd, ...), hint)),
              "ours": (model, *attach_multiprior(positive, negative, multiprior_control(network), priors)),
              "colour": (colour_adapted(model, adapter, clip_vision, image), positive, negative)}
    seconds = time_steps(*setups["ours"], size=(1024, 1024), steps=10)   # seconds of each step after the first

Our ControlNet and colour adapter go through the pack's own nodes (nodes/stage2.py ApplyMultiPriorControlNet,
ApplyColourAdapter); our ControlNet is made by ONE function, `multiprior_control`. The stock ControlNet is
diffusers' `ControlNetModel.from_unet` layout loaded by ComfyUI's `comfy.controlnet.load_controlnet_state_dict`
(whose detection knows the real SDXL widths only: tiny networks are built as tests/comfy_test_nodes'
union stand-in builds them, ComfyUI's own ControlNet classes with the same key renames).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


def import_comfy(comfyui_dir: str, device: str):
    """Put ComfyUI on the path, keep it from parsing our command line, pin it to the CPU for `device` cpu."""
    if comfyui_dir not in sys.path:
        sys.path.insert(0, comfyui_dir)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    import comfy.model_management
    import comfy.sample

    return comfy


def sdxl_model(ldm_state_dict, dtype):
    """MODEL (ModelPatcher) from a `model.diffusion_model.*` SDXL UNet state dict in memory: ComfyUI's SDXL
    model class on the config ComfyUI detects from the keys, weights in `dtype` (as --fp16-unet etc. give)."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    prefix = "model.diffusion_model."
    model_config = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(ldm_state_dict, prefix))
    device = comfy.model_management.get_torch_device()
    model_config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(dtype, device))
    model = model_config.get_model(ldm_state_dict, prefix)
    model.load_model_weights(ldm_state_dict, prefix)
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def stock_controlnet(diffusers_state_dict, dtype, *, unet_config: dict | None = None):
    """CONTROL_NET of a standard single-image SDXL ControlNet (diffusers keys). unet_config None: ComfyUI's own
    `load_controlnet_state_dict` (real SDXL widths); a ComfyUI unet_config (the tiny MODEL's): its ControlNet
    class built on that config, keys renamed as ComfyUI's loader renames them."""
    import comfy.controlnet

    if unet_config is None:
        return comfy.controlnet.load_controlnet_state_dict(dict(diffusers_state_dict), model_options={"dtype": dtype})
    return _controlnet_on_config(diffusers_state_dict, unet_config, dtype)


def _controlnet_on_config(diffusers_state_dict, unet_config: dict, dtype):
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    import comfy.ops
    import comfy.utils

    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from comfy_test_nodes.union_stand_in import _comfy_key

    config = {k: v for k, v in unet_config.items() if k != "out_channels"}
    unet_map = comfy.utils.unet_to_diffusers(config)
    hint_blocks = len({k.split(".")[2] for k in diffusers_state_dict if k.startswith("controlnet_cond_embedding.blocks.")})
    state_dict = {_comfy_key(k, unet_map, hint_blocks): v for k, v in diffusers_state_dict.items()}
    device = comfy.model_management.get_torch_device()
    manual_cast = comfy.model_management.unet_manual_cast(dtype, device)
    network = comfy.cldm.cldm.ControlNet(**{**config, "dtype": dtype}, hint_channels=3,
                                         device=comfy.model_management.unet_offload_device(),
                                         operations=comfy.ops.pick_operations(dtype, manual_cast))
    network.load_state_dict(state_dict, strict=True)
    return comfy.controlnet.ControlNet(network, load_device=device, manual_cast_dtype=manual_cast)


def multiprior_control(network, dtype):
    """CONTROL_NET of our multi-prior ControlNet from a MultiPriorControlNet module's config and weights, as
    'DiffBody Multi-Prior ControlNet Loader' makes it from its file: core's ControlNet network and ops in
    `dtype` (nodes/multiprior_native.py). The one place that makes ours."""
    from comfyui_diffbody.nodes.multiprior_native import multiprior_control as native_control

    return native_control(network.config, network.state_dict(), dtype)


def sdxl_conditioning(context, pooled, negative_context, negative_pooled):
    """(positive, negative) CONDITIONING as CLIPTextEncode gives them for SDXL (size ids: ComfyUI's defaults)."""
    return ([[context, {"pooled_output": pooled}]], [[negative_context, {"pooled_output": negative_pooled}]])


def attach_stock_controlnet(positive, negative, control, hint, strength: float = 1.0):
    """ComfyUI's own 'Apply ControlNet' node; hint an IMAGE (B,H,W,C in 0..1)."""
    import nodes

    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, strength, 0.0, 1.0)


def attach_multiprior(positive, negative, control, priors: dict, strengths: dict | None = None):
    """'DiffBody Apply Multi-Prior ControlNet' with the four prior IMAGEs (paper strengths by default)."""
    from comfyui_diffbody.nodes.stage2 import PAPER_STRENGTHS, ApplyMultiPriorControlNet

    a = strengths or PAPER_STRENGTHS
    return ApplyMultiPriorControlNet().apply(positive, negative, control, priors["image"], priors["pose"],
                                             priors["depth"], priors["normal"], a["image"], a["pose"], a["depth"],
                                             a["normal"], 1.0, 0.0, 1.0)


class InMemoryColourAdapter:
    """DIFFBODY_COLOUR_ADAPTER over a ColourAdapter module in memory (the loader's ColourAdapterFile reads a file)."""

    def __init__(self, adapter):
        from comfyui_diffbody.nodes import glue

        self.adapter, self.patcher = adapter, glue.wrap_for_memory_management(adapter)

    def for_unet(self, unet_config: dict):
        return self.adapter, self.patcher


def colour_adapted(model, adapter, clip_vision, image, weight: float = 1.0):
    """'DiffBody Apply Colour Adapter' on MODEL: a patched clone. adapter: a ColourAdapter module;
    clip_vision: CLIP_VISION; image: IMAGE (I_res)."""
    from comfyui_diffbody.nodes.stage2 import ApplyColourAdapter

    return ApplyColourAdapter().apply(model, InMemoryColourAdapter(adapter), clip_vision, image, weight, 0.0, 1.0)[0]


def time_steps(model, positive, negative, *, size: tuple[int, int], steps: int, cfg: float = 5.0,
               sampler: str = "ddpm", scheduler: str = "ddim_uniform", seed: int = 0) -> list[float]:
    """Sample `steps` steps with comfy.sample.sample (what KSampler calls) on an empty latent of `size` (H, W px);
    the seconds between consecutive step callbacks (steps - 1 values: the first step also carries the one-off
    work of a run, c_g, model loading), the device synchronised at each callback."""
    import comfy.model_management
    import comfy.sample
    import torch

    height, width = size
    latent = torch.zeros(1, 4, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    device = comfy.model_management.get_torch_device()
    stamps: list[float] = []

    def callback(step, x0, x, total):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=seed,
                        callback=callback, disable_pbar=True)
    if len(stamps) != steps:
        raise RuntimeError(f"expected {steps} step callbacks, got {len(stamps)}")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def unload_all() -> None:
    """ComfyUI's models off the device, its cache emptied: the next setup's memory is its own."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
