"""Full-reference pixel metrics: PSNR, SSIM, CPSNR, CSSIM, in torch, batched on the images' device.

Shared by the evaluation (evaluation/, `python -m comfyui_diffbody evaluate`) and the DiffBody Image Metrics
node, hence on this floor.

The paper (Table 1, Table 5) names the metrics but not their exact definitions. Those used here, for a
result x and its reference y, both RGB on the 0..255 scale (the 8-bit images as written, x = 255 * tensor),
of H x W pixels after `crop_border` pixels are dropped from every edge (default 0: the whole image):

- Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in 0..255: the luma of ITU-R BT.601 in
  studio range (16..235), as MATLAB's rgb2ycbcr, BasicSR and pyiqa compute it; not rounded.
- PSNR (Table 1) on Y:                  PSNR = 10 log10(255^2 / MSE),   MSE = (1 / HW) sum_p (Y_x(p) - Y_y(p))^2
- CPSNR (Table 5, colour PSNR) on RGB:  CPSNR = 10 log10(255^2 / CMSE), CMSE = (1 / 3HW) sum_c sum_p (x_c(p) - y_c(p))^2
  i.e. one MSE over the three colour channels together (the demosaicking literature's CPSNR), not the mean
  of three per-channel PSNRs. Identical images give +inf for both.
- SSIM (Table 1) on Y, Wang et al. 2004: with a Gaussian window w of 11 x 11 taps, sigma 1.5, normalised to
  sum 1, and local statistics mu_x = w * x, sigma_x^2 = w * x^2 - mu_x^2, sigma_xy = w * (x y) - mu_x mu_y
  (population, not sample, covariance),
      SSIM(x, y) = mean_p [(2 mu_x mu_y + C1)(2 sigma_xy + C2)] / [(mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)]
  with C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255, the mean taken over the pixels whose whole window lies in
  the image (a 'valid' filter: 5 pixels less on every side). No automatic downsampling of large images.
- CSSIM (Table 5, colour SSIM) on RGB:  CSSIM = (1/3) sum_{c in R,G,B} SSIM(x_c, y_c)
  the same SSIM on each colour channel, averaged.

Computed in float64 (PSNR near 50 dB and SSIM of flat areas lose digits in float32). tests/test_metrics.py
checks all four against scikit-image's implementations of these formulas to 1e-4.
"""

from __future__ import annotations

import torch

from .image import check_bchw

PIXEL_METRICS = ("psnr", "ssim", "cpsnr", "cssim")
# BT.601 luma weights for 0..255 RGB giving studio-range Y (16..235)
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0
SSIM_WINDOW = 11
PEAK = 255.0


def pixel_metrics(result: torch.Tensor, reference: torch.Tensor, crop_border: int = 0) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) results and references, float RGB in 0..1 on one device -> {metric: (B,) float64 tensor}
    for PSNR, SSIM, CPSNR, CSSIM (definitions in the module docstring), on that device."""
    rgb, ref = _prepare(result, reference, crop_border)
    y_rgb, y_ref = luma(rgb), luma(ref)
    return {"psnr": psnr(y_rgb, y_ref), "ssim": ssim(y_rgb, y_ref),
            "cpsnr": psnr(rgb, ref), "cssim": ssim(rgb, ref)}


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on the 0..255 scale -> (B, 1, H, W) BT.601 studio-range Y (16..235)."""
    weights = torch.tensor(_Y_WEIGHTS, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True) + _Y_OFFSET


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) on the 0..255 scale -> (B,) PSNR over all C channels' pixels together (+inf when equal)."""
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(PEAK ** 2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) on the 0..255 scale -> (B,) SSIM per channel (Gaussian 11x11, sigma 1.5, valid region),
    averaged over the C channels: kornia's SSIM map (the formula above; its 1e-12 guard in the denominator is
    far below the constants), its mean per image."""
    from kornia.metrics import ssim as ssim_map

    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got "
                         f"{tuple(x.shape[-2:])}")
    return ssim_map(x, y, SSIM_WINDOW, max_val=PEAK, padding="valid").flatten(2).mean(dim=2).mean(dim=1)


def _prepare(result: torch.Tensor, reference: torch.Tensor, crop_border: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_bchw(result, "the result", error=ValueError)
    check_bchw(reference, "the reference", error=ValueError)
    if result.shape != reference.shape:
        raise ValueError(f"the result {tuple(result.shape)} and its reference {tuple(reference.shape)} differ in "
                         "size; a full-reference metric compares images of one size")
    if crop_border < 0 or 2 * crop_border >= min(result.shape[-2:]):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {tuple(result.shape[-2:])} image")
    if crop_border:
        result = result[..., crop_border:-crop_border, crop_border:-crop_border]
        reference = reference[..., crop_border:-crop_border, crop_border:-crop_border]
    scale = torch.tensor(PEAK, dtype=torch.float64, device=result.device)
    return result.to(torch.float64) * scale, reference.to(torch.float64, copy=False).to(result.device) * scale
