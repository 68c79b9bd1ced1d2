"""The GPU suite's stage-0 rows: what the priors cost per photo, through the pack's own loaders on the models
folder's files (real size: the real-size factory's; --networks tiny: the tests' tiny ones).

- swinir_tiles: tiled SwinIR cleanup (DiffBIR's config) of a 2S x 2S image, tiles per second
  (512 px tiles, stride 256, scaled by S/1024 down to 128; bf16 where usable, as the node runs it);
- dwpose: one S/2 x S photo through DWPose (ONNX Runtime, CUDA where onnxruntime has it). The factory's DWPose
  graphs have the real inputs and outputs but tiny compute (testing/tiny/dwpose.py): the figure is the
  pipeline around the networks, not YOLOX-L and RTMPose-L;
- depth_anything: Depth Anything V2 Small on the photo (the estimator works at 518 px);
- marigold: Marigold normals v1.1 on the photo, its default 4 steps at its processing resolution.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from suite_report import PeakMemory, count_flops, of_peak


def _photo(width: int, height: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC))


def _folder(ctx, name: str) -> str:
    from comfyui_diffbody.models.files import FOLDERS

    return os.path.join(ctx.models_dir(), FOLDERS[name].relative_dir)


def timed(ctx, run, repeats: int = 2) -> tuple[float, float, str]:
    """(median seconds of `run()` after one warm-up call, peak MB, peak scope)."""
    run()
    with PeakMemory(ctx.device) as peak:
        seconds = []
        for _ in range(repeats):
            ctx.sync()
            start = time.perf_counter()
            run()
            ctx.sync()
            seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), peak.mb, peak.scope


def run(ctx, report, rows: list[str]) -> None:
    photo = _photo(ctx.size // 2, ctx.size)
    pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float().div(255)
    if "swinir_tiles" in rows:
        swinir_row(ctx, report)
    if "dwpose" in rows:
        from comfyui_diffbody.pipelines.pose.dwpose import DWPoseEstimator, onnx_providers

        pose = _folder(ctx, "diffbody_pose")
        providers = onnx_providers(ctx.args.device)
        estimator = DWPoseEstimator(os.path.join(pose, "yolox_l.onnx"), os.path.join(pose, "dw-ll_ucoco_384.onnx"),
                                    providers)
        seconds, peak, scope = timed(ctx, lambda: estimator(photo))
        report.add("dwpose", seconds, "s/photo", peak_mb=peak,
                   note=f"DWPose on a {photo.shape[1]}x{photo.shape[0]} photo, {providers[0]}; real I/O shapes, tiny "
                        f"compute (the factory's graphs) [peak: {scope}]")
    if "depth_anything" in rows or "marigold" in rows:
        estimator_rows(ctx, report, rows, pixels.to(ctx.device))


def swinir_row(ctx, report) -> None:
    from comfyui_diffbody.models.swinir import load_swinir
    from comfyui_diffbody.pipelines.cleanup import clean_images

    model = load_swinir(os.path.join(_folder(ctx, "upscale_models"), "general_swinir_v1.ckpt"))
    model.to(ctx.device)
    tile = max(128, 512 * ctx.size // 1024)
    images = torch.rand(1, 3, 2 * ctx.size, 2 * ctx.size, generator=torch.Generator().manual_seed(0))
    tiles: list[int] = []

    def clean():
        clean_images(model, images, tile_size=tile, tile_stride=tile // 2, device=ctx.device,
                     progress=lambda done, total: tiles.append(total))

    seconds, peak, scope = timed(ctx, clean, repeats=1)
    flops = count_flops(clean)
    report.add("swinir_tiles", tiles[-1] / seconds, "tiles/s", peak_mb=peak, tflop_per_step=flops / 1e12 / tiles[-1],
               fraction_of_peak=of_peak(ctx, flops, seconds),
               note=f"SwinIR (DiffBIR config) on {2 * ctx.size}x{2 * ctx.size}: {tiles[-1]} tiles of {tile} px "
                    f"(stride {tile // 2}) in {seconds:.3f} s; TFLOP column per tile [peak: {scope}]")


def estimator_rows(ctx, report, rows: list[str], pixels: torch.Tensor) -> None:
    from comfyui_diffbody.models.depth_estimator import DepthEstimator
    from comfyui_diffbody.models.normal_estimator import MarigoldNormals
    from comfyui_diffbody.pipelines.presets import PUBLIC_DEPTH_MODEL, PUBLIC_NORMAL_SOURCE

    priors = _folder(ctx, "diffbody_priors")
    size = f"{pixels.shape[-1]}x{pixels.shape[-2]}"
    if "depth_anything" in rows:
        depth = DepthEstimator.load(os.path.join(priors, PUBLIC_DEPTH_MODEL), device=ctx.device, dtype=ctx.dtype)
        seconds, peak, scope = timed(ctx, lambda: depth.predict(pixels))
        flops = count_flops(lambda: depth.predict(pixels))
        report.add("depth_anything", seconds, "s/photo", peak_mb=peak, tflop_per_step=flops / 1e12,
                   fraction_of_peak=of_peak(ctx, flops, seconds),
                   note=f"Depth Anything V2 Small on a {size} photo, {ctx.args.dtype} [peak: {scope}]")
        del depth
    if "marigold" in rows:
        normals = MarigoldNormals.load(os.path.join(priors, PUBLIC_NORMAL_SOURCE), device=ctx.device, dtype=ctx.dtype)
        seconds, peak, scope = timed(ctx, lambda: normals.predict(pixels), repeats=1)
        flops = count_flops(lambda: normals.predict(pixels))
        report.add("marigold", seconds, "s/photo", peak_mb=peak, tflop_per_step=flops / 1e12,
                   fraction_of_peak=of_peak(ctx, flops, seconds),
                   note=f"Marigold normals v1.1 on a {size} photo, {normals.default_steps} steps, {ctx.args.dtype}; "
                        f"TFLOP column per photo [peak: {scope}]")
