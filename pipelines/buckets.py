"""Working sizes for stage 1: the paper's five training buckets, or the input's own size.

The paper (section 4.1) trains on five resolution buckets, SDXL-style: "512x512, 512x768, 512x1024,
768x512 and 1024x512". It writes sizes as width x height (Fig. 4's "64 x 128" Market-1501 crops are
64 px wide and 128 px tall; SHHQ full-body photos are 512 wide and 1024 tall), but the set holds every
non-square bucket in both orientations, so either reading gives the same five buckets. We store them
as (height, width).

Two ways to size a batch (all images of a batch share one size):
- "bucket": the bucket whose aspect ratio is nearest the input's (in log space, so 1:2 and 2:1 are
  equally far from 1:1) - the sizes the networks were trained at. The image is resized to fit inside
  the bucket keeping its aspect, centred, padded to the bucket, and after sampling the padding is
  cropped off and the result resized back to the input size.
- "native": the input size, padded (centred) to a multiple of 64 px and cropped back; no resampling,
  but the networks run at a size they may not have seen, and memory grows with the image.
Either way the result has exactly the input's height and width.

Why multiples of 64: the VAE divides by 8 and the SD UNet halves the latent three times.
Padding: photos are padded by repeating their edge pixels (no black frame for the model to draw, and
it works for pads wider than the image, which reflection does not); pose skeletons are padded with
black, which is what "no body part here" looks like on a skeleton image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.errors import DiffBodyError

BUCKETS: tuple[tuple[int, int], ...] = ((512, 512), (768, 512), (1024, 512), (512, 768), (512, 1024))  # (H, W)
SIZE_MODES = ("bucket", "native")
SIZE_MULTIPLE = 64
PAD_FILLS = ("edge", "black")
# How stage 2 pads each image it samples on, by role (the command line's restore and the "DiffBody Stage 2
# Canvas" node): I_ir, depth, normal and the colour source by their edges, the skeleton with black.
STAGE2_FILLS = {"image": "edge", "pose": "black", "depth": "edge", "normal": "edge", "colour": "edge"}


class UnknownSizeMode(DiffBodyError, ValueError):
    """A size mode other than those in SIZE_MODES."""


def nearest_bucket(height: int, width: int) -> tuple[int, int]:
    """The (H, W) bucket whose aspect ratio is closest to height:width (first of equals)."""
    aspect = math.log(width / height)
    return min(BUCKETS, key=lambda hw: abs(math.log(hw[1] / hw[0]) - aspect))


@dataclass(frozen=True)
class ResizePlan:
    """How a batch of (H, W) images becomes a canvas the model samples on, and back.

    input_size: the caller's (H, W). content_size: the images resized to this (equal to input_size in
    "native" mode)... canvas_size: ...and padded to this (multiples of 64), the content's top-left
    corner at offset (top, left).
    """

    input_size: tuple[int, int]
    content_size: tuple[int, int]
    canvas_size: tuple[int, int]
    offset: tuple[int, int]

    def to_canvas(self, images: torch.Tensor, fill: str) -> torch.Tensor:
        """(B,C,H,W) at input_size -> (B,C,canvas) float: resized, then padded with `fill` ("edge" or "black")."""
        if fill not in PAD_FILLS:
            raise ValueError(f"fill must be one of {PAD_FILLS}, got {fill!r}")
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(f"expected images of size {self.input_size}, got {tuple(images.shape[-2:])}")
        content = resize(images.float(), self.content_size)
        top, left = self.offset
        bottom = self.canvas_size[0] - self.content_size[0] - top
        right = self.canvas_size[1] - self.content_size[1] - left
        pads = (left, right, top, bottom)
        if fill == "edge":
            return F.pad(content, pads, mode="replicate")
        return F.pad(content, pads, mode="constant", value=0.0)

    def from_canvas(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,canvas) -> (B,C,input_size): the padding cropped off, then resized back."""
        if tuple(images.shape[-2:]) != self.canvas_size:
            raise ValueError(f"expected images of size {self.canvas_size}, got {tuple(images.shape[-2:])}")
        top, left = self.offset
        content = images[..., top:top + self.content_size[0], left:left + self.content_size[1]]
        return resize(content, self.input_size)


def plan_resize(height: int, width: int, mode: str = "bucket") -> ResizePlan:
    """The ResizePlan for (height, width) input images in `mode` ("bucket" or "native")."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if mode == "bucket":
        canvas = nearest_bucket(height, width)
        scale = min(canvas[0] / height, canvas[1] / width)
        content = (min(canvas[0], max(1, round(height * scale))), min(canvas[1], max(1, round(width * scale))))
    elif mode == "native":
        content = (height, width)
        canvas = (_round_up(height, SIZE_MULTIPLE), _round_up(width, SIZE_MULTIPLE))
    else:
        raise UnknownSizeMode(f"unknown size mode {mode!r}; choose one of {', '.join(SIZE_MODES)}")
    offset = ((canvas[0] - content[0]) // 2, (canvas[1] - content[1]) // 2)
    return ResizePlan((height, width), content, canvas, offset)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,size): bicubic with antialiasing (clean downscales), clamped back into 0..1 (bicubic
    overshoots). The pack's one resize of photos between a working size and their own (canvas, group crops)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
