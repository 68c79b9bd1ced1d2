"""Original single-file SDXL and SD 2.1 checkpoints (the files ComfyUI loads from models/checkpoints/) as the same
diffusers components the folder loaders build, so the command line needs no second copy of them.

- `load_sdxl_single_file(path)` -> (unet, vae, SDXLTextEncoders), as sdxl_components.load_sdxl_parts builds them
  from a diffusers folder; `load_sd21_single_file(path)` -> SD21Components (VAE and text encoder), as
  sd21_components.load_sd21_components. `load_sdxl` / `load_sd21` take either form.
- Layouts (Stability AI's releases; ComfyUI saves the same): SDXL (sd_xl_base_1.0.safetensors): UNet
  `model.diffusion_model.*`, VAE `first_stage_model.*`, CLIP ViT-L `conditioner.embedders.0.transformer.*`
  (transformers' layout), OpenCLIP ViT-bigG `conditioner.embedders.1.model.*` (open_clip's layout: fused q/k/v,
  `text_projection` applied as x @ P). SD 2.1-base (v2-1_512-ema-pruned.safetensors): UNet
  `model.diffusion_model.*` (not read here: stage 1 has its own UNet, models/stage1_weights.py reads this one for
  initialisation), VAE `first_stage_model.*`, OpenCLIP ViT-H `cond_stage_model.model.*` with all its blocks; SD 2.x
  conditions on the penultimate block, so the last one is dropped, as diffusers' own conversion does (the public
  text_encoder/config.json has 23 of the 24 layers).
- Keys are converted by diffusers' own converters (diffusers.loaders.single_file_utils), then checked strictly
  (every key, every shape) against the network built from its config. The configs below are the public
  repositories' config.json values, so nothing is fetched; `configs` overrides them per part (tests: tiny sizes).
  Safetensors only: nothing is unpickled.
- Tokenizers: a single file holds none. `tokenizer_source` is a diffusers pipeline folder (its tokenizer/ and
  tokenizer_2/ as they are) or a folder with CLIP's BPE files vocab.json and merges.txt (ComfyUI ships them as
  comfy/sd1_tokenizer/). SD's CLIP tokenizers all share those two files and differ only in the pad token:
  "<|endoftext|>" for SDXL's CLIP-L, "!" (id 0) for bigG and for SD 2.x's ViT-H, as ComfyUI's sdxl_clip.py and
  sd2_clip.py pad. Without a source, models/files.py looks in the ComfyUI install the pack sits in.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import torch

from .errors import MissingModelFile, WrongModelFile
from .files import CLIP_TOKENIZER_FILES, clip_tokenizer_dirs, find_clip_tokenizer, missing_clip_tokenizer_message
from .loading import (LDM_UNET_PREFIX, SAFETENSORS_EXTENSIONS, check_state_dict, read_safetensors,
                      read_safetensors_header)
from .unet_layout import SDXL_UNET_CONFIG, ldm_unet_to_diffusers

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json
SDXL_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# stabilityai/stable-diffusion-2-1-base vae/config.json (no scaling_factor there: diffusers' default 0.18215)
SD21_VAE_CONFIG: dict[str, Any] = {**SDXL_VAE_CONFIG, "sample_size": 768, "scaling_factor": 0.18215}
_CLIP_TEXT_COMMON = {"vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-05,
                     "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
# text_encoder/config.json of SDXL base (CLIP ViT-L/14's text tower, CLIPTextModel)
SDXL_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **_CLIP_TEXT_COMMON, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
    "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768}
# text_encoder_2/config.json of SDXL base (OpenCLIP ViT-bigG/14's text tower, CLIPTextModelWithProjection)
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **_CLIP_TEXT_COMMON, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
    "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280}
# text_encoder/config.json of SD 2.1-base (OpenCLIP ViT-H/14 without its last block, CLIPTextModel)
SD21_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **_CLIP_TEXT_COMMON, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
    "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512}

# part (the diffusers sub-folder name) -> its default config and its key prefix in the single file
SDXL_CONFIGS = {"unet": SDXL_UNET_CONFIG, "vae": SDXL_VAE_CONFIG, "text_encoder": SDXL_TEXT_ENCODER_CONFIG,
                "text_encoder_2": SDXL_TEXT_ENCODER_2_CONFIG}
SDXL_PREFIXES = {"unet": LDM_UNET_PREFIX, "vae": "first_stage_model.",
                 "text_encoder": "conditioner.embedders.0.transformer.",
                 "text_encoder_2": "conditioner.embedders.1.model."}
SD21_CONFIGS = {"vae": SD21_VAE_CONFIG, "text_encoder": SD21_TEXT_ENCODER_CONFIG}
SD21_PREFIXES = {"unet": LDM_UNET_PREFIX, "vae": "first_stage_model.", "text_encoder": "cond_stage_model.model."}
SDXL_EXPECTED = ("an SDXL base checkpoint in the original single-file layout (sd_xl_base_1.0.safetensors: "
                 + ", ".join(f"{p}*" for p in SDXL_PREFIXES.values()) + ")")
SD21_EXPECTED = ("a Stable Diffusion 2.1-base checkpoint in the original single-file layout "
                 "(v2-1_512-ema-pruned.safetensors: " + ", ".join(f"{p}*" for p in SD21_PREFIXES.values()) + ")")
# Key prefixes that tell what another checkpoint is, for the error message (most specific first).
_FAMILIES = (("conditioner.embedders.1.model.", "an SDXL base checkpoint"),
             ("conditioner.embedders.0.model.", "an SDXL refiner checkpoint"),
             ("cond_stage_model.model.", "a Stable Diffusion 2.x checkpoint"),
             ("cond_stage_model.transformer.", "a Stable Diffusion 1.x checkpoint"),
             ("text_encoders.", "a Stable Diffusion 3 checkpoint"))
# Tensors the original files carry that the diffusers networks do not have.
_UNUSED = ("logit_scale", "embeddings.position_ids")
PAD_TOKENS = {"sdxl": ("<|endoftext|>", "!"), "sd21": ("!",)}
TOKENIZER_SUBFOLDERS = {"sdxl": ("tokenizer", "tokenizer_2"), "sd21": ("tokenizer",)}
MAX_TOKENS = 77


# ---- whole checkpoints ---------------------------------------------------------------------------------

def load_sdxl_single_file(path: str, *, tokenizer_source: str | None = None,
                          configs: Mapping[str, Mapping[str, Any]] | None = None,
                          device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32,
                          vae_dtype: torch.dtype = torch.float32):
    """(unet, vae, SDXLTextEncoders) from an original single-file SDXL checkpoint, as load_sdxl_parts returns
    them from a diffusers folder. `configs`: {part: config} for parts of other sizes than SDXL 1.0 base's (part:
    unet, vae, text_encoder, text_encoder_2). The VAE defaults to float32 (SDXL's VAE overflows in fp16)."""
    from .sdxl_components import SDXLTextEncoders

    configs = {**SDXL_CONFIGS, **(configs or {})}
    _check_layout(path, SDXL_PREFIXES, SDXL_EXPECTED)
    tokenizers = load_clip_tokenizers(tokenizer_source or _found_tokenizer(path), "sdxl")
    placed = dict(device=torch.device(device), dtype=dtype)
    unet = _unet(path, configs["unet"], placed)
    vae = _vae(path, SDXL_PREFIXES["vae"], configs["vae"], dict(placed, dtype=vae_dtype))
    clip_l = _clip_l(path, SDXL_PREFIXES["text_encoder"], configs["text_encoder"], placed)
    bigg = _open_clip(path, SDXL_PREFIXES["text_encoder_2"], configs["text_encoder_2"], placed, projection=True)
    return unet, vae, SDXLTextEncoders(tokenizers[0], clip_l, tokenizers[1], bigg)


def load_sd21_single_file(path: str, *, tokenizer_source: str | None = None,
                          configs: Mapping[str, Mapping[str, Any]] | None = None,
                          device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32):
    """SD21Components (VAE and text encoder) from an original single-file SD 2.1-base checkpoint, as
    load_sd21_components returns them from a diffusers folder. `configs`: {part: config} for parts of other sizes
    (part: vae, text_encoder)."""
    from .sd21_components import DiffusersTextEncoder, DiffusersVAE, SD21Components

    configs = {**SD21_CONFIGS, **(configs or {})}
    _check_layout(path, SD21_PREFIXES, SD21_EXPECTED)
    (tokenizer,) = load_clip_tokenizers(tokenizer_source or _found_tokenizer(path), "sd21")
    placed = dict(device=torch.device(device), dtype=dtype)
    vae = _vae(path, SD21_PREFIXES["vae"], configs["vae"], placed)
    text_encoder = _open_clip(path, SD21_PREFIXES["text_encoder"], configs["text_encoder"], placed, projection=False,
                              drop_last_block=True)
    return SD21Components(DiffusersVAE(vae), DiffusersTextEncoder(tokenizer, text_encoder))


def load_sdxl(source: str, *, tokenizer_source: str | None = None, configs=None, device="cpu",
              dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype = torch.float32):
    """SDXL's parts from a diffusers folder (load_sdxl_parts) or an original single file."""
    if os.path.isdir(source):
        from .sdxl_components import load_sdxl_parts

        return load_sdxl_parts(source, device=device, dtype=dtype, vae_dtype=vae_dtype)
    return load_sdxl_single_file(source, tokenizer_source=tokenizer_source, configs=configs, device=device,
                                 dtype=dtype, vae_dtype=vae_dtype)


def load_sd21(source: str, *, tokenizer_source: str | None = None, configs=None, device="cpu",
              dtype: torch.dtype = torch.float32):
    """SD 2.1-base's VAE and text encoder from a diffusers folder (load_sd21_components) or an original single file."""
    if os.path.isdir(source):
        from .sd21_components import load_sd21_components

        return load_sd21_components(source, device=device, dtype=dtype)
    return load_sd21_single_file(source, tokenizer_source=tokenizer_source, configs=configs, device=device,
                                 dtype=dtype)


def diffusers_folder_configs(folder: str, parts: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{part: its config.json} of a diffusers pipeline folder: the `configs` of a single file holding the same
    networks (the tiny plumbing check converts its tiny folders)."""
    configs = {}
    for part in parts:
        with open(os.path.join(folder, part, "config.json"), encoding="utf-8") as f:
            configs[part] = json.load(f)
    return configs


# ---- the file's layout ---------------------------------------------------------------------------------

def _check_layout(path: str, prefixes: Mapping[str, str], expected: str) -> None:
    """Refuse a missing file, a pickled one, or one without every part's key prefix, saying what it is."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: checkpoint '{path}' does not exist.\nExpected {expected}.")
    if not path.lower().endswith(SAFETENSORS_EXTENSIONS):
        raise WrongModelFile(f"DiffBody: '{name}': only .safetensors single-file checkpoints are read (pickled "
                             f".ckpt files are not opened).\nExpected {expected}.\n(file: {path})")
    _, keys = read_safetensors_header(path, expected=expected)
    missing = [f"{part} ({prefix}*)" for part, prefix in prefixes.items() if not any(k.startswith(prefix) for k in keys)]
    if missing:
        raise WrongModelFile(f"DiffBody: '{name}' is {_describe(keys)}: it has no {', '.join(missing)}.\n"
                             f"Expected {expected}.\n(file: {path})")


def _describe(keys: list[str]) -> str:
    for prefix, family in _FAMILIES:
        if any(k.startswith(prefix) for k in keys):
            return family
    if "time_embedding.linear_1.weight" in keys or "conv_in.weight" in keys:
        return "a network in diffusers' layout, not a whole original checkpoint"
    if keys and all(k.startswith(LDM_UNET_PREFIX) for k in keys):
        return "a UNet alone (no VAE, no text encoder)"
    return f"a file of another layout ({len(keys)} tensors)"


def _read_part(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, keys kept whole (the diffusers converters expect the prefix)."""
    return {prefix + k: v for k, v in read_safetensors(path, prefix).items()
            if not k.endswith(_UNUSED)}


def _empty(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`make()` with its parameters not allocated (accelerate's empty init: buffers stay real), so a real-size
    network is not held twice while it takes the file's tensors; plain construction without accelerate."""
    try:
        from accelerate import init_empty_weights
    except ImportError:
        return make()
    with init_empty_weights():
        return make()


def _load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str, part: str,
                 expected: str, placed: Mapping[str, Any]) -> torch.nn.Module:
    """`model` holding exactly `state_dict` (every key with its shape, nothing else) on placed["device"] in
    placed["dtype"], eval mode."""
    wanted = model.state_dict()
    if not any(k.startswith("text_model.") for k in wanted):  # transformers >= 5.6: CLIPTextModel without text_model.
        state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    check_state_dict(wanted, state_dict, name=f"{os.path.basename(path)} ({part})", expected=expected, path=path)
    # cast the tensors, not the model: diffusers' ModelMixin.to(dtype) warns about fp32 modules it does not have
    state_dict = {k: v.to(**placed) if v.is_floating_point() else v.to(placed["device"]) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(placed["device"]).eval()


# ---- the parts -----------------------------------------------------------------------------------------

def _unet(path: str, config: Mapping[str, Any], placed: Mapping[str, Any]):
    from diffusers import UNet2DConditionModel

    state_dict = ldm_unet_to_diffusers(read_safetensors(path, LDM_UNET_PREFIX), config)
    return _load_strict(_empty(lambda: UNet2DConditionModel.from_config(dict(config))), state_dict, path, "UNet",
                        "SDXL's UNet in the original layout (model.diffusion_model.*)", placed)


def _vae(path: str, prefix: str, config: Mapping[str, Any], placed: Mapping[str, Any]):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        state_dict = convert_ldm_vae_checkpoint(_read_part(path, prefix), dict(config))
    except (KeyError, IndexError, AttributeError) as e:
        raise WrongModelFile(f"DiffBody: the VAE in '{os.path.basename(path)}' ({prefix}*) does not have the "
                             f"original layout ({e!r}).\n(file: {path})") from e
    return _load_strict(_empty(lambda: AutoencoderKL.from_config(dict(config))), state_dict, path, "VAE",
                        f"the original VAE layout under {prefix}*", placed)


def _clip_l(path: str, prefix: str, config: Mapping[str, Any], placed: Mapping[str, Any]):
    """CLIP ViT-L's text tower, stored in transformers' own layout under `prefix`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state_dict = {k[len(prefix):]: v for k, v in _read_part(path, prefix).items()}
    return _load_strict(_empty(lambda: CLIPTextModel(CLIPTextConfig.from_dict(dict(config)))), state_dict, path,
                        "CLIP ViT-L text encoder", f"CLIP ViT-L's text model under {prefix}text_model.*", placed)


def _open_clip(path: str, prefix: str, config: Mapping[str, Any], placed: Mapping[str, Any], *, projection: bool,
               drop_last_block: bool = False):
    """An OpenCLIP text tower stored in open_clip's layout under `prefix` (bigG with its projection; SD 2.x's
    ViT-H without: its last block, which SD 2.x does not use, is dropped when `drop_last_block`)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig.from_dict(dict(config))
    model = _empty(lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(text_config))
    checkpoint = _read_part(path, prefix)
    if drop_last_block:
        last = f"{prefix}transformer.resblocks.{text_config.num_hidden_layers}."
        checkpoint = {k: v for k, v in checkpoint.items() if not k.startswith(last)}
    if not projection:
        checkpoint.pop(prefix + "text_projection", None)
    expected = f"OpenCLIP's text model in open_clip's layout under {prefix}* ({text_config.num_hidden_layers} blocks)"
    try:  # the model only tells the converter its width when the file has no text_projection
        state_dict = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    except (KeyError, IndexError, AttributeError) as e:
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' has no usable {expected} ({e!r}).") from e
    return _load_strict(model, state_dict, path, "OpenCLIP text encoder", expected, placed)


# ---- tokenizers ----------------------------------------------------------------------------------------

def load_clip_tokenizers(source: str, kind: str) -> tuple:
    """The CLIP tokenizers of `kind` ("sdxl": CLIP-L's and bigG's; "sd21": ViT-H's) from a diffusers pipeline
    folder (its own tokenizer sub-folders) or a folder with CLIP's vocab.json and merges.txt (the pad token
    set per kind, 77 tokens)."""
    from transformers import CLIPTokenizer

    subfolders = TOKENIZER_SUBFOLDERS[kind]
    if os.path.isdir(os.path.join(source, "tokenizer")):
        missing = [s for s in subfolders if not os.path.isdir(os.path.join(source, s))]
        if missing:
            raise MissingModelFile(f"DiffBody: '{source}' has no {', '.join(missing)} sub-folder for the "
                                   f"{kind.upper()} tokenizers.")
        return tuple(CLIPTokenizer.from_pretrained(source, subfolder=s, local_files_only=True) for s in subfolders)
    vocab, merges = (os.path.join(source, name) for name in CLIP_TOKENIZER_FILES)
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        raise MissingModelFile(missing_clip_tokenizer_message(source, [source]))
    return tuple(CLIPTokenizer(vocab, merges, pad_token=pad, model_max_length=MAX_TOKENS) for pad in PAD_TOKENS[kind])


def _found_tokenizer(checkpoint: str) -> str:
    searched = clip_tokenizer_dirs()
    found = find_clip_tokenizer(searched)
    if found is None:
        raise MissingModelFile(missing_clip_tokenizer_message(checkpoint, searched))
    return found
