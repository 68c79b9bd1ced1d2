"""CLIP image features as the colour adapter takes them: ComfyUI's CLIP preprocessing, then the penultimate
hidden states of a transformers CLIP vision model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,H,W) 0..1 -> CLIP input (B,3,size,size): short side to `size` (bicubic, antialiased), centre
    crop, quantised to 8 bits, normalised - the same steps as ComfyUI's clip_preprocess."""
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        images = F.interpolate(images, size=(round(scale * height), round(scale * width)), mode="bicubic",
                               antialias=True)
        top, left = (images.shape[2] - size) // 2, (images.shape[3] - size) // 2
        images = images[:, :, top:top + size, left:left + size]
    images = torch.clip(255.0 * images, 0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def clip_image_features(image_encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden states (B, tokens, width) of a transformers CLIP vision model."""
    return image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
