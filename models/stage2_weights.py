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
from .multiprior_controlnet import SDXL_UNET_CONFIG, MultiPriorControlNet, MultiPriorControlNetConfig

CONTROLNET_FILENAME = "diffbody_stage2_controlnet.safetensors"
COLOUR_ADAPTER_FILENAME = "diffbody_colour_adapter.safetensors"
PUBLIC_IP_ADAPTER_FILENAME = "ip-adapter-plus_sdxl_vit-h.safetensors"
CONTROLNET_FORMAT = "stage2_controlnet"
COLOUR_ADAPTER_FORMAT = "colour_adapter"
FORMAT_VERSION = "1"
LDM_UNET_PREFIX = "model.diffusion_model."
CONTROLNET_EXPECTED = ("DiffBody's stage-2 multi-prior ControlNet (diffbody_stage2_controlnet.safetensors, "
                       f"safetensors metadata diffbody_format='{CONTROLNET_FORMAT}')")


# -- our ControlNet file ------------------------------------------------------------------------------

def save_multiprior(model: MultiPriorControlNet, path: str, extra_metadata: Mapping[str, str] | None = None) -> str:
    """Write `model` in DiffBody's stage-2 ControlNet layout (weights as they are, contiguous); returns path."""
    from safetensors.torch import save_file

    metadata = {"diffbody_format": CONTROLNET_FORMAT, "format_version": FORMAT_VERSION,
                "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata=metadata)
    return path


def load_multiprior(path: str, dtype: torch.dtype | None = torch.float32) -> MultiPriorControlNet:
    """Load a file written by `save_multiprior`, strictly: our format tag and version, a valid config,
    exactly the config's keys and shapes. CPU, eval mode, `dtype` (None: the file's own)."""
    name = os.path.basename(path)
    metadata, keys = _read_header(path)
    _check_controlnet_metadata(metadata, keys, name)
    try:
        config = MultiPriorControlNetConfig.from_dict(json.loads(metadata["config"]))
        model = MultiPriorControlNet(config)
    except (ValueError, TypeError, KeyError) as e:
        raise WrongModelFile(f"DiffBody: '{name}' has an unusable ControlNet config ({e}). "
                             f"Expected {CONTROLNET_EXPECTED}.") from e
    state_dict = _load_safetensors(path)
    _check_exact_keys(model.state_dict(), state_dict, name, CONTROLNET_EXPECTED)
    if dtype is None:
        dtype = next(iter(state_dict.values())).dtype
    model = model.to(dtype)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _check_controlnet_metadata(metadata: Mapping[str, str], keys: set[str], name: str) -> None:
    fmt = metadata.get("diffbody_format")
    if fmt == CONTROLNET_FORMAT:
        version = metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise WrongModelFile(f"DiffBody: '{name}' is stage-2 ControlNet format version {version!r}; this "
                                 f"DiffBody reads version {FORMAT_VERSION}. Update the pack (or re-export the file).")
        if "config" not in metadata:
            raise WrongModelFile(f"DiffBody: '{name}' has no 'config' in its metadata. Expected {CONTROLNET_EXPECTED}.")
        return
    if fmt is not None:
        raise WrongModelFile(f"DiffBody: '{name}' is a DiffBody '{fmt}' file, not the stage-2 ControlNet. "
                             f"Expected {CONTROLNET_EXPECTED}.")
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        what = ("a plain diffusers ControlNet (one conditioning image), not DiffBody's multi-prior one; "
                "convert it with comfyui_diffbody.models.stage2_weights.multiprior_from_diffusers_controlnet")
    elif any(k.startswith(("control_model.", "input_hint_block.")) for k in keys):
        what = "an original-layout (ComfyUI/A1111) ControlNet, not DiffBody's multi-prior one"
    elif any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        what = "an IP-Adapter (load it as the colour adapter instead)"
    else:
        what = "not a DiffBody stage-2 ControlNet (no diffbody_format metadata)"
    raise WrongModelFile(f"DiffBody: '{name}' is {what}. Expected {CONTROLNET_EXPECTED}.")


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
    _check_exact_keys(own, {**fresh, **mapped}, "the diffusers ControlNet", "a diffusers SDXL ControlNetModel "
                      "state dict with the same sizes as the config")
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
    if not source.lower().endswith((".safetensors", ".sft")):
        raise WrongModelFile(f"DiffBody: '{os.path.basename(source)}': only .safetensors single-file SDXL "
                             "checkpoints are read (pickled .ckpt files are not opened).")
    config = dict(SDXL_UNET_CONFIG if unet_config is None else unet_config)
    return ldm_unet_to_diffusers(_load_safetensors(source, prefix=LDM_UNET_PREFIX), config), config


def _diffusers_folder_state_dict(folder: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    unet_dir = os.path.join(folder, "unet") if os.path.isdir(os.path.join(folder, "unet")) else folder
    config_path = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(config_path):
        raise WrongModelFile(f"DiffBody: '{folder}' is not a diffusers SDXL folder (no unet/config.json).")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    state_dict: dict[str, torch.Tensor] = {}
    for weights in _diffusers_weight_files(unet_dir):
        state_dict.update(_load_safetensors(weights))
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


def ldm_unet_to_diffusers(ldm_state_dict: Mapping[str, torch.Tensor],
                          unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original (LDM) UNet keys, without the `model.diffusion_model.` prefix -> diffusers keys, using
    diffusers' own single-file converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if not ldm_state_dict:
        raise WrongModelFile(f"DiffBody: no '{LDM_UNET_PREFIX}*' UNet weights found: not an SDXL checkpoint.")
    prefixed = {LDM_UNET_PREFIX + k: v for k, v in ldm_state_dict.items()}
    try:
        return convert_ldm_unet_checkpoint(prefixed, dict(unet_config))
    except (KeyError, IndexError) as e:
        raise WrongModelFile(f"DiffBody: the checkpoint's UNet does not have the SDXL layout ({e!r}).") from e


_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BASIC_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def diffusers_unet_to_ldm(state_dict: Mapping[str, torch.Tensor],
                          unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> original (LDM/ComfyUI) keys without prefix, for SDXL-layout UNets (the
    inverse of `ldm_unet_to_diffusers`; the tests check the round trip through diffusers' converter)."""
    lpb = unet_config["layers_per_block"]
    has_attention = ["CrossAttn" in kind for kind in unet_config["up_block_types"]]
    out = {}
    for key, value in state_dict.items():
        out[_ldm_key(key, lpb, has_attention)] = value
    return out


def _ldm_key(key: str, lpb: int, up_has_attention: list[bool]) -> str:
    for prefix, ldm in _BASIC_TO_LDM.items():
        if key.startswith(prefix + "."):
            return ldm + key[len(prefix):]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.* -> input_blocks.n.0.op.*
            return f"input_blocks.{1 + level * (lpb + 1) + lpb}.0.op." + ".".join(parts[5:])
        number = 1 + level * (lpb + 1) + int(parts[3])
        return _block_key(f"input_blocks.{number}", kind, parts[4:])
    if parts[0] == "up_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # the upsampler follows the resnet (and the attention, if any)
            slot = 2 if up_has_attention[level] else 1
            return f"output_blocks.{level * (lpb + 1) + lpb}.{slot}.conv." + ".".join(parts[5:])
        return _block_key(f"output_blocks.{level * (lpb + 1) + int(parts[3])}", kind, parts[4:])
    if parts[0] == "mid_block":
        kind, index = parts[1], int(parts[2])
        slot = 1 if kind == "attentions" else 2 * index
        return _block_key(f"middle_block.{slot}", "mid_" + kind, parts[3:])
    raise ValueError(f"unexpected diffusers UNet key {key!r}")


def _block_key(block: str, kind: str, rest: list[str]) -> str:
    if kind in ("resnets", "mid_resnets"):
        return f"{block}{'' if kind == 'mid_resnets' else '.0'}.{_RESNET_TO_LDM[rest[0]]}." + ".".join(rest[1:])
    if kind == "attentions":
        return f"{block}.1." + ".".join(rest)
    if kind == "mid_attentions":
        return f"{block}." + ".".join(rest)
    raise ValueError(f"unexpected block part {kind!r}")


# -- colour adapter file ------------------------------------------------------------------------------

def save_colour_adapter(adapter: ColourAdapter, path: str) -> str:
    """Write the adapter in IP-Adapter Plus's public layout (same keys as ip-adapter-plus_sdxl_vit-h)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    save_file(tensors, path, metadata={"diffbody_format": COLOUR_ADAPTER_FORMAT, "format_version": FORMAT_VERSION})
    return path


# -- helpers ------------------------------------------------------------------------------------------

def _read_header(path: str) -> tuple[dict[str, str], set[str]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: model file '{path}' does not exist.")
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {}), set(f.keys())
    except Exception as e:  # safetensors raises its own error types for non-safetensors data
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' is not a readable safetensors file ({e}).") from e


def _load_safetensors(path: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (only those under `prefix`, with it stripped)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as e:
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' is not a readable safetensors file ({e}).") from e


def _check_exact_keys(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                      name: str, what: str) -> None:
    extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if extra or missing:
        raise WrongModelFile(f"DiffBody: '{name}' does not have the expected keys ({len(missing)} missing, e.g. "
                             f"{missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]}). Expected {what}.")
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise WrongModelFile(f"DiffBody: '{name}': '{key}' has shape {tuple(found[key].shape)}, expected "
                                 f"{tuple(tensor.shape)}. Expected {what}.")
