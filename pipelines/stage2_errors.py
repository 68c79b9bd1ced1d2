"""The error of stage 2's pipeline pieces, in a module of its own so that the sampler (stage2.py) and the
pieces it uses (colour_attention.py, union_control.py) can all raise it without importing each other."""

from __future__ import annotations

from ..models.errors import DiffBodyError


class Stage2Error(DiffBodyError, ValueError):
    """Stage-2 inputs or components that do not fit together."""


# Stage 2 samples SDXL at the cleaned image's own size (the bundled workflows: Get Image Size -> Empty Latent
# Image). Its latent is 1/8 of the image and the UNet halves the latent twice, so below 64 px a side the
# sampler meets an empty (or 1-pixel) latent and fails deep inside ComfyUI (a 1x1 photo: ZeroDivisionError).
STAGE2_MIN_SIDE = 64


def check_stage2_size(images: dict, node: str, advice: str) -> None:
    """Raise Stage2Error naming the prior, its size and what to do when an image in `images` (name -> ComfyUI
    IMAGE, (B, H, W, C)) is smaller than STAGE2_MIN_SIDE on a side."""
    for name, image in images.items():
        if image is None or image.ndim < 3:
            continue
        height, width = int(image.shape[-3]), int(image.shape[-2])
        if min(height, width) < STAGE2_MIN_SIDE:
            raise Stage2Error(f"{node}: the {name} prior is {width}x{height} px; stage 2 samples SDXL at that size "
                              f"and needs at least {STAGE2_MIN_SIDE} px on each side. {advice}")
