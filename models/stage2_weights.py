"""Stage-2 weight files: DiffBody's multi-prior ControlNet in our own safetensors layout, the colour adapter
in IP-Adapter's public layout, and the SDXL UNet sources the ControlNet is initialised from.

ControlNet file (`diffbody_stage2_controlnet.safetensors`, ComfyUI folder models/diffbody): the keys of
`MultiPriorControlNet.state_dict()` (diffusers ControlNetModel names, plus
`controlnet_cond_embedding.extractors.{image,pose,depth,normal}.*`), safetensors metadata
{"diffbody_format": "stage2_controlnet", "format_version": "1", "config": <MultiPriorControlNetConfig JSON>}.

Colour adapter file (`diffbody_colour_adapter.safetensors`, models/ipadapter): exactly the layout of
h94's ip-adapter-plus_sdxl_vit-h.safetensors (`image_proj.*`, `ip_adapter.{k}.to_{k,v}_ip.weight`), so a
fine-tuned adapter loads in any IP-Adapter loader too; our metadata only adds
{"diffbody_format": "colour_adapter", "format_version": "1"}.

SDXL UNet sources for `multiprior_from_sdxl_unet`: a diffusers folder (the model root with `unet/`, or
the `unet/` folder itself) or a single original-layout (LDM/ComfyUI) .safetensors file, whose
`model.diffusion_model.*` keys are converted with diffusers' own converter. Nothing is fetched.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import torch

from .colour_adapter import ColourAdapter
from .errors import MissingModelFile, WrongModelFile
from .loading import (FORMAT_KEY, LDM_UNET_PREFIX, SAFETENSORS_EXTENSIONS, check_state_dict, read_pack_config,
                      read_pack_metadata, read_safetensors, save_pack_file)
from .multiprior_controlnet import MultiPriorControlNet, MultiPriorControlNetConfig
from .unet_layout import SDXL_UNET_CONFIG, ldm_unet_to_diffusers

CONTROLNET_FILENAME = "diffbody_stage2_controlnet.safetensors"
COLOUR_ADAPTER_FILENAME = "diffbody_colour_adapter.safetensors"
PUBLIC_IP_ADAPTER_FILENAME = "ip-adapter-plus_sdxl_vit-h.safetensors"
CONTROLNET_FORMAT = "stage2_controlnet"
COLOUR_ADAPTER_FORMAT = "colour_adapter"
CONTROLNET_EXPECTED = ("DiffBody's stage-2 multi-prior ControlNet (diffbody_stage2_controlnet.safetensors, "
                       f"safetensors metadata {FORMAT_KEY}='{CONTROLNET_FORMAT}')")


# -- our ControlNet file ------------------------------------------------------------------------------

def save_multiprior(model: MultiPriorControlNet, path: str, extra_metadata: Mapping[str, str] | None = None) -> str:
    """Write `model` in DiffBody's stage-2 ControlNet layout (weights as they are, contiguous); returns path."""
    return save_pack_file(model, path, CONTROLNET_FORMAT, config_json=model.config.to_json(),
                          extra_metadata=extra_metadata)


def load_multiprior(path: str, dtype: torch.dtype | None = torch.float32, *,
                    device: str | torch.device = "cpu") -> MultiPriorControlNet:
    """Load a file written by `save_multiprior`, strictly: our format tag and version, a valid config,
    exactly the config's keys and shapes. On `device`, eval mode, `dtype` (None: the file's own)."""
    config, state_dict = read_multiprior(path)
    if dtype is None:
        dtype = next(iter(state_dict.values())).dtype
    model = MultiPriorControlNet(config).to(dtype)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def read_multiprior(path: str) -> tuple[MultiPriorControlNetConfig, dict[str, torch.Tensor]]:
    """The config and the weights (the file's dtype) of a file written by `save_multiprior`, checked as
    `load_multiprior` checks them, without building the network: ComfyUI's native ControlNet builds its own."""
    metadata = read_pack_metadata(path, CONTROLNET_FORMAT, CONTROLNET_EXPECTED, _describe_foreign)
    config = read_pack_config(metadata, MultiPriorControlNetConfig, path, CONTROLNET_EXPECTED)
    try:
        with torch.device("meta"):
            expected = MultiPriorControlNet(config).state_dict()
    except ValueError as e:
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' has an unusable ControlNet config ({e}). "
                             f"Expected {CONTROLNET_EXPECTED}.") from e
    state_dict = read_safetensors(path)
    check_state_dict(expected, state_dict, name=os.path.basename(path), expected=CONTROLNET_EXPECTED, path=path)
    return config, state_dict


def _describe_foreign(fmt: str | None, keys) -> str:
    """What a file given to the stage-2 ControlNet loader is, in words."""
    keys = set(keys)
    if fmt is not None:
        return f"a DiffBody '{fmt}' file, not the stage-2 ControlNet"
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return ("a plain diffusers ControlNet (one conditioning image), not DiffBody's multi-prior one; "
                "convert it with comfyui_diffbody.models.stage2_weights.multiprior_from_diffusers_controlnet")
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in keys):
        return "an original-layout (ComfyUI/A1111) ControlNet, not DiffBody's multi-prior one"
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        return "an IP-Adapter (load it as the colour adapter instead)"
    return "not a DiffBody stage-2 ControlNet (no diffbody_format metadata)"


