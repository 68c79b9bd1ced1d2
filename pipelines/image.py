"""Image tensors in the layouts the rest of the pack expects.

ComfyUI's IMAGE is (B, H, W, C) float in 0..1; everything below the nodes works on (B, 3, H, W) RGB
float in 0..1, or on (H, W, 3) uint8 RGB arrays for the numpy/OpenCV code (pose). Inputs from other
nodes can have 1, 2 or 4 channels or odd shapes: they are normalised here, once, with clear errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..models.errors import DiffBodyError

if TYPE_CHECKING:
    import torch


class BadImage(DiffBodyError):
    """An input image the pack cannot interpret."""


def comfy_to_bchw(image: "torch.Tensor") -> "torch.Tensor":
    """(B,H,W,C) or (H,W,C) in 0..1 with C in 1..4 -> contiguous (B,3,H,W) float32 RGB in 0..1."""
    import torch

    if not isinstance(image, torch.Tensor):
        raise BadImage(f"expected an IMAGE tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise BadImage(f"expected an IMAGE of shape (batch, height, width, channels), got {tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise BadImage(f"the image is empty (shape {tuple(image.shape)})")
    if c in (1, 2):  # grey, grey + alpha
        image = image[..., :1].expand(b, h, w, 3)
    elif c == 4:  # RGBA: the alpha channel carries no colour to restore
        image = image[..., :3]
    elif c != 3:
        raise BadImage(f"expected 1, 3 or 4 colour channels, got {c} (shape {tuple(image.shape)})")
    return image.permute(0, 3, 1, 2).float().clamp(0, 1).contiguous()


def bchw_to_comfy(images: "torch.Tensor") -> "torch.Tensor":
    """(B,3,H,W) -> ComfyUI IMAGE (B,H,W,3) float32 on the CPU."""
    return images.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().contiguous()


def chw_to_uint8(image: "torch.Tensor") -> np.ndarray:
    """(3,H,W) float 0..1 -> (H,W,3) uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def uint8_to_chw(array: np.ndarray) -> "torch.Tensor":
    """(H,W,3) uint8 -> (3,H,W) float32 0..1."""
    import torch

    copy = np.array(array, dtype=np.uint8)  # PIL's arrays are read-only; torch wants a writable one
    return torch.from_numpy(copy).permute(2, 0, 1).float().div_(255.0)
