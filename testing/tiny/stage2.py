"""Tiny stage-2 networks with random weights, written in the real files' formats and key layouts.

- A tiny SDXL: the real UNet's structure (DownBlock2D + two CrossAttnDownBlock2D levels, text_time added
  conditioning with six 256-wide time ids, linear transformer projections, 64-wide attention heads) at
  channels 32/64/128, one transformer per attention block, context width 64 (two 32-wide CLIP text
  encoders), pooled width 32. It is at once a diffusers config (`tiny_sdxl_unet_config`) and a ComfyUI
  UNetModel config (`tiny_comfy_unet_config`: model_channels 32, channel_mult [1,2,4], transformer_depth
  [0,0,1,1,1,1], context_dim 64, num_head_channels 64 as ComfyUI's SDXL class forces,
  adm_in_channels 32 + 6*256). `write_tiny_sdxl` writes the diffusers folder (unet/, vae/,
  text_encoder{,_2}/, tokenizer{,_2}/, scheduler/) and the same UNet weights as an original-layout single
  file (`model.diffusion_model.*`, what ComfyUI loads).
- `write_tiny_ip_adapter_plus_xl`: IP-Adapter Plus XL's exact keys (`image_proj.*`, `ip_adapter.{k}.*` with
  k following the tiny UNet's attention processor order) at tiny widths, flat safetensors, no metadata.
- `write_tiny_multiprior`: our stage-2 ControlNet file, the encoder copied from the tiny UNet and the
  zero-initialised layers randomised (as after training), so the control visibly changes the output.
- `write_tiny_clip_vision`: a transformers CLIPVisionModelWithProjection folder (ViT-H's layout, width 32).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from .sd21_components import byte_alphabet

POOLED_DIM = 32
TEXT_WIDTHS = (32, 32)  # CLIP-L stand-in, bigG stand-in: context = 64
CONTEXT_DIM = sum(TEXT_WIDTHS)
CLIP_VISION_WIDTH = 32
VAE_SCALING_FACTOR = 0.13025  # SDXL's
MAX_TOKENS = 77
SDXL_SCHEDULER_CONFIG = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012,
                         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "interpolation_type": "linear",
                         "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
                         "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                         "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}


def tiny_sdxl_unet_config() -> dict:
    """diffusers UNet2DConditionModel config of the tiny SDXL."""
    return {
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 128], "transformer_layers_per_block": [1, 1, 1],
        "attention_head_dim": [1, 1, 2],  # diffusers' name for the head COUNT: channels / 64
        "cross_attention_dim": CONTEXT_DIM, "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": POOLED_DIM + 6 * 256,
        "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0, "upcast_attention": False,
    }


def tiny_comfy_unet_config() -> dict:
    """The same UNet as ComfyUI's openaimodel.UNetModel(**config) builds it (and as
    comfy.model_detection.detect_unet_config + supported_models.SDXL would configure it)."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": POOLED_DIM + 6 * 256, "in_channels": 4,
        "model_channels": 32, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 1, 1, 1, 1],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
        "context_dim": CONTEXT_DIM, "num_heads": -1, "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


def build_tiny_sdxl_unet(seed: int = 0):
    """The tiny SDXL UNet (diffusers) with seeded random weights, eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
    # Norm biases start at zero; random ones make a wrongly mapped bias visible in cross-host comparisons.
    _randomise_zeros(unet, seed)
    return unet.eval()


def tiny_ldm_unet_state_dict(unet) -> dict[str, torch.Tensor]:
    """The tiny UNet's weights under original (LDM/ComfyUI) keys, prefixed `model.diffusion_model.`."""
    from ...models.loading import LDM_UNET_PREFIX
    from ...models.unet_layout import diffusers_unet_to_ldm

    ldm = diffusers_unet_to_ldm(unet.state_dict(), tiny_sdxl_unet_config())
    return {LDM_UNET_PREFIX + k: v.detach().clone().contiguous() for k, v in ldm.items()}


def write_tiny_sdxl(folder: str | None = None, single_file: str | None = None, *, seed: int = 0) -> dict[str, str]:
    """Write the tiny SDXL as a diffusers folder and/or its UNet as an original-layout single file
    (same UNet weights in both). Returns {"folder": ..., "single_file": ...} for what was written."""
    from safetensors.torch import save_file

    unet = build_tiny_sdxl_unet(seed)
    written = {}
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
        unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
        build_tiny_vae(seed).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
        tokenizers, encoders = build_tiny_text_encoders(seed)
        for suffix, tokenizer, encoder in zip(("", "_2"), tokenizers, encoders):
            tokenizer.save_pretrained(os.path.join(folder, "tokenizer" + suffix))
            encoder.save_pretrained(os.path.join(folder, "text_encoder" + suffix), safe_serialization=True)
        _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), SDXL_SCHEDULER_CONFIG)
        _write_json(os.path.join(folder, "model_index.json"), _model_index())
        written["folder"] = folder
    if single_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(single_file)), exist_ok=True)
        save_file(tiny_ldm_unet_state_dict(unet), single_file)
        written["single_file"] = single_file
    return written