def multiprior_from_diffusers_controlnet(state_dict: Mapping[str, torch.Tensor],
                                         config: MultiPriorControlNetConfig,
                                         prior: str = "image") -> MultiPriorControlNet:
    """A multi-prior ControlNet from a diffusers ControlNetModel state dict (e.g. a single-condition SDXL
    ControlNet trained with diffusers): every key is taken 1:1, its conditioning embedding becomes
    extractor `prior` plus the fusion conv; the other extractors keep their fresh initialisation."""
    if prior not in config.priors:
        raise ValueError(f"unknown prior {prior!r}; the priors are {list(config.priors)}")
    model = MultiPriorControlNet(config)
    mapped = {}
    for key, value in state_dict.items():
        match = re.match(r"controlnet_cond_embedding\.(conv_in|blocks)\.(.*)", key)
        mapped[f"controlnet_cond_embedding.extractors.{prior}.{match[1]}.{match[2]}" if match else key] = value
    own = model.state_dict()
    fresh = {k: v for k, v in own.items() if k.startswith("controlnet_cond_embedding.extractors.")
             and not k.startswith(f"controlnet_cond_embedding.extractors.{prior}.")}
    check_state_dict(own, {**fresh, **mapped}, name="the diffusers ControlNet",
                     expected="a diffusers SDXL ControlNetModel state dict with the same sizes as the config")
    model.load_state_dict({**fresh, **mapped}, strict=True)
    return model


# -- SDXL UNet sources --------------------------------------------------------------------------------

def multiprior_from_sdxl_unet(source: str, *, unet_config: Mapping[str, Any] | None = None,
                              config: MultiPriorControlNetConfig | None = None,
                              dtype: torch.dtype = torch.float32) -> MultiPriorControlNet:
    """A fresh multi-prior ControlNet whose encoder is copied from an SDXL UNet (see the module doc for
    `source`). `unet_config`: the diffusers UNet config of a single-file source (default SDXL 1.0 base;
    ignored for a diffusers folder, which carries its own). `config`: the ControlNet's sizes (default
    derived from the UNet). No UNet is built; only its encoder weights are kept."""
    state_dict, found_config = sdxl_unet_state_dict(source, unet_config)
    derived = MultiPriorControlNetConfig.from_unet_config(found_config)
    if config is None:
        config = derived
    elif not config.encoder_matches(derived):
        raise WrongModelFile(f"DiffBody: the UNet in '{source}' does not have the sizes of the requested ControlNet.")
    try:
        model = MultiPriorControlNet.from_unet_state_dict(state_dict, config)
    except ValueError as e:
        raise WrongModelFile(f"DiffBody: '{source}' is not an SDXL UNet of the expected layout ({e}).") from e
    return model.to(dtype)


def sdxl_unet_state_dict(source: str, unet_config: Mapping[str, Any] | None = None
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(diffusers-layout UNet state dict, diffusers UNet config) from a diffusers folder or an
    original-layout single .safetensors file."""
    if os.path.isdir(source):
        return _diffusers_folder_state_dict(source)
    if not os.path.isfile(source):
        raise MissingModelFile(f"DiffBody: SDXL model '{source}' does not exist.")
    if not source.lower().endswith(SAFETENSORS_EXTENSIONS):
        raise WrongModelFile(f"DiffBody: '{os.path.basename(source)}': only .safetensors single-file SDXL "
                             "checkpoints are read (pickled .ckpt files are not opened).")
    config = dict(SDXL_UNET_CONFIG if unet_config is None else unet_config)
    return ldm_unet_to_diffusers(read_safetensors(source, prefix=LDM_UNET_PREFIX), config), config


def _diffusers_folder_state_dict(folder: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    unet_dir = os.path.join(folder, "unet") if os.path.isdir(os.path.join(folder, "unet")) else folder
    config_path = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(config_path):
        raise WrongModelFile(f"DiffBody: '{folder}' is not a diffusers SDXL folder (no unet/config.json).")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    state_dict: dict[str, torch.Tensor] = {}
    for weights in _diffusers_weight_files(unet_dir):
        state_dict.update(read_safetensors(weights))
    return state_dict, config


def _diffusers_weight_files(unet_dir: str) -> list[str]:
    for stem in ("diffusion_pytorch_model", "diffusion_pytorch_model.fp16"):
        single = os.path.join(unet_dir, stem + ".safetensors")
        if os.path.isfile(single):
            return [single]
        index = single + ".index.json"
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(unet_dir, s) for s in shards]
    raise WrongModelFile(f"DiffBody: '{unet_dir}' has no diffusion_pytorch_model*.safetensors weights "
                         "(pickled .bin weights are not opened).")


# -- colour adapter file ------------------------------------------------------------------------------

def save_colour_adapter(adapter: ColourAdapter, path: str) -> str:
    """Write the adapter in IP-Adapter Plus's public layout (same keys as ip-adapter-plus_sdxl_vit-h)."""
    return save_pack_file(adapter, path, COLOUR_ADAPTER_FORMAT)
