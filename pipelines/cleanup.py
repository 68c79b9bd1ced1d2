"""Stage 0: DiffBIR's SwinIR cleanup of degraded photos, tiled so memory stays bounded at any size.

What DiffBIR does, and what we keep:
- super-resolution inputs are first resized (bicubic) by `upscale`, and the short side is raised to
  512 px when smaller: the cleaner was trained on 512 px crops and its 8x pixel-unshuffle leaves a
  small image only a few tokens;
- the network needs multiples of 64 px: each tile is padded, and the padding cropped off again;
- large images go through 512 px tiles with a 256 px stride, blended with gaussian weights (the
  same variance as DiffBIR's `gaussian_weights`), so no seam shows;
- the result is resized to exactly round(H * upscale) x round(W * upscale), the size asked for.

Where we differ, and why:
- input and output stay on the CPU and only one tile at a time goes to the device (DiffBIR keeps the
  whole image and its accumulators on the GPU), so device memory does not grow with the image;
- the `upscale` resize and the raise to 512 px are one bicubic resampling, not two;
- tiles are padded by reflection (spandrel's choice) rather than with zeros, so no black band leaks
  into the border through the 64 px attention windows;
- the raise to 512 px stops where the long side would pass 4096 px: a thin strip (8000x64) would
  otherwise grow 8x along its length (64000x512) for a result that is scaled straight back down;
- the model runs in float32 weights with bf16 autocast on GPUs that support it (the model itself is
  never cast, so the caller's weights are never rounded); fp16 is refused (SwinIR overflows in fp16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..models.devices import default_dtype
from .image import check_bchw

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

MIN_SHORT_SIDE = 512
MAX_RAISED_LONG_SIDE = 4096
GAUSSIAN_VARIANCE = 0.01  # DiffBIR's (from CCSR): a tile's border weighs ~4e-6 of its centre
ProgressFn = Callable[[int, int], None]


def clean_images(
    model: "ImageModelDescriptor",
    images: torch.Tensor,
    *,
    upscale: float = 1.0,
    tile_size: int = 512,
    tile_stride: int = 256,
    device: "torch.device | str | None" = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Clean (B,3,H,W) float images in 0..1 with DiffBIR's SwinIR; returns (B,3,round(H*upscale),
    round(W*upscale)) float32 on the CPU.

    device: where the network runs (default: where the model is); the model is moved there for the
    call and back afterwards. dtype: compute dtype, bf16 or float32 (default: bf16 where
    `bf16_usable(device)`, else float32). progress(done, total) is called after every tile of the
    whole batch; an exception raised in it stops the work and propagates.
    """
    check_bchw(images, "the images to clean")
    _check_tiling(tile_size, tile_stride, model.size_requirements.multiple_of)
    if not upscale > 0 or not math.isfinite(upscale):
        raise ValueError(f"upscale must be a positive number, got {upscale}")
    if model.dtype == torch.float16:
        raise ValueError("DiffBIR's SwinIR does not run in float16 (it overflows); load it in float32")
    device = torch.device(device) if device is not None else model.device
    dtype = _compute_dtype(device, dtype)

    batch, _, height, width = images.shape
    target = output_size(height, width, upscale)
    work = working_size(*target)
    rows, cols = _Axis.cover(work[0], tile_size, tile_stride), _Axis.cover(work[1], tile_size, tile_stride)
    total = batch * len(rows.starts) * len(cols.starts)
    tiles_done = 0

    def tile_finished() -> None:
        nonlocal tiles_done
        tiles_done += 1
        if progress is not None:
            progress(tiles_done, total)

    result = torch.empty((batch, 3, *target), dtype=torch.float32)
    home = model.device
    model.to(device)
    try:
        for i in range(batch):
            source = _resize(images[i:i + 1].detach().to("cpu", torch.float32), work)
            # at the target size already: blend straight into the result, no second image-sized buffer
            cleaned = result[i:i + 1] if work == target else torch.empty((1, 3, *work), dtype=torch.float32)
            _clean_tiled(model, source, rows, cols, cleaned, device, dtype, tile_finished)
            if work != target:
                result[i:i + 1] = _resize(cleaned, target)
    finally:
        model.to(home)
    return result


