"""DiffBody's own four files at real size, made from the real-size public files by the pack's own init and save
code (what a user runs before training): the joint stage-1 UNet and its ControlNet from SD 2.1-base, the
multi-prior ControlNet from SDXL's UNet, the colour adapter from IP-Adapter Plus XL. Saved in fp16, like the
public files. The ControlNets' zero convolutions stay zero, as the init leaves them."""

from __future__ import annotations

import gc
import time

import torch

from .checkpoints import SD21_CHECKPOINT, SDXL_CHECKPOINT
from .public_files import IP_ADAPTER_FILE


def write_diffbody_files(place, public: dict[str, str], *, log=print) -> dict[str, str]:
    from ...models.colour_adapter import load_colour_adapter
    from ...models.stage1_controlnet import Stage1ControlNet
    from ...models.stage1_weights import (CONTROLNET_FILENAME as STAGE1_CONTROLNET, UNET_FILENAME as STAGE1_UNET,
                                          joint_unet_from_sd21, save_stage1_controlnet, save_stage1_unet)
    from ...models.stage2_weights import (COLOUR_ADAPTER_FILENAME, CONTROLNET_FILENAME as STAGE2_CONTROLNET,
                                          multiprior_from_sdxl_unet, save_colour_adapter, save_multiprior)

    written, started = {}, time.monotonic()
    unet = joint_unet_from_sd21(public[SD21_CHECKPOINT], dtype=torch.float16)
    written[STAGE1_UNET] = save_stage1_unet(unet, place("diffbody", STAGE1_UNET))
    controlnet = Stage1ControlNet.from_unet(unet).half()
    written[STAGE1_CONTROLNET] = save_stage1_controlnet(controlnet, place("diffbody", STAGE1_CONTROLNET))
    del unet, controlnet
    gc.collect()
    log(f"[realsize] DiffBody stage 1: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    multiprior = multiprior_from_sdxl_unet(public[SDXL_CHECKPOINT], dtype=torch.float16)
    written[STAGE2_CONTROLNET] = save_multiprior(multiprior, place("diffbody", STAGE2_CONTROLNET))
    del multiprior
    gc.collect()
    adapter = load_colour_adapter(public[IP_ADAPTER_FILE], dtype=None)
    written[COLOUR_ADAPTER_FILENAME] = save_colour_adapter(adapter, place("ipadapter", COLOUR_ADAPTER_FILENAME))
    log(f"[realsize] DiffBody stage 2: {time.monotonic() - started:.1f} s")
    return written
