"""Image tensors in the layouts the pipelines take, and the one check of them.

Everything below the nodes works on (B, 3, H, W) RGB float in 0..1 (ComfyUI's IMAGE is converted to
that once, in nodes/glue.py), or on (H, W, 3) uint8 RGB arrays for the numpy/OpenCV code (pose).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..models.errors import DiffBodyError

if TYPE_CHECKING:
    import torch


class BadImage(DiffBodyError):
    """An input image the pack cannot interpret."""


class EmptyImage(BadImage):
    """An input image with no pixels (or an empty batch)."""


class WrongChannelCount(BadImage):
    """An input image that is not (B, 3, H, W)."""


def check_bchw(images, what: str, *, floats_only: bool = True, allow_empty: bool = False,
               error: type[Exception] | None = None) -> None:
    """The one check of what the pipelines take: a (B, 3, H, W) tensor, float in 0..1 (`floats_only`), with
    pixels (unless `allow_empty`). `what` names the input in the message ("the cleaned image"). Raises
    WrongChannelCount / EmptyImage / BadImage, or `error` for every problem when the caller has its own."""
    import torch

    def fail(kind: type[Exception], message: str):
        return (error or kind)(f"{what} {message}")

    if not isinstance(images, torch.Tensor):
        raise fail(WrongChannelCount, f"must be a tensor of shape (batch, 3, height, width), got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise fail(WrongChannelCount, f"must be of shape (batch, 3, height, width), got {shape}")
    if images.shape[1] != 3:
        raise fail(WrongChannelCount, f"must have 3 colour channels, got {images.shape[1]} (shape {shape}; "
                                      "expected (batch, 3, height, width))")
    if not allow_empty and 0 in shape:
        raise fail(EmptyImage, f"is empty (shape {shape})")
    if floats_only and not images.is_floating_point():
        raise fail(BadImage, f"must be float in 0..1, got {images.dtype}")


def chw_to_uint8(image: "torch.Tensor") -> np.ndarray:
    """(3,H,W) float 0..1 -> (H,W,3) uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def uint8_to_chw(array: np.ndarray) -> "torch.Tensor":
    """(H,W,3) uint8 -> (3,H,W) float32 0..1."""
    import torch

    copy = np.array(array, dtype=np.uint8)  # PIL's arrays are read-only; torch wants a writable one
    return torch.from_numpy(copy).permute(2, 0, 1).float().div_(255.0)