def output_size(height: int, width: int, upscale: float) -> tuple[int, int]:
    """The size the user asked for: round(H * upscale) x round(W * upscale), at least 1 px."""
    return max(1, round(height * upscale)), max(1, round(width * upscale))


def working_size(height: int, width: int) -> tuple[int, int]:
    """The size the network runs at: short side raised to 512 px as in DiffBIR, unless that would push
    the long side past 4096 px (then raised only that far, or not at all)."""
    short, long = min(height, width), max(height, width)
    if short >= MIN_SHORT_SIDE:
        return height, width
    scale = min(MIN_SHORT_SIDE / short, max(1.0, MAX_RAISED_LONG_SIDE / long))
    if scale <= 1.0:
        return height, width
    return max(height, round(height * scale)), max(width, round(width * scale))


@dataclass(frozen=True)
class _Axis:
    """Tiles along one image axis: where they start, how long they are, their blending weights, and
    the summed weight at every pixel (the 2-D weights are a product, so the normaliser is too)."""

    starts: tuple[int, ...]
    extent: int
    weights: torch.Tensor  # (extent,)
    coverage: torch.Tensor  # (length,)

    @staticmethod
    def cover(length: int, tile: int, stride: int) -> "_Axis":
        if length <= tile:
            return _Axis((0,), length, torch.ones(length), torch.ones(length))
        starts = list(range(0, length - tile + 1, stride))
        if starts[-1] != length - tile:  # last tile flush with the edge, as in DiffBIR's sliding_windows
            starts.append(length - tile)
        weights = _gaussian(tile)
        coverage = torch.zeros(length)
        for start in starts:
            coverage[start:start + tile] += weights
        return _Axis(tuple(starts), tile, weights, coverage)


def _gaussian(n: int) -> torch.Tensor:
    position = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
    return torch.exp(-position.square() / (2 * GAUSSIAN_VARIANCE)).float()


def _clean_tiled(model, source: torch.Tensor, rows: _Axis, cols: _Axis, into: torch.Tensor,
                 device: torch.device, dtype: torch.dtype, tile_finished: Callable[[], None]) -> None:
    """Blend the cleaned tiles of `source` (1,3,H,W) into `into` (1,3,H,W), both on the CPU."""
    into.zero_()
    weight = rows.weights[:, None] * cols.weights[None, :]
    for top in rows.starts:
        for left in cols.starts:
            window = (..., slice(top, top + rows.extent), slice(left, left + cols.extent))
            into[window].addcmul_(_clean_tile(model, source[window], device, dtype), weight)
            tile_finished()
    into.div_(rows.coverage.view(1, 1, -1, 1)).div_(cols.coverage.view(1, 1, 1, -1))


def _clean_tile(model, tile: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    height, width = tile.shape[-2:]
    # tiles match the weights (float32 from load_swinir; bf16 only if the caller cast the model itself)
    padded = _pad_to_multiple(tile, model.size_requirements.multiple_of).to(device, model.dtype)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        cleaned = model(padded)
    return cleaned[..., :height, :width].float().cpu()


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    # reflection cannot reach further than the image is long; replicate the rest
    reflect_h, reflect_w = min(pad_h, height - 1), min(pad_w, width - 1)
    x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    return F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # antialias matters when shrinking back to a small requested size; bicubic overshoots, hence clamp
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)


def _compute_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if dtype == torch.float16:
        raise ValueError("DiffBIR's SwinIR does not run in float16 (it overflows); use bfloat16 or float32")
    if dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float32, got {dtype}")
    return dtype


def _check_tiling(tile_size: int, tile_stride: int, multiple: int) -> None:
    if tile_size < multiple or tile_size % multiple:
        raise ValueError(f"tile_size must be a positive multiple of {multiple}, got {tile_size}")
    if not 0 < tile_stride <= tile_size:
        raise ValueError(f"tile_stride must be between 1 and tile_size ({tile_size}), got {tile_stride}")
