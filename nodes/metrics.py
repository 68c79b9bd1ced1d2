"""DiffBody Image Metrics: PSNR, SSIM, LPIPS, CPSNR, CSSIM of a result against a reference, inside a
workflow, so settings can be compared where they are made. The definitions are pipelines/metrics.py's and
models/lpips_network.py's, the same as `python -m comfyui_diffbody evaluate`'s."""

from __future__ import annotations

import math

from . import glue

CATEGORY = "DiffBody/Compare"
OUTPUTS = ("psnr", "ssim", "lpips", "cpsnr", "cssim")
_LPIPS_CACHE: dict[tuple[str, str], object] = {}


def lpips_network(auto_download: bool):
    """The LPIPS network of the two files in models/diffbody/metrics/, loaded once per ComfyUI process."""
    from ..models.lpips_network import LPIPS_FILES, load_lpips

    paths = tuple(glue.model_path(name, folder, auto_download) for name, folder in LPIPS_FILES.values())
    if paths not in _LPIPS_CACHE:
        _LPIPS_CACHE.clear()
        _LPIPS_CACHE[paths] = load_lpips(*paths)
    return _LPIPS_CACHE[paths]


def measure(result, reference, *, crop_border: int, lpips) -> dict[str, float]:
    """(B, 3, H, W) results and references (B or 1 images) in 0..1 -> each metric's mean over the batch;
    LPIPS is NaN when `lpips` (the network) is None."""
    import torch

    from ..pipelines.metrics import pixel_metrics

    reference = reference.expand(result.shape[0], -1, -1, -1)
    scores = {name: values.mean().item() for name, values in pixel_metrics(result, reference, crop_border).items()}
    if lpips is None:
        scores["lpips"] = math.nan
    else:
        with torch.no_grad():
            network = lpips.to(result.device)
            scores["lpips"] = network(result.float(), reference.float(), normalize=True).mean().item()
    return scores


def summary_line(scores: dict[str, float], count: int, lpips_note: str) -> str:
    def number(name: str, unit: str = "") -> str:
        value = scores[name]
        return "inf" if math.isinf(value) else f"{value:.2f}{unit}" if unit else f"{value:.4f}"

    lpips = lpips_note or number("lpips")
    mean = f" (mean of {count} images)" if count > 1 else ""
    return (f"PSNR {number('psnr', ' dB')} | SSIM {number('ssim')} | LPIPS {lpips} | CPSNR {number('cpsnr', ' dB')} "
            f"| CSSIM {number('cssim')}{mean}")


class ImageMetrics:
    DISPLAY_NAME = "DiffBody Image Metrics"
    DESCRIPTION = ("Scores a result against a reference: PSNR and SSIM on the BT.601 luma (Y), CPSNR and CSSIM on "
                   "RGB, LPIPS (AlexNet, v0.1; lower is better), as the pack's `evaluate` command defines them. "
                   "A batch gives the mean. Without a reference every output is NaN (no full-reference metric "
                   "applies); a metric that cannot be computed is NaN, never 0.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("psnr", "ssim", "lpips", "cpsnr", "cssim", "summary")
    OUTPUT_TOOLTIPS = ("PSNR in dB on Y (BT.601 studio range).", "SSIM on Y (Gaussian 11x11, sigma 1.5).",
                       "LPIPS, lower is more similar; NaN when switched off.", "Colour PSNR in dB: one MSE over R, G, B.",
                       "Colour SSIM: the mean of SSIM on R, G and B.", "All of them on one line.")
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "result": ("IMAGE", {"tooltip": "The restored image (or a batch)."}),
                "crop_border": ("INT", {"default": 0, "min": 0, "max": 64,
                                        "tooltip": "Pixels dropped at every edge before scoring (0: none)."}),
                "lpips": ("BOOLEAN", {"default": True, "tooltip": "Compute LPIPS (needs alexnet-owt-7be5be79.pth "
                                      "and LPIPS_v0.1_alex-df73285e.pth in models/diffbody/metrics/)."}),
                "auto_download": glue.auto_download_input(),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "The ground truth, the result's size (one image, or one per "
                                                   "result)."}),
            },
        }

    def measure(self, result, crop_border, lpips, auto_download, reference=None):
        if reference is None:
            nan = math.nan
            return (nan, nan, nan, nan, nan, "no reference image: PSNR, SSIM, LPIPS, CPSNR and CSSIM need one")
        # grey, RGBA and unbatched IMAGEs: RGB batches, as every node takes them (sizes read after that)
        result, reference = glue.comfy_to_bchw(result), glue.comfy_to_bchw(reference)
        if reference.shape[0] not in (1, result.shape[0]) or reference.shape[-2:] != result.shape[-2:]:
            raise ValueError(f"DiffBody Image Metrics: the reference ({reference.shape[0]} x "
                             f"{tuple(reference.shape[-2:])}) must have the result's size {tuple(result.shape[-2:])}, "
                             f"one image or one per result ({result.shape[0]}); resize it first (full-reference "
                             "metrics compare pixel by pixel).")
        network = lpips_network(auto_download) if lpips else None
        device = glue.torch_device()
        scores = measure(result.to(device), reference.to(device), crop_border=crop_border, lpips=network)
        line = summary_line(scores, result.shape[0], "" if lpips else "off")
        return (*(scores[name] for name in OUTPUTS), line)


NODE_CLASS_MAPPINGS = {"DiffBodyImageMetrics": ImageMetrics}
