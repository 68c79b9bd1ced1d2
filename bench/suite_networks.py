"""The stage-2 networks of the GPU suite, in memory on the suite's device: real size from the real-size fixture
factory (testing/realsize/networks.py: the values sd_xl_base_1.0, IP-Adapter Plus XL and CLIP ViT-H's files
would hold, made on the device, no file written), or the tiny ones (testing/tiny/stage2.py) for the CPU test.
ComfyUI's MODEL and diffusers' UNet share one set of SDXL weights (diffusers' holds the very tensors at real
size; the tiny one is the module the tiny LDM state dict is made from)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Stage2Networks:
    kind: str              # "real" or "tiny"
    ldm: dict              # the SDXL UNet under `model.diffusion_model.*` keys, for ComfyUI
    unet: torch.nn.Module  # the same weights as diffusers' UNet2DConditionModel
    device: torch.device
    dtype: torch.dtype


def stage2_networks(kind: str, comfyui_dir: str, device, dtype) -> Stage2Networks:
    if kind == "real":
        from comfyui_diffbody.testing.realsize.networks import sdxl_diffusers_unet, sdxl_unet_state_dict

        ldm = sdxl_unet_state_dict(comfyui_dir, device=device, dtype=dtype)
        return Stage2Networks(kind, ldm, sdxl_diffusers_unet(ldm), device, dtype)
    from comfyui_diffbody.testing.tiny.stage2 import build_tiny_sdxl_unet, tiny_ldm_unet_state_dict

    unet = build_tiny_sdxl_unet(seed=0)
    ldm = {k: v.to(dtype) for k, v in tiny_ldm_unet_state_dict(unet).items()}
    return Stage2Networks(kind, ldm, unet.to(device, dtype).eval(), device, dtype)


def multiprior(nets: Stage2Networks):
    """Our multi-prior ControlNet copied from the SDXL UNet, as DiffBody's init makes it (fusion and zero convs
    zero; the work per step does not depend on their values), in the suite's dtype, made on the device and left
    on the CPU as the loader leaves it (ComfyUI loads it for sampling, so a setup's peak counts it)."""
    from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNet, MultiPriorControlNetConfig

    if nets.kind == "tiny":
        from comfyui_diffbody.testing.tiny.stage2 import build_tiny_multiprior

        return build_tiny_multiprior(seed=0, unet=nets.unet).to("cpu", nets.dtype)
    config = MultiPriorControlNetConfig.from_unet_config(nets.unet.config)
    with torch.device(nets.device):
        network = MultiPriorControlNet.from_unet_state_dict(nets.unet.state_dict(), config)
    return network.to(nets.dtype).to("cpu").eval()


def stock_controlnet(nets: Stage2Networks):
    """A standard single-image SDXL ControlNet of the UNet's size: diffusers' `ControlNetModel.from_unet`, on the
    device in the suite's dtype. Its state_dict() is what a ControlNet file in diffusers layout holds."""
    from diffusers import ControlNetModel

    with torch.device(nets.device):
        return ControlNetModel.from_unet(nets.unet).to(nets.dtype).eval()


def colour_adapter(nets: Stage2Networks):
    """The colour adapter (IP-Adapter Plus XL layout) as its loader gives it to the node: float32 on the CPU (the
    node projects the CLIP features there; ComfyUI loads it with the UNet)."""
    if nets.kind == "tiny":
        from comfyui_diffbody.testing.tiny.stage2 import build_tiny_colour_adapter, tiny_sdxl_unet_config

        return build_tiny_colour_adapter(tiny_sdxl_unet_config(), seed=0).float()
    from comfyui_diffbody.testing.realsize.networks import module_from_spec
    from comfyui_diffbody.testing.realsize.stage2_files import meta_ip_adapter_plus_xl

    return module_from_spec(meta_ip_adapter_plus_xl(), device=nets.device, dtype=torch.float32).to("cpu")


def clip_vision(nets: Stage2Networks):
    """CLIP_VISION: ComfyUI's own CLIP ViT-H model over the factory's values (real), or the tests' stand-in
    with ComfyUI's interface over the tiny encoder."""
    if nets.kind == "tiny":
        import sys

        from comfy_stage2 import TESTS_DIR

        if str(TESTS_DIR) not in sys.path:
            sys.path.insert(0, str(TESTS_DIR))
        from comfy_test_nodes.tiny_stand_ins import TinyCLIPVision
        from comfyui_diffbody.testing.tiny.stage2 import build_tiny_clip_vision

        return TinyCLIPVision(build_tiny_clip_vision(seed=0))
    import comfy.clip_vision

    from comfyui_diffbody.testing.realsize.networks import materialise_as
    from comfyui_diffbody.testing.realsize.stage2_files import clip_vit_h_spec

    return comfy.clip_vision.load_clipvision_from_sd(materialise_as(clip_vit_h_spec(), device=nets.device,
                                                                    dtype=nets.dtype))
