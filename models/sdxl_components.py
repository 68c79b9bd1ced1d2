"""The public SDXL parts stage 2 runs on outside ComfyUI: SDXL's UNet, VAE and two text encoders from a
diffusers folder, and the CLIP ViT-H image encoder of IP-Adapter Plus XL (the colour adapter's input).

Local files only, safetensors only: nothing is fetched and nothing is unpickled.
"""

from __future__ import annotations

import os

import torch

from .errors import MissingModelFile, WrongModelFile
from .loading import check_state_dict, read_safetensors

SDXL_SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
# OpenCLIP ViT-H-14 (laion2B-s32B-b79K) as a transformers CLIPVisionModelWithProjection: the image encoder
# of IP-Adapter Plus XL (h94/IP-Adapter models/image_encoder/config.json; ComfyUI's clip_vision_config_h.json).
CLIP_VIT_H_CONFIG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                         image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
CLIP_VIT_H_EXPECTED = "CLIP ViT-H-14's image encoder in transformers' layout"


class SDXLTextEncoders:
    """SDXL's two CLIP text encoders: context = cat(penultimate hidden states of CLIP-L, of OpenCLIP
    bigG) (B,77,2048); pooled = bigG's projected text embedding (B,1280) - as diffusers' SDXL pipeline."""

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2):
        self.tokenizers = (tokenizer, tokenizer_2)
        self.encoders = (text_encoder, text_encoder_2)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (context (B,77,D1+D2), pooled (B,P)), float32 on the second encoder's device."""
        contexts, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            contexts.append(out.hidden_states[-2].float())
            pooled = out[0].float()  # the second encoder's text_embeds
        device = contexts[-1].device
        return torch.cat([c.to(device) for c in contexts], dim=-1), pooled


def load_sdxl_parts(folder: str, *, device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32,
                    vae_dtype: torch.dtype = torch.float32):
    """(unet, vae, SDXLTextEncoders) from a local diffusers SDXL folder (unet/, vae/, text_encoder{,_2}/,
    tokenizer{,_2}/), safetensors only, nothing fetched. The VAE defaults to float32: the original
    SDXL VAE overflows in fp16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    missing = [sub for sub in SDXL_SUBFOLDERS if not os.path.isdir(os.path.join(folder, sub))]
    if missing:
        raise MissingModelFile(f"DiffBody: '{folder}' is not a complete diffusers SDXL folder: "
                               f"no {', '.join(missing)}.")
    kw = dict(local_files_only=True, use_safetensors=True)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype, **kw)
    encoders = [cls.from_pretrained(folder, subfolder=sub, torch_dtype=dtype, **kw) for cls, sub in
                ((CLIPTextModel, "text_encoder"), (CLIPTextModelWithProjection, "text_encoder_2"))]
    tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder=sub, local_files_only=True)
                  for sub in ("tokenizer", "tokenizer_2")]
    unet, vae = unet.to(device).eval(), vae.to(device).eval()
    encoders = [e.to(device).eval() for e in encoders]
    return unet, vae, SDXLTextEncoders(tokenizers[0], encoders[0], tokenizers[1], encoders[1])


def load_clip_vision(path: str, *, device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32,
                     config: dict | None = None):
    """The ViT-H image encoder as a transformers CLIPVisionModelWithProjection, from a transformers folder
    (h94/IP-Adapter models/image_encoder) or a single .safetensors with the same keys (ComfyUI's
    models/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors); strict, eval mode. `config`: the
    CLIPVisionConfig arguments of a single file (default ViT-H-14; tests pass the tiny one)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if os.path.isdir(path):
        model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                              torch_dtype=dtype)
        return model.to(device).eval()
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: CLIP vision model '{path}' does not exist.")
    state_dict = read_safetensors(path, expected=CLIP_VIT_H_EXPECTED)
    state_dict.pop("vision_model.embeddings.position_ids", None)  # a buffer older exports saved
    name = os.path.basename(path)
    if "vision_model.encoder.layers.47.layer_norm1.weight" in state_dict:
        raise WrongModelFile(f"DiffBody: '{name}' is CLIP ViT-bigG; IP-Adapter Plus XL (vit-h) needs CLIP ViT-H-14.")
    vision_config = CLIPVisionConfig(**(CLIP_VIT_H_CONFIG if config is None else config))
    with torch.device("meta"):  # shapes first: a wrong file fails before ViT-H is allocated
        probe = CLIPVisionModelWithProjection(vision_config)
    check_state_dict(probe.state_dict(), state_dict, name=name, expected=CLIP_VIT_H_EXPECTED, path=path)
    model = CLIPVisionModelWithProjection(vision_config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype).eval()
