"""Stand-in for ComfyUI's Load ControlNet Model over the tiny ControlNet-Union file.

ComfyUI's ControlNetLoader cannot load the tiny union (checked on 0.3.75): its diffusers-format
detection (comfy.model_detection.unet_config_from_diffusers_unet) knows real SDXL sizes only and
returns None, and its union ControlNet builds the condition transformer 320 wide (SDXL's first-level
width) whatever the file holds. TestOnlyControlNetLoader takes the same input and returns what
ControlNetLoader returns: a comfy.controlnet.ControlNet over ComfyUI's own comfy.cldm.cldm.ControlNet
in union mode. The file's diffusers keys are renamed with ComfyUI's own UNet key map plus the
ControlNet-specific renames its loader applies, and the one difference is the transformer width (the
tiny UNet's 32). Everything downstream (control types, hint handling, merging, KSampler) is ComfyUI's.
"""

import re

import folder_paths

TINY_HEADS = 8  # ComfyUI's (and xinsir's) condition-transformer head count


def _comfy_key(key: str, unet_map: dict, hint_blocks: int) -> str:
    """ComfyUI's name for a diffusers ControlNet key (as comfy.controlnet.load_controlnet_state_dict renames)."""
    if key in unet_map:
        return unet_map[key]
    if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
        return f"zero_convs.{match[1]}.0.{match[2]}"
    if match := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
        return f"middle_block_out.0.{match[1]}"
    if match := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(weight|bias)", key):
        return f"input_hint_block.0.{match[1]}"
    if match := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)", key):
        return f"input_hint_block.{2 * (int(match[1]) + 1)}.{match[2]}"
    if match := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(weight|bias)", key):
        return f"input_hint_block.{2 * (hint_blocks + 1)}.{match[1]}"
    return key.replace(".attn.in_proj_", ".attn.in_proj.")  # the union parts keep their names


def tiny_union_control(path: str):
    """CONTROL_NET (comfy.controlnet.ControlNet, union mode) over the tiny union file at `path`."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    import comfy.ops
    import comfy.utils
    import torch
    from comfyui_diffbody.testing.tiny.stage2 import tiny_comfy_unet_config

    diffusers_sd = comfy.utils.load_torch_file(path, safe_load=True)
    config = tiny_comfy_unet_config()
    config.pop("out_channels")
    unet_map = comfy.utils.unet_to_diffusers(config)
    hint_blocks = len({k.split(".")[2] for k in diffusers_sd if k.startswith("controlnet_cond_embedding.blocks.")})
    state_dict = {_comfy_key(k, unet_map, hint_blocks): v for k, v in diffusers_sd.items()}

    types, width = state_dict["task_embedding"].shape
    operations = comfy.ops.disable_weight_init
    model = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, union_controlnet_num_control_type=types,
                                       dtype=torch.float32, device=torch.device("cpu"), operations=operations)
    # ComfyUI builds these 320 wide; the tiny union's are the tiny UNet's first-level width.
    model.task_embedding = torch.nn.Parameter(torch.empty(types, width))
    model.transformer_layes = torch.nn.Sequential(
        comfy.cldm.cldm.ResBlockUnionControlnet(width, TINY_HEADS, operations=operations))
    model.spatial_ch_projs = operations.Linear(width, width)
    model.load_state_dict(state_dict, strict=True)
    return comfy.controlnet.ControlNet(model, load_device=comfy.model_management.get_torch_device(),
                                       manual_cast_dtype=None)


class ControlNetLoader:
    """TestOnlyControlNetLoader: ControlNetLoader's input (as a STRING) and output over the tiny union."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": ("STRING", {"default": "controlnet-union-sdxl-1.0.safetensors"})}}

    def load_controlnet(self, control_net_name):
        return (tiny_union_control(folder_paths.get_full_path_or_raise("controlnet", control_net_name)),)


NODE_CLASS_MAPPINGS = {"TestOnlyControlNetLoader": ControlNetLoader}
