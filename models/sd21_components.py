"""The two Stable Diffusion parts stage 1 borrows unchanged: the VAE and the text encoder.

Stage 1 talks to them through two small protocols, so tests, training previews and ComfyUI can plug
in their own (ComfyUI's VAE and CLIP objects, tiny models):
- `LatentCodec.encode(images (B,3,H,W) in 0..1) -> scaled latents (B,4,H/8,W/8)` and
  `.decode(latents) -> images (B,3,H,W) in 0..1`;
- `TextEncoder.encode(list of B prompts) -> context (B,L,D)`.

The diffusers adapters below implement them for a diffusers-format Stable Diffusion 2.1-base folder
(stabilityai/stable-diffusion-2-1-base: vae/, text_encoder/, tokenizer/), read from local files only
and from safetensors only (nothing is unpickled).

Facts the adapters rely on:
- VAE: images are mapped to [-1, 1] before encoding and back after decoding; latents are multiplied
  by the config's `scaling_factor` (0.18215 for SD 2.1) after subtracting `shift_factor` (absent for
  SD 2.1, so 0). Encoding takes the posterior mean, not a sample: the SD VAE's posterior std is tiny,
  and the mean keeps encoding deterministic. The pose skeleton goes through the same VAE, black
  background and all, as HumanSD feeds it (its pose image is scaled to [-1, 1] and VAE-encoded).
- Text encoder: SD 2.x conditions on the penultimate layer of OpenCLIP ViT-H/14 followed by the
  final LayerNorm (ldm's FrozenOpenCLIPEmbedder, layer="penultimate"). The diffusers conversion
  already drops the last of the 24 transformer blocks (SD 2.1's text_encoder/config.json has
  num_hidden_layers 23; diffusers' single-file converter ignores `resblocks.23`), and CLIPTextModel
  applies `final_layer_norm` to its last hidden state, so `last_hidden_state` IS SD 2.x's context
  (B, 77, 1024). Taking hidden_states[-2] here would go one layer too deep. Prompts are padded to the
  tokenizer's 77 tokens and truncated beyond, as SD does, without an attention mask.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from .errors import MissingModelFile, WrongModelFile

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)

SD21_SUBFOLDERS = ("vae", "text_encoder", "tokenizer")
SD21_BASE_REPO = "stabilityai/stable-diffusion-2-1-base"


@runtime_checkable
class LatentCodec(Protocol):
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float in 0..1 -> scaled latents (B,4,H/8,W/8)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B,4,h,w) -> (B,3,8h,8w) float in 0..1."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> cross-attention context (B,L,D)."""
        ...


class DiffusersVAE:
    """LatentCodec over a diffusers AutoencoderKL; runs where the VAE is, in its dtype."""

    def __init__(self, vae: "AutoencoderKL"):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in 0..1 -> float32 scaled latents on the VAE's device."""
        param = next(self.vae.parameters())
        pixels = images.to(param.device, param.dtype) * 2.0 - 1.0
        mean = self.vae.encode(pixels).latent_dist.mean
        return ((mean.float() - self.shift_factor) * self.scaling_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> float32 images in 0..1 on the CPU."""
        param = next(self.vae.parameters())
        unscaled = latents.float() / self.scaling_factor + self.shift_factor
        pixels = self.vae.decode(unscaled.to(param.device, param.dtype)).sample
        return ((pixels.float() + 1.0) / 2.0).clamp(0, 1).cpu()


class DiffusersTextEncoder:
    """TextEncoder over a CLIP tokenizer and CLIPTextModel (see the module note on SD 2.x's layer)."""

    def __init__(self, tokenizer: "CLIPTokenizer", text_encoder: "CLIPTextModel"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @property
    def context_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> float32 (B, 77, hidden size) on the text encoder's device."""
        max_length = self.tokenizer.model_max_length
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt")
        self._warn_truncated(prompts, max_length)
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(device)).last_hidden_state.float()

    def _warn_truncated(self, prompts: list[str], max_length: int) -> None:
        # CLIP reads 77 tokens; long LLaVA captions lose their end. Say so rather than drop it silently.
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), truncation=False, verbose=False).input_ids]
        cut = [n for n in lengths if n > max_length]
        if cut:
            log.warning("%d of %d captions are longer than CLIP's %d tokens (longest %d); the rest is ignored",
                        len(cut), len(prompts), max_length, max(cut))


@dataclass(frozen=True)
class SD21Components:
    vae: DiffusersVAE
    text_encoder: DiffusersTextEncoder


def load_sd21_components(folder: str, *, device: "torch.device | str" = "cpu",
                         dtype: torch.dtype = torch.float32) -> SD21Components:
    """The VAE and text encoder of a diffusers Stable Diffusion 2.1-base folder (local files only,
    safetensors only), moved to `device` in `dtype`."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    _check_sd21_folder(folder)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, use_safetensors=True,
                                        torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True,
                                                 use_safetensors=True, torch_dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    if vae.config.latent_channels != 4:
        raise WrongModelFile(f"{os.path.join(folder, 'vae')} has {vae.config.latent_channels} latent channels; "
                             f"Stable Diffusion 2.1's VAE has 4 (is this an SD 3 or FLUX folder?)")
    vae.to(device).eval()
    text_encoder.to(device).eval()
    return SD21Components(DiffusersVAE(vae), DiffusersTextEncoder(tokenizer, text_encoder))


def _check_sd21_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        raise MissingModelFile(f"Stable Diffusion 2.1-base folder not found: {folder}. Download the diffusers "
                               f"folder of {SD21_BASE_REPO} (its {', '.join(SD21_SUBFOLDERS)} sub-folders).")
    missing = [name for name in SD21_SUBFOLDERS if not os.path.isdir(os.path.join(folder, name))]
    if missing:
        raise MissingModelFile(f"{folder} lacks the sub-folder(s) {', '.join(missing)}; expected a diffusers "
                               f"folder of {SD21_BASE_REPO} with {', '.join(SD21_SUBFOLDERS)}.")
