"""Time and peak memory of the tiled SwinIR cleanup (stage 0) at growing image sizes.

The claim under test: memory beyond the image buffers themselves (the input, and the float32 result
the caller gets back) does not grow with the image, because only one tile is on the device at a time.

Each size runs in a fresh process. On the CPU the process's resident-set high-water mark is reset
(`/proc/self/clear_refs`) once the model is loaded and the input allocated, so the peak covers the
cleanup alone; where that reset is not allowed the peak is getrusage's ru_maxrss over the whole
process (model loading included) and is marked "whole process". On CUDA the figure is
torch.cuda.max_memory_allocated() during the cleanup (input and result stay in CPU memory).

    python bench/swinir_tiling_memory.py                      # tiny model, CPU
    python bench/swinir_tiling_memory.py --real-config --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from process_memory import proc_status_mb, reset_peak_rss, whole_process_peak_mb

DEFAULT_SIZES = ("768x512", "1536x1024", "3072x2048")
MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--tiny", action="store_true", help="tiny random SwinIR in DiffBIR's layout (default)")
    kind.add_argument("--real-config", action="store_true", help="DiffBIR's real SwinIR size, random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT ...")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-stride", type=int, default=256)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # model path: measure one size in this process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.sizes[0], args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_path = write_model(tmp, real=args.real_config)
        label = "real-config" if args.real_config else "tiny"
        print(f"SwinIR cleanup, {label} model, device {args.device}, tiles {args.tile_size}/{args.tile_stride}")
        print_header(args.device)
        for size in args.sizes:
            print_row(run_child(model_path, size, args), args.device)


def write_model(directory: str, *, real: bool) -> str:
    from comfyui_diffbody.testing.tiny.swinir import write_real_config_swinir, write_tiny_swinir

    path = os.path.join(directory, "general_swinir_v1.ckpt")
    return write_real_config_swinir(path) if real else write_tiny_swinir(path)


def run_child(model_path: str, size: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", model_path, "--sizes", size,
               "--device", args.device, "--tile-size", str(args.tile_size), "--tile-stride", str(args.tile_stride)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model_path: str, size: str, args) -> dict:
    import torch

    from comfyui_diffbody.models.swinir import load_swinir
    from comfyui_diffbody.pipelines.cleanup import clean_images

    width, height = (int(v) for v in size.lower().split("x"))
    model = load_swinir(model_path)
    images = torch.rand(1, 3, height, width)
    device = torch.device(args.device)
    tiles = []
    result = {"size": size, "input_mb": images.numel() * 4 / MB, "output_mb": images.numel() * 4 / MB}
    if device.type == "cuda":
        model.to(device)  # weights resident before the measurement, as in a warm ComfyUI
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        result["weights_mb"] = torch.cuda.memory_allocated(device) / MB
    else:
        result["setup_rss_mb"] = proc_status_mb("VmRSS")
        result["peak_scope"] = "cleanup" if reset_peak_rss() else "whole process"

    start = time.perf_counter()
    out = clean_images(model, images, tile_size=args.tile_size, tile_stride=args.tile_stride, device=device,
                       progress=lambda done, total: tiles.append(total))
    if device.type == "cuda":
        torch.cuda.synchronize()
    result["seconds"] = time.perf_counter() - start
    result["tiles"] = tiles[-1]
    assert out.shape == images.shape
    if device.type == "cuda":
        result["device_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    elif result["peak_scope"] == "cleanup":
        result["peak_rss_mb"] = proc_status_mb("VmHWM")
    else:
        result["peak_rss_mb"] = whole_process_peak_mb()
    return result


def print_header(device: str) -> None:
    if device.startswith("cuda"):
        print(f"{'size':>10} {'tiles':>5} {'seconds':>8} {'input MB':>9} {'result MB':>9} "
              f"{'weights MB':>10} {'device peak MB':>14} {'peak - weights':>14}")
    else:
        print(f"{'size':>10} {'tiles':>5} {'seconds':>8} {'input MB':>9} {'result MB':>9} "
              f"{'RSS before MB':>13} {'peak RSS MB':>11} {'peak - before - result MB':>25}")


def print_row(r: dict, device: str) -> None:
    common = f"{r['size']:>10} {r['tiles']:>5} {r['seconds']:>8.1f} {r['input_mb']:>9.1f} {r['output_mb']:>9.1f}"
    if device.startswith("cuda"):
        print(f"{common} {r['weights_mb']:>10.1f} {r['device_peak_mb']:>14.1f} "
              f"{r['device_peak_mb'] - r['weights_mb']:>14.1f}")
    else:
        work = r["peak_rss_mb"] - r["setup_rss_mb"] - r["output_mb"]
        scope = "" if r["peak_scope"] == "cleanup" else "  (peak over the whole process)"
        print(f"{common} {r['setup_rss_mb']:>13.1f} {r['peak_rss_mb']:>11.1f} {work:>25.1f}{scope}")


if __name__ == "__main__":
    main()