def build_tiny_vae(seed: int = 0):
    """A tiny AutoencoderKL with SDXL's 8x factor, 4 latent channels and scaling factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                         block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
                         scaling_factor=VAE_SCALING_FACTOR).eval()


def build_tiny_text_encoders(seed: int = 0):
    """((tokenizer, tokenizer_2), (CLIPTextModel, CLIPTextModelWithProjection)) of SDXL's kinds, tiny."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    encoders = []
    for i, (cls, width) in enumerate(zip((CLIPTextModel, CLIPTextModelWithProjection), TEXT_WIDTHS)):
        torch.manual_seed(seed + 2 + i)
        config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                                hidden_act="gelu", projection_dim=POOLED_DIM,
                                pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|startoftext|>"],
                                eos_token_id=vocab["<|endoftext|>"])
        encoders.append(cls(config).eval())
    return (tokenizer, build_tiny_clip_tokenizer()), tuple(encoders)


def build_tiny_clip_tokenizer():
    """A CLIP byte-level BPE tokenizer with the byte alphabet and no merges (77 tokens, offline)."""
    from transformers import CLIPTokenizer

    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        _write_json(vocab_file, {t: i for i, t in enumerate(tokens)})
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")


def tiny_clip_vision_config():
    """transformers CLIPVisionConfig of ViT-H's kind (penultimate features are what IP-Adapter reads),
    width 32, 3 layers, 32 px images in 16 px patches (5 tokens)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**tiny_clip_vision_kwargs())


def build_tiny_clip_vision(seed: int = 0):
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed + 5)
    return CLIPVisionModelWithProjection(tiny_clip_vision_config()).eval()


def tiny_clip_vision_kwargs() -> dict:
    """The tiny CLIPVisionConfig's arguments (what `load_clip_vision(..., config=)` takes)."""
    return dict(hidden_size=CLIP_VISION_WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                image_size=32, patch_size=16, projection_dim=32, hidden_act="gelu")


def write_tiny_clip_vision(folder: str | None = None, single_file: str | None = None, *, seed: int = 0) -> dict:
    """The tiny image encoder as a transformers folder and/or a flat .safetensors with transformers' keys
    (the layout of ComfyUI's models/clip_vision files). Returns {"folder": ..., "single_file": ...}."""
    from safetensors.torch import save_file

    model, written = build_tiny_clip_vision(seed), {}
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
        written["folder"] = folder
    if single_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(single_file)), exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, single_file)
        written["single_file"] = single_file
    return written


def build_tiny_colour_adapter(unet_config: dict | None = None, seed: int = 0):
    """A ColourAdapter of IP-Adapter Plus XL's layout at tiny widths, random weights."""
    from ...models.colour_adapter import ColourAdapter, ColourAdapterConfig

    torch.manual_seed(seed + 6)
    adapter = ColourAdapter(ColourAdapterConfig.tiny(unet_config or tiny_sdxl_unet_config()))
    with torch.no_grad():  # the to_k_ip/to_v_ip of a trained adapter are far from PyTorch's tiny init
        for layer in adapter.ip_layers:
            layer.to_k_ip.weight.normal_(0, 0.2)
            layer.to_v_ip.weight.normal_(0, 0.2)
    return adapter.eval()


def write_tiny_ip_adapter_plus_xl(path: str, unet_config: dict | None = None, *, seed: int = 0) -> str:
    """A flat safetensors file with IP-Adapter Plus XL's exact key names and layout at tiny widths; the
    ip_adapter.{k} indices follow `unet_config`'s attention processor order (default: the tiny SDXL)."""
    from safetensors.torch import save_file

    adapter = build_tiny_colour_adapter(unet_config, seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items()}, path)
    return path


def build_tiny_multiprior(seed: int = 0, unet=None):
    """A tiny multi-prior ControlNet copied from the tiny UNet (built from `seed` unless given), its
    zero-initialised layers randomised."""
    from ...models.multiprior_controlnet import MultiPriorControlNet, MultiPriorControlNetConfig

    unet = unet if unet is not None else build_tiny_sdxl_unet(seed)
    torch.manual_seed(seed + 7)
    model = MultiPriorControlNet.from_unet(unet, MultiPriorControlNetConfig.tiny())
    _randomise_zeros(model, seed + 8)
    return model.eval()


def write_tiny_multiprior(path: str, *, seed: int = 0) -> str:
    """Our stage-2 ControlNet file (diffbody_stage2_controlnet.safetensors layout), tiny."""
    from ...models.stage2_weights import save_multiprior

    return save_multiprior(build_tiny_multiprior(seed), path)


def build_tiny_stage2_components(seed: int = 0) -> dict:
    """In-memory tiny parts for Stage2Pipeline: unet, vae, text_encoders, controlnet, adapter, image_encoder."""
    from ...models.sdxl_components import SDXLTextEncoders

    unet = build_tiny_sdxl_unet(seed)
    tokenizers, encoders = build_tiny_text_encoders(seed)
    return {"unet": unet, "vae": build_tiny_vae(seed),
            "text_encoders": SDXLTextEncoders(tokenizers[0], encoders[0], tokenizers[1], encoders[1]),
            "controlnet": build_tiny_multiprior(seed, unet), "adapter": build_tiny_colour_adapter(seed=seed),
            "image_encoder": build_tiny_clip_vision(seed)}


def _randomise_zeros(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Give every all-zero weight/bias small random values (zero convs as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _model_index() -> dict:
    return {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
